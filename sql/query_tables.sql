-- Tables of the SQL front door (`streamrec sql`): bounded, read_committed reads of the topics.
-- Placeholders: raw_options, clean_options, user_options, item_options, recs_options; the
-- columns are the records' (core/records.py, flink_jobs.env.RECORD_PLACEHOLDERS). A record that
-- does not parse as its table's is an error, not a row silently skipped: every writer encodes
-- through the same declaration, so such a record is a bug to see (core/records.py's tests hold
-- each writer to it).
CREATE TABLE events_raw (
  payload STRING,
  src_partition INT METADATA FROM 'partition' VIRTUAL,
  src_offset BIGINT METADATA FROM 'offset' VIRTUAL
) WITH (${raw_options}, 'format' = 'raw');

CREATE TABLE events_clean (
  ${clean_event_columns}
) WITH (${clean_options}, 'format' = 'json');

-- Every feature row ever written (one per id and window); features_user / features_item below
-- keep the latest row per id, which is what the upsert topics mean.
CREATE TABLE features_user_log (
  ${features_user_columns}
) WITH (${user_options}, 'format' = 'json');

CREATE TABLE features_item_log (
  ${features_item_columns}
) WITH (${item_options}, 'format' = 'json');

CREATE TEMPORARY VIEW features_user AS
SELECT ${features_user_names} FROM (
  SELECT *, ROW_NUMBER() OVER (PARTITION BY user_id ORDER BY window_end DESC) AS rn
  FROM features_user_log) WHERE rn = 1;

CREATE TEMPORARY VIEW features_item AS
SELECT ${features_item_names} FROM (
  SELECT *, ROW_NUMBER() OVER (PARTITION BY item_id ORDER BY window_end DESC) AS rn
  FROM features_item_log) WHERE rn = 1;

CREATE TABLE recommendations (
  ${recommendation_columns}
) WITH (${recs_options}, 'format' = 'json');
