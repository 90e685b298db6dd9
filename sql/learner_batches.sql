-- The hot path's JVM side, part 2 (docs/hot-path.md). Placeholders: batch_time, batch_interval.
--
-- A shard's events of one window of scoring.batch_interval_ms become ONE row, the events as JSON
-- arrays joined by commas (arrival order), so the Python shard learner runs once per batch
-- instead of once per event: a window here costs the JVM far less per event than a per-record
-- Python call, which also holds the interpreter lock the learner needs (docs/hot-path.md, "Why").
-- A window's events sit in this operator's keyed state, checkpointed.
--
-- batch_time: `proc_time` for an unbounded run (the window closes on the wall clock, also when
-- no later event arrives); `arrival` for a bounded one, because Flink drops a processing-time
-- window that has not fired when a bounded input ends, while an event-time window on `arrival`
-- (the same wall-clock stamp, with a watermark) fires at the input's final watermark.
CREATE TEMPORARY VIEW learner_batches AS
SELECT shard_key, ARRAY_JOIN(ARRAY_AGG(event), ',') AS events
FROM TABLE(TUMBLE(TABLE learner_events_timed, DESCRIPTOR(${batch_time}), ${batch_interval}))
GROUP BY shard_key, window_start, window_end;
