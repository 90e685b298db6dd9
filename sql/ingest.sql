-- Ingestion, part 1: read events.raw as raw bytes, validate every record (plain records in the
-- JVM by accept_flat_event, every other one by the Python UDF validate_event).
-- Placeholders: source_options, dlq_sink_options, watermark_delay, watermark_delay_ms,
-- min_ts_ms, max_future_ms, rating_min, rating_max, max_payload_bytes, w_view, w_click, w_cart,
-- w_purchase, w_rating_base, w_rating_scale; dlq_record_columns (core/records.py, as every record's
-- placeholders: flink_jobs.env.RECORD_PLACEHOLDERS).
--
-- The watermark is generated in the Kafka source, per partition, from the payload's "ts" (read
-- with JSON_VALUE only for this purpose); a ts outside [min_ts_ms, processing time + max_future_ms]
-- (rejected as ts_out_of_range) counts as 0, so a far-future record never pushes the watermark.
CREATE TABLE raw_in (
  payload BYTES,
  src_partition INT METADATA FROM 'partition' VIRTUAL,
  src_offset BIGINT METADATA FROM 'offset' VIRTUAL,
  kafka_ts TIMESTAMP_LTZ(3) METADATA FROM 'timestamp' VIRTUAL,
  ingest_ms AS CAST(EXTRACT(EPOCH FROM kafka_ts) * 1000 + MOD(EXTRACT(MILLISECOND FROM kafka_ts), 1000) AS BIGINT),
  now_ms AS CAST(EXTRACT(EPOCH FROM CURRENT_TIMESTAMP) * 1000 + MOD(EXTRACT(MILLISECOND FROM CURRENT_TIMESTAMP), 1000) AS BIGINT),
  wm_ms AS CASE WHEN COALESCE(TRY_CAST(JSON_VALUE(CAST(payload AS STRING), '$$.ts') AS BIGINT), CAST(0 AS BIGINT)) BETWEEN ${min_ts_ms} AND CAST(EXTRACT(EPOCH FROM CURRENT_TIMESTAMP) * 1000 + MOD(EXTRACT(MILLISECOND FROM CURRENT_TIMESTAMP), 1000) AS BIGINT) + ${max_future_ms}
    THEN COALESCE(TRY_CAST(JSON_VALUE(CAST(payload AS STRING), '$$.ts') AS BIGINT), CAST(0 AS BIGINT)) ELSE CAST(0 AS BIGINT) END,
  wm_time AS TO_TIMESTAMP_LTZ(CASE WHEN COALESCE(TRY_CAST(JSON_VALUE(CAST(payload AS STRING), '$$.ts') AS BIGINT), CAST(0 AS BIGINT)) BETWEEN ${min_ts_ms} AND CAST(EXTRACT(EPOCH FROM CURRENT_TIMESTAMP) * 1000 + MOD(EXTRACT(MILLISECOND FROM CURRENT_TIMESTAMP), 1000) AS BIGINT) + ${max_future_ms}
    THEN COALESCE(TRY_CAST(JSON_VALUE(CAST(payload AS STRING), '$$.ts') AS BIGINT), CAST(0 AS BIGINT)) ELSE CAST(0 AS BIGINT) END, 3),
  proc_time AS PROCTIME(),
  WATERMARK FOR wm_time AS wm_time - ${watermark_delay}
) WITH (
  ${source_options},
  'format' = 'raw'
);

-- Every raw record with its coordinates, the clock of the future bound (now_ms: processing time,
-- not the producer's record timestamp, which any client can set), and the partition's largest
-- watermark timestamp so far (max_wm_ms: an event at or below max_wm_ms - watermark delay may
-- already be behind the watermark, so it is flagged late; docs/ingestion.md, "Late events").
CREATE TEMPORARY VIEW raw_sized AS
SELECT payload, src_partition, src_offset, ingest_ms, now_ms,
  MAX(wm_ms) OVER (PARTITION BY src_partition ORDER BY proc_time
                   ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS max_wm_ms
FROM raw_in;

-- Every raw record with the verdict of the JVM fast path: accept_flat_event (Java, udfs/jvm)
-- returns the cleaned event of a plain record, one that validate() accepts with exactly these
-- fields, and NULL for every other record. now_ms is a column here (computed once, before the
-- OVER aggregate), so the two routes below see the same clock and each record takes exactly one.
CREATE TEMPORARY VIEW raw_routed AS
SELECT payload, src_partition, src_offset, ingest_ms, now_ms, max_wm_ms,
  accept_flat_event(payload, now_ms, CAST(${min_ts_ms} AS BIGINT), CAST(${max_future_ms} AS BIGINT),
                    ${rating_min}, ${rating_max}, ${max_payload_bytes}, ${max_id_chars}) AS fast
FROM raw_sized;

-- One row per raw record: the verdict (reason NULL = valid), the cleaned fields, weight, late
-- flag. A record the fast path did not take goes through validate_event (Python,
-- udfs/validation.py), which decides every rejection and its reason.
CREATE TEMPORARY VIEW validated AS
SELECT
  reason, event_id, user_id, item_id, event_type, rating,
  CAST(CASE event_type
    WHEN 'view' THEN ${w_view}
    WHEN 'click' THEN ${w_click}
    WHEN 'cart' THEN ${w_cart}
    WHEN 'purchase' THEN ${w_purchase}
    WHEN 'rating' THEN ${w_rating_base} + ${w_rating_scale} * rating
  END AS DOUBLE) AS weight,
  ts, src_partition, src_offset, ingest_ms,
  COALESCE(ts <= max_wm_ms - ${watermark_delay_ms} AND ts < max_wm_ms, FALSE) AS late,
  max_wm_ms - ${watermark_delay_ms} AS eager_wm,
  dlq_text AS dlq_payload,
  payload_bytes
FROM (
  SELECT CAST(NULL AS STRING) AS reason, fast.event_id, fast.user_id, fast.item_id, fast.event_type,
    fast.rating, fast.ts, CAST(NULL AS STRING) AS dlq_text, fast.payload_bytes,
    src_partition, src_offset, ingest_ms, max_wm_ms
  FROM raw_routed WHERE fast IS NOT NULL
  UNION ALL
  SELECT v.reason, v.event_id, v.user_id, v.item_id, v.event_type, v.rating, v.ts,
    v.dlq_text, v.payload_bytes, src_partition, src_offset, ingest_ms, max_wm_ms
  FROM (
    SELECT validate_event(payload, src_partition, src_offset, now_ms) AS v,
           src_partition, src_offset, ingest_ms, max_wm_ms
    FROM raw_routed WHERE fast IS NULL
  )
);

CREATE TABLE dlq_out (
  ${dlq_record_columns}
) WITH (
  ${dlq_sink_options},
  'format' = 'json'
);
