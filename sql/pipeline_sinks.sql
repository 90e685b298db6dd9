-- Sinks of the learning and scoring stages. Each record is (k, v): k is the Kafka key (item_id or
-- user_id, for partition affinity and log compaction), v the JSON value built in udfs/.
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
