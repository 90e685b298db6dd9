-- The hot path's JVM side (docs/hot-path.md). Placeholders: shards, shard_key_cases.
--
-- Every cleaned event goes to the shard of its user. The shard learner buffers a shard's events
-- in keyed state and learns and scores them once per micro-batch (scoring.batch_interval_ms or
-- scoring.max_batch_events, whichever comes first; the end of a bounded input flushes the rest).
-- (A processing-time window here batched in the JVM at 16 µs per event, but Flink drops a
-- processing-time window that has not fired when a bounded input ends: its events never got a
-- recommendation. docs/hot-path.md.)
CREATE TEMPORARY VIEW learner_events AS
SELECT
  MOD(MOD(HASH_CODE(user_id), ${shards}) + ${shards}, ${shards}) AS shard,
  event_id, user_id, item_id, weight, ts, src_partition, src_offset
FROM clean_events;

-- The same events keyed for the shard learner: (the shard's Flink key, the event as one JSON
-- line, the fields of udfs.shard_model.Event). PyFlink's own key_by runs a Python function per
-- record to build this pair (~70 µs each, under the interpreter lock the learner needs); built
-- here it costs the JVM a CASE. One STRING crosses into Python (and into the learner's buffer
-- state) far more cheaply than a row of eight typed fields.
CREATE TEMPORARY VIEW learner_events_keyed AS
SELECT
  CASE shard ${shard_key_cases} END AS shard_key,
  JSON_ARRAY(event_id, user_id, item_id, weight, ts, src_partition, src_offset NULL ON NULL) AS event
FROM learner_events;
