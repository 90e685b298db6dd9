"""The benchmark's phases: throughput, quality (with the sequential reference, the River peer),
capacity and latency; each returns its part of the result record (run_bench.py says how they
measure, BENCHMARKS.md what they measured).
"""

from __future__ import annotations

import time
from collections import Counter

import numpy as np

from streamrec.bench.jobs import (all_running, bench_config, cancel_job, fresh_topics, records_written,
                                  start_unbounded, unbounded_config, unchanged_after, wait_until)
from streamrec.bench.monitor import LEARNER_VERTEX, CommittedWatcher, Monitor, SourceProgress
from streamrec.bench.probes import (broker_process, cpu_seconds, cpu_us_per_event, flink_jvm_pid, memory,
                                    thread_cpu, thread_cpu_table, thread_waits)
from streamrec.bench.report import fmt, registry_fates, served_by
from streamrec.bench.stats import (batch_summary, downsample, latency_series, percentiles, rate_series,
                                   span_throughput, time_reached)


def cycled_events(events: list[dict], n: int) -> list[dict]:
    """The first ``n`` events, going round ``events`` again when it is shorter: a later round gets
    new event ids and timestamps shifted past the previous round (so dedup keeps them and event
    time moves forward).

    >>> ev = [{"event_id": "a", "ts": 0}, {"event_id": "b", "ts": 10}]
    >>> [(e["event_id"], e["ts"]) for e in cycled_events(ev, 3)]
    [('a', 0), ('b', 10), ('a-r1', 11)]
    """
    if n <= len(events):
        return events[:n]
    span = events[-1]["ts"] - events[0]["ts"] + 1
    out = list(events)
    rnd = 1
    while len(out) < n:
        for e in events:
            if len(out) >= n:
                break
            out.append({**e, "event_id": f"{e['event_id']}-r{rnd}", "ts": e["ts"] + rnd * span})
        rnd += 1
    return out


class JobRun:
    """One bounded pipeline job with the exporter beside it over events replayed first
    (:func:`run_with_exporter`): what the phases measure of it."""

    def __init__(self, **fields):
        self.__dict__.update(fields)


def run_with_exporter(tcfg, events: list[dict], say, progress: bool, sample_s: float) -> JobRun:
    """``events`` replayed into ``tcfg``'s raw topic (fresh topics and registry), then the
    exporter sidecar and the bounded pipeline job together, as ``streamrec demo`` runs them,
    sampled by a :class:`~streamrec.bench.monitor.Monitor`; the exporter is stopped when the job
    ends. CPU is counted from just before the job: the Flink JVM's from 0 when this run starts
    it (the first job of the process: its start-up counts), else from its CPU then (threads
    too: ``threads_before``, ``waits_before``)."""
    from streamrec.flink_jobs import pipeline
    from streamrec import replay
    from streamrec.demo import start_exporter, stop_process

    root = fresh_topics(tcfg)
    say(f"throughput phase ({tcfg.scoring.serve} serving): replaying {len(events):,} events into "
        f"{tcfg.kafka.topics.raw}")
    res = replay.produce(tcfg, tcfg.kafka.topics.raw, replay.encode_events(events), total=len(events),
                         progress=progress)
    if res.failed:
        raise RuntimeError(f"replay failed: {res.failed} records undelivered ({res.first_error})")
    say(f"replayed {res.delivered:,} events at {res.rate:,.0f} events/s; starting the exporter and the "
        "bounded pipeline job")
    jvm = flink_jvm_pid()  # None until a first job of this process starts it
    jvm_cpu0 = cpu_seconds(jvm) if jvm else 0.0
    threads_before, waits_before = (thread_cpu(jvm), thread_waits(jvm)) if jvm else ({}, {})
    exporter = start_exporter(tcfg, root / "exporter.log")
    monitor = Monitor(say, exporter.pid, interval_s=sample_s, expected=len(events))
    monitor.start()
    broker_pid = broker_process(tcfg)
    broker_cpu0, exporter_cpu0 = cpu_seconds(broker_pid), cpu_seconds(exporter.pid)
    wall0 = time.time()
    try:
        run = pipeline.run(tcfg, bounded=True, quiet=True, with_features=False)
    finally:
        wall = time.time() - wall0
        monitor.stop()
        _, exporter_hwm = memory(exporter.pid)
        exporter_cpu1, broker_cpu1 = cpu_seconds(exporter.pid), cpu_seconds(broker_pid)
        stop_process(exporter)
    _, jvm_hwm = memory(monitor.jvm)
    return JobRun(res=res, run=run, wall=wall, monitor=monitor, broker_pid=broker_pid, jvm_started=jvm is None,
                  jvm_cpu0=jvm_cpu0, jvm_cpu1=cpu_seconds(monitor.jvm), threads_before=threads_before,
                  waits_before=waits_before, broker_cpu=(broker_cpu0, broker_cpu1),
                  exporter_cpu=(exporter_cpu0, exporter_cpu1), exporter_hwm=exporter_hwm, jvm_hwm=jvm_hwm)


def since(now: dict[int, tuple[str, float]], before: dict[int, tuple[str, float]]) -> dict[int, tuple[str, float]]:
    """Per-thread CPU (:func:`~streamrec.bench.probes.thread_cpu`) since ``before`` (a thread not
    in it: all of its CPU; never below 0, should a thread id have been reused).

    >>> since({1: ("a", 5.0), 2: ("b", 1.5)}, {1: ("a", 3.0), 3: ("c", 9.0)})
    {1: ('a', 2.0), 2: ('b', 1.5)}
    """
    return {tid: (name, max(0.0, cpu - before.get(tid, (name, 0.0))[1])) for tid, (name, cpu) in now.items()}


def waits_since(now: dict[int, float], before: dict[int, float]) -> dict[int, float]:
    """:func:`since` for :func:`~streamrec.bench.probes.thread_waits`' ``{tid: seconds}``.

    >>> waits_since({1: 4.0, 2: 1.0}, {1: 3.0})
    {1: 1.0, 2: 1.0}
    """
    return {tid: max(0.0, w - before.get(tid, 0.0)) for tid, w in now.items()}


def cpu_split(threads: list[dict]) -> dict:
    """From a run's CPU-by-thread table (:func:`~streamrec.bench.probes.thread_cpu_table`), CPU µs
    per event of the job's own task threads (one per operator chain, with their flushers and
    timers: what the job itself ran, start-up of the JVM and its JIT/GC threads excluded) and of
    the learner's task thread (ShardLearner: the learner's Python, thread mode).

    >>> cpu_split([{"threads": "JIT compilers", "cpu_us_per_event": 200.0},
    ...            {"threads": "task: ShardLearner (online MF)", "cpu_us_per_event": 120.0},
    ...            {"threads": "task: OutputFlusher for ShardLearner (online MF)", "cpu_us_per_event": 0.5},
    ...            {"threads": "task: Source: raw -> Calc", "cpu_us_per_event": 30.0}])
    {'flink_jvm_task_threads': 150.5, 'learner_thread': 120.0}
    """
    tasks = [r for r in threads if r["threads"].startswith("task: ") and r.get("cpu_us_per_event") is not None]
    learner = [r["cpu_us_per_event"] for r in tasks if r["threads"].startswith(f"task: {LEARNER_VERTEX}")]
    return {"flink_jvm_task_threads": round(sum(r["cpu_us_per_event"] for r in tasks), 1) if tasks else None,
            "learner_thread": round(sum(learner), 1) if learner else None}


def serving_summary(tcfg, recs: list[dict]) -> dict:
    """What served the run's records (:func:`~streamrec.bench.report.served_by`) and what the
    exporter's registry did meanwhile (:func:`~streamrec.bench.report.registry_fates`)."""
    from streamrec.model.registry import Registry

    registry = Registry(tcfg.paths_resolved.registry_dir)
    return {"serve": tcfg.scoring.serve, "served_by": served_by(r.get("model_version") for r in recs),
            "registry": {**registry_fates(registry.read_log(), undecided=len(registry.undecided())),
                         "current": registry.current()}}


def throughput_phase(cfg, events: list[dict], say, progress: bool, sample_s: float) -> tuple[dict, object]:
    from streamrec.flink_jobs import features as features_job
    from streamrec.runtime import kafka_io

    tcfg = bench_config(cfg, "bench", "throughput")
    job = run_with_exporter(tcfg, events, say, progress, sample_s)
    res, run, wall, monitor, broker_pid = job.res, job.run, job.wall, job.monitor, job.broker_pid
    # The features job, as `streamrec run --bounded` runs it: after the pipeline, over the clean
    # events it wrote (its own figures: it is off the recommendations' path)
    say("pipeline finished; the features job over its clean events")
    jvm_cpu_pipeline, broker_cpu2 = job.jvm_cpu1, cpu_seconds(broker_pid)
    threads_before = thread_cpu(monitor.jvm)
    features_run = features_job.run(tcfg, bounded=True, quiet=True)
    features_cpu = {"flink_jvm": cpu_us_per_event(jvm_cpu_pipeline, cpu_seconds(monitor.jvm), res.delivered),
                    "broker": cpu_us_per_event(broker_cpu2, cpu_seconds(broker_pid), res.delivered)}
    # its share of the JVM by thread (kernel thread names: the first 15 characters). Only threads
    # alive at the end: the finished job's task threads have exited, their CPU is in the total only
    features_threads = thread_cpu_table(since(thread_cpu(monitor.jvm), threads_before), {}, res.delivered)
    broker_rss, broker_hwm = memory(broker_pid)
    n = res.delivered
    # The mini-cluster JVM is started by this run (the bench's first job): its whole CPU time
    # (start-up included) counts.
    cpu = {"flink_jvm": cpu_us_per_event(job.jvm_cpu0, jvm_cpu_pipeline, n),
           "broker": cpu_us_per_event(*job.broker_cpu, n),
           "exporter": cpu_us_per_event(*job.exporter_cpu, n),
           "flink_jvm_incl_features_job": cpu_us_per_event(job.jvm_cpu0, jvm_cpu_pipeline, n)
           + (features_cpu["flink_jvm"] or 0.0)}
    # the JVM's CPU by thread: each operator chain's task thread, the JIT compilers, GC, RocksDB
    threads = thread_cpu_table(since(monitor.threads, job.threads_before), monitor.thread_names, n,
                               waits_since(monitor.waits, job.waits_before))
    cpu.update(cpu_split(threads))
    say(f"pipeline finished in {wall:.0f} s; reading the recommendations")

    recs = [r.json() for r in kafka_io.read_topic(tcfg, tcfg.kafka.topics.recommendations)]
    emitted = [r["emitted_ts"] for r in recs]
    first, last = (min(emitted), max(emitted)) if emitted else (None, None)
    registry_versions = len(list((tcfg.paths_resolved.registry_dir).glob("v*")))
    # the learner's changelogs (what the broker stores and the exporter reads): they should follow
    # the changed items per changelog interval, not the events
    changelog = {name: sum(1 for _ in kafka_io.read_topic(tcfg, topic))
                 for name, topic in (("model_items", tcfg.kafka.topics.model_items),
                                     ("model_users", tcfg.kafka.topics.model_users))}
    say("checking the feature windows against the plain-Python reference")
    features = feature_completeness(tcfg, events)
    out = {
        "events": res.delivered,
        "recommendations": len(recs),
        "strategies": dict(Counter(r.get("strategy") for r in recs)),
        "serving": serving_summary(tcfg, recs),
        "jvm_started_by_this_run": job.jvm_started,
        "wall_s": round(wall, 2),
        "pipeline_run_s": round(run.seconds, 2),
        # the features job, after the pipeline (its wall time includes its start-up)
        "features_job": {"run_s": round(features_run.seconds, 2),
                         "events_per_s_incl_startup": res.delivered / features_run.seconds
                         if features_run.seconds else None,
                         "cpu_us_per_event": features_cpu,
                         "cpu_us_per_event_flink_jvm_threads": features_threads},
        "first_to_last_emitted_s": round((last - first) / 1000.0, 3) if emitted else None,
        "events_per_s": span_throughput(res.delivered, first, last),
        "events_per_s_incl_startup": res.delivered / wall if wall else None,
        "replay_events_per_s": res.rate,
        "batch": batch_summary([r.get("batch_size", 1) for r in recs]),
        "cpu_us_per_event": cpu,
        "cpu_us_per_event_flink_jvm_threads": threads,
        "memory": {"jvm_peak_rss": job.jvm_hwm, "exporter_peak_rss": job.exporter_hwm,
                   "broker_rss": broker_rss, "broker_peak_rss": broker_hwm,
                   "jvm_peak_rss_sampled": monitor.peak["jvm_rss"] or None,
                   "exporter_peak_rss_sampled": monitor.peak["exporter_rss"] or None},
        "checkpoints": monitor.checkpoint_summary(),
        "vertices": monitor.busy_table(),
        "ingest": run.ingest.line() if run.ingest else None,
        "features": features,
        "model_versions_in_registry": registry_versions,
        "changelog_records": changelog,
        "changelog_records_per_event": round(sum(changelog.values()) / n, 3) if n else None,
        "series": {
            "recommendations_per_s": rate_series(emitted, 1.0, first),
            "jvm_rss_mib": [[s["t"], round(s["jvm_rss"] / 2**20, 1)] for s in monitor.samples if s.get("jvm_rss")],
            "exporter_rss_mib": [[s["t"], round(s["exporter_rss"] / 2**20, 1)]
                                 for s in monitor.samples if s.get("exporter_rss")],
            "jvm_cores_by_thread": monitor.thread_timeline(),
        },
    }
    return out, tcfg


def serve_mode_phase(cfg, mode: str, events: list[dict], say, progress: bool, sample_s: float,
                     evaluate_quality: bool = True) -> dict:
    """The throughput phase's job again in serving mode ``mode`` (``scoring.serve``; nothing
    else changed: the same events, settings and exporter beside it), on ``bench.serve-<mode>.*``
    topics and a registry of its own, measured the same way (throughput first -> last
    recommendation, CPU per event of the Flink JVM, its task threads and the learner's thread,
    the exporter and the broker). Not run after it: the features job (it does not depend on the
    mode) and the feature check. ``evaluate_quality``: its recommendations evaluated
    prequentially on its own clean events, without the baselines (the throughput phase's
    sequential reference ran on the same events; report.py ``mode_comparison`` divides by it).
    The JVM is the one the throughput phase started: its start-up is not in this run's CPU."""
    from streamrec.evaluate import evaluate_topics
    from streamrec.runtime import kafka_io

    mcfg = bench_config(cfg, f"bench.serve-{mode}", f"throughput-serve-{mode}")
    mcfg = mcfg.model_copy(update={"scoring": mcfg.scoring.model_copy(update={"serve": mode})})
    job = run_with_exporter(mcfg, events, say, progress, sample_s)
    monitor, n = job.monitor, job.res.delivered
    threads = thread_cpu_table(since(monitor.threads, job.threads_before), monitor.thread_names, n,
                               waits_since(monitor.waits, job.waits_before))
    cpu = {"flink_jvm": cpu_us_per_event(job.jvm_cpu0, job.jvm_cpu1, n),
           "broker": cpu_us_per_event(*job.broker_cpu, n),
           "exporter": cpu_us_per_event(*job.exporter_cpu, n), **cpu_split(threads)}
    say(f"{mode} serving: pipeline finished in {job.wall:.0f} s; reading the recommendations")
    recs = [r.json() for r in kafka_io.read_topic(mcfg, mcfg.kafka.topics.recommendations)]
    emitted = [r["emitted_ts"] for r in recs]
    first, last = (min(emitted), max(emitted)) if emitted else (None, None)
    out = {
        "serve": mode,
        "events": n,
        "recommendations": len(recs),
        "strategies": dict(Counter(r.get("strategy") for r in recs)),
        "serving": serving_summary(mcfg, recs),
        "jvm_started_by_this_run": job.jvm_started,
        "wall_s": round(job.wall, 2),
        "pipeline_run_s": round(job.run.seconds, 2),
        "first_to_last_emitted_s": round((last - first) / 1000.0, 3) if emitted else None,
        "events_per_s": span_throughput(n, first, last),
        "events_per_s_incl_startup": n / job.wall if job.wall else None,
        "batch": batch_summary([r.get("batch_size", 1) for r in recs]),
        "cpu_us_per_event": cpu,
        "cpu_us_per_event_flink_jvm_threads": threads,
        # the JVM's VmHWM is its lifetime's (the throughput phase's job included): sampled here
        "memory": {"jvm_peak_rss_sampled": monitor.peak["jvm_rss"] or None, "exporter_peak_rss": job.exporter_hwm},
        "checkpoints": monitor.checkpoint_summary(),
        "vertices": monitor.busy_table()[:8],
        "ingest": job.run.ingest.line() if job.run.ingest else None,
        "series": {"recommendations_per_s": rate_series(emitted, 1.0, first)},
    }
    served = out["serving"]["served_by"]
    say(f"{mode} serving: {fmt(out['events_per_s'])} events/s first -> last recommendation; records by "
        + ", ".join(f"{kind} {count:,}" for kind, count in served["by_kind"].items())
        + f"; registry: {fmt(out['serving']['registry']['exported'])} exported, "
        f"{fmt(out['serving']['registry']['promoted'])} promoted")
    if evaluate_quality:
        say(f"{mode} serving: prequential evaluation (pipeline only; the reference is the throughput phase's)")
        t = time.time()
        ev = evaluate_topics(mcfg, k=mcfg.scoring.top_k, baselines=False)
        # no reference here (NaN in to_dict): report.py mode_comparison divides by the quality phase's
        out["quality"] = {**ev.to_dict(), "pipeline_over_reference": None,
                          "seconds": round(time.time() - t, 1), "rolling_window": 2000,
                          "rolling_recall": {"pipeline": downsample(ev.pipeline.rolling_recall(2000).tolist())}}
        say(f"{mode} serving: recall@{mcfg.scoring.top_k} {ev.pipeline.recall:.4f} on {ev.pipeline.evaluated:,} events")
    return out


def feature_completeness(tcfg, events: list[dict]) -> dict:
    """The feature topics' rows against udfs.features.window_features on the replayed events (a
    throughput figure only counts if the windows it paid for are complete): rows read, rows
    expected, and rows equal to the reference in every count."""
    from streamrec.runtime import kafka_io
    from streamrec.udfs.features import event_weight, window_features

    weighted = [{**e, "weight": event_weight(e["event_type"], e.get("rating"), tcfg.ingest)} for e in events]
    out = {}
    for name, topic, key in (("user", tcfg.kafka.topics.features_user, "user_id"),
                             ("item", tcfg.kafka.topics.features_item, "item_id")):
        want = {(w[key], w["window_end"]): w for w in window_features(weighted, tcfg.ingest, key)}
        got = [r.json() for r in kafka_io.read_topic(tcfg, topic)]
        counts = [k for k in want[next(iter(want))] if k.endswith(("_events", "_views", "_clicks", "_carts",
                                                                   "_purchases", "_ratings", "_items", "_users"))]
        equal = sum(1 for g in got if (w := want.get((g[key], g["window_end"]))) is not None
                    and all(g[c] == w[c] for c in counts))
        out[name] = {"rows": len(got), "expected": len(want), "equal": equal}
    return out


def quality_phase(tcfg, say) -> dict:
    from streamrec.evaluate import evaluate_topics

    say("quality: prequential evaluation of the throughput run (replays the sequential reference) ...")
    t = time.time()
    ev = evaluate_topics(tcfg, k=tcfg.scoring.top_k)
    for line in ev.table().splitlines():
        say("  " + line)
    out = ev.to_dict()
    out["seconds"] = round(time.time() - t, 1)
    window = 2000
    out["rolling_window"] = window
    out["rolling_recall"] = {
        name: downsample(m.rolling_recall(window).tolist())
        for name, m in (("pipeline", ev.pipeline), ("popularity", ev.popularity), ("reference", ev.reference))
        if m is not None and m.evaluated
    }
    return out


def reference_phase(cfg, events: list[dict], say) -> dict:
    """The sequential in-process reference on the same events, timed: the same learner
    (``OnlineMF``, snapshot refreshed after every event), top-``k`` over all items with the user's
    whole history excluded, then learn, one event at a time in one Python process."""
    from streamrec.udfs.online_mf import OnlineMF

    say(f"reference: the sequential learner over the same {len(events):,} events (top-{cfg.scoring.top_k} each) ...")
    model = OnlineMF(cfg.learner, snapshot_every=1)
    weights = cfg.ingest.weights
    seen: dict[str, set[str]] = {}
    wall, cpu = time.perf_counter(), time.process_time()
    for ev in events:
        history = seen.setdefault(ev["user_id"], set())
        model.recommend(ev["user_id"], cfg.scoring.top_k, exclude_seen=False, exclude=history)
        rating = ev.get("rating")
        weight = weights.rating_base + weights.rating_scale * rating if rating is not None else 1.0
        model.learn_one(ev["user_id"], ev["item_id"], weight, ev["event_id"])
        history.add(ev["item_id"])
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    out = {"reference_events_per_s": round(len(events) / wall, 1),
           "reference_cpu_us_per_event": round(cpu / len(events) * 1e6, 1)}
    say(f"reference: {out['reference_events_per_s']:,.0f} events/s, {out['reference_cpu_us_per_event']:,.0f} CPU µs/event")
    return out


def peer_phase(cfg, events: list[dict], say, n_events: int) -> dict:
    """River's MF recommender (bench/river_peer.py) on the first ``n_events`` of the same stream,
    beside ours on the same events (it ranks every item with one Python call per item, so it
    does not run the whole stream in a bench's time)."""
    from streamrec.bench.river_peer import river_peer
    from streamrec.evaluate import evaluate

    head = events[:n_events]
    say(f"peer: River on the first {len(head):,} events (all items ranked per event) ...")
    try:
        river = river_peer(head, k=cfg.scoring.top_k)
    except ImportError as exc:
        say(f"peer: River is not installed ({exc}); `pip install -e .[bench]`")
        return {"error": str(exc)}
    # ours on the same events, in process: the shard core at the pipeline's mean batch size
    from streamrec.udfs.online_mf import LearnerParams
    from streamrec.udfs.shard_model import Event, ShardModel, ShardSettings

    sc = cfg.scoring
    shard = ShardModel(LearnerParams.of(cfg.learner), ShardSettings.from_config(cfg))
    clean = [dict(e, weight=1.0, src_partition=0, src_offset=n) for n, e in enumerate(head)]
    users, recs, batch = {}, [], 64
    wall, cpu = time.perf_counter(), time.process_time()
    for lo in range(0, len(clean), batch):
        out = shard.process([Event(e["event_id"], e["user_id"], e["item_id"], 1.0, e["ts"], 0, e["src_offset"])
                             for e in clean[lo:lo + batch]], users, now_ms=0)
        users.update(out.user_records)
        recs += out.recommendations
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    ours = evaluate(clean, recs, k=sc.top_k, baselines=False)
    out = {"events": len(head), "river": river,
           "streamrec_core": {"recall": ours.pipeline.recall, "evaluated": ours.pipeline.evaluated,
                              "events_per_s": len(head) / wall, "cpu_us_per_event": cpu / len(head) * 1e6,
                              "batch": batch}}
    say(f"peer: River recall@{sc.top_k} {river['recall']:.4f} at {river['events_per_s']:,.0f} events/s; "
        f"streamrec core {ours.pipeline.recall:.4f} at {out['streamrec_core']['events_per_s']:,.0f} events/s")
    return out


#: The quality streams ``streamrec bench --streams`` chooses from (run_bench.py's ``STREAMS`` says
#: what each is); the ones named here run through the real job (:func:`stream_phase`).
JOB_STREAMS = ("bursty", "ml100k-5star")


def stream_events(name: str, ml100k: list[dict]) -> tuple[list[dict], float]:
    """The events of a quality stream run through the job, and its ``evaluate_from``:

    * ``bursty``: bench/bursty.py's default stream (bursty sessions, ~9k items in a long tail,
      670 users, 20 years of event time), every event evaluated;
    * ``ml100k-5star``: ML-100k binarised, the ratings of 5 only (each then a positive of the
      same weight), hits counted on the last 70 % of the stream (``evaluate_from`` 0.3).

    >>> ev = [{"event_id": str(n), "rating": r} for n, r in enumerate([5.0, 3.0, 5.0, 4.0])]
    >>> [e["event_id"] for e in stream_events("ml100k-5star", ev)[0]], stream_events("ml100k-5star", ev)[1]
    (['0', '2'], 0.3)
    """
    if name == "bursty":
        from streamrec.bench.bursty import bursty_stream

        return bursty_stream(), 0.0
    if name == "ml100k-5star":
        return [e for e in ml100k if e.get("rating") == 5.0], 0.3
    raise ValueError(f"no stream {name!r} runs through the job; choose from {', '.join(JOB_STREAMS)}")


def stream_phase(cfg, name: str, events: list[dict], say, progress: bool, evaluate_from: float = 0.0) -> dict:
    """A further quality stream through the real job, as the throughput phase runs ML-100k: the
    events replayed into fresh ``bench.<name>.*`` topics, the bounded pipeline over them (live
    serving, the shard's own item table, so without the exporter; the features job is not run),
    then :func:`streamrec.evaluate.evaluate_topics` on its topics: the pipeline against windowed
    popularity and the sequential reference, every metric of ``streamrec eval``, only the events
    past ``evaluate_from`` of the stream evaluated. Also the stream's shape (bench/bursty.py's
    :func:`~streamrec.bench.bursty.shape`), the job's wall time, its throughput (first to last
    recommendation) and its batch sizes."""
    from streamrec.bench.bursty import shape
    from streamrec.evaluate import evaluate_topics
    from streamrec.flink_jobs import pipeline
    from streamrec.runtime import kafka_io
    from streamrec import replay

    scfg = bench_config(cfg, f"bench.{name}", name)
    fresh_topics(scfg)
    say(f"stream {name}: replaying {len(events):,} events into {scfg.kafka.topics.raw}, then the bounded "
        "pipeline over them")
    res = replay.produce(scfg, scfg.kafka.topics.raw, replay.encode_events(events), total=len(events),
                         progress=progress)
    if res.failed:
        raise RuntimeError(f"replay failed: {res.failed} records undelivered ({res.first_error})")
    wall = time.time()
    run = pipeline.run(scfg, bounded=True, quiet=True, with_features=False)
    wall = time.time() - wall
    recs = [r.json() for r in kafka_io.read_topic(scfg, scfg.kafka.topics.recommendations)]
    emitted = [r["emitted_ts"] for r in recs]
    say(f"stream {name}: pipeline done in {wall:.0f} s; evaluating (replays the sequential reference) ...")
    t = time.time()
    ev = evaluate_topics(scfg, k=scfg.scoring.top_k, evaluate_from=evaluate_from)
    for line in ev.table().splitlines():
        say("  " + line)
    out = {"shape": shape(events), "wall_s": round(wall, 2),
           "events_per_s": span_throughput(len(events), min(emitted), max(emitted)) if emitted else None,
           "ingest": run.ingest.line() if run.ingest else None,
           "recommendations": len(recs), "strategies": dict(Counter(r.get("strategy") for r in recs)),
           "batch": batch_summary([r.get("batch_size", 1) for r in recs]),
           **ev.to_dict(), "seconds": round(time.time() - t, 1)}
    return out


def capacity_phase(cfg, events: list[dict], say, progress: bool, sample_s: float,
                   checkpoint_interval_ms: int | None = None, with_features: bool = True) -> dict:
    """The capacity of what the latency phase runs: the same jobs (the unbounded pipeline, the
    features job beside it unless ``with_features`` is False, the exporter) at the same
    checkpoint interval, over a backlog of ``events`` already in the raw topic.

    The throughput phase measures the recommendations' path alone (a bounded pipeline, 5 s
    checkpoints by default, the features job after it); the latency phase's jobs share the
    cores with the features job and checkpoint more often, so half of the throughput phase's
    figure can be more than they can take. ``events_per_s`` here: from the first recommendation
    to the later of the last recommendation and the moment the features job had read every
    clean event (its Kafka source's own record count, sampled every 0.5 s and interpolated).
    """
    from streamrec.flink_jobs import features as features_job
    from streamrec.runtime import kafka_io
    from streamrec import replay
    from streamrec.demo import stop_process

    ccfg = unbounded_config(cfg, "bench.cap", "capacity", checkpoint_interval_ms)
    root = fresh_topics(ccfg)
    n = len(events)
    say(f"capacity phase: {n:,} events into {ccfg.kafka.topics.raw}, then the unbounded pipeline"
        + (" and the features job beside it" if with_features else "")
        + f", checkpoints every {ccfg.flink.checkpoint_interval_ms} ms")
    res = replay.produce(ccfg, ccfg.kafka.topics.raw, replay.encode_events(events), total=n, progress=progress)
    if res.failed:
        raise RuntimeError(f"replay failed: {res.failed} records undelivered ({res.first_error})")
    broker_pid = broker_process(ccfg)
    jvm = flink_jvm_pid()  # None when no earlier phase started it: then all its CPU counts
    cpu0 = {"flink_jvm": cpu_seconds(jvm) if jvm else 0.0, "broker": cpu_seconds(broker_pid)}
    exporter, client, features_client = start_unbounded(ccfg, root, with_features)
    cpu0["exporter"] = cpu_seconds(exporter.pid)
    jvm = jvm or flink_jvm_pid()
    monitor = Monitor(say, exporter.pid, interval_s=sample_s, expected=n)
    monitor.start()
    features_monitor = SourceProgress(features_job.JOB_NAME) if with_features else None
    if features_monitor:
        features_monitor.start()
    clean = None
    features_read_all = None
    try:
        scored_all = wait_until(lambda: records_written(ccfg, ccfg.kafka.topics.recommendations)
                           >= n - max(5, n // 100) and unchanged_after(
                               lambda: records_written(ccfg, ccfg.kafka.topics.recommendations), 3.0), 900)
        if not scored_all:
            say("warning: the pipeline had not scored every event after 900 s")
        # the exactly-once sinks commit on checkpoint completion: two more checkpoints
        done_before = len(monitor.checkpoints)
        wait_until(lambda: len(monitor.checkpoints) >= done_before + 2, 4 * ccfg.flink.checkpoint_interval_ms / 1000 + 30)
        if features_monitor:  # every clean event is committed now: what the features job must read
            clean = sum(1 for _ in kafka_io.read_topic(ccfg, ccfg.kafka.topics.clean))
            features_read_all = wait_until(lambda: bool(features_monitor.read)
                                      and features_monitor.read[-1][1] >= clean, 600, step_s=0.5)
            if not features_read_all:
                say(f"warning: the features job had not read the {clean:,} clean events after 600 s")
    finally:
        cpu1 = {"flink_jvm": cpu_seconds(jvm), "broker": cpu_seconds(broker_pid),
                "exporter": cpu_seconds(exporter.pid)}
        cancel_job(client)
        cancel_job(features_client)
        monitor.stop()
        if features_monitor:
            features_monitor.stop()
        stop_process(exporter)
    recs = [r.json() for r in kafka_io.read_topic(ccfg, ccfg.kafka.topics.recommendations)]
    emitted = [r["emitted_ts"] for r in recs]
    first, last = (min(emitted), max(emitted)) if emitted else (None, None)
    read_all_at = (time_reached(features_monitor.read, clean)
                   if features_monitor and clean is not None else None)
    if with_features:  # no figure for both jobs unless the features job read every clean event
        end = max(last, int(read_all_at * 1000)) if last is not None and read_all_at is not None else None
    else:
        end = last
    out = {
        "events": n,
        "checkpoint_interval_ms": ccfg.flink.checkpoint_interval_ms,
        "features_job_beside": with_features,
        "recommendations": len(recs),
        # what the latency phase's rate is half of: events through every job of the deployment
        "events_per_s": span_throughput(n, first, end),
        "pipeline_events_per_s": span_throughput(n, first, last),
        "pipeline_first_to_last_s": round((last - first) / 1000.0, 3) if emitted else None,
        "features_job_read_all_after_s": (round(read_all_at - first / 1000.0, 3)
                                          if read_all_at is not None and first is not None else None),
        "clean_events": clean,
        "features_job_read_all": features_read_all,
        # the whole phase's CPU (both jobs' start-up included) over its events
        "cpu_us_per_event": {k: cpu_us_per_event(cpu0[k], cpu1[k], n) for k in cpu0},
        "checkpoints": monitor.checkpoint_summary(),
        "vertices": monitor.busy_table(),
        "series": {
            "recommendations_per_s": rate_series(emitted, 1.0, first),
            # [s from the first recommendation, clean events the features job had read]
            "features_job_read": [[round(t - first / 1000.0, 2), c] for t, c in features_monitor.read]
            if features_monitor and first is not None else [],
        },
    }
    say(f"capacity: {fmt(out['events_per_s'])} events/s through "
        + ("both jobs" if with_features else "the pipeline")
        + f" (the pipeline's recommendations {fmt(out['pipeline_events_per_s'])} events/s)")
    return out


def latency_phase(cfg, events: list[dict], rate: float, seconds: float, say, progress: bool,
                  sample_s: float, warmup: int = 500, checkpoint_interval_ms: int | None = None,
                  warmup_s: float = 20.0, with_features: bool = True) -> dict:
    from streamrec.runtime import kafka_io
    from streamrec import replay
    from streamrec.demo import stop_process

    lcfg = unbounded_config(cfg, "bench.lat", "latency", checkpoint_interval_ms)
    root = fresh_topics(lcfg)
    n = max(1, int(rate * seconds))
    # warm-up at the target rate for warmup_s (at least ``warmup`` events): a fresh job compiles
    # (JIT) its generated code and opens its Python operators under that load, and the backlog
    # it builds meanwhile is start-up, not the latency of a running job (BENCHMARKS.md,
    # 2026-12-02: a burst of 500 events instead left the job behind for its first ~50 s)
    warm = min(max(warmup, int(rate * warmup_s)), len(events) // 2)
    stream = cycled_events(events, warm + n)
    warm_stream, stream = stream[:warm], stream[warm:]
    say(f"latency phase: unbounded pipeline on {lcfg.kafka.topics.raw}; {warm:,} warm-up events, then "
        f"{n:,} events at {rate:,.0f} events/s ({seconds:.0f} s)")
    watcher = CommittedWatcher(lcfg, lcfg.kafka.topics.recommendations)
    watcher.start()
    exporter, client, features_client = start_unbounded(lcfg, root, with_features)
    job_id = str(client.get_job_id())
    monitor = Monitor(say, exporter.pid, interval_s=sample_s)
    monitor.start()
    cancelled = False
    try:
        if not wait_until(lambda: all_running(monitor, job_id), 180):
            say("warning: the job's tasks were not all RUNNING after 180 s; replaying anyway")
        time.sleep(3.0)  # the Kafka source discovers its partitions

        def scored() -> int:
            return records_written(lcfg, lcfg.kafka.topics.recommendations)

        if warm:
            # the first records pay for the Python operators' warm-up (and the first model export):
            # not what the latency figures are about
            replay.produce(lcfg, lcfg.kafka.topics.raw, replay.encode_events(warm_stream), total=warm,
                           rate=rate, progress=False)
            # done when most were scored and the count has stopped moving
            if not wait_until(lambda: scored() >= warm // 2 and unchanged_after(scored, 3.0), 180):
                say(f"warning: only {scored()} of {warm} warm-up events scored after 180 s")
            say(f"warm-up done ({scored():,} records for {warm:,} events); measuring")
        base = scored()
        measure_from_ms = int(time.time() * 1000)
        res = replay.produce(lcfg, lcfg.kafka.topics.raw, replay.encode_events(stream), total=n, rate=rate,
                             progress=progress)
        say(f"replayed {res.delivered:,} events at {res.rate:,.0f} events/s; waiting for the job to drain")
        drained_ok = wait_until(lambda: scored() >= base + res.delivered - max(5, res.delivered // 100), 180)
        if not drained_ok:
            say("warning: the learner had not scored every event after 180 s")
        # the exactly-once sink commits on checkpoint completion: wait for two more checkpoints
        done_before = len(monitor.checkpoints)
        wait_until(lambda: len(monitor.checkpoints) >= done_before + 2,
              4 * lcfg.flink.checkpoint_interval_ms / 1000 + 30)
        client.cancel().result()
        cancelled = True
    finally:
        if not cancelled:
            try:
                client.cancel().result()
            except Exception:  # noqa: BLE001 - best effort on the way out
                pass
        cancel_job(features_client)
        monitor.stop()
        watcher.stop()
        _, exporter_hwm = memory(exporter.pid)
        stop_process(exporter)

    raw_ts = {(r.partition, r.offset): r.timestamp_ms
              for r in kafka_io.read_topic(lcfg, lcfg.kafka.topics.raw, read_committed=False)
              if r.timestamp_ms >= measure_from_ms}
    recs = [r.json() for r in kafka_io.read_topic(lcfg, lcfg.kafka.topics.recommendations)]
    times, lats, committed, committed_times = [], [], [], []
    for r in recs:
        key = (r.get("source_partition"), r.get("source_offset"))
        ts = raw_ts.get(key)
        if ts is not None:
            times.append(r["emitted_ts"])
            lats.append(r["emitted_ts"] - ts)
            if key in watcher.seen_ms:
                committed_times.append(ts)
                committed.append(watcher.seen_ms[key] - ts)
    t0 = min(raw_ts.values()) if raw_ts else None
    summary = percentiles(lats)
    summary["max"] = max(lats) if lats else None
    summary["mean"] = float(np.mean(lats)) if lats else None
    seen = percentiles(committed)
    seen["max"] = max(committed) if committed else None
    seen["records"] = len(committed)
    return {
        "target_rate": rate,
        "seconds": seconds,
        "warmup_events": warm,
        "warmup_at_target_rate_s": round(warm / rate, 1) if rate else None,
        "events_sent": res.delivered,
        "replay_rate": res.rate,
        "recommendations": len(recs),
        "strategies": dict(Counter(r.get("strategy") for r in recs)),
        "matched": len(lats),
        "drained": drained_ok,
        "latency_ms": summary,
        #: as a read_committed consumer sees it: visible time - source record timestamp
        "read_committed_latency_ms": seen,
        "checkpoint_interval_ms": lcfg.flink.checkpoint_interval_ms,
        "parallelism": lcfg.flink.parallelism,
        #: the shards' item exchange (parallelism > 1): deltas sent / applied, staleness (ms)
        "item_exchange": monitor.exchange_summary(),
        "features_checkpoint_interval_ms": lcfg.ingest.features_checkpoint_interval_ms,
        "features_job_beside": with_features,
        "batch": batch_summary([r.get("batch_size", 1) for r in recs]),
        "checkpoints": monitor.checkpoint_summary(),
        "vertices": monitor.busy_table(),
        "memory": {"jvm_rss_peak_sampled": monitor.peak["jvm_rss"] or None, "exporter_peak_rss": exporter_hwm},
        "series": {
            "latency": latency_series(times, lats, 1.0, t0),
            # by the source record's time: which events waited, beside the checkpoints below
            "read_committed_latency": latency_series(committed_times, committed, 1.0, t0),
            "recommendations_per_s": rate_series(times, 1.0, t0),
            # [trigger time (s from the first measured event), end-to-end duration (ms)]
            "checkpoints": [[round((c["trigger_timestamp"] - t0) / 1000.0, 3), c["end_to_end_duration"]]
                            for c in sorted(monitor.checkpoints.values(), key=lambda c: c["id"])
                            if t0 is not None and c.get("trigger_timestamp") and c["trigger_timestamp"] >= t0],
        },
    }
