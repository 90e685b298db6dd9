"""The features job: windowed user and item features from the pipeline's clean events.

    events.clean (read_committed, the pipeline's watermark carried by each event)  -- sql/features.sql
      -> one (user, item, slice) row per pair and slice of window_slide_ms
           -> `pair_slices_timed` (+ the pair's previous slice)
                -> features.user, features.item (upsert, exactly-once)       -- sql/features_windows.sql

    python -m flink_jobs.features [--bounded] [--fresh] [--restore-from PATH]

A job of its own, off the recommendations' path: in the pipeline's graph the feature windows
shared the dedup with the learner, so a burst of firing windows back-pressured it, and their
checkpoints gated the commit of every recommendation (docs/ingestion.md, "The features job").
``streamrec run`` starts it beside the pipeline (a bounded run: after the pipeline finished, over
the clean events it wrote); ``streamrec submit`` submits it to a cluster once.

Its lineage follows the pipeline's (runtime/lineage.py): it counts the clean events of the
pipeline's current run, from the offsets events.clean had when that run started, and starts over
by itself when the pipeline started over (``--fresh``), so no event is counted twice.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass

from pyflink.table import StatementSet

from streamrec.runtime import lineage
from streamrec.flink_jobs.env import (FlinkRuntime, apply_sql, build_runtime, kafka_sink_options, kafka_source_options,
                            sql_double, sql_interval, with_time_attributes)
from streamrec.core.config import Config, load_config
from streamrec.runtime.kafka_io import delete_topics, end_offsets, ensure_topics

JOB_NAME = "streamrec-features"
#: The job whose clean events it reads (its lineage records where they start).
PIPELINE_JOB_NAME = "streamrec-pipeline"


@dataclass
class FeaturesRun:
    seconds: float
    job_client: object | None = None  # set when not waiting: cancel() it to stop the job


def _upsert(options: str) -> str:
    return options.replace("'connector' = 'kafka'", "'connector' = 'upsert-kafka'")


def specific_offsets(offsets: dict[int, int]) -> str:
    """The Kafka SQL source's ``scan.startup.specific-offsets`` value.

    >>> specific_offsets({1: 7, 0: 42})
    'partition:0,offset:42;partition:1,offset:7'
    """
    return ";".join(f"partition:{p},offset:{o}" for p, o in sorted(offsets.items()))


def source_options(cfg: Config, group: str, bounded: bool, topic_pattern: str | None,
                   start_offsets: dict[int, int] | None) -> str:
    """The clean events' source: from ``start_offsets`` (partitions not named start at the
    earliest offset), else from the earliest offset."""
    options = kafka_source_options(cfg, cfg.kafka.topics.clean, group, bounded, topic_pattern=topic_pattern)
    if start_offsets:
        options = options.replace("'scan.startup.mode' = 'earliest-offset'",
                                  "'scan.startup.mode' = 'specific-offsets', "
                                  f"'scan.startup.specific-offsets' = '{specific_offsets(start_offsets)}', "
                                  "'properties.auto.offset.reset' = 'earliest'")
    return options


def add_features(rt: FlinkRuntime, cfg: Config, bounded: bool, statements: StatementSet,
                 topic_pattern: str | None = None, start_offsets: dict[int, int] | None = None) -> None:
    """Register the clean events' source and the feature sinks, and add the INSERTs for
    features.user and features.item to ``statements``."""
    ing = cfg.ingest
    t = cfg.kafka.topics
    ensure_topics(cfg, [t.clean, t.features_user, t.features_item])
    t_env = rt.t_env
    conf = t_env.get_config()
    # Window bounds in UTC; the feature sinks are upsert-keyed by id while the window aggregate's
    # unique key is (id, window): no SinkUpsertMaterializer (its state would grow without
    # bound), each new window row simply replaces the id's previous row.
    conf.set("table.local-time-zone", "UTC")
    conf.set("table.exec.sink.upsert-materialize", "NONE")
    # bounds the pairs' LAG state (sql/features_windows.sql); the windows clear theirs by the watermark
    conf.set("table.exec.state.ttl", f"{ing.dedup_horizon_ms} ms")
    # complete feature windows: no idleness unless configured, never for a bounded run
    # (streamrec.core.config.IngestConfig.source_idle_timeout_ms says why)
    conf.set("table.exec.source.idle-timeout", f"{0 if bounded else ing.source_idle_timeout_ms} ms")
    apply_sql(
        t_env, statements, "features",
        source_options=source_options(cfg, rt.transaction_prefix, bounded, topic_pattern, start_offsets),
        user_sink_options=_upsert(kafka_sink_options(cfg, t.features_user, rt.transaction_prefix)),
        item_sink_options=_upsert(kafka_sink_options(cfg, t.features_item, rt.transaction_prefix)),
        slide=sql_interval(ing.window_slide_ms),
    )
    # The pair slices get their event time back (window_time = slice end - 1 ms), with the
    # source's watermarks, and a processing-time attribute for their order per pair (JVM only).
    pair_slices = t_env.sql_query(
        "SELECT user_id, item_id, slice_end_ms, n_events, n_views, n_clicks, n_carts, n_purchases, "
        "n_ratings, w_sum, last_ts FROM pair_slices")
    t_env.create_temporary_view("pair_slices_timed", with_time_attributes(
        t_env, pair_slices, [("slice_time", "TO_TIMESTAMP_LTZ(slice_end_ms - 1, 3)"), ("proc_time", "PROCTIME()")],
        watermark=("slice_time", "SOURCE_WATERMARK()")))
    apply_sql(
        t_env, statements, "features_windows",
        slide=sql_interval(ing.window_slide_ms),
        long_window=sql_interval(ing.long_window_ms),
        long_window_ms=ing.long_window_ms,
        short_window_ms=ing.short_window_ms,
        short_minutes=sql_double(ing.short_window_ms / 60_000),
        long_over_short=sql_double(ing.long_window_ms / ing.short_window_ms),
        bot_epm=sql_double(ing.bot_events_per_minute),
    )


def record_pipeline_start(cfg: Config, pipeline_plan: lineage.RunPlan) -> None:
    """Called by the pipeline before a fresh start (not a resume): remember where events.clean
    ends, so that this job counts only that run's clean events."""
    if pipeline_plan.restore_from is None:
        lineage.record(cfg, PIPELINE_JOB_NAME,
                       clean_start_offsets={str(p): o for p, o in
                                            end_offsets(cfg, cfg.kafka.topics.clean, read_committed=False).items()})


def _followed_run(cfg: Config) -> tuple[str | None, dict[int, int] | None]:
    """The pipeline run this job counts the clean events of, and where they start."""
    followed = lineage.read_lineage(lineage.job_dir(cfg, PIPELINE_JOB_NAME)) or {}
    offsets = followed.get("clean_start_offsets")
    return followed.get("run_id"), ({int(p): int(o) for p, o in offsets.items()} if offsets else None)


def plan_run(cfg: Config, bounded: bool = False, restore_from: str | None = None, fresh: bool = False,
             quiet: bool = False) -> tuple[lineage.RunPlan, dict[int, int] | None]:
    """Where this run starts: the lineage's plan (resume, or start over when the pipeline started
    over since this job last ran), and, for a fresh start, the clean events' offsets the
    pipeline's current run started at (None: the earliest)."""
    pipeline_run, start_offsets = _followed_run(cfg)
    mine = lineage.read_lineage(lineage.job_dir(cfg, JOB_NAME))
    if mine and not fresh and not restore_from and mine.get("follows") != pipeline_run:
        fresh = True
        if not quiet:
            print(f"[{JOB_NAME}] the pipeline started over (run {pipeline_run}; this job followed run "
                  f"{mine.get('follows')}): starting over too", file=sys.stderr)
    plan = lineage.plan_run(cfg, JOB_NAME, fresh=fresh, restore_from=restore_from, bounded=bounded,
                            source_topic=cfg.kafka.topics.clean)
    lineage.record(cfg, JOB_NAME, follows=pipeline_run)
    if not quiet:
        print(f"[{JOB_NAME}] {plan.reason}", file=sys.stderr)
    return plan, (None if plan.restore_from else start_offsets)


def job_config(cfg: Config) -> Config:
    """The configuration this job runs with: its own checkpoint interval, and plain RocksDB
    checkpoints (the changelog state backend is there to shorten the checkpoints the pipeline's
    recommendations wait for; this job's rows change by the hour, and its CPU measured the same
    either way: docs/ingestion.md).

    >>> from streamrec.core.config import load_config
    >>> flink = job_config(load_config(config_file=None, env={})).flink
    >>> flink.checkpoint_interval_ms, flink.state_changelog
    (5000, False)
    """
    return cfg.model_copy(update={"flink": cfg.flink.model_copy(update={
        "checkpoint_interval_ms": cfg.ingest.features_checkpoint_interval_ms, "state_changelog": False})})


def start(cfg: Config, bounded: bool = False, restore_from: str | None = None, fresh: bool = False,
          quiet: bool = False) -> tuple[FlinkRuntime, str | None]:
    """Plan the run and build the job; returns the runtime to execute and the restore trigger
    topic a bounded resume needs (delete it after the run)."""
    cfg = job_config(cfg)
    plan, start_offsets = plan_run(cfg, bounded, restore_from, fresh, quiet)
    trigger = lineage.restore_trigger_topic(cfg.kafka.topics.clean, plan) if bounded and plan.restore_from else None
    if trigger:
        ensure_topics(cfg, [trigger], partitions=1)
    rt = build_runtime(cfg, JOB_NAME, str(plan.restore_from) if plan.restore_from else None, plan.run_id)
    statements = rt.t_env.create_statement_set()
    if plan.restore_from:  # the offsets are the checkpoint's; the pattern takes a restore trigger
        add_features(rt, cfg, bounded, statements,
                     topic_pattern=lineage.source_topic_pattern(cfg.kafka.topics.clean, rt.run_id))
    else:  # the connector takes specific offsets for a single topic only
        add_features(rt, cfg, bounded, statements, start_offsets=start_offsets)
    statements.attach_as_datastream()
    return rt, trigger


def run(cfg: Config, bounded: bool = False, restore_from: str | None = None, wait: bool = True,
        fresh: bool = False, quiet: bool = False) -> FeaturesRun:
    """Run the features job; by default it resumes from its lineage's latest retained
    checkpoint. Bounded: stop at the clean events' end offsets present when it starts."""
    rt, trigger = start(cfg, bounded, restore_from, fresh, quiet)
    if not wait:
        return FeaturesRun(0.0, rt.env.execute_async(JOB_NAME))
    started = time.monotonic()
    try:
        rt.env.execute(JOB_NAME)
    finally:
        if trigger:
            delete_topics(cfg, [trigger])
    seconds = time.monotonic() - started
    if bounded:  # Flink discards a finished job's checkpoints: remember that it finished
        lineage.mark_finished(cfg, JOB_NAME)
    if not quiet:
        print(f"[{JOB_NAME}] finished in {seconds:.1f} s" if bounded else f"[{JOB_NAME}] stopped",
              file=sys.stderr)
    return FeaturesRun(seconds)


def main(argv: list[str] | None = None) -> None:
    parser = lineage.run_arguments(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    args = parser.parse_args(argv)
    run(load_config(), bounded=args.bounded, restore_from=args.restore_from, wait=not args.no_wait,
        fresh=args.fresh)


if __name__ == "__main__":
    main()
