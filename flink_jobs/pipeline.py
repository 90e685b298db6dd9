"""The streamrec pipeline job: one checkpointed Flink graph from ``events.raw`` to recommendations.

    events.raw ─► [SQL] validate ─► events.dlq
                       │ clean, dedup (keyed, event-time horizon) ─► events.clean
                       ▼
                 [SQL] a window of scoring.batch_interval_ms per shard (of the user) ─► one row
                       ▼
                 keyBy(shard) ShardLearner: learn the batch (online MF, keyed MapState) and
                       │      score it (onnxruntime over the live item table), once per batch
                       ▼
                 [SQL] unnest ─► recommendations, model.items, model.users (a task of their own)

The features job (flink_jobs/features.py) makes features.user / features.item of events.clean,
off the recommendations' path; ``run`` starts it too. The exporter sidecar (``streamrec exporter``) turns ``model.items`` into versioned ONNX models in
the registry; with ``scoring.serve = registry`` the shards serve CURRENT instead of their live
table (hot-swapped between batches). docs/hot-path.md has the design and its measurements.

    python -m flink_jobs.pipeline [--bounded] [--from-version V] [--without-features]
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass

from pyflink.common import Types
from pyflink.datastream import KeyedStream

from streamrec.flink_jobs import features
from streamrec.runtime import lineage
from streamrec.flink_jobs.env import (FlinkRuntime, apply_sql, build_runtime, kafka_sink_options, kafka_source_options,
                            render_sql, sql_interval, sql_string, with_time_attributes)
from streamrec.flink_jobs.ingest import IngestSummary, add_ingestion, summarize
from streamrec.flink_jobs.progress import RunProgress
from streamrec.core.config import Config, load_config
from streamrec.runtime.kafka_io import delete_topics, ensure_topics
from streamrec.udfs.flink_operators import BATCH_OUTPUT, ShardLearner
from streamrec.udfs.learner_core import LearnerSettings

JOB_NAME = features.PIPELINE_JOB_NAME  # the features job follows this job's lineage

# Operator uids: part of the savepoint contract. Never change them (state would not be restored).
SHARD_LEARNER_UID = "shard-learner"
#: Flink's key groups (fixed: state is partitioned by them, a change breaks every restore).
MAX_PARALLELISM = 128


@dataclass
class PipelineRun:
    ingest: IngestSummary | None
    seconds: float
    job_client: object | None = None  # set when not waiting: cancel() it to stop the job
    features: features.FeaturesRun | None = None  # the features job started with it, if any

    def cancel(self) -> None:
        """Cancel the job (not waited for) and the features job started beside it."""
        for run in (self, self.features):
            if run is not None and run.job_client is not None:
                run.job_client.cancel().result()


def shard_count(cfg: Config) -> int:
    """One shard per subtask: a shard owns a whole item table, so fewer shards learn better."""
    return cfg.flink.parallelism


def shard_keys(parallelism: int, max_parallelism: int = MAX_PARALLELISM) -> list[int]:
    """An INT key per shard such that shard ``n`` lands on subtask ``n`` (Flink assigns a key to
    key group ``murmur(hashCode) % max_parallelism``, and key groups to subtasks in ranges);
    plain 0..P-1 would put several shards on one subtask and leave others idle. The cluster test
    checks that every ShardLearner subtask receives batches.

    >>> shard_keys(1), shard_keys(2), shard_keys(4)
    ([0], [0, 2], [4, 0, 8, 2])
    """
    keys: list[int] = []
    for subtask in range(parallelism):
        key = 0
        while (_murmur(_pyflink_key_hash(key)) % max_parallelism) * parallelism // max_parallelism != subtask:
            key += 1
        keys.append(key)
    return keys


def _pyflink_key_hash(key: int) -> int:
    """The Java hashCode of a PyFlink INT key: PyFlink keys by a one-field ``Row`` holding the
    value, and Flink 2.3's ``Row.of(k).hashCode()`` is ``62 + k`` (checked with jshell)."""
    return ((62 + key + 2**31) % 2**32) - 2**31


def _murmur(code: int) -> int:
    """Flink's ``MathUtils.murmurHash(int)``."""
    def mul(a: int, b: int) -> int:
        return (a * b) & 0xFFFFFFFF

    def rotl(x: int, r: int) -> int:
        return ((x << r) | (x >> (32 - r))) & 0xFFFFFFFF

    h = code & 0xFFFFFFFF
    h = mul(rotl(mul(h, 0xCC9E2D51), 15), 0x1B873593)
    h = (mul(rotl(h, 13), 5) + 0xE6546B64) & 0xFFFFFFFF
    h ^= 4
    h ^= h >> 16
    h = mul(h, 0x85EBCA6B)
    h ^= h >> 13
    h = mul(h, 0xC2B2AE35)
    h ^= h >> 16
    signed = h - (1 << 32) if h >= 1 << 31 else h
    if signed >= 0:
        return signed
    return -signed if signed != -(1 << 31) else 0


#: A micro-batch as the shard learner receives it: the events' JSON arrays joined by commas
#: (sql/learner_batches.sql).
LEARNER_BATCH = Types.STRING()
#: The time attribute a shard's micro-batch window runs on, by run mode (sql/learner_batches.sql:
#: a processing-time window is dropped when a bounded input ends).
BATCH_TIME = {False: "proc_time", True: "arrival"}


def key_by_first_field(t_env, table, key_type, value_type) -> KeyedStream:
    """A table of ``(key, value ROW)`` as a stream keyed by ``key``, the values what the keyed
    function receives: the wiring PyFlink's ``key_by`` builds (a stream of ``Row(key, value)``
    keyed by Flink's ``KeyByKeySelector``), minus the Python function it calls per record to
    make the pairs (the table holds them already). The key is hashed as PyFlink's is, so
    :func:`shard_keys` holds for both."""
    from pyflink.java_gateway import get_gateway

    pairs = t_env.to_append_stream(table, Types.ROW([key_type, value_type]))
    j_keyed = pairs._j_data_stream.keyBy(get_gateway().jvm.KeyByKeySelector(),
                                         Types.ROW([key_type]).get_java_type_info())
    return KeyedStream(j_keyed, value_type, pairs)


def build(rt: FlinkRuntime, cfg: Config, bounded: bool, reset_version: str | None = None,
          reset_token: str | None = None):
    """Add the whole pipeline to ``rt``; returns the StatementSet to attach before execute().
    ``reset_version``: the shards put that registry version's vectors back first, once per
    ``reset_token`` (:func:`pin_from_version`)."""
    t_env = rt.t_env
    topics = cfg.kafka.topics
    statements = t_env.create_statement_set()
    clean = add_ingestion(rt, cfg, bounded, statements, topic_pattern=lineage.source_topic_pattern(cfg.kafka.topics.raw, rt.run_id))
    t_env.create_temporary_view("clean_events", clean)
    shards = shard_count(cfg)
    sc, lc = cfg.scoring, cfg.learner
    keys = shard_keys(shards)
    for ddl in render_sql("learner", shards=shards,
                          shard_key_cases=" ".join(f"WHEN {n} THEN {k}" for n, k in enumerate(keys))):
        t_env.execute_sql(ddl)
    # The batch-time attributes, through a DataStream (JVM only); both modes build the same graph
    # shape, only the window's time attribute differs (restoring across modes is not tested).
    exchange = exchanges_items(cfg, bounded)
    if exchange:  # the other shards' item deltas join each shard's micro-batches
        fan_out = "\n".join(f"UNION ALL SELECT {k} AS shard_key, v AS event FROM run_item_deltas WHERE origin <> {k}"
                            for k in keys)
        for ddl in render_sql("item_exchange_in", run_id=sql_string(rt.run_id), fan_out=fan_out,
                              source_options=kafka_source_options(
                                  cfg, topics.item_deltas, rt.transaction_prefix, bounded=False,
                                  # a fresh run's own records come later (and are filtered by
                                  # run id); a restored source goes on from its offsets
                                  start_ms=int(time.time() * 1000) - 60_000)):
            t_env.execute_sql(ddl)
        if cfg.flink.checkpoint_interval_ms > STALE_EXCHANGE_MS:
            print(f"[{JOB_NAME}] the {shards} shards' item deltas reach each other when a checkpoint "
                  f"commits them, every {cfg.flink.checkpoint_interval_ms} ms: steps that late helped "
                  f"little or hurt in the sharding benchmark; at most {STALE_EXCHANGE_MS} ms is "
                  "advised (flink.checkpoint_interval_ms; docs/hot-path.md, 'Parallelism > 1')",
                  file=sys.stderr)
    elif shards > 1 and lc.exchange_interval_ms:
        print(f"[{JOB_NAME}] a bounded run does not exchange item deltas between its {shards} shards "
              "(it would wait for the end of a topic it writes itself); each learns its own item "
              "table", file=sys.stderr)
    t_env.create_temporary_view("learner_events_timed", with_time_attributes(
        t_env, t_env.from_path("learner_inputs" if exchange else "learner_events"),
        [("proc_time", "PROCTIME()"), ("arrival", "CAST(CURRENT_ROW_TIMESTAMP() AS TIMESTAMP_LTZ(3))")],
        # 1 ms behind the newest stamp: many events share a millisecond, and one stamped in the
        # watermark's own millisecond is late, dropped by the window without a trace when that is
        # its window's last (tests/flink_jobs/test_learner_batches.py)
        watermark=("arrival", "arrival - INTERVAL '0.001' SECOND")))
    for ddl in render_sql("learner_batches", batch_time=BATCH_TIME[bounded],
                          batch_interval=sql_interval(sc.batch_interval_ms)):
        t_env.execute_sql(ddl)
    settings = LearnerSettings.from_config(cfg, exchange=exchange, reset_version=reset_version,
                                           reset_token=reset_token)
    output = (key_by_first_field(t_env, t_env.from_path("learner_batches"), Types.INT(), LEARNER_BATCH)
              .process(ShardLearner(settings), output_type=BATCH_OUTPUT)
              .uid(SHARD_LEARNER_UID).name("ShardLearner (online MF + onnxruntime top-K, per micro-batch)")
              # Its sinks run in a task of their own: chained to it, they committed each
              # checkpoint's transactions in its thread only after the Python batch in progress
              # (BENCHMARKS.md, "Figures behind the defaults").
              .disable_chaining())
    t_env.create_temporary_view("shard_output", t_env.from_data_stream(output))
    apply_sql(
        t_env, statements, "pipeline_sinks",
        model_items_options=kafka_sink_options(cfg, topics.model_items, rt.transaction_prefix),
        model_users_options=kafka_sink_options(cfg, topics.model_users, rt.transaction_prefix),
        recommendations_options=kafka_sink_options(cfg, topics.recommendations, rt.transaction_prefix),
    )
    if exchange:
        apply_sql(t_env, statements, "item_exchange_out", run_id=sql_string(rt.run_id),
                  sink_options=kafka_sink_options(cfg, topics.item_deltas, rt.transaction_prefix))
    return statements


#: Above this checkpoint interval the shards' deltas arrive too late to help much
#: (`streamrec bench --shards`, docs/hot-path.md): the job says so at start.
STALE_EXCHANGE_MS = 1_000


def exchanges_items(cfg: Config, bounded: bool) -> bool:
    """Whether the shards exchange item deltas (udfs/item_exchange.py): several shards, an
    unbounded run (a bounded one would wait for the end of a topic it writes itself), and an
    exchange interval."""
    return shard_count(cfg) > 1 and not bounded and cfg.learner.exchange_interval_ms > 0


#: The registry actor of the pin a ``--from-version`` run sets.
FROM_VERSION_ACTOR = "streamrec run --from-version"


class JobFailedError(RuntimeError):
    """The job failed for good (its restart strategy gave up): one sentence, the cause and how to
    go on, instead of Flink's Java stack trace."""


#: Below this much free space, a failed job's checkpoint storage is reported as full.
_NEARLY_FULL_BYTES = 32 * 1024 * 1024


def job_failure(cfg: Config, exc: BaseException, job_name: str = JOB_NAME) -> str:
    r"""What made the job fail, in one sentence. Flink's own message for a full checkpoint disk is
    only "Exceeded checkpoint tolerable failure threshold" (the ENOSPC is in the TaskManager's
    log), so the storage's free space is looked at first.

    >>> cfg = load_config(config_file=None, env={})
    >>> print(job_failure(cfg, RuntimeError("x\nCaused by: org.apache.flink.util.FlinkRuntimeException: "
    ...       "Exceeded checkpoint tolerable failure threshold.\n\tat y")).split(";")[0])
    the job streamrec-pipeline failed: FlinkRuntimeException: Exceeded checkpoint tolerable failure threshold.
    """
    import re
    import shutil

    directory = lineage.job_dir(cfg, job_name)
    try:
        usage = shutil.disk_usage(directory if directory.exists() else cfg.paths_resolved.checkpoint_dir)
    except OSError:
        usage = None
    causes = re.findall(r"Caused by: (?:[\w.]+\.)?(\w+): ([^\n]+)", str(exc))
    cause = f"{causes[-1][0]}: {causes[-1][1].strip()}" if causes else (
        str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
    if usage is not None and usage.free < _NEARLY_FULL_BYTES:
        cause = (f"its checkpoint storage {cfg.paths_resolved.checkpoint_dir} is full (No space left "
                 f"on device: {usage.free // 1_048_576} MiB free of {usage.total // 1_048_576} MiB); "
                 f"Flink said {cause}")
    retained = lineage.retained_checkpoints(directory) if directory.is_dir() else []
    resume = (f"the newest completed checkpoint is {retained[0]}" if retained
              else "no completed checkpoint is retained yet")
    return (f"the job {job_name} failed: {cause}; fix that and run the same command again to resume "
            f"from its last completed checkpoint ({resume})")


class FromVersionError(RuntimeError):
    """``--from-version`` names a version the learner cannot be rolled back to."""


def check_from_version(cfg: Config, version: str) -> None:
    """Fail before anything starts if ``version`` cannot be put back into the learner: unknown,
    rejected, corrupt (sha256), of another dimension, or exported without ``users.npz``."""
    from streamrec.model.item_table import load_item_table
    from streamrec.model.registry import Registry, RegistryError
    from streamrec.model.user_table import load_user_table

    registry = Registry(cfg.paths_resolved.registry_dir)
    if version not in registry.list_versions():
        raise FromVersionError(f"--from-version {version}: no such version in {registry.root} "
                               "(`streamrec model list` shows them)")
    if registry.read_meta(version).get("status") == "rejected":
        raise FromVersionError(f"--from-version {version}: it was rejected by the gate")
    try:
        registry.load(version)
        load_item_table(registry, version, expected_dim=cfg.learner.dim)
        load_user_table(registry, version, expected_dim=cfg.learner.dim)
    except RegistryError as exc:
        raise FromVersionError(f"--from-version {version}: {exc}") from None


def pin_from_version(cfg: Config, version: str, run_id: str) -> str:
    """Model and learner go back together: CURRENT is pinned to ``version`` (the exporter keeps
    exporting, promotes nothing until `streamrec model unpin`). Returns the reset's token: the
    pin's time. The same command run again after a crash finds its own pin and keeps its token,
    so the shards (whose state records the token applied) do not reset a second time."""
    from streamrec.model.registry import Registry

    registry = Registry(cfg.paths_resolved.registry_dir)
    pin = registry.pinned()
    if not (pin and pin.get("version") == version and pin.get("run_id") == run_id
            and pin.get("actor") == FROM_VERSION_ACTOR):
        # check_from_version vetted the version; a candidate is allowed here, as before
        registry.rollback(version, actor=FROM_VERSION_ACTOR, reason=f"run --from-version {version}",
                          log_extra={"run_id": run_id}, force=True)
        pin = registry.pinned()
    return f"{version}@{pin['ts']}"


def run(cfg: Config, bounded: bool = False, restore_from: str | None = None, wait: bool = True,
        quiet: bool = False, fresh: bool = False, from_version: str | None = None,
        with_features: bool = True, progress_s: float = 0.0) -> PipelineRun:
    """Run the pipeline; by default it resumes from its lineage's latest retained checkpoint
    (runtime/lineage.py), ``fresh`` starts over and discards it. Bounded: stop at the end
    offsets present when the lineage started (a restored run keeps its splits' stopping offsets).
    ``from_version``: the learner's item and user vectors become that registry version's (and
    CURRENT is pinned to it), while the stream goes on from where the run starts; an older
    checkpoint is never restored for it: the events after it would be recommended again
    (docs/registry.md, "Learner rollback").

    ``with_features``: the features job (flink_jobs/features.py) runs too: beside the pipeline,
    or, bounded, after it over the clean events it wrote (its input ends only when the
    pipeline's does). ``streamrec submit`` submits it to a cluster as a job of its own."""
    # held while the run lives (a run that returns at submission only checks that no other holds it)
    with lineage.run_lock(cfg, JOB_NAME):
        ensure_topics(cfg)
        cfg.paths_resolved.registry_dir.mkdir(parents=True, exist_ok=True)
        if from_version:
            check_from_version(cfg, from_version)
        plan = lineage.plan_run(cfg, JOB_NAME, fresh=fresh, restore_from=restore_from, bounded=bounded)
        print(f"[{JOB_NAME}] {plan.reason}", file=sys.stderr)
        features.record_pipeline_start(cfg, plan)
        reset_token = None
        if from_version:
            reset_token = pin_from_version(cfg, from_version, plan.run_id)
            print(f"[{JOB_NAME}] the learner's vectors go back to {from_version}; CURRENT is pinned to "
                  "it (`streamrec model unpin` resumes promotion)", file=sys.stderr)
        trigger = lineage.restore_trigger_topic(cfg.kafka.topics.raw, plan) if bounded and plan.restore_from else None
        if trigger:
            ensure_topics(cfg, [trigger], partitions=1)
        rt = build_runtime(cfg, JOB_NAME, str(plan.restore_from) if plan.restore_from else None, plan.run_id)
        statements = build(rt, cfg, bounded, from_version, reset_token)
        statements.attach_as_datastream()
        started = time.monotonic()
        # beside an unbounded pipeline: a second job in the same local JVM (measured better for the
        # recommendations' latency than a process of its own at nice 10: docs/ingestion.md)
        beside = features.run(cfg, wait=False, quiet=quiet) if with_features and not bounded else None
        if not wait:  # under `flink run -d`, or a caller that stops the jobs itself: submit and return
            return PipelineRun(None, 0.0, rt.env.execute_async(JOB_NAME), beside)
        if not quiet:
            print(f"[{JOB_NAME}] web UI: {rt.web_ui}", file=sys.stderr)
        progress = RunProgress(cfg, JOB_NAME, rt.transaction_prefix, progress_s) if progress_s > 0 and not quiet else None
        if progress:
            progress.start()
        try:
            rt.env.execute(JOB_NAME)
        except Exception as exc:  # Py4JJavaError: the restart strategy gave up
            raise JobFailedError(job_failure(cfg, exc)) from None
        finally:
            if progress:
                progress.stop()
            if trigger:
                delete_topics(cfg, [trigger])
            if beside:  # the pipeline stopped (failed): its features job has nothing more to read
                beside.job_client.cancel()
        seconds = time.monotonic() - started
        if bounded:  # Flink discards a finished job's checkpoints: remember that it finished
            lineage.mark_finished(cfg, JOB_NAME)
        summary = summarize(cfg, seconds) if bounded else None
        if summary and not quiet:
            print(summary.line(), file=sys.stderr)
        after = features.run(cfg, bounded=True, quiet=quiet) if with_features and bounded else None
        return PipelineRun(summary, seconds, features=after)


def main(argv: list[str] | None = None) -> None:
    parser = lineage.run_arguments(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    parser.add_argument("--from-version", help="put this registry version's vectors back into the learner")
    parser.add_argument("--without-features", action="store_true",
                        help="do not run the features job (a cluster gets it as a job of its own)")
    args = parser.parse_args(argv)
    run(load_config(), bounded=args.bounded, restore_from=args.restore_from, wait=not args.no_wait,
        fresh=args.fresh, from_version=args.from_version, with_features=not args.without_features)


if __name__ == "__main__":
    main()
