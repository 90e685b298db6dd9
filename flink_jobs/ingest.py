"""Ingestion stage: ``events.raw`` -> validation + DLQ -> cleaning -> event-time dedup -> events.clean.

    python -m flink_jobs.ingest [--bounded]

``add_ingestion(rt, cfg, bounded, statements)`` wires the stage into a job (the pipeline job adds
its learner to the returned Table); ``run(cfg, bounded)`` runs the stage alone and, when bounded,
prints one summary line. The windowed features are a job of their own that reads events.clean
(flink_jobs/features.py). See docs/ingestion.md for the design.

Graph (one Kafka source, shared by every output):

    raw_in (Kafka, raw BYTES, per-partition watermark)  -- sql/ingest.sql
      -> every record validated: plain ones by accept_flat_event() (Java), every other one by
         validate_event() (Python UDF, the definition of a valid event), weight, late flag
         (view `validated`)
           |- reason IS NOT NULL -> `rejected` -> events.dlq                 -- sql/ingest_sinks.sql
           '- reason IS NULL -> `deduped` (first occurrence per event_id, state TTL = horizon)
                -> `deduped_all` (rowtime event_time, SOURCE_WATERMARK)
                     -> events.clean, each event with the watermark it passed  -- sql/ingest_sinks.sql
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from dataclasses import dataclass, field

from pyflink.table import Schema, StatementSet, Table

from streamrec.flink_jobs.env import (FlinkRuntime, apply_sql, build_runtime, kafka_sink_options, kafka_source_options,
                            render_sql, sql_double, sql_interval, with_time_attributes)
from streamrec.core.config import Config, load_config
from streamrec.core.records import CLEAN_EVENT, DLQ_RECORD
from streamrec.runtime.kafka_io import ensure_topics, read_topic
from streamrec.udfs.validation import make_udfs

JOB_NAME = "streamrec-ingest"
#: The JVM fast path of validation (udfs/jvm/streamrec/udfs/AcceptFlatEvent.java).
FAST_PATH_FUNCTION, FAST_PATH_CLASS = "accept_flat_event", "streamrec.udfs.AcceptFlatEvent"
#: The clean event's fields the dedup passes on: every one but the watermark stamp, which the
#: sink adds (sql/ingest_sinks.sql).
DEDUPED_FIELDS = tuple(n for n in CLEAN_EVENT.names if n != "ingest_watermark_ms")
#: Columns of the Table add_ingestion returns (plus the rowtime attribute ``event_time``).
CLEAN_COLUMNS = tuple(n for n in DEDUPED_FIELDS if n != "late")


def ingestion_topics(cfg: Config) -> list[str]:
    t = cfg.kafka.topics
    return [t.raw, t.dlq, t.clean]


def add_ingestion(rt: FlinkRuntime, cfg: Config, bounded: bool, statements: StatementSet,
                  topic_pattern: str | None = None) -> Table:
    """Register the ingestion sources/sinks, add the INSERTs for events.dlq and events.clean to
    ``statements``, and return the cleaned, deduplicated
    events: ``event_id, user_id, item_id, event_type, rating, weight, ts, src_partition,
    src_offset``, the rowtime attribute ``event_time`` (watermark from the source) and the
    processing-time attribute ``proc_time`` (the learner's micro-batches).

    The caller runs ``statements.attach_as_datastream(); rt.env.execute()`` (the cleaned rows
    pass through a DataStream, so the statements must be attached to the DataStream graph).
    """
    ing = cfg.ingest
    t = cfg.kafka.topics
    ensure_topics(cfg, ingestion_topics(cfg))
    t_env = rt.t_env
    conf = t_env.get_config()
    conf.set("table.local-time-zone", "UTC")
    # bounds the dedup's state (sql/ingest_route.sql); the learner's batch windows clear theirs
    # by the watermark
    conf.set("table.exec.state.ttl", f"{ing.dedup_horizon_ms} ms")
    # no idleness unless configured, never for a bounded run: the watermark the clean events
    # carry to the feature windows (streamrec.core.config.IngestConfig.source_idle_timeout_ms says why)
    idle_ms = 0 if bounded else ing.source_idle_timeout_ms
    conf.set("table.exec.source.idle-timeout", f"{idle_ms} ms")
    for name, fn in make_udfs(ing).items():
        t_env.create_temporary_function(name, fn)
    # the fast path in the JVM (streamrec's UDF jar, on pipeline.jars or the cluster's lib/)
    t_env.create_java_temporary_function(FAST_PATH_FUNCTION, FAST_PATH_CLASS)
    weights = ing.weights
    for ddl in render_sql(
        "ingest",
        # the group (offsets committed on checkpoints) is the lineage's: runs never share one
        source_options=kafka_source_options(cfg, t.raw, rt.transaction_prefix, bounded,
                                            topic_pattern=topic_pattern,
                                            partition_fetch_bytes=ing.raw_partition_fetch_bytes),
        dlq_sink_options=kafka_sink_options(cfg, t.dlq, rt.transaction_prefix),
        watermark_delay=sql_interval(ing.watermark_delay_ms),
        watermark_delay_ms=ing.watermark_delay_ms,
        max_future_ms=ing.max_future_ms,
        min_ts_ms=ing.min_ts_ms,
        rating_min=sql_double(ing.rating_min), rating_max=sql_double(ing.rating_max),
        max_payload_bytes=int(ing.max_payload_bytes), max_id_chars=int(ing.max_id_chars),
        w_view=sql_double(weights.view), w_click=sql_double(weights.click), w_cart=sql_double(weights.cart),
        w_purchase=sql_double(weights.purchase), w_rating_base=sql_double(weights.rating_base),
        w_rating_scale=sql_double(weights.rating_scale),
    ):
        t_env.execute_sql(ddl)

    # Route and dedup read the validated rows through ONE DataStream (JVM only): two SQL views
    # straight on `validated` made the planner read the source, and run the validation UDF,
    # twice. The rows get a processing-time attribute for the dedup's order, and the source's
    # watermarks (declared: without them the dedup, and so every event-time window after it,
    # would see none until the end of a bounded input).
    t_env.create_temporary_view("validated_rows", with_time_attributes(
        t_env, t_env.from_path("validated"),
        [("proc_time", "PROCTIME()"), ("row_time", "TO_TIMESTAMP_LTZ(COALESCE(ts, CAST(0 AS BIGINT)), 3)")],
        watermark=("row_time", "SOURCE_WATERMARK()")))
    for ddl in render_sql("ingest_route", deduped_names=CLEAN_EVENT.column_names(DEDUPED_FIELDS)):
        t_env.execute_sql(ddl)
    # The deduplicated rows get their event-time attribute back (the clean ts, with the source's
    # watermarks) on the way through a DataStream: JVM only, no Python.
    schema = Schema.new_builder()
    for name in DEDUPED_FIELDS:
        schema = schema.column(name, CLEAN_EVENT.field(name).type.sql)
    t_env.create_temporary_view("deduped_all", t_env.from_data_stream(
        t_env.to_data_stream(t_env.from_path("deduped")),
        schema
        .column_by_expression("event_time", "TO_TIMESTAMP_LTZ(ts, 3)")
        .column_by_expression("proc_time", "PROCTIME()")
        .watermark("event_time", "SOURCE_WATERMARK()")
        .build()))

    apply_sql(
        t_env, statements, "ingest_sinks",
        clean_sink_options=kafka_sink_options(cfg, t.clean, rt.transaction_prefix),
        dlq_max_bytes=ing.dlq_payload_max_bytes,
    )
    cols = ", ".join(CLEAN_COLUMNS)
    return t_env.sql_query(f"SELECT {cols}, event_time, proc_time FROM deduped_all")


@dataclass
class IngestSummary:
    parsed: int = 0
    cleaned: int = 0
    rejected: Counter = field(default_factory=Counter)
    duplicates: int = 0
    late: int = 0
    seconds: float = 0.0

    @property
    def dlq(self) -> int:
        return sum(self.rejected.values())

    def line(self) -> str:
        reasons = ", ".join(f"{r}={n}" for r, n in sorted(self.rejected.items())) or "none"
        return (f"[{JOB_NAME}] parsed={self.parsed} cleaned={self.cleaned} rejected={self.dlq} "
                f"({reasons}) duplicates={self.duplicates} late={self.late} "
                f"in {self.seconds:.1f} s")


def summarize(cfg: Config, seconds: float = 0.0) -> IngestSummary:
    """Counts of a finished bounded run, all from committed topics (exact, exactly-once): the
    records of events.raw, the DLQ reasons, the cleaned events and their late flags; duplicates
    are what is left."""
    summary = IngestSummary(seconds=seconds)
    for rec in read_topic(cfg, cfg.kafka.topics.dlq, read_committed=True):
        summary.rejected[DLQ_RECORD.decode(rec.value)["reason"]] += 1
    for rec in read_topic(cfg, cfg.kafka.topics.clean, read_committed=True):
        summary.cleaned += 1
        summary.late += CLEAN_EVENT.decode(rec.value)["late"]
    summary.parsed = sum(1 for _ in read_topic(cfg, cfg.kafka.topics.raw, read_committed=True))
    summary.duplicates = summary.parsed - summary.cleaned - summary.dlq
    return summary


def run(cfg: Config, bounded: bool = False, restore_from: str | None = None) -> IngestSummary | None:
    """Run the ingestion stage alone. Bounded: stops at the end offsets present at start and
    returns (and prints) the summary."""
    rt = build_runtime(cfg, JOB_NAME, restore_from)
    statements = rt.t_env.create_statement_set()
    add_ingestion(rt, cfg, bounded, statements)
    statements.attach_as_datastream()
    started = time.monotonic()
    rt.env.execute(JOB_NAME)
    if not bounded:
        return None
    summary = summarize(cfg, time.monotonic() - started)
    print(summary.line())
    return summary


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bounded", action="store_true", help="stop at the end offsets present at start")
    parser.add_argument("--restore-from", help="a retained checkpoint or savepoint path")
    args = parser.parse_args(argv)
    run(load_config(), bounded=args.bounded, restore_from=args.restore_from)


if __name__ == "__main__":
    sys.exit(main())
