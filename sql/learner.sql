-- The hot path's JVM side (docs/hot-path.md). Placeholders: shards, batch_interval.
--
-- Every cleaned event goes to the shard of its user; each shard's events of one processing-time
-- window become ONE row, the events as JSON arrays (one per line, arrival order), so the Python
-- shard learner runs once per batch instead of several times per event. A window's rows are
-- collected in keyed state (checkpointed) and the last window fires at the end of a bounded input.
CREATE TEMPORARY VIEW learner_events AS
SELECT
  MOD(MOD(HASH_CODE(user_id), ${shards}) + ${shards}, ${shards}) AS shard,
  JSON_ARRAY(event_id, user_id, item_id, weight, ts, src_partition, src_offset) AS line,
  proc_time
FROM clean_events;

CREATE TEMPORARY VIEW learner_batches AS
SELECT shard, ARRAY_JOIN(ARRAY_AGG(line), CHR(10)) AS events
FROM TABLE(TUMBLE(TABLE learner_events, DESCRIPTOR(proc_time), ${batch_interval}))
GROUP BY shard, window_start, window_end;
