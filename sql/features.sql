-- The features job, part 1 (flink_jobs/features.py): the clean events of the pipeline's
-- ingestion (events.clean, read_committed) -> one (user, item, slice) row per pair and slice;
-- part 2 (sql/features_windows.sql) makes the user and item windows of them.
-- Placeholders: source_options, user_sink_options, item_sink_options, slide; the tables' columns
-- are the records' (core/records.py, flink_jobs.env.RECORD_PLACEHOLDERS).

-- The watermark is the pipeline's, carried by every clean event (sql/ingest_sinks.sql), not one
-- of this job's own from `ts`: events.clean is keyed by user, so a partition mixes the events of
-- every raw partition in the order the pipeline read them (under a backlog one raw partition
-- after another), and a watermark from `ts` would make most of them late here. A stamp is at
-- most the watermark the pipeline's own windows would have seen with the event, and every
-- event it did not flag late is newer than it: the windows drop none of them (parallelism 1; at
-- more, the writers' watermarks differ by their propagation, docs/ingestion.md).
CREATE TABLE clean_in (
  ${clean_event_columns},
  event_time AS TO_TIMESTAMP_LTZ(ts, 3),
  stamped_watermark AS TO_TIMESTAMP_LTZ(COALESCE(ingest_watermark_ms, CAST(0 AS BIGINT)), 3),
  WATERMARK FOR event_time AS stamped_watermark
) WITH (
  ${source_options},
  'format' = 'json',
  'json.fail-on-missing-field' = 'false'
);

-- Late events (flagged by the pipeline's ingestion, sql/ingest.sql) feed the learner but not the
-- windowed features.
CREATE TEMPORARY VIEW feature_events AS
SELECT * FROM clean_in WHERE NOT late;

-- Sliding windows (size long_window_ms, every window_slide_ms) built from slices: a slice is a
-- TUMBLE of one slide, and a window is the long/slide slices before its end. The short window is
-- the last short_window_ms of the window (whole slices: the config makes it a multiple of the
-- slide). Level 1 counts each event once, in one (user, item, slice) row; level 2 aggregates
-- those rows per user (per item) and window. Distinct counts without a distinct aggregate: a
-- pair counts once per window, in the first of its slices the window holds, i.e. where the
-- pair's previous slice (prev_end_ms, sql/features_windows.sql) lies before the window.
-- (COUNT(DISTINCT) keeps a map per key and window in RocksDB, and clearing those maps when the
-- windows fire made the item aggregate seek over tombstones; the pair level per window instead
-- of per slice copied every event into every window: the figures are in docs/ingestion.md.)
CREATE TEMPORARY VIEW pair_slices AS
SELECT user_id, item_id, window_time AS slice_time,
  TIMESTAMPDIFF(SECOND, TIMESTAMP '1970-01-01 00:00:00', window_end) * CAST(1000 AS BIGINT) AS slice_end_ms,
  COUNT(*) AS n_events,
  COUNT(*) FILTER (WHERE event_type = 'view') AS n_views,
  COUNT(*) FILTER (WHERE event_type = 'click') AS n_clicks,
  COUNT(*) FILTER (WHERE event_type = 'cart') AS n_carts,
  COUNT(*) FILTER (WHERE event_type = 'purchase') AS n_purchases,
  COUNT(*) FILTER (WHERE event_type = 'rating') AS n_ratings,
  SUM(weight) AS w_sum,
  MAX(ts) AS last_ts
FROM TABLE(TUMBLE(TABLE feature_events, DESCRIPTOR(event_time), ${slide}))
GROUP BY user_id, item_id, window_start, window_end, window_time;

CREATE TABLE features_user_out (
  ${features_user_columns},
  PRIMARY KEY (user_id) NOT ENFORCED
) WITH (
  ${user_sink_options},
  'key.format' = 'raw',
  'value.format' = 'json'
);

CREATE TABLE features_item_out (
  ${features_item_columns},
  PRIMARY KEY (item_id) NOT ENFORCED
) WITH (
  ${item_sink_options},
  'key.format' = 'raw',
  'value.format' = 'json'
);
