-- Ingestion, part 2: the cleaned + deduplicated events (view `deduped_all`, registered by
-- flink_jobs/ingest.py from the view `deduped` of sql/ingest.sql) go to events.clean, features.user, features.item.
-- Placeholders: dlq_max_bytes, clean_sink_options, user_sink_options, item_sink_options, slide,
-- long_window, short_window_ms, short_minutes, long_over_short, bot_epm.

CREATE TABLE clean_out (
  event_id STRING,
  user_id STRING,
  item_id STRING,
  event_type STRING,
  rating DOUBLE,
  weight DOUBLE,
  ts BIGINT,
  src_partition INT,
  src_offset BIGINT,
  late BOOLEAN
) WITH (
  ${clean_sink_options},
  'key.format' = 'raw',
  'key.fields' = 'user_id',
  'value.format' = 'json',
  'value.fields-include' = 'ALL'
);

-- Late events feed events.clean and the learner but not the windowed features.
CREATE TEMPORARY VIEW feature_events AS
SELECT * FROM deduped_all WHERE NOT late;

-- One sliding window (size = long window) per slide; the short window is the last
-- short_window_ms of it (in_short). Distinct counts without a distinct aggregate: a first window
-- aggregate per (user, item) pair and window, then one per user (per item) counting its pairs.
-- (COUNT(DISTINCT) keeps a map per key and window in RocksDB, and clearing those maps when the
-- windows fire made the item aggregate seek over tombstones: 100 % busy at ~150 events/s on
-- ML-100k, docs/ingestion.md.)
CREATE TEMPORARY VIEW hop_events AS
SELECT user_id, item_id, event_type, weight, ts, window_start, window_end, window_time,
  TIMESTAMPDIFF(SECOND, TIMESTAMP '1970-01-01 00:00:00', window_end) * CAST(1000 AS BIGINT) AS end_ms,
  ts >= TIMESTAMPDIFF(SECOND, TIMESTAMP '1970-01-01 00:00:00', window_end) * CAST(1000 AS BIGINT) - ${short_window_ms} AS in_short
FROM TABLE(HOP(TABLE feature_events, DESCRIPTOR(event_time), ${slide}, ${long_window}));

-- One row per (user, item, window); pair_time keeps the window as a time attribute, so the
-- second level is a window aggregate too (TUMBLE of one slide holds exactly one window's rows).
CREATE TEMPORARY VIEW pair_windows AS
SELECT user_id, item_id, window_time AS pair_time, MIN(end_ms) AS end_ms,
  COUNT(*) FILTER (WHERE in_short) AS s_events,
  COUNT(*) FILTER (WHERE in_short AND event_type = 'view') AS s_views,
  COUNT(*) FILTER (WHERE in_short AND event_type = 'click') AS s_clicks,
  COUNT(*) FILTER (WHERE in_short AND event_type = 'cart') AS s_carts,
  COUNT(*) FILTER (WHERE in_short AND event_type = 'purchase') AS s_purchases,
  COUNT(*) FILTER (WHERE in_short AND event_type = 'rating') AS s_ratings,
  COALESCE(SUM(weight) FILTER (WHERE in_short), 0.0) AS s_weight,
  COUNT(*) AS l_events,
  COUNT(*) FILTER (WHERE event_type = 'view') AS l_views,
  COUNT(*) FILTER (WHERE event_type = 'click') AS l_clicks,
  COUNT(*) FILTER (WHERE event_type = 'cart') AS l_carts,
  COUNT(*) FILTER (WHERE event_type = 'purchase') AS l_purchases,
  COUNT(*) FILTER (WHERE event_type = 'rating') AS l_ratings,
  SUM(weight) AS l_weight,
  MAX(ts) AS last_ts
FROM hop_events
GROUP BY user_id, item_id, window_start, window_end, window_time;

CREATE TABLE features_user_out (
  user_id STRING,
  window_start BIGINT,
  window_end BIGINT,
  short_events BIGINT,
  short_views BIGINT,
  short_clicks BIGINT,
  short_carts BIGINT,
  short_purchases BIGINT,
  short_ratings BIGINT,
  short_weight DOUBLE,
  short_distinct_items BIGINT,
  long_events BIGINT,
  long_views BIGINT,
  long_clicks BIGINT,
  long_carts BIGINT,
  long_purchases BIGINT,
  long_ratings BIGINT,
  long_weight DOUBLE,
  long_distinct_items BIGINT,
  last_seen_ts BIGINT,
  events_per_minute DOUBLE,
  is_bot BOOLEAN,
  PRIMARY KEY (user_id) NOT ENFORCED
) WITH (
  ${user_sink_options},
  'key.format' = 'raw',
  'value.format' = 'json'
);

CREATE TABLE features_item_out (
  item_id STRING,
  window_start BIGINT,
  window_end BIGINT,
  short_events BIGINT,
  short_views BIGINT,
  short_clicks BIGINT,
  short_carts BIGINT,
  short_purchases BIGINT,
  short_ratings BIGINT,
  short_weight DOUBLE,
  short_distinct_users BIGINT,
  long_events BIGINT,
  long_views BIGINT,
  long_clicks BIGINT,
  long_carts BIGINT,
  long_purchases BIGINT,
  long_ratings BIGINT,
  long_weight DOUBLE,
  long_distinct_users BIGINT,
  last_seen_ts BIGINT,
  popularity DOUBLE,
  trend DOUBLE,
  PRIMARY KEY (item_id) NOT ENFORCED
) WITH (
  ${item_sink_options},
  'key.format' = 'raw',
  'value.format' = 'json'
);

INSERT INTO dlq_out
SELECT dlq_payload, payload_bytes, payload_bytes > ${dlq_max_bytes}, reason, src_partition, src_offset, ingest_ms
FROM rejected;

INSERT INTO clean_out
SELECT event_id, user_id, item_id, event_type, rating, weight, ts, src_partition, src_offset, late
FROM deduped_all;

INSERT INTO features_user_out
SELECT user_id,
  MIN(end_ms) - ${long_window_ms} AS start_ms, MIN(end_ms) AS end_ms_,
  SUM(s_events), SUM(s_views), SUM(s_clicks), SUM(s_carts), SUM(s_purchases), SUM(s_ratings),
  SUM(s_weight),
  COUNT(*) FILTER (WHERE s_events > 0),
  SUM(l_events), SUM(l_views), SUM(l_clicks), SUM(l_carts), SUM(l_purchases), SUM(l_ratings),
  SUM(l_weight),
  COUNT(*),
  MAX(last_ts),
  CAST(SUM(s_events) AS DOUBLE) / ${short_minutes},
  CAST(SUM(s_events) AS DOUBLE) / ${short_minutes} > ${bot_epm}
FROM TABLE(TUMBLE(TABLE pair_windows, DESCRIPTOR(pair_time), ${slide}))
GROUP BY user_id, window_start, window_end;

INSERT INTO features_item_out
SELECT item_id,
  MIN(end_ms) - ${long_window_ms} AS start_ms, MIN(end_ms) AS end_ms_,
  SUM(s_events), SUM(s_views), SUM(s_clicks), SUM(s_carts), SUM(s_purchases), SUM(s_ratings),
  SUM(s_weight),
  COUNT(*) FILTER (WHERE s_events > 0),
  SUM(l_events), SUM(l_views), SUM(l_clicks), SUM(l_carts), SUM(l_purchases), SUM(l_ratings),
  SUM(l_weight),
  COUNT(*),
  MAX(last_ts),
  SUM(l_weight),
  CASE WHEN SUM(l_weight) > 0 THEN SUM(s_weight) / SUM(l_weight) * ${long_over_short} END
FROM TABLE(TUMBLE(TABLE pair_windows, DESCRIPTOR(pair_time), ${slide}))
GROUP BY item_id, window_start, window_end;
