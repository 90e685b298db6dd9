-- The hot path's JVM side, part 1 (docs/hot-path.md). Placeholders: shards, shard_key_cases.
--
-- Every cleaned event goes to the shard of its user: (the shard's Flink key, the event as one
-- JSON array of the fields of core.records.LEARNER_EVENT, which udfs.shard_model.Event reads).
-- The key is the INT that lands shard n on subtask n (flink_jobs.pipeline.shard_keys).
-- flink_jobs/pipeline.py gives these rows their batch-time attributes (proc_time; arrival, a
-- rowtime stamped with the processing time on the way through a DataStream) for
-- sql/learner_batches.sql.
CREATE TEMPORARY VIEW learner_events AS
SELECT
  CASE MOD(MOD(HASH_CODE(user_id), ${shards}) + ${shards}, ${shards}) ${shard_key_cases} END AS shard_key,
  JSON_ARRAY(${learner_event_names} NULL ON NULL) AS event
FROM clean_events;
