"""The streamrec pipeline job: one checkpointed Flink graph from ``events.raw`` to recommendations.

    events.raw ─► [SQL] validate ─► events.dlq
                       │ clean, dedup (keyed, event-time horizon) ─► events.clean, features.user/item
                       ▼
                 keyBy(user) UserLearner ──(item updates)──► keyBy(item) ItemLearner ─► model.items
                       │             └──(user vectors)──────────────────────────────► model.users
                       ▼
                 keyBy(shard) Scorer (onnxruntime, CURRENT registry version) ─► recommendations

The learning loop closes through the model registry: the exporter sidecar (``streamrec
exporter``) turns ``model.items`` into ONNX versions; UserLearner and Scorer read CURRENT.

    python -m flink_jobs.pipeline [--bounded]
"""

from __future__ import annotations

import argparse
import re
import sys
import time
import uuid
from dataclasses import dataclass

from pyflink.common import Types

from flink_jobs import lineage
from flink_jobs.env import FlinkRuntime, build_runtime, kafka_sink_options, render_sql
from flink_jobs.ingest import IngestSummary, add_ingestion, summarize
from streamrec.config import Config, describe, load_config
from streamrec.kafka_io import delete_topics, ensure_topics
from udfs.flink_operators import ITEM_UPDATES, KV_TYPE, USER_CHANGES, ItemLearner, Scorer, UserLearner

JOB_NAME = "streamrec-pipeline"

# Operator uids: part of the savepoint contract. Never change them (state would not be restored).
USER_LEARNER_UID = "user-learner"
ITEM_LEARNER_UID = "item-learner"
SCORER_UID = "scorer"


@dataclass
class PipelineRun:
    ingest: IngestSummary | None
    seconds: float
    job_client: object | None = None  # set when not waiting: cancel() it to stop the job


def scoring_shards(cfg: Config) -> int:
    # a few keys per subtask so key groups spread the batches over all scorer subtasks
    return max(1, cfg.flink.parallelism * 4)


def build(rt: FlinkRuntime, cfg: Config, bounded: bool, counters_dir=None):
    """Add the whole pipeline to ``rt``; returns the StatementSet to attach before execute()."""
    t_env = rt.t_env
    topics = cfg.kafka.topics
    statements = t_env.create_statement_set()
    clean = add_ingestion(rt, cfg, bounded, statements, counters_dir=counters_dir,
                          topic_pattern=source_topic_pattern(cfg, rt.run_id))
    events = t_env.to_data_stream(clean)

    learner = cfg.learner.model_dump()
    registry_dir = str(cfg.paths_resolved.registry_dir)
    learned = (events
               .key_by(lambda r: r[1], key_type=Types.STRING())
               .process(UserLearner(learner, registry_dir, cfg.learner.state_ttl_ms,
                                    cfg.learner.user_emit_interval_ms, cfg.scoring.min_refresh_interval_ms,
                                    cfg.ingest.bot_events_per_minute, cfg.ingest.exclude_bots_from_learning),
                        output_type=Types.PICKLED_BYTE_ARRAY())
               .uid(USER_LEARNER_UID).name("UserLearner (online MF, keyed by user)"))
    item_changes = (learned.get_side_output(ITEM_UPDATES)
                    .key_by(lambda u: u[0], key_type=Types.STRING())
                    .process(ItemLearner(learner, cfg.learner.state_ttl_ms, cfg.learner.item_emit_interval_ms),
                             output_type=KV_TYPE)
                    .uid(ITEM_LEARNER_UID).name("ItemLearner (keyed by item)"))
    user_changes = learned.get_side_output(USER_CHANGES)
    shards = scoring_shards(cfg)
    sc = cfg.scoring
    recommendations = (learned
                       .key_by(lambda req: req[0] % shards, key_type=Types.INT())
                       .process(Scorer(registry_dir, sc.top_k, sc.batch_size, sc.batch_timeout_ms,
                                       sc.swap_check_interval_s, sc.cold_start_min_events, sc.provider,
                                       sc.ort_threads, cfg.learner.dim),
                                output_type=KV_TYPE)
                       .uid(SCORER_UID).name("Scorer (onnxruntime, batched top-K)"))

    for ddl in render_sql(
        "pipeline_sinks",
        model_items_options=kafka_sink_options(cfg, topics.model_items, rt.transaction_prefix),
        model_users_options=kafka_sink_options(cfg, topics.model_users, rt.transaction_prefix),
        recommendations_options=kafka_sink_options(cfg, topics.recommendations, rt.transaction_prefix),
    ):
        t_env.execute_sql(ddl)
    statements.add_insert("model_items_sink", t_env.from_data_stream(item_changes))
    statements.add_insert("model_users_sink", t_env.from_data_stream(user_changes))
    statements.add_insert("recommendations_sink", t_env.from_data_stream(recommendations))
    return statements


def run(cfg: Config, bounded: bool = False, restore_from: str | None = None, wait: bool = True,
        quiet: bool = False, fresh: bool = False) -> PipelineRun:
    """Run the pipeline; by default it resumes from its lineage's latest retained checkpoint
    (flink_jobs/lineage.py), ``fresh`` starts over and discards it. Bounded: stop at the end
    offsets present when the lineage started (a restored run keeps its splits' stopping offsets)."""
    if not quiet:
        print(f"[{JOB_NAME}] configuration:\n{describe(cfg)}", file=sys.stderr)
    ensure_topics(cfg)
    cfg.paths_resolved.registry_dir.mkdir(parents=True, exist_ok=True)
    plan = lineage.plan_run(cfg, JOB_NAME, fresh=fresh, restore_from=restore_from, bounded=bounded)
    print(f"[{JOB_NAME}] {plan.reason}", file=sys.stderr)
    trigger = restore_trigger_topic(cfg, plan) if bounded and plan.restore_from else None
    if trigger:
        ensure_topics(cfg, [trigger], partitions=1)
    rt = build_runtime(cfg, JOB_NAME, str(plan.restore_from) if plan.restore_from else None, plan.run_id)
    counters_dir = rt.checkpoint_dir / "counters" / uuid.uuid4().hex[:12]
    statements = build(rt, cfg, bounded, counters_dir)
    statements.attach_as_datastream()
    started = time.monotonic()
    if not wait:  # under `flink run -d`, or a caller that stops the job itself: submit and return
        return PipelineRun(None, 0.0, rt.env.execute_async(JOB_NAME))
    try:
        rt.env.execute(JOB_NAME)
    finally:
        if trigger:
            delete_topics(cfg, [trigger])
    seconds = time.monotonic() - started
    if bounded:  # Flink discards a finished job's checkpoints: remember that it finished
        lineage.mark_finished(cfg, JOB_NAME)
    summary = summarize(cfg, counters_dir, seconds) if bounded else None
    if summary and not quiet:
        print(summary.line(), file=sys.stderr)
    return PipelineRun(summary, seconds)


def source_topic_pattern(cfg: Config, run_id: str) -> str:
    """The pipeline's source subscribes to ``events.raw`` plus the lineage's restore triggers.

    >>> from streamrec.config import load_config
    >>> print(source_topic_pattern(load_config(config_file=None, env={}), "r1"))
    ^events\\.raw(\\.restore\\-r1\\-[0-9]+)?$
    """
    raw = cfg.kafka.topics.raw
    return f"^{re.escape(raw)}({re.escape(f'.restore-{run_id}-')}[0-9]+)?$"


def restore_trigger_topic(cfg: Config, plan) -> str:
    """An empty one-partition topic created before a bounded run resumes.

    A bounded Kafka source restored from a checkpoint reads to its stopping offsets and then waits
    forever for a "no more splits" signal its restored enumerator never sends when it finds no new
    partition (FLINK-31006 / FLINK-33466, open in connector 5.0.0 and 4.0.1). A new partition
    matching the source's pattern makes that enumerator signal the end: the job then finishes,
    with its final watermark flushing every window and timer, as a fresh bounded run does."""
    return f"{cfg.kafka.topics.raw}.restore-{plan.run_id}-{plan.runs}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bounded", action="store_true", help="stop at the end offsets present at start")
    parser.add_argument("--restore-from", help="a retained checkpoint or savepoint path")
    parser.add_argument("--fresh", action="store_true", help="start over: discard the retained checkpoints")
    parser.add_argument("--no-wait", action="store_true", help="return once submitted (cluster mode)")
    args = parser.parse_args(argv)
    run(load_config(), bounded=args.bounded, restore_from=args.restore_from, wait=not args.no_wait,
        fresh=args.fresh)


if __name__ == "__main__":
    main()
