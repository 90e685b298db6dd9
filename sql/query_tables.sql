-- Tables of the SQL front door (`streamrec sql`): bounded, read_committed reads of the topics.
-- Placeholders: raw_options, clean_options, user_options, item_options, recs_options.
CREATE TABLE events_raw (
  payload STRING,
  src_partition INT METADATA FROM 'partition' VIRTUAL,
  src_offset BIGINT METADATA FROM 'offset' VIRTUAL
) WITH (${raw_options}, 'format' = 'raw');

CREATE TABLE events_clean (
  event_id STRING, user_id STRING, item_id STRING, event_type STRING, rating DOUBLE,
  weight DOUBLE, ts BIGINT, src_partition INT, src_offset BIGINT
) WITH (${clean_options}, 'format' = 'json', 'json.ignore-parse-errors' = 'true');

-- Every feature row ever written (one per id and window); features_user / features_item below
-- keep the latest row per id, which is what the upsert topics mean.
CREATE TABLE features_user_log (
  user_id STRING, window_start BIGINT, window_end BIGINT,
  short_events BIGINT, short_views BIGINT, short_clicks BIGINT, short_carts BIGINT,
  short_purchases BIGINT, short_ratings BIGINT, short_weight DOUBLE, short_distinct_items BIGINT,
  long_events BIGINT, long_views BIGINT, long_clicks BIGINT, long_carts BIGINT,
  long_purchases BIGINT, long_ratings BIGINT, long_weight DOUBLE, long_distinct_items BIGINT,
  last_seen_ts BIGINT, events_per_minute DOUBLE, is_bot BOOLEAN
) WITH (${user_options}, 'format' = 'json', 'json.ignore-parse-errors' = 'true');

CREATE TABLE features_item_log (
  item_id STRING, window_start BIGINT, window_end BIGINT,
  short_events BIGINT, short_views BIGINT, short_clicks BIGINT, short_carts BIGINT,
  short_purchases BIGINT, short_ratings BIGINT, short_weight DOUBLE, short_distinct_users BIGINT,
  long_events BIGINT, long_views BIGINT, long_clicks BIGINT, long_carts BIGINT,
  long_purchases BIGINT, long_ratings BIGINT, long_weight DOUBLE, long_distinct_users BIGINT,
  last_seen_ts BIGINT, popularity DOUBLE, trend DOUBLE
) WITH (${item_options}, 'format' = 'json', 'json.ignore-parse-errors' = 'true');

CREATE TEMPORARY VIEW features_user AS
SELECT user_id, window_start, window_end, short_events, short_views, short_clicks, short_carts, short_purchases, short_ratings, short_weight, short_distinct_items, long_events, long_views, long_clicks, long_carts, long_purchases, long_ratings, long_weight, long_distinct_items, last_seen_ts, events_per_minute, is_bot FROM (
  SELECT *, ROW_NUMBER() OVER (PARTITION BY user_id ORDER BY window_end DESC) AS rn
  FROM features_user_log) WHERE rn = 1;

CREATE TEMPORARY VIEW features_item AS
SELECT item_id, window_start, window_end, short_events, short_views, short_clicks, short_carts, short_purchases, short_ratings, short_weight, short_distinct_users, long_events, long_views, long_clicks, long_carts, long_purchases, long_ratings, long_weight, long_distinct_users, last_seen_ts, popularity, trend FROM (
  SELECT *, ROW_NUMBER() OVER (PARTITION BY item_id ORDER BY window_end DESC) AS rn
  FROM features_item_log) WHERE rn = 1;

CREATE TABLE recommendations (
  user_id STRING,
  items ARRAY<ROW<item_id STRING, score DOUBLE>>,
  model_version STRING,
  strategy STRING,
  cold_start BOOLEAN,
  user_events BIGINT,
  source_event_id STRING,
  source_partition INT,
  source_offset BIGINT,
  event_ts BIGINT,
  emitted_ts BIGINT,
  batch_size INT,
  reason STRING
) WITH (${recs_options}, 'format' = 'json', 'json.ignore-parse-errors' = 'true');
