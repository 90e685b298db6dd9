-- Sinks of the learning and scoring stage. Each record is (k, v): k is the Kafka key (item_id or
-- user_id, for partition affinity and log compaction), v the JSON value built in udfs/. The shard
-- learner emits (kind, k, v) rows (view shard_output); kind names the sink.
CREATE TEMPORARY TABLE model_items_sink (
  k STRING,
  v STRING
) WITH (
  ${model_items_options},
  'key.format' = 'raw',
  'key.fields' = 'k',
  'value.format' = 'raw',
  'value.fields-include' = 'EXCEPT_KEY'
);

CREATE TEMPORARY TABLE model_users_sink (
  k STRING,
  v STRING
) WITH (
  ${model_users_options},
  'key.format' = 'raw',
  'key.fields' = 'k',
  'value.format' = 'raw',
  'value.fields-include' = 'EXCEPT_KEY'
);

CREATE TEMPORARY TABLE recommendations_sink (
  k STRING,
  v STRING
) WITH (
  ${recommendations_options},
  'key.format' = 'raw',
  'key.fields' = 'k',
  'value.format' = 'raw',
  'value.fields-include' = 'EXCEPT_KEY'
);

INSERT INTO recommendations_sink SELECT k, v FROM shard_output WHERE kind = 'recommendation';

INSERT INTO model_items_sink SELECT k, v FROM shard_output WHERE kind = 'item';

INSERT INTO model_users_sink SELECT k, v FROM shard_output WHERE kind = 'user';
