-- Ingestion, part 2: the rejected records go to events.dlq, the cleaned + deduplicated events
-- (view `deduped_all`, registered by flink_jobs/ingest.py from the view `deduped` of
-- sql/ingest_route.sql) to events.clean, which the features job reads (sql/features.sql).
-- Placeholders: dlq_max_bytes, clean_sink_options; the records' columns and names
-- (core/records.py, flink_jobs.env.RECORD_PLACEHOLDERS).

CREATE TABLE clean_out (
  ${clean_event_columns}
) WITH (
  ${clean_sink_options},
  'key.format' = 'raw',
  'key.fields' = 'user_id',
  'value.format' = 'json',
  'value.fields-include' = 'ALL'
);

INSERT INTO dlq_out
SELECT ${dlq_record_names} FROM (
  SELECT dlq_payload AS payload, payload_bytes, payload_bytes > ${dlq_max_bytes} AS truncated, reason,
    src_partition, src_offset, ingest_ms AS ingest_ts
  FROM rejected);

-- Each clean event carries the job's event-time watermark as it was when the event passed (NULL
-- before the first): the features job (sql/features.sql) takes its watermark from these stamps,
-- so an event that was on time here is on time there, whatever order events.clean's partitions
-- hold the events in.
INSERT INTO clean_out
SELECT ${clean_event_names} FROM (
  SELECT *, CAST(EXTRACT(EPOCH FROM CURRENT_WATERMARK(event_time)) * 1000
                 + MOD(EXTRACT(MILLISECOND FROM CURRENT_WATERMARK(event_time)), 1000) AS BIGINT) AS ingest_watermark_ms
  FROM deduped_all);
