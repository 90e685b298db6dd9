-- The item exchange between shards at parallelism > 1, part 1: the other shards' item deltas
-- into each shard's micro-batches (udfs/item_exchange.py, docs/hot-path.md). Placeholders:
-- source_options, run_id, fan_out.
--
-- Each delta record (key `<run id>:<shard key of its sender>`) goes to every shard but its
-- sender, beside the shard's events; records of another lineage's run are not this run's steps.
-- fan_out is one `UNION ALL SELECT <shard key>, v ... WHERE origin <> <shard key>` per shard:
-- filters over one scan, no state (a join with the list of shards, even UNNEST of a constant
-- array, is planned as a regular join that keeps both sides in state).
CREATE TEMPORARY TABLE item_deltas_in (
  k STRING,
  v STRING
) WITH (
  ${source_options},
  'key.format' = 'raw',
  'key.fields' = 'k',
  'value.format' = 'raw',
  'value.fields-include' = 'EXCEPT_KEY'
);

CREATE TEMPORARY VIEW run_item_deltas AS
SELECT CAST(SPLIT_INDEX(k, ':', 1) AS INT) AS origin, v
FROM item_deltas_in
WHERE SPLIT_INDEX(k, ':', 0) = ${run_id};

CREATE TEMPORARY VIEW learner_inputs AS
SELECT shard_key, event FROM learner_events
${fan_out};
