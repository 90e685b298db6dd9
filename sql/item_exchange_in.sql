-- The item exchange between shards at parallelism > 1, part 1: the other shards' item deltas
-- into each shard's micro-batches (udfs/item_exchange.py, docs/hot-path.md). Placeholders:
-- source_options, run_id, shard_keys.
--
-- Each delta record (key `<run id>:<shard key of its sender>`) goes to every shard but its
-- sender, beside the shard's events; records of another lineage's run are not this run's steps.
-- UNNEST fans out without state (a join with a VALUES table would keep every delta in state).
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

CREATE TEMPORARY VIEW learner_item_deltas AS
SELECT s.shard_key, d.v AS event
FROM item_deltas_in AS d
CROSS JOIN UNNEST(ARRAY[${shard_keys}]) AS s(shard_key)
WHERE SPLIT_INDEX(d.k, ':', 0) = ${run_id}
  AND s.shard_key <> CAST(SPLIT_INDEX(d.k, ':', 1) AS INT);

CREATE TEMPORARY VIEW learner_inputs AS
SELECT shard_key, event FROM learner_events
UNION ALL
SELECT shard_key, event FROM learner_item_deltas;
