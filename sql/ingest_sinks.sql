-- Ingestion, part 2: the cleaned + deduplicated events (view `deduped_all`, registered by
-- flink_jobs/ingest.py from the view `deduped` of sql/ingest.sql) go to events.clean, features.user, features.item.
-- Placeholders: dlq_max_bytes, clean_sink_options, user_sink_options, item_sink_options, slide,
-- long_window, short_window, long_window_ms, short_minutes, long_over_short, bot_epm.

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

-- Each feature row is a long window (long_window, sliding by slide) and, in the same row, its
-- last short_window_ms. Long and short windows are aggregated separately so that neither copies
-- an event into every window it belongs to: a window aggregate whose expressions do not depend on
-- the window is computed on slices (one state update per event), and the two results are joined
-- on their window end (an interval join on the window times: bounded state).
CREATE TEMPORARY VIEW user_long AS
SELECT user_id, window_end, window_time,
  COUNT(*) AS long_events,
  COUNT(*) FILTER (WHERE event_type = 'view') AS long_views,
  COUNT(*) FILTER (WHERE event_type = 'click') AS long_clicks,
  COUNT(*) FILTER (WHERE event_type = 'cart') AS long_carts,
  COUNT(*) FILTER (WHERE event_type = 'purchase') AS long_purchases,
  COUNT(*) FILTER (WHERE event_type = 'rating') AS long_ratings,
  SUM(weight) AS long_weight,
  COUNT(DISTINCT item_id) AS long_distinct,
  MAX(ts) AS last_seen_ts
FROM TABLE(HOP(TABLE feature_events, DESCRIPTOR(event_time), ${slide}, ${long_window}))
GROUP BY user_id, window_start, window_end, window_time;

CREATE TEMPORARY VIEW user_short AS
SELECT user_id, window_end, window_time,
  COUNT(*) AS short_events,
  COUNT(*) FILTER (WHERE event_type = 'view') AS short_views,
  COUNT(*) FILTER (WHERE event_type = 'click') AS short_clicks,
  COUNT(*) FILTER (WHERE event_type = 'cart') AS short_carts,
  COUNT(*) FILTER (WHERE event_type = 'purchase') AS short_purchases,
  COUNT(*) FILTER (WHERE event_type = 'rating') AS short_ratings,
  SUM(weight) AS short_weight,
  COUNT(DISTINCT item_id) AS short_distinct
FROM TABLE(HOP(TABLE feature_events, DESCRIPTOR(event_time), ${slide}, ${short_window}))
GROUP BY user_id, window_start, window_end, window_time;

CREATE TEMPORARY VIEW item_long AS
SELECT item_id, window_end, window_time,
  COUNT(*) AS long_events,
  COUNT(*) FILTER (WHERE event_type = 'view') AS long_views,
  COUNT(*) FILTER (WHERE event_type = 'click') AS long_clicks,
  COUNT(*) FILTER (WHERE event_type = 'cart') AS long_carts,
  COUNT(*) FILTER (WHERE event_type = 'purchase') AS long_purchases,
  COUNT(*) FILTER (WHERE event_type = 'rating') AS long_ratings,
  SUM(weight) AS long_weight,
  COUNT(DISTINCT user_id) AS long_distinct,
  MAX(ts) AS last_seen_ts
FROM TABLE(HOP(TABLE feature_events, DESCRIPTOR(event_time), ${slide}, ${long_window}))
GROUP BY item_id, window_start, window_end, window_time;

CREATE TEMPORARY VIEW item_short AS
SELECT item_id, window_end, window_time,
  COUNT(*) AS short_events,
  COUNT(*) FILTER (WHERE event_type = 'view') AS short_views,
  COUNT(*) FILTER (WHERE event_type = 'click') AS short_clicks,
  COUNT(*) FILTER (WHERE event_type = 'cart') AS short_carts,
  COUNT(*) FILTER (WHERE event_type = 'purchase') AS short_purchases,
  COUNT(*) FILTER (WHERE event_type = 'rating') AS short_ratings,
  SUM(weight) AS short_weight,
  COUNT(DISTINCT user_id) AS short_distinct
FROM TABLE(HOP(TABLE feature_events, DESCRIPTOR(event_time), ${slide}, ${short_window}))
GROUP BY item_id, window_start, window_end, window_time;

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
SELECT l.user_id,
  TIMESTAMPDIFF(SECOND, TIMESTAMP '1970-01-01 00:00:00', l.window_end) * CAST(1000 AS BIGINT) - ${long_window_ms},
  TIMESTAMPDIFF(SECOND, TIMESTAMP '1970-01-01 00:00:00', l.window_end) * CAST(1000 AS BIGINT),
  COALESCE(s.short_events, 0), COALESCE(s.short_views, 0), COALESCE(s.short_clicks, 0),
  COALESCE(s.short_carts, 0), COALESCE(s.short_purchases, 0), COALESCE(s.short_ratings, 0),
  COALESCE(s.short_weight, 0.0), COALESCE(s.short_distinct, 0),
  l.long_events, l.long_views, l.long_clicks, l.long_carts, l.long_purchases, l.long_ratings,
  l.long_weight, l.long_distinct, l.last_seen_ts,
  CAST(COALESCE(s.short_events, 0) AS DOUBLE) / ${short_minutes},
  CAST(COALESCE(s.short_events, 0) AS DOUBLE) / ${short_minutes} > ${bot_epm}
FROM user_long l LEFT JOIN user_short s
  ON l.user_id = s.user_id AND l.window_end = s.window_end
  AND s.window_time BETWEEN l.window_time AND l.window_time;

INSERT INTO features_item_out
SELECT l.item_id,
  TIMESTAMPDIFF(SECOND, TIMESTAMP '1970-01-01 00:00:00', l.window_end) * CAST(1000 AS BIGINT) - ${long_window_ms},
  TIMESTAMPDIFF(SECOND, TIMESTAMP '1970-01-01 00:00:00', l.window_end) * CAST(1000 AS BIGINT),
  COALESCE(s.short_events, 0), COALESCE(s.short_views, 0), COALESCE(s.short_clicks, 0),
  COALESCE(s.short_carts, 0), COALESCE(s.short_purchases, 0), COALESCE(s.short_ratings, 0),
  COALESCE(s.short_weight, 0.0), COALESCE(s.short_distinct, 0),
  l.long_events, l.long_views, l.long_clicks, l.long_carts, l.long_purchases, l.long_ratings,
  l.long_weight, l.long_distinct, l.last_seen_ts,
  l.long_weight,
  CASE WHEN l.long_weight > 0 THEN COALESCE(s.short_weight, 0.0) / l.long_weight * ${long_over_short} END
FROM item_long l LEFT JOIN item_short s
  ON l.item_id = s.item_id AND l.window_end = s.window_end
  AND s.window_time BETWEEN l.window_time AND l.window_time;
