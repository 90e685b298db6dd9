-- The hot path's JVM side, part 1 (docs/hot-path.md). Placeholders: shards, shard_key_cases.
--
-- Every cleaned event goes to the shard of its user: (the shard's Flink key, the event as one
-- JSON line, the fields of udfs.shard_model.Event). The key is the INT that lands shard n on
-- subtask n (flink_jobs.pipeline.shard_keys). flink_jobs/pipeline.py gives these rows their
-- batch-time attributes (proc_time; arrival, a rowtime stamped with the processing time on the
-- way through a DataStream) for sql/learner_batches.sql.
CREATE TEMPORARY VIEW learner_events AS
SELECT
  CASE MOD(MOD(HASH_CODE(user_id), ${shards}) + ${shards}, ${shards}) ${shard_key_cases} END AS shard_key,
  JSON_ARRAY(event_id, user_id, item_id, weight, ts, src_partition, src_offset NULL ON NULL) AS event
FROM clean_events;
