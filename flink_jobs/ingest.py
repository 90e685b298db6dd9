"""Ingestion stage: ``events.raw`` -> validation + DLQ -> cleaning -> event-time dedup -> features.

    python -m flink_jobs.ingest [--bounded]

``add_ingestion(rt, cfg, bounded, statements)`` wires the stage into a job (the pipeline job adds
its learner to the returned Table); ``run(cfg, bounded)`` runs the stage alone and, when bounded,
prints one summary line. See docs/ingestion.md for the design.

Graph (one Kafka source, shared by every output):

    raw_in (Kafka, raw BYTES, per-partition watermark)  -- sql/ingest.sql
      -> validate_event() Python UDF, weight, late flag (view `validated`)
      -> to_data_stream
           |- reason IS NOT NULL -> `rejected` -> events.dlq                 -- sql/ingest_sinks.sql
           '- reason IS NULL -> key_by(event_id) -> Dedup (uid ingest-dedup-event-id)
                -> `deduped_all` (rowtime event_time, SOURCE_WATERMARK)
                     -> events.clean, features.user, features.item        -- sql/ingest_sinks.sql
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from pyflink.common import Types
from pyflink.table import Schema, StatementSet, Table

from flink_jobs.env import FlinkRuntime, build_runtime, kafka_sink_options, kafka_source_options, render_sql
from streamrec.config import Config, load_config
from streamrec.kafka_io import ensure_topics, read_topic
from udfs.dedup import DEDUP_FIELDS, dedup_output_type, make_dedup_function
from udfs.validation import make_udfs

JOB_NAME = "streamrec-ingest"
DEDUP_UID = "ingest-dedup-event-id"
#: Columns of the Table add_ingestion returns (plus the rowtime attribute ``event_time``).
CLEAN_COLUMNS = ("event_id", "user_id", "item_id", "event_type", "rating", "weight", "ts",
                 "src_partition", "src_offset")


def sql_interval(ms: int) -> str:
    """A Flink SQL day-time interval literal of ``ms`` milliseconds.

    >>> sql_interval(90_061_001)
    "INTERVAL '1 01:01:01.001' DAY TO SECOND(3)"
    """
    days, rest = divmod(int(ms), 86_400_000)
    hours, rest = divmod(rest, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    seconds, millis = divmod(rest, 1_000)
    return f"INTERVAL '{days} {hours:02d}:{minutes:02d}:{seconds:02d}.{millis:03d}' DAY TO SECOND(3)"


def _double(x: float) -> str:
    return f"CAST({float(x)!r} AS DOUBLE)"


def _upsert(options: str) -> str:
    return options.replace("'connector' = 'kafka'", "'connector' = 'upsert-kafka'")


def _route(stream, reason_i: int):
    """(valid, rejected) in one Python call per record (two filters cost two)."""
    from pyflink.datastream import OutputTag, ProcessFunction

    row_type = stream.get_type()
    rejected_tag = OutputTag("rejected", row_type)

    class Route(ProcessFunction):
        def process_element(self, value, ctx):
            if value[reason_i] is None:
                yield value
            else:
                yield rejected_tag, value

    routed = stream.process(Route(), output_type=row_type).name("route valid / rejected")
    return routed, routed.get_side_output(rejected_tag)


def ingestion_topics(cfg: Config) -> list[str]:
    t = cfg.kafka.topics
    return [t.raw, t.dlq, t.clean, t.features_user, t.features_item]


def add_ingestion(rt: FlinkRuntime, cfg: Config, bounded: bool, statements: StatementSet,
                  counters_dir: Path | None = None, topic_pattern: str | None = None) -> Table:
    """Register the ingestion sources/sinks, add the INSERTs for events.dlq, events.clean,
    features.user and features.item to ``statements``, and return the cleaned, deduplicated
    events: ``event_id, user_id, item_id, event_type, rating, weight, ts, src_partition,
    src_offset``, the rowtime attribute ``event_time`` (watermark from the source) and the
    processing-time attribute ``proc_time`` (the learner's micro-batches).

    The caller runs ``statements.attach_as_datastream(); rt.env.execute()`` (the dedup operator
    is a DataStream operator, so the statements must be attached to the DataStream graph).
    ``counters_dir``: where the dedup subtasks write their final counts (summary line).
    """
    ing = cfg.ingest
    t = cfg.kafka.topics
    ensure_topics(cfg, ingestion_topics(cfg))
    t_env = rt.t_env
    conf = t_env.get_config()
    # Window bounds are computed in UTC; the feature sinks are upsert-keyed by id while the window
    # aggregate's unique key is (id, window): no SinkUpsertMaterializer (its state would grow
    # without bound), each new window row simply replaces the id's previous row.
    conf.set("table.local-time-zone", "UTC")
    conf.set("table.exec.sink.upsert-materialize", "NONE")
    for name, fn in make_udfs(ing).items():
        t_env.create_temporary_function(name, fn)
    weights = ing.weights
    for ddl in render_sql(
        "ingest",
        # the group (offsets committed on checkpoints) is the lineage's: runs never share one
        source_options=kafka_source_options(cfg, t.raw, rt.transaction_prefix, bounded,
                                            topic_pattern=topic_pattern),
        dlq_sink_options=kafka_sink_options(cfg, t.dlq, rt.transaction_prefix),
        watermark_delay=sql_interval(ing.watermark_delay_ms),
        watermark_delay_ms=ing.watermark_delay_ms,
        max_future_ms=ing.max_future_ms,
        min_ts_ms=ing.min_ts_ms,
        w_view=_double(weights.view), w_click=_double(weights.click), w_cart=_double(weights.cart),
        w_purchase=_double(weights.purchase), w_rating_base=_double(weights.rating_base),
        w_rating_scale=_double(weights.rating_scale),
    ):
        t_env.execute_sql(ddl)

    validated = t_env.from_path("validated")
    fields = validated.get_schema().get_field_names()
    reason_i = fields.index("reason")
    stream = t_env.to_data_stream(validated)
    valid, rejected = _route(stream, reason_i)
    event_id_i = fields.index("event_id")
    deduped = (valid
               .key_by(lambda r: r[event_id_i], key_type=Types.STRING())
               .process(make_dedup_function(ing.dedup_horizon_ms, list(fields),
                                            str(counters_dir) if counters_dir else None),
                        output_type=dedup_output_type())
               .uid(DEDUP_UID).name("dedup by event_id (event-time horizon)"))
    t_env.create_temporary_view("rejected", t_env.from_data_stream(rejected))
    t_env.create_temporary_view("deduped_all", t_env.from_data_stream(
        deduped,
        Schema.new_builder()
        .column("event_id", "STRING").column("user_id", "STRING").column("item_id", "STRING")
        .column("event_type", "STRING").column("rating", "DOUBLE").column("weight", "DOUBLE")
        .column("ts", "BIGINT").column("src_partition", "INT").column("src_offset", "BIGINT")
        .column("late", "BOOLEAN")
        .column_by_expression("event_time", "TO_TIMESTAMP_LTZ(ts, 3)")
        .column_by_expression("proc_time", "PROCTIME()")
        .watermark("event_time", "SOURCE_WATERMARK()")
        .build()))

    for stmt in render_sql(
        "ingest_sinks",
        clean_sink_options=kafka_sink_options(cfg, t.clean, rt.transaction_prefix),
        user_sink_options=_upsert(kafka_sink_options(cfg, t.features_user, rt.transaction_prefix)),
        item_sink_options=_upsert(kafka_sink_options(cfg, t.features_item, rt.transaction_prefix)),
        dlq_max_bytes=ing.dlq_payload_max_bytes,
        slide=sql_interval(ing.window_slide_ms),
        long_window=sql_interval(ing.long_window_ms),
        short_window=sql_interval(ing.short_window_ms),
        long_window_ms=ing.long_window_ms,
        short_minutes=_double(ing.short_window_ms / 60_000),
        long_over_short=_double(ing.long_window_ms / ing.short_window_ms),
        bot_epm=_double(ing.bot_events_per_minute),
    ):
        if stmt.lstrip().upper().startswith("INSERT"):
            statements.add_insert_sql(stmt)
        else:
            t_env.execute_sql(stmt)
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


def summarize(cfg: Config, counters_dir: Path, seconds: float = 0.0) -> IngestSummary:
    """Counts of a finished bounded run: DLQ reasons and cleaned events from the committed output
    topics (exact, exactly-once), duplicates and late from the dedup subtasks' final counters."""
    summary = IngestSummary(seconds=seconds)
    for rec in read_topic(cfg, cfg.kafka.topics.dlq, read_committed=True):
        summary.rejected[json.loads(rec.value)["reason"]] += 1
    summary.cleaned = sum(1 for _ in read_topic(cfg, cfg.kafka.topics.clean, read_committed=True))
    for path in sorted(Path(counters_dir).glob("dedup-*.json")):
        counts = json.loads(path.read_text())
        summary.duplicates += counts["duplicates"]
        summary.late += counts["late"]
    summary.parsed = summary.cleaned + summary.dlq + summary.duplicates
    return summary


def run(cfg: Config, bounded: bool = False, restore_from: str | None = None) -> IngestSummary | None:
    """Run the ingestion stage alone. Bounded: stops at the end offsets present at start and
    returns (and prints) the summary."""
    rt = build_runtime(cfg, JOB_NAME, restore_from)
    counters_dir = rt.checkpoint_dir / "counters" / uuid.uuid4().hex[:12]
    statements = rt.t_env.create_statement_set()
    add_ingestion(rt, cfg, bounded, statements, counters_dir=counters_dir)
    statements.attach_as_datastream()
    started = time.monotonic()
    rt.env.execute(JOB_NAME)
    if not bounded:
        return None
    summary = summarize(cfg, counters_dir, time.monotonic() - started)
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
