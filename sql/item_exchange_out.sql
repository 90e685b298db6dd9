-- The item exchange between shards at parallelism > 1, part 2: each shard's item deltas to
-- Kafka, exactly-once (committed with the checkpoint that holds the shard's state without
-- them pending). Placeholders: sink_options, run_id.
CREATE TEMPORARY TABLE item_deltas_sink (
  k STRING,
  v STRING
) WITH (
  ${sink_options},
  'key.format' = 'raw',
  'key.fields' = 'k',
  'value.format' = 'raw',
  'value.fields-include' = 'EXCEPT_KEY'
);

INSERT INTO item_deltas_sink SELECT CONCAT(${run_id}, ':', k), v FROM shard_output WHERE kind = 'item_delta';
