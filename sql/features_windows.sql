-- The features job, part 2: the features' second level (docs/ingestion.md, "Features"). Input:
-- the view `pair_slices_timed` (sql/features.sql's `pair_slices` with its event time, the
-- source's watermarks and a processing-time attribute, registered by flink_jobs/features.py).
-- Placeholders: slide, long_window, long_window_ms, short_window_ms, short_minutes,
-- long_over_short, bot_epm.

-- The pair's previous slice (NULL for its first): a pair's slices arrive in order, as their
-- windows fire, so processing order is slice order. Its state, one value per pair, expires with
-- the job's state TTL (ingest.dedup_horizon_ms of processing time): a pair back after longer than
-- that counts as new, which only a window longer than the horizon of processing time can notice.
CREATE TEMPORARY VIEW pair_slices_prev AS
SELECT user_id, item_id, slice_time, slice_end_ms, n_events, n_views, n_clicks, n_carts, n_purchases, n_ratings,
  w_sum, last_ts,
  LAG(slice_end_ms) OVER (PARTITION BY user_id, item_id ORDER BY proc_time) AS prev_end_ms
FROM pair_slices_timed;

-- Every pair slice in each of the long/slide windows holding it, with what the window makes of it:
-- in the short window, and the pair's first slice in the window (in the short window).
CREATE TEMPORARY VIEW pair_slice_windows AS
SELECT user_id, item_id, n_events, n_views, n_clicks, n_carts, n_purchases, n_ratings, w_sum, last_ts,
  window_start, window_end, window_time,
  TIMESTAMPDIFF(SECOND, TIMESTAMP '1970-01-01 00:00:00', window_end) * CAST(1000 AS BIGINT) AS end_ms,
  slice_end_ms > TIMESTAMPDIFF(SECOND, TIMESTAMP '1970-01-01 00:00:00', window_end) * CAST(1000 AS BIGINT) - ${short_window_ms} AS in_short,
  prev_end_ms IS NULL OR prev_end_ms <= TIMESTAMPDIFF(SECOND, TIMESTAMP '1970-01-01 00:00:00', window_end) * CAST(1000 AS BIGINT) - ${long_window_ms} AS first_in_long,
  prev_end_ms IS NULL OR prev_end_ms <= TIMESTAMPDIFF(SECOND, TIMESTAMP '1970-01-01 00:00:00', window_end) * CAST(1000 AS BIGINT) - ${short_window_ms} AS first_in_short
FROM TABLE(HOP(TABLE pair_slices_prev, DESCRIPTOR(slice_time), ${slide}, ${long_window}));

INSERT INTO features_user_out
SELECT user_id,
  MIN(end_ms) - ${long_window_ms} AS start_ms, MIN(end_ms) AS end_ms_,
  SUM(CASE WHEN in_short THEN n_events ELSE 0 END), SUM(CASE WHEN in_short THEN n_views ELSE 0 END),
  SUM(CASE WHEN in_short THEN n_clicks ELSE 0 END), SUM(CASE WHEN in_short THEN n_carts ELSE 0 END),
  SUM(CASE WHEN in_short THEN n_purchases ELSE 0 END), SUM(CASE WHEN in_short THEN n_ratings ELSE 0 END),
  SUM(CASE WHEN in_short THEN w_sum ELSE 0.0 END),
  COUNT(*) FILTER (WHERE in_short AND first_in_short),
  SUM(n_events), SUM(n_views), SUM(n_clicks), SUM(n_carts), SUM(n_purchases), SUM(n_ratings),
  SUM(w_sum),
  COUNT(*) FILTER (WHERE first_in_long),
  MAX(last_ts),
  CAST(SUM(CASE WHEN in_short THEN n_events ELSE 0 END) AS DOUBLE) / ${short_minutes},
  CAST(SUM(CASE WHEN in_short THEN n_events ELSE 0 END) AS DOUBLE) / ${short_minutes} > ${bot_epm}
FROM pair_slice_windows
GROUP BY user_id, window_start, window_end;

INSERT INTO features_item_out
SELECT item_id,
  MIN(end_ms) - ${long_window_ms} AS start_ms, MIN(end_ms) AS end_ms_,
  SUM(CASE WHEN in_short THEN n_events ELSE 0 END), SUM(CASE WHEN in_short THEN n_views ELSE 0 END),
  SUM(CASE WHEN in_short THEN n_clicks ELSE 0 END), SUM(CASE WHEN in_short THEN n_carts ELSE 0 END),
  SUM(CASE WHEN in_short THEN n_purchases ELSE 0 END), SUM(CASE WHEN in_short THEN n_ratings ELSE 0 END),
  SUM(CASE WHEN in_short THEN w_sum ELSE 0.0 END),
  COUNT(*) FILTER (WHERE in_short AND first_in_short),
  SUM(n_events), SUM(n_views), SUM(n_clicks), SUM(n_carts), SUM(n_purchases), SUM(n_ratings),
  SUM(w_sum),
  COUNT(*) FILTER (WHERE first_in_long),
  MAX(last_ts),
  SUM(w_sum),
  CASE WHEN SUM(w_sum) > 0 THEN SUM(CASE WHEN in_short THEN w_sum ELSE 0.0 END) / SUM(w_sum) * ${long_over_short} END
FROM pair_slice_windows
GROUP BY item_id, window_start, window_end;
