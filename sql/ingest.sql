-- Ingestion, part 1: read events.raw as raw bytes, validate (flat records in the JVM, every other
-- one by the Python UDF validate_event).
-- Placeholders: source_options, dlq_sink_options, watermark_delay, watermark_delay_ms,
-- min_ts_ms, max_future_ms, rating_min, rating_max, w_view, w_click, w_cart, w_purchase,
-- w_rating_base, w_rating_scale, and the fast path's patterns (udfs.validation.fast_path_patterns).
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
  -- the size in bytes (Flink SQL has no OCTET_LENGTH for BYTES): from the base64 text's length
  CHAR_LENGTH(TO_BASE64(payload)) / 4 * 3
    - (CHAR_LENGTH(TO_BASE64(payload)) - CHAR_LENGTH(TRIM(TRAILING '=' FROM TO_BASE64(payload)))) AS payload_bytes,
  MAX(wm_ms) OVER (PARTITION BY src_partition ORDER BY proc_time
                   ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS max_wm_ms
FROM raw_in;

CREATE TEMPORARY VIEW raw_records AS
SELECT payload, src_partition, src_offset, ingest_ms, now_ms, payload_bytes, max_wm_ms,
  -- the text of a record the fast path may take: small, valid UTF-8, one flat JSON object
  -- whose required keys appear once (the patterns: udfs/validation.py)
  CASE WHEN payload_bytes <= ${fast_max_bytes}
        AND CAST(CAST(payload AS STRING) AS BYTES) = payload
        AND REGEXP(CAST(payload AS STRING), ${fast_flat_object})
        AND NOT REGEXP(CAST(payload AS STRING), ${fast_duplicate_key})
       THEN CAST(payload AS STRING) END AS flat_text
FROM raw_sized;

CREATE TEMPORARY VIEW raw_fields AS
SELECT payload, src_partition, src_offset, ingest_ms, now_ms, payload_bytes, max_wm_ms,
  REGEXP_EXTRACT(flat_text, ${fast_event_id}, 1) AS event_id,
  REGEXP_EXTRACT(flat_text, ${fast_user_id}, 1) AS user_id,
  REGEXP_EXTRACT(flat_text, ${fast_item_id}, 1) AS item_id,
  REGEXP_EXTRACT(flat_text, ${fast_event_type}, 1) AS event_type,
  TRY_CAST(REGEXP_EXTRACT(flat_text, ${fast_ts}, 1) AS BIGINT) AS ts,
  TRY_CAST(REGEXP_EXTRACT(flat_text, ${fast_rating}, 1) AS DOUBLE) AS rating_value,
  REGEXP(flat_text, ${fast_rating_not_a_number}) AS rating_not_a_number
FROM raw_records;

-- The fast path: records validate() would accept, accepted here with the same cleaned fields.
CREATE TEMPORARY VIEW raw_routed AS
SELECT *, COALESCE(
    event_id IS NOT NULL AND user_id IS NOT NULL AND item_id IS NOT NULL AND event_type IS NOT NULL
    AND ts BETWEEN ${min_ts_ms} AND now_ms + ${max_future_ms}
    AND CASE WHEN event_type = 'rating' THEN rating_value BETWEEN ${rating_min} AND ${rating_max}
             ELSE NOT rating_not_a_number END,
  FALSE) AS fast
FROM raw_fields;

-- One row per raw record: the verdict (reason NULL = valid), the cleaned fields, weight, late
-- flag. Records the fast path does not take go through validate_event (Python), which decides
-- every rejection and its reason.
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
  SELECT CAST(NULL AS STRING) AS reason, event_id, user_id, item_id, event_type,
    CASE WHEN event_type = 'rating' THEN rating_value END AS rating, ts,
    CAST(NULL AS STRING) AS dlq_text, payload_bytes, src_partition, src_offset, ingest_ms, max_wm_ms
  FROM raw_routed WHERE fast
  UNION ALL
  SELECT v.reason, v.event_id, v.user_id, v.item_id, v.event_type, v.rating, v.ts,
    v.dlq_text, v.payload_bytes, src_partition, src_offset, ingest_ms, max_wm_ms
  FROM (
    SELECT validate_event(payload, src_partition, src_offset, now_ms) AS v,
           src_partition, src_offset, ingest_ms, max_wm_ms
    FROM raw_routed WHERE NOT fast
  )
);

CREATE TABLE dlq_out (
  payload STRING,
  payload_bytes INT,
  truncated BOOLEAN,
  reason STRING,
  src_partition INT,
  src_offset BIGINT,
  ingest_ts BIGINT
) WITH (
  ${dlq_sink_options},
  'format' = 'json'
);
