"""``streamrec demo`` / ``make demo``: the whole product on one machine, then everything stopped.

1. the embedded broker (or reuse of a running one), fresh ``demo.*`` topics and a fresh demo
   registry, so the figures mean something and nothing of the user's own is touched;
2. MovieLens-100k replayed into ``demo.events.raw``;
3. the exporter sidecar (a subprocess) and the pipeline job (bounded: it stops at the end of the
   replayed data) run together; the exporter publishes and gates ONNX versions, the job hot-swaps;
   meanwhile a rollback is shown: mid-stream the version promoted before CURRENT is
   pinned for a few seconds, then unpinned;
4. a report: events in, rejected, duplicates, every registry action of the run (versions
   exported / promoted / rejected / superseded / held, rollbacks, pins, retention), the onnxruntime
   provider, throughput, what served the records after the pin and after the unpin, a few
   users' latest recommendations with titles, and prequential
   recall@10 next to popularity and the sequential reference on the same stream.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from typing import Any

from streamrec.runtime import assets, broker, kafka_io
from streamrec import replay
from streamrec.core.config import Config, to_env
from streamrec.core.records import CLEAN_EVENT, RECOMMENDATION


def _say(msg: str) -> None:
    print(f"[demo] {msg}", flush=True)


#: registry.log actions in the order the demo reports them (docs/registry.md, "registry.log");
#: an action not listed here is reported after them, so a new one is never silently left out.
LOG_ACTIONS = ("publish", "promote", "reject", "hold", "supersede", "rollback", "pin", "unpin",
               "retention", "snapshot")


def retention_rule(keep_last_n: int, hourly_hours: int, daily_days: int) -> str:
    """What ``Registry.enforce_retention`` keeps, in words (0 disables the hourly / daily rule).

    >>> print(retention_rule(10, 24, 7))  # doctest: +NORMALIZE_WHITESPACE
    the newest 10, the newest non-rejected of each of the last 24 UTC hours and 7 UTC days,
    CURRENT, the pin and the rollback target
    >>> retention_rule(3, 0, 0)
    'the newest 3, CURRENT, the pin and the rollback target'
    """
    spans = [f"{n} UTC {unit}{'s' if n != 1 else ''}"
             for n, unit in ((hourly_hours, "hour"), (daily_days, "day")) if n]
    buckets = f"the newest non-rejected of each of the last {' and '.join(spans)}, " if spans else ""
    return f"the newest {keep_last_n}, {buckets}CURRENT, the pin and the rollback target"


def registry_summary(entries: list[dict], undecided: int = 0) -> list[str]:
    """Two report lines from ``Registry.read_log()`` entries: the versions' fates, then every
    action counted (zeros included; ``snapshot`` = a log rotation, shown only when one happened).

    A rejection at the exporter's stop on no held-out events (the version exported as a bounded
    stream ended: nothing came after it) is counted apart, at the end of the first line: it was
    not evaluated.

    >>> log = [{"action": "publish"}] * 4 + [{"action": "promote"}, {"action": "reject"},
    ...        {"action": "supersede"}, {"action": "retention", "deleted": ["v000001", "v000002"]}]
    >>> for line in registry_summary(log, undecided=1):  # doctest: +NORMALIZE_WHITESPACE
    ...     print(line)
    model versions: 4 exported, 1 promoted, 1 rejected by the gate, 1 superseded, 0 held (pinned),
      1 undecided (pending when the exporter stopped)
    registry.log: publish 4, promote 1, reject 1, hold 0, supersede 1, rollback 0, pin 0, unpin 0,
      retention 1 (2 versions deleted)
    >>> unevaluated = {"action": "reject", "figures": {"trigger": "stop", "held_out_events": 0}}
    >>> registry_summary(log[:5] + [unevaluated])[0]  # doctest: +NORMALIZE_WHITESPACE
    'model versions: 4 exported, 1 promoted, 0 rejected by the gate, 0 superseded, 0 held (pinned),
      0 undecided (pending when the exporter stopped); 1 not evaluated (exported as the stream
      ended, no events after it: closed as a tie when the exporter stopped)'
    """
    actions = Counter(str(entry.get("action")) for entry in entries)
    deleted = sum(len(entry.get("deleted") or ())
                  for entry in entries if entry.get("action") == "retention")
    unevaluated = sum(1 for entry in entries if entry.get("action") == "reject"
                      and (entry.get("figures") or {}).get("trigger") == "stop"
                      and not (entry.get("figures") or {}).get("held_out_events"))
    fates = (f"model versions: {actions['publish']} exported, {actions['promote']} promoted, "
             f"{actions['reject'] - unevaluated} rejected by the gate, {actions['supersede']} superseded, "
             f"{actions['hold']} held (pinned), {undecided} undecided (pending when the exporter stopped)"
             + (f"; {unevaluated} not evaluated (exported as the stream ended, no events after it: closed "
                "as a tie when the exporter stopped)" if unevaluated else ""))
    counted = []
    for action in LOG_ACTIONS + tuple(sorted(set(actions) - set(LOG_ACTIONS))):
        if action == "snapshot" and not actions[action]:
            continue
        text = f"{action} {actions[action]}"
        if action == "retention":
            text += f" ({deleted} versions deleted)"
        counted.append(text)
    return [fates, "registry.log: " + ", ".join(counted)]


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) by linear interpolation; NaN for no values.

    >>> percentile([1.0, 2.0, 3.0, 4.0], 0.5), percentile([0.2], 0.95)
    (2.5, 0.2)
    """
    if not values:
        return float("nan")
    ordered = sorted(values)
    pos = q * (len(ordered) - 1)
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def gate_summary(entries: list[dict]) -> list[str]:
    """Report lines on the gate's decisions (promote / reject / hold entries of registry.log):
    counts, how many times CURRENT changed, export->decision latency, and per decision the
    figures it was decided on.

    >>> log = [{"action": "publish", "version": "v1"},
    ...        {"action": "promote", "version": "v1", "actor": "gate", "figures": {"candidate": 0.05, "baseline": 0.03,
    ...         "n": 500, "difference": 0.02, "lower_bound": 0.004, "upper_bound": 0.036, "waited_s": 0.8}},
    ...        {"action": "reject", "version": "v2", "actor": "gate", "figures": {"candidate": 0.04, "current": 0.05,
    ...         "n": 2000, "difference": -0.01, "lower_bound": -0.021, "upper_bound": 0.001, "waited_s": 2.0}},
    ...        {"action": "reject", "version": "v3", "actor": "gate", "figures": {"candidate": 0.0, "current": 0.05,
    ...         "n": 0, "difference": 0.0, "lower_bound": -1.12, "upper_bound": 1.12, "waited_s": 60.0,
    ...         "trigger": "cap"}},
    ...        {"action": "reject", "version": "v4", "actor": "gate", "figures": {"candidate": 0.06, "current": 0.07,
    ...         "n": 288, "difference": -0.01, "lower_bound": -0.039, "upper_bound": 0.019, "waited_s": 29.0,
    ...         "trigger": "stop"}}]
    >>> for line in gate_summary(log):  # doctest: +NORMALIZE_WHITESPACE
    ...     print(line)
    gate: 4 decided (1 promoted, 3 rejected, 0 held), CURRENT changed 1 times; export->decision
      (decisions on the stream) p50 1.4 s, p95 1.9 s
      v1 promote: recall 0.0500 vs baseline 0.0300 on 500 events, difference +0.0200 in [+0.0040, +0.0360]
      v2 reject: recall 0.0400 vs current 0.0500 on 2000 events, difference -0.0100 in [-0.0210, +0.0010]
      v3 reject: recall 0.0000 vs current 0.0500 on 0 events, difference +0.0000 in [-1.1200, +1.1200]
      v4 reject: recall 0.0600 vs current 0.0700 on 288 events, difference -0.0100 in [-0.0390, +0.0190]
      (when the exporter stopped)
    """
    decided = [e for e in entries if e.get("action") in ("promote", "reject", "hold") and e.get("actor") == "gate"]
    counts = Counter(e["action"] for e in decided)
    swaps = sum(e.get("action") in ("promote", "rollback") for e in entries)
    # decisions on no events (the stream had ended: at the cap) or at the exporter's stop
    # measure the demo's end, not the gate
    waits = [float(e["figures"]["waited_s"]) for e in decided
             if (e.get("figures") or {}).get("waited_s") is not None and e["figures"].get("n")
             and e["figures"].get("trigger") != "stop"]
    lines = [f"gate: {len(decided)} decided ({counts['promote']} promoted, {counts['reject']} rejected, "
             f"{counts['hold']} held), CURRENT changed {swaps} times; export->decision (decisions on the stream) "
             f"p50 {percentile(waits, 0.5):.1f} s, p95 {percentile(waits, 0.95):.1f} s"]
    for e in decided:
        f = e.get("figures") or {}
        if f.get("difference") is None:
            continue
        ref = (f"current {f['current']:.4f}" if f.get("current") is not None
               else f"baseline {f['baseline']:.4f}")
        lines.append(f"  {e.get('version')} {e['action']}: recall {f['candidate']:.4f} vs {ref} on {f['n']} "
                     f"events, difference {f['difference']:+.4f} in [{f['lower_bound']:+.4f}, "
                     f"{f['upper_bound']:+.4f}]" + (" (when the exporter stopped)" if f.get("trigger") == "stop" else ""))
    return lines


def plot_versions(entries: list[dict], rolling: "Any", total_events: int, path) -> str:
    """A PNG of the versions over the stream (x: clean events before each version's cut) with both
    recalls of each decision, and the pipeline's rolling prequential recall; returns a line for
    the report. matplotlib is optional (the ``bench`` extra)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "no plot: matplotlib is not installed (pip install 'streamrec[bench]')"
    fig, ax = plt.subplots(figsize=(10, 5))
    if len(rolling):
        # the rolling recall is over evaluated first interactions: spread over the stream's events
        xs = [total_events * (i + 1) / len(rolling) for i in range(len(rolling))]
        ax.plot(xs, rolling, color="0.6", label="pipeline recall@10, rolling (prequential)")
    styles = {"promote": ("tab:green", "promoted"), "reject": ("tab:red", "rejected"),
              "hold": ("tab:orange", "held")}
    labelled = set()
    for e in entries:
        f = e.get("figures") or {}
        if e.get("action") not in styles or f.get("candidate") is None or not f.get("events_cut_total"):
            continue
        color, name = styles[e["action"]]
        x = f["events_cut_total"]
        ref = f["current"] if f.get("current") is not None else f.get("baseline")
        ax.scatter([x], [f["candidate"]], color=color, marker="o",
                   label=None if name in labelled else f"candidate, {name}")
        labelled.add(name)
        if ref is not None:
            ax.scatter([x], [ref], color="black", marker="_", s=120,
                       label=None if "ref" in labelled else "reference (CURRENT or baseline)")
            labelled.add("ref")
            ax.plot([x, x], [ref, f["candidate"]], color=color, linewidth=0.8)
    ax.set_xlabel("clean events into the stream")
    ax.set_ylabel("recall@10")
    ax.set_title("model versions and the gate's figures")
    ax.legend(loc="lower right", fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return f"plot of versions and recall: {path}"


def demo_config(cfg: Config) -> Config:
    """``cfg`` with demo.* topics and a demo registry under the state dir."""
    topics = {name: f"demo.{value}" for name, value in cfg.kafka.topics.model_dump().items()}
    paths = cfg.paths_resolved
    return cfg.model_copy(update={
        "kafka": cfg.kafka.model_copy(update={"topics": cfg.kafka.topics.model_copy(update=topics)}),
        "paths": paths.model_copy(update={"registry_dir": paths.state_dir / "demo" / "registry",
                                          "checkpoint_dir": paths.state_dir / "demo" / "checkpoints"}),
        # the bounded stream ends: the last pending version is decided at the cap when the
        # exporter stops (a tie goes to the serving model), never left undecided. A version
        # every second at most: the stream lasts a few tens of seconds on a quiet machine, and an
        # export and its decision take about as long again (about a version per 2.5 s here)
        "exporter": cfg.exporter.model_copy(update={"interval_s": min(cfg.exporter.interval_s, 1.0),
                                                    "gate_decide_on_stop": True}),
        # the exporter and the gate read what checkpoints commit: a replay of a few tens of
        # seconds needs commits every second for versions to be exported and decided in it
        "flink": cfg.flink.model_copy(update={"checkpoint_interval_ms": min(cfg.flink.checkpoint_interval_ms, 1_000)}),
    })


def start_exporter(cfg: Config, log_path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMREC_")} | to_env(cfg)
    log = open(log_path, "ab")
    try:
        return subprocess.Popen([sys.executable, "-m", "streamrec.cli", "exporter"], env=env,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    finally:
        log.close()


def stop_process(proc: subprocess.Popen, timeout: float = 30.0, signalled: bool = False) -> None:
    """SIGTERM (unless ``signalled``: sent already; a second one interrupts the exporter's
    orderly stop), then wait up to ``timeout`` seconds before killing its process group."""
    if proc.poll() is None:
        if not signalled:
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def committed_recommendations(cfg: Config) -> int:
    """About how many recommendations the job has committed: the topic's end offsets
    (transaction markers take offsets too)."""
    return sum(kafka_io.end_offsets(cfg, cfg.kafka.topics.recommendations).values())


class RollbackDemonstration(threading.Thread):
    """Shows, while the job runs, that a rollback changes what users get: once ``after_share`` of
    the stream is scored and the gate has promoted a version, it rolls back to the version
    promoted before CURRENT (CURRENT itself when there is one only: pinned, it is served as it
    is), as `streamrec model rollback` does, holds the pin ``hold_s`` seconds, then unpins. The
    share is of the *committed* records, which trail the job by up to a checkpoint: 0.4 leaves a
    fast machine (8,000 events/s: ~7 s of ML-100k after the pin) time for the pin to be served
    and, after the unpin, for a swap check (2 s) to bring the live table back before the stream
    ends (at 0.7 a CI machine ran out of stream before the unpin was served). Every record scored
    by the older version counts in the run's recall. The report then reads, from the
    recommendations topic, which model scored the records after each step (:func:`rollback_report`)."""

    def __init__(self, cfg: Config, total: int, hold_s: float = 2.0, after_share: float = 0.4):
        super().__init__(daemon=True, name="demo-rollback")
        self.cfg, self.total, self.hold_s, self.after_share = cfg, total, hold_s, after_share
        self.stopped = threading.Event()
        #: (version pinned, pinned at ms, unpinned at ms or None) once it happened
        self.done: tuple[str, int, int | None] | None = None
        self.error: str | None = None

    def _progress(self) -> float:
        return committed_recommendations(self.cfg) / self.total

    def run(self) -> None:
        from streamrec.model.registry import Registry, RegistryError

        registry = Registry(self.cfg.paths_resolved.registry_dir)
        try:
            while not self.stopped.wait(0.5):
                promoted = [e["version"] for e in registry.read_log() if e.get("action") == "promote"]
                if promoted and self._progress() >= self.after_share:
                    break
            else:
                return
            target = promoted[-2] if len(promoted) >= 2 else promoted[-1]
            registry.rollback(to=target, actor="demo", reason="the demo shows a rollback being served")
            pinned_ms = int(time.time() * 1000)
            _say(f"rollback: CURRENT pinned to {target} (as `streamrec model rollback {target}` does); "
                 f"unpinned in {self.hold_s:.0f} s")
            self.done = (target, pinned_ms, None)
            self.stopped.wait(self.hold_s)
            registry.unpin(actor="demo", reason="the demo's rollback ends")
            self.done = (target, pinned_ms, int(time.time() * 1000))
            _say("unpin: the exporter promotes again, the stream serves the live table")
        except (RegistryError, OSError, kafka_io.KafkaException) as exc:  # the demo goes on without it
            self.error = str(exc)

    def stop(self) -> None:
        self.stopped.set()


def rollback_report(recs: list[dict], version: str, pinned_ms: int, unpinned_ms: int | None) -> list[str]:
    """What served the records emitted after the pin and after the unpin: the delay from each to
    the first record of what serves next, and the records by ``model_version`` in each span.

    >>> recs = [{"emitted_ts": t, "model_version": v} for t, v in
    ...         [(900, "live+v1"), (1300, "live+v2"), (1700, "v1"), (2600, "v1"), (3200, "live+v2")]]
    >>> for line in rollback_report(recs, "v1", 1000, 3000):
    ...     print(line)
    rollback to v1: first record scored by v1 700 ms after the pin; while pinned: v1 2, live+v2 1 (the run's recall counts them: an older version serves them)
    unpin: first record of the live table 200 ms after it; after: live+v2 1
    """
    def spans(lo, hi):
        return [r for r in recs if lo <= r["emitted_ts"] < hi]

    def counted(rs):
        return ", ".join(f"{name} {n:,}" for name, n in Counter(r["model_version"] for r in rs).most_common())

    pinned = spans(pinned_ms, unpinned_ms if unpinned_ms is not None else float("inf"))
    first = min((r["emitted_ts"] for r in pinned if r["model_version"] == version), default=None)
    lines = [f"rollback to {version}: " + (f"first record scored by {version} {first - pinned_ms} ms after the pin"
                                          if first is not None else f"no record scored by {version}")
             + f"; while pinned: {counted(pinned) or 'no records'}"
             + (" (the run's recall counts them: an older version serves them)" if first is not None else "")]
    if unpinned_ms is not None:
        after = spans(unpinned_ms, float("inf"))
        back = min((r["emitted_ts"] for r in after if r["model_version"].startswith("live")), default=None)
        lines.append("unpin: " + (f"first record of the live table {back - unpinned_ms} ms after it"
                                  if back is not None else "no record of the live table after it (the stream ended)")
                     + f"; after: {counted(after) or 'no records'}")
    return lines


class Progress(threading.Thread):
    """Prints, every ``every_s`` seconds, how far the job has got: the committed end offsets of
    the recommendations topic (transaction markers take offsets too, so it reads "about")."""

    def __init__(self, cfg: Config, total: int, every_s: float = 15.0):
        super().__init__(daemon=True, name="demo-progress")
        self.cfg, self.total, self.every_s = cfg, total, every_s
        self.stopped = threading.Event()

    def run(self) -> None:
        started, last = time.monotonic(), 0
        while not self.stopped.wait(self.every_s):
            try:
                done = committed_recommendations(self.cfg)
            except Exception:  # noqa: BLE001 - progress is best effort
                continue
            rate = (done - last) / self.every_s
            last = done
            _say(f"progress: about {min(done, self.total):,} of {self.total:,} events scored and committed "
                 f"({rate:,.0f}/s over the last {self.every_s:.0f} s, {time.monotonic() - started:.0f} s in)")

    def stop(self) -> None:
        self.stopped.set()


def run_demo(cfg: Config, limit: int | None = None, keep_running: bool = False) -> int:
    from streamrec.flink_jobs import pipeline
    from streamrec.model.registry import Registry
    from streamrec.evaluate import evaluate

    started_at = time.monotonic()
    _say(assets.check_java())
    data_dir = assets.ml100k_dir(cfg)
    assets.connector_jars(cfg)
    cfg = demo_config(cfg)
    status = broker.up(cfg, log=_say)
    exporter = None
    try:
        topics = cfg.kafka.topics.all()
        kafka_io.delete_topics(cfg, topics)
        kafka_io.ensure_topics(cfg, topics)
        demo_dir = cfg.paths_resolved.state_dir / "demo"
        shutil.rmtree(demo_dir, ignore_errors=True)
        cfg.paths_resolved.registry_dir.mkdir(parents=True)

        events = replay.ml100k_events(data_dir)
        if limit:
            events = events[:limit]
        _say(f"replaying {len(events):,} ML-100k events into {cfg.kafka.topics.raw}")
        result = replay.produce(cfg, cfg.kafka.topics.raw, replay.encode_events(events), total=len(events))
        if result.failed:
            _say(f"replay failed: {result.failed} records undelivered ({result.first_error})")
            return 1
        _say(f"replayed {result.delivered:,} events at {result.rate:,.0f} events/s")

        exporter = start_exporter(cfg, demo_dir / "exporter.log")
        _say(f"exporter sidecar started (pid {exporter.pid}, log {demo_dir / 'exporter.log'})")
        _say("pipeline job running on Flink's local mini-cluster (bounded); this takes a few minutes")
        progress = Progress(cfg, len(events))
        progress.start()
        demonstration = RollbackDemonstration(cfg, len(events))
        demonstration.start()
        try:
            # without the features job: bounded, it would run after the pipeline, over its clean
            # events, when no version is exported any more (its item popularity reaches the
            # exporter only at an export) and the report shows nothing of it; it held the demo
            # ~30 s with the exporter's last candidate waiting (`streamrec run` runs it)
            run = pipeline.run(cfg, bounded=True, quiet=True, with_features=False)
        finally:
            progress.stop()
            demonstration.stop()
            demonstration.join(10)
        # the exporter reads to the end and decides its pending version before it exits; the
        # report's records are read meanwhile (the registry's lines wait for it)
        exporter.send_signal(signal.SIGTERM)
        recs = [RECOMMENDATION.decode(r.value) for r in kafka_io.read_topic(cfg, cfg.kafka.topics.recommendations)]
        clean = [CLEAN_EVENT.decode(r.value) for r in kafka_io.read_topic(cfg, cfg.kafka.topics.clean)]
        stop_process(exporter, timeout=90.0, signalled=True)
        exporter = None

        summary = run.ingest
        _say(summary.line() if summary else "pipeline finished")
        _say(f"pipeline: {result.delivered:,} events through the whole graph in {run.seconds:.0f} s "
             f"({result.delivered / run.seconds:,.0f} events/s incl. job start-up)")
        registry = Registry(cfg.paths_resolved.registry_dir)
        ex = cfg.exporter
        fates, counted = registry_summary(registry.read_log(), undecided=len(registry.undecided()))
        _say(f"{fates}; CURRENT = {registry.current()} (retention keeps "
             f"{retention_rule(ex.retention, ex.retention_hourly_hours, ex.retention_daily_days)})")
        _say(counted)
        entries = registry.read_log()
        for line in gate_summary(entries):
            _say(line)
        from streamrec.udfs.shard_model import MODEL, NONE, POPULARITY

        by_strategy = Counter(r["strategy"] for r in recs)
        # every strategy, 0 included: `none` counts the events whose user had every known item
        strategies = {s: by_strategy.pop(s, 0) for s in (MODEL, POPULARITY, NONE)} | dict(by_strategy)
        served = Counter(r["model_version"] for r in recs if r["strategy"] == MODEL)
        named = ", ".join(f"{name} {count:,}" for name, count in sorted(served.items()))
        if cfg.scoring.serve == "live":
            _say(f"recommendations: {len(recs):,} records ({dict(strategies)}), each naming what scored it: "
                 f"the learning shard's own item table with the CURRENT it was checked against (live+vN), "
                 f"or a registry version (a pin, an operator's promotion, the guard) ({named})")
        else:
            _say(f"recommendations: {len(recs):,} records ({dict(strategies)}); served by "
                 f"{len(served)} model versions (hot swaps: {max(0, len(served) - 1)}: {named})")
        if demonstration.done is not None:
            for line in rollback_report(recs, *demonstration.done):
                _say(line)
        else:
            _say(f"no rollback shown: {demonstration.error or 'the gate promoted no version while the stream ran'}")
        from streamrec.model.scoring import choose_providers

        _say(f"onnxruntime provider: {choose_providers(cfg.scoring.provider)[0]}")
        titles = replay.ml100k_titles(data_dir)
        latest = {}
        for rec in sorted((r for r in recs if r["items"]), key=lambda r: r["event_ts"]):
            latest[rec["user_id"]] = rec
        for user in sorted(latest, key=lambda u: (-latest[u]["event_ts"], u))[:3]:
            rec = latest[user]
            names = ", ".join(titles.get(i["item_id"], i["item_id"]) for i in rec["items"][:5])
            _say(f"user {user} ({rec['strategy']}, {rec['model_version']}): {names}")
        _say("prequential evaluation on the same stream (this replays the reference model) ...")
        # the records read above, not a second read of the topics (as evaluate_topics would)
        ev = evaluate(clean, recs, k=cfg.scoring.top_k, learner_cfg=cfg.learner)
        for line in ev.table().splitlines():
            _say(line)
        _say(plot_versions(entries, ev.pipeline.rolling_recall(2000), ev.events, demo_dir / "versions.png"))
        _say(f"demo done in {time.monotonic() - started_at:.0f} s")
        return 0
    finally:
        if exporter is not None:
            stop_process(exporter)
        if status.started and not keep_running:
            # The demo's topics stay (inspect them with `streamrec consume demo.*`); the next demo
            # deletes them at its start.
            broker.down(cfg, log=_say)
        elif status.embedded and not keep_running:
            _say("the broker was already running before the demo; left running (`streamrec down` stops it)")
        sys.stdout.flush()
