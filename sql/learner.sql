-- The hot path's JVM side (docs/hot-path.md). Placeholder: shards.
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
