-- Ingestion, part 1b: route and deduplicate the validated rows (view `validated_rows`: the view
-- `validated` of sql/ingest.sql plus a processing-time attribute, registered by flink_jobs/ingest.py).
-- Placeholder: deduped_names (the clean event's fields but the watermark stamp of the sink,
-- flink_jobs.ingest.DEDUPED_FIELDS).

-- Routing: a record is either rejected (-> events.dlq) or valid.
CREATE TEMPORARY VIEW rejected AS
SELECT * FROM validated_rows WHERE reason IS NOT NULL;

-- Dedup: the first occurrence of an event_id is kept, every later one dropped while the id is
-- remembered: for dedup_horizon_ms of processing time after it was first seen (the job's state
-- TTL, `table.exec.state.ttl`), so the state holds at most one horizon's ids. Ordered by
-- processing time, the first occurrence goes out at once (no wait for the watermark).
CREATE TEMPORARY VIEW deduped AS
SELECT ${deduped_names}
FROM (
  SELECT ${deduped_names},
    ROW_NUMBER() OVER (PARTITION BY event_id ORDER BY proc_time ASC) AS occurrence
  FROM validated_rows
  WHERE reason IS NULL
)
WHERE occurrence = 1;
