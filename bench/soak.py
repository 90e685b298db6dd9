"""A soak of the model lifecycle: the unbounded pipeline job, the features job and the exporter
sidecar (as ``streamrec run`` starts them) fed at a fixed rate for many minutes on a stream
whose user population keeps growing (issue 30, item 3).

    python -m streamrec.bench.soak [--rate 1000] [--minutes 15] [--stream synthetic|ml100k]

What it measures, on fresh ``bench.soak.*`` topics and a registry and checkpoints of their own
under ``<state_dir>/bench/soak/`` (bench/jobs.py ``unbounded_config``; nothing of the user's is
touched):

* **the lifecycle**: from ``registry.log`` (model/registry.py; every entry has its ``ts``),
  versions exported (``publish``), promoted, rejected, of those the rejections that held the
  live table back (``hold_back_live``: the guard), held (a pin), superseded, left undecided;
  export -> decision latency per version (the decision's ``ts`` minus its ``publish`` ``ts``;
  the gate's own ``waited_s`` beside it) with p50/p95;
* **the exporter's memory**: its RSS (``/proc/<pid>/status``) every ``--sample-s`` seconds, its
  peak (``VmHWM``) at the end, beside the users it holds a vector for (the newest version's
  ``counts.users_with_vectors``) and the gate's sampled users (each decision's ``sample_users``,
  ``sample_fraction``; ``exporter.gate_max_users`` caps the sample); the RSS growth per user is
  a least-squares slope over the samples (:func:`per_user_slope`);
* **whether the pipeline kept up**: events fed (the raw topic's end offsets) against records
  scored (a read_uncommitted consumer counting the recommendation records as they are written)
  and the source's committed consumer lag (what ``streamrec run``'s progress line prints: raw
  end offsets minus the offsets the job committed with its last checkpoint, so up to one
  checkpoint interval of events even when it keeps up); after the run, from every record:
  events fed vs records, and the ingest -> recommendation latency (``emitted_ts`` minus the
  Kafka timestamp of the raw record) per time bin;
* **what served the records**: the records' ``model_version`` (``live``, ``live+vN``, ``vN``
  during a guard or a pin; report.py ``served_by``) in all and per time bin.

The streams (``--stream``), both generated lazily (memory flat whatever the length):

* ``synthetic`` (default): bench/synthetic.py's planted-cluster stream (Zipf items in clusters,
  Zipf user activity, drifting taste) generated in rounds of ``--round-events`` (50,000)
  events, each round with ``--round-users`` (10,000) users of its own (ids renamed per round, a
  new seed each round, the same item catalogue): the population grows by about 5,500 users per
  round (the Zipf activity leaves some of a round's users without events), ~100,000 users in
  15 minutes at 1,000 events/s, far past the gate's 20,000-user cap, which is the point;
* ``ml100k``: MovieLens-100k cycled, user ids renamed per round (``196`` -> ``196-r1``), event
  time shifted past the previous round: 943 new users per 100,000 events, ~8,500 users in 15
  minutes, under the gate's cap (real ratings, but the memory question is not really asked).

Prints progress every ``--progress-s`` (30) seconds; writes ``bench/results/<date>-<name>.json``
and a PNG beside it (report.py ``new_result`` / ``write_result``): versions over time with their
decisions, records by what served them, the exporter's RSS and users, the lag. The pure helpers
are unit-tested in tests/bench/test_soak.py.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from streamrec.bench.report import MODEL_KINDS, fmt, model_kind, new_result, registry_fates, served_by, write_result
from streamrec.bench.stats import percentiles

STREAMS = ("synthetic", "ml100k")
DECISIONS = ("promote", "reject", "hold", "supersede")


# ---------------------------------------------------------------- streams (pure, lazy)

def growing_synthetic(total: int, round_events: int = 50_000, round_users: int = 10_000, items: int = 10_000,
                      clusters: int = 50, rate: float = 1000.0, seed: int = 38) -> Iterator[dict]:
    """``total`` raw events of bench/synthetic.py's stream, generated ``round_events`` at a time,
    each round with ``round_users`` users of its own (``su<round>.<n>``, a new seed per round)
    over the same item catalogue, event time running on at ``rate`` events per second (a round
    spans ``round_events / rate`` seconds of event time, the next one starts after it). Only the
    event contract's fields (README, "Contracts").

    >>> ev = list(growing_synthetic(250, round_events=100, round_users=20, items=100, clusters=5))
    >>> len(ev), ev[0]["event_id"], ev[100]["event_id"], sorted(ev[0])
    (250, 's0.0', 's1.0', ['event_id', 'event_type', 'item_id', 'ts', 'user_id'])
    >>> len({e["event_id"] for e in ev}), all(a["ts"] <= b["ts"] for a, b in zip(ev, ev[1:]))
    (250, True)
    >>> sorted({e["user_id"].split(".")[0] for e in ev})  # each round its own users
    ['su0', 'su1', 'su2']
    """
    from streamrec.bench.synthetic import DAY_MS, synthetic_stream

    span_ms = round_events / rate * 1000.0
    years = span_ms / (365 * DAY_MS)
    sent, rnd = 0, 0
    while sent < total:
        n = min(round_events, total - sent)
        # the whole round's time span even for a short last round: the same rate of event time
        chunk = synthetic_stream(round_events, items=items, users=round_users, clusters=clusters,
                                 years=years, seed=seed + rnd)[:n]
        shift = int(rnd * span_ms)
        for e in chunk:
            yield {"event_id": f"s{rnd}.{e['event_id'][1:]}", "user_id": f"su{rnd}.{e['user_id'][2:]}",
                   "item_id": e["item_id"], "event_type": e["event_type"], "ts": e["ts"] + shift}
        sent += n
        rnd += 1


def renamed_rounds(events: list[dict], total: int) -> Iterator[dict]:
    """``total`` events going round ``events`` (in order): round r > 0 renames every user
    (``<user>-r<r>``) and event (``<event_id>-r<r>``) and shifts event time past the previous
    round, so each round is new users with new events (dedup keeps them, event time moves on).

    >>> ev = [{"event_id": "a", "user_id": "u", "ts": 0}, {"event_id": "b", "user_id": "v", "ts": 10}]
    >>> [(e["event_id"], e["user_id"], e["ts"]) for e in renamed_rounds(ev, 5)]
    [('a', 'u', 0), ('b', 'v', 10), ('a-r1', 'u-r1', 11), ('b-r1', 'v-r1', 21), ('a-r2', 'u-r2', 22)]
    """
    if not events:
        return
    span = events[-1]["ts"] - events[0]["ts"] + 1
    sent, rnd = 0, 0
    while True:
        for e in events:
            if sent >= total:
                return
            yield e if rnd == 0 else {**e, "event_id": f"{e['event_id']}-r{rnd}",
                                      "user_id": f"{e['user_id']}-r{rnd}", "ts": e["ts"] + rnd * span}
            sent += 1
        rnd += 1


class UserCounter:
    """Passes events through, counting them and their distinct users (read from another thread)."""

    def __init__(self, events: Iterable[dict]):
        self.events, self.users, self.count = events, set(), 0

    def __iter__(self) -> Iterator[dict]:
        for e in self.events:
            self.users.add(e["user_id"])
            self.count += 1
            yield e


# ---------------------------------------------------------------- figures (pure)

def _ts(value: str) -> float:
    return datetime.datetime.fromisoformat(value).timestamp()


def version_decisions(entries: Iterable[dict], t0: float | None = None) -> list[dict]:
    """One row per published version from ``registry.log`` entries: when it was published and
    decided (seconds since ``t0``, epoch seconds; absolute when None), the decision (the first
    promote / reject / hold / supersede of it; None: undecided), export -> decision seconds
    (between the two log lines), the gate's ``waited_s``, held-out events compared (``n``),
    what decided it (``trigger``: ``look``, ``cap``, ``stop``), whether a rejection held the live
    table back (``guard``) and the gate's sample (``sample_users``, ``sample_fraction``).

    >>> log = [{"action": "publish", "version": "v1", "ts": "2026-01-01T00:00:00.000+00:00"},
    ...        {"action": "promote", "version": "v1", "ts": "2026-01-01T00:00:01.500+00:00",
    ...         "figures": {"waited_s": 1.4, "n": 500, "trigger": "look", "sample_users": 7}},
    ...        {"action": "publish", "version": "v2", "ts": "2026-01-01T00:00:05.000+00:00"},
    ...        {"action": "reject", "version": "v2", "ts": "2026-01-01T00:00:09.000+00:00",
    ...         "hold_back_live": True, "figures": {"n": 2000}},
    ...        {"action": "publish", "version": "v3", "ts": "2026-01-01T00:00:10.000+00:00"}]
    >>> rows = version_decisions(log, t0=_ts("2026-01-01T00:00:00+00:00"))
    >>> [(r["version"], r["decision"], r["latency_s"], r["guard"]) for r in rows]
    [('v1', 'promote', 1.5, False), ('v2', 'reject', 4.0, True), ('v3', None, None, False)]
    >>> rows[0]["published_s"], rows[0]["waited_s"], rows[0]["sample_users"]
    (0.0, 1.4, 7)
    """
    rows: dict[str, dict] = {}
    base = t0 or 0.0
    for e in entries:
        version, action = e.get("version"), e.get("action")
        if action == "publish" and version not in rows:
            rows[version] = {"version": version, "published_s": round(_ts(e["ts"]) - base, 3), "decision": None,
                             "decided_s": None, "latency_s": None, "waited_s": None, "n": None, "trigger": None,
                             "guard": False, "sample_users": None, "sample_fraction": None}
        elif action in DECISIONS and version in rows and rows[version]["decision"] is None:
            row, f = rows[version], e.get("figures") or {}
            row.update(decision=action, decided_s=round(_ts(e["ts"]) - base, 3),
                       waited_s=f.get("waited_s"), n=f.get("n"), trigger=f.get("trigger"),
                       guard=bool(action == "reject" and e.get("hold_back_live")),
                       sample_users=f.get("sample_users"), sample_fraction=f.get("sample_fraction"))
            row["latency_s"] = round(row["decided_s"] - row["published_s"], 3)
    return list(rows.values())


def latency_summary(rows: list[dict]) -> dict:
    """Export -> decision seconds (:func:`version_decisions`) over the versions the gate decided
    on the stream (promote / reject / hold, not at the exporter's stop; supersessions are not the
    gate's decisions), p50 / p95 / max, and by decision.

    >>> rows = [{"decision": "promote", "latency_s": 1.0, "trigger": "look"},
    ...         {"decision": "reject", "latency_s": 3.0, "trigger": "look"},
    ...         {"decision": "reject", "latency_s": 30.0, "trigger": "stop"},
    ...         {"decision": None, "latency_s": None, "trigger": None}]
    >>> s = latency_summary(rows)
    >>> s["decided"], s["p50"], s["max"], s["by_decision"]["promote"]["p50"]
    (2, 2.0, 3.0, 1.0)
    """
    decided = [r for r in rows if r.get("decision") in ("promote", "reject", "hold")
               and r.get("latency_s") is not None and r.get("trigger") != "stop"]
    lat = [r["latency_s"] for r in decided]

    def pct(values: list[float]) -> dict:
        return {k: None if v is None else round(v, 3) for k, v in percentiles(values, (50, 95)).items()}

    out = {"decided": len(decided), **pct(lat), "max": max(lat) if lat else None, "by_decision": {}}
    for d in ("promote", "reject", "hold"):
        vals = [r["latency_s"] for r in decided if r["decision"] == d]
        if vals:
            out["by_decision"][d] = {"n": len(vals), **pct(vals)}
    return out


def per_user_slope(points: list[tuple[float, float]]) -> float | None:
    """The least-squares slope of ``(users, bytes)`` points: bytes per user (None for fewer than
    two distinct user counts).

    >>> per_user_slope([(0, 100.0), (10, 1100.0), (20, 2100.0)])
    100.0
    >>> per_user_slope([(5, 1.0), (5, 2.0)]) is None
    True
    """
    if len({p[0] for p in points}) < 2:
        return None
    x = np.array([p[0] for p in points], dtype=np.float64)
    y = np.array([p[1] for p in points], dtype=np.float64)
    return round(float(np.polyfit(x, y, 1)[0]), 3)


def kinds_series(times_ms: list[int], versions: list[str | None], t0_ms: int, bin_s: float = 10.0) -> list[list]:
    """Records per bin by what served them: ``[[bin start s since t0, live, live+vN, vN], ...]``
    (:data:`~streamrec.bench.report.MODEL_KINDS`; records without a version left out).

    >>> kinds_series([0, 500, 12_000, 31_000], ["live", "live+v1", "v1", "live+v1"], 0)
    [[0.0, 1, 1, 0], [10.0, 0, 0, 1], [20.0, 0, 0, 0], [30.0, 0, 1, 0]]
    """
    if not times_ms:
        return []
    t = (np.asarray(times_ms, dtype=np.float64) - t0_ms) / 1000.0
    bins = np.floor(t / bin_s).astype(np.int64)
    lo, n = int(bins.min()), int(bins.max() - bins.min()) + 1
    counts = np.zeros((n, len(MODEL_KINDS)), dtype=np.int64)
    for b, v in zip(bins.tolist(), versions):
        kind = model_kind(v)
        if kind in MODEL_KINDS:
            counts[b - lo, MODEL_KINDS.index(kind)] += 1
    return [[round((lo + i) * bin_s, 3), *map(int, row)] for i, row in enumerate(counts)]


def binned_percentiles(times_s: np.ndarray, values: np.ndarray, bin_s: float = 10.0) -> list[list[float]]:
    """``[[bin start s, p50, p99, max], ...]`` of ``values`` by ``times_s`` (empty bins left out).

    >>> binned_percentiles(np.array([0.0, 1.0, 12.0]), np.array([10.0, 30.0, 5.0]))
    [[0.0, 20.0, 29.8, 30.0], [10.0, 5.0, 5.0, 5.0]]
    """
    if not len(times_s):
        return []
    bins = np.floor(times_s / bin_s).astype(np.int64)
    out = []
    for b in np.unique(bins):
        v = values[bins == b]
        out.append([round(float(b * bin_s), 3), round(float(np.percentile(v, 50)), 1),
                    round(float(np.percentile(v, 99)), 1), round(float(v.max()), 1)])
    return out


def rss_summary(samples: list[dict], from_users: int | None = None) -> dict:
    """Exporter RSS (bytes) from the samples (``rss``, ``users_with_vectors``, ``users_fed``): start
    (first sample), end (last), peak sampled, and growth per user (:func:`per_user_slope`) over
    the samples with a users count (the exporter's vectors; else the users fed); with
    ``from_users`` also ``bytes_per_user_from``: the slope over the samples with at least that
    many users only (past the gate's cap, ``exporter.gate_max_users``: what grows once the gate's
    sample stops growing).

    >>> s = rss_summary([{"rss": 100, "users_with_vectors": 0}, {"rss": 300, "users_with_vectors": 2},
    ...                  {"rss": 250, "users_with_vectors": 4}, {"rss": 260, "users_with_vectors": 6}],
    ...                 from_users=2)
    >>> s["start"], s["peak_sampled"], s["end"], s["bytes_per_user"], s["bytes_per_user_from"]
    (100, 300, 260, 21.5, -10.0)
    """
    rss = [s for s in samples if s.get("rss")]
    if not rss:
        return {"start": None, "end": None, "peak_sampled": None, "bytes_per_user": None}
    basis = "users_with_vectors"
    pts = [(s[basis], s["rss"]) for s in rss if s.get(basis) is not None]
    if len({p[0] for p in pts}) < 2:
        basis = "users_fed"
        pts = [(s[basis], s["rss"]) for s in rss if s.get(basis) is not None]
    out = {"start": rss[0]["rss"], "end": rss[-1]["rss"], "peak_sampled": max(s["rss"] for s in rss),
           "bytes_per_user": per_user_slope(pts), "bytes_per_user_basis": basis}
    if from_users is not None:
        out["bytes_per_user_from_users"] = from_users
        out["bytes_per_user_from"] = per_user_slope([p for p in pts if p[0] >= from_users])
    return out


# ---------------------------------------------------------------- the run

class Feeder(threading.Thread):
    """``replay.produce`` of the stream at ``rate`` in a thread of its own."""

    def __init__(self, cfg, events: UserCounter, total: int, rate: float):
        super().__init__(daemon=True, name="soak-feeder")
        self.cfg, self.events, self.total, self.rate = cfg, events, total, rate
        self.result = None
        self.error: BaseException | None = None

    def run(self) -> None:
        from streamrec import replay

        try:
            self.result = replay.produce(self.cfg, self.cfg.kafka.topics.raw, replay.encode_events(self.events),
                                         total=self.total, rate=self.rate, progress=False)
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            self.error = exc


def _ends(cfg, topic: str, committed: bool) -> int | None:
    from streamrec.runtime import kafka_io

    try:
        return sum(kafka_io.end_offsets(cfg, topic, read_committed=committed, retry_s=0).values())
    except Exception:  # noqa: BLE001 - a sample never stops the soak
        return None


class SourceLag:
    """The pipeline source's committed consumer lag on the raw topic (flink_jobs/progress.py's,
    its group found from the broker's list: the pipeline's group is ``streamrec-pipeline-<run id>``,
    and only this run's has offsets on the fresh raw topic; groups without them are not asked
    again)."""

    def __init__(self, cfg, job_name: str):
        self.cfg, self.job_name, self.group = cfg, job_name, None
        self.not_ours: set[str] = set()

    def _committed(self, group: str, partitions: list[int]):
        from confluent_kafka import TopicPartition

        from streamrec.runtime import kafka_io

        cons = kafka_io.consumer(self.cfg, group=group)
        try:
            return cons.committed([TopicPartition(self.cfg.kafka.topics.raw, p) for p in partitions], timeout=5)
        finally:
            cons.close()

    def _find_group(self, partitions: list[int]) -> str | None:
        from streamrec.runtime import kafka_io

        admin = kafka_io.admin(self.cfg)  # held: the future fails if the client is collected first
        listed = admin.list_consumer_groups(request_timeout=5).result(timeout=15)
        for g in listed.valid:
            if not g.group_id.startswith(self.job_name + "-") or g.group_id in self.not_ours:
                continue
            if any(tp.offset >= 0 for tp in self._committed(g.group_id, partitions)):
                return g.group_id
            self.not_ours.add(g.group_id)
        return None

    def sample(self) -> int | None:
        from streamrec.runtime import kafka_io

        try:
            ends = kafka_io.end_offsets(self.cfg, self.cfg.kafka.topics.raw, read_committed=False, retry_s=0)
            self.group = self.group or self._find_group(list(ends))
            if self.group is None:
                return None
            got = self._committed(self.group, list(ends))
            return sum(max(0, ends[tp.partition] - max(tp.offset, 0)) for tp in got)
        except Exception:  # noqa: BLE001 - a sample never stops the soak
            return None


class RecordCounter(threading.Thread):
    """Counts the recommendation records as they are written (read_uncommitted, so no wait for
    the checkpoint's commit; the topic's end offsets would count transaction markers too)."""

    def __init__(self, cfg, topic: str):
        super().__init__(daemon=True, name="soak-record-counter")
        from streamrec.runtime import kafka_io

        self.consumer = kafka_io.consumer(cfg, read_committed=False)
        self.consumer.subscribe([topic])
        self.count = 0
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.is_set():
            for msg in self.consumer.consume(1000, timeout=0.2):
                if not msg.error() and msg.value() is not None:
                    self.count += 1

    def stop(self) -> None:
        self._done.set()
        self.join(10)
        self.consumer.close()


def newest_counts(registry) -> tuple[str | None, dict]:
    """The newest version and its meta.json ``counts`` ({} when none or unreadable)."""
    try:
        versions = registry.list_versions()
        if not versions:
            return None, {}
        return versions[-1], registry.read_meta(versions[-1]).get("counts") or {}
    except Exception:  # noqa: BLE001 - retention may delete it meanwhile
        return None, {}


def read_records(ucfg, fed_from_ms: int) -> dict:
    """Every recommendation record, kept small: ``emitted_ts``, the ingest -> record latency (the
    raw record's Kafka timestamp, found by ``(source_partition, source_offset)``) and
    ``model_version``; plus strategies and duplicates by source offset."""
    from streamrec.runtime import kafka_io

    raw_ts: dict[int, np.ndarray] = {}
    ends = kafka_io.end_offsets(ucfg, ucfg.kafka.topics.raw, read_committed=False)
    for p, end in ends.items():
        raw_ts[p] = np.full(end, -1, dtype=np.int64)
    for r in kafka_io.read_topic(ucfg, ucfg.kafka.topics.raw, read_committed=False):
        if r.offset < len(raw_ts.get(r.partition, ())):
            raw_ts[r.partition][r.offset] = r.timestamp_ms
    seen = {p: np.zeros(len(a), dtype=np.int8) for p, a in raw_ts.items()}
    emitted, lat_emitted, lat, versions, strategies, dup = [], [], [], [], Counter(), 0
    for r in kafka_io.read_topic(ucfg, ucfg.kafka.topics.recommendations):
        rec = r.json()
        emitted.append(rec.get("emitted_ts"))
        versions.append(rec.get("model_version"))
        strategies[rec.get("strategy")] += 1
        p, o = rec.get("source_partition"), rec.get("source_offset")
        if p in raw_ts and o is not None and 0 <= o < len(raw_ts[p]):
            dup += bool(seen[p][o])
            seen[p][o] = 1
            ts = raw_ts[p][o]
            if ts >= 0 and rec.get("emitted_ts") is not None:
                lat_emitted.append(rec["emitted_ts"])
                lat.append(rec["emitted_ts"] - ts)
    lat_arr = np.asarray(lat, dtype=np.float64)
    lat_t = (np.asarray(lat_emitted, dtype=np.float64) - fed_from_ms) / 1000.0
    return {"records": len(versions), "strategies": dict(strategies), "duplicates": dup,
            "events_without_record": int(sum(int((s == 0).sum()) for s in seen.values())),
            "served_by": served_by(versions),
            "kinds_series": kinds_series(emitted, versions, fed_from_ms) if emitted else [],
            "latency_ms": {**percentiles(lat_arr, (50, 95, 99)), "max": float(lat_arr.max()) if len(lat_arr) else None},
            "latency_series": binned_percentiles(lat_t, lat_arr)}


def soak(cfg, rate: float = 1000.0, minutes: float = 15.0, stream: str = "synthetic", name: str | None = None,
         with_features: bool = True, sample_s: float = 5.0, progress_s: float = 30.0, drain_s: float = 180.0,
         round_events: int = 50_000, round_users: int = 10_000, out_dir: Path | None = None,
         command: str | None = None) -> dict:
    """Run the soak (module docstring) and write its JSON and PNG; returns the result."""
    from streamrec.bench.jobs import JOB_NAME, cancel_job, fresh_topics, start_unbounded, unbounded_config, wait_until
    from streamrec.bench.monitor import FlinkRest
    from streamrec.bench.probes import flink_jvm_pid, memory
    from streamrec.demo import stop_process
    from streamrec.model.registry import Registry
    from streamrec.runtime import assets, broker

    def say(msg: str) -> None:
        print(f"[soak] {datetime.datetime.now(datetime.timezone.utc):%H:%M:%S} {msg}", flush=True)

    total = int(rate * minutes * 60)
    name = name or f"soak-{stream}-{rate:g}eps-{minutes:g}min"
    stem, head = new_result(name, command, out_dir)
    for suffix in (".json", ".png"):
        if stem.with_suffix(suffix).exists():
            raise SystemExit(f"{stem.with_suffix(suffix)} exists: choose another --name")
    ucfg = unbounded_config(cfg, "bench.soak", "soak")
    say(assets.check_java())
    assets.connector_jars(cfg)
    assets.kafka_broker_jars(cfg)
    if stream == "ml100k":
        from streamrec import replay

        events = renamed_rounds(replay.ml100k_events(assets.ml100k_dir(cfg)), total)
    else:
        events = growing_synthetic(total, round_events=round_events, round_users=round_users, rate=rate)
    counter = UserCounter(events)
    ex = ucfg.exporter
    result: dict = {**head, "stream": stream, "rate": rate, "minutes": minutes, "events_planned": total,
                    "features_job_beside": with_features,
                    "stream_settings": {"round_events": round_events, "round_users": round_users}
                    if stream == "synthetic" else {"round_events": 100_000, "users_per_round": 943},
                    "settings": {"checkpoint_interval_ms": ucfg.flink.checkpoint_interval_ms,
                                 "parallelism": ucfg.flink.parallelism, "serve": ucfg.scoring.serve,
                                 "exporter_interval_s": ex.interval_s, "gate_max_users": ex.gate_max_users,
                                 "gate_events": ex.gate_events, "gate_max_wait_s": ex.gate_max_wait_s,
                                 "retention": ex.retention}}
    status = broker.up(cfg, log=say)
    samples: list[dict] = []
    exporter = client = features_client = registry = counter_recs = None
    t0 = time.time()
    try:
        root = fresh_topics(ucfg)
        registry = Registry(ucfg.paths_resolved.registry_dir)
        say(f"starting the exporter, the unbounded pipeline job{' and the features job' if with_features else ''} "
            f"on {ucfg.kafka.topics.raw} (checkpoints every {ucfg.flink.checkpoint_interval_ms} ms)")
        exporter, client, features_client = start_unbounded(ucfg, root, with_features)
        job_id = str(client.get_job_id())
        rest = FlinkRest()

        def running() -> bool:
            job = rest.get(f"/jobs/{job_id}", flink_jvm_pid()) or {}
            vs = job.get("vertices", [])
            return bool(vs) and all(v.get("status") == "RUNNING" for v in vs)

        if not wait_until(running, 180):
            say("warning: the job's tasks were not all RUNNING after 180 s; feeding anyway")
        time.sleep(3.0)  # the Kafka source discovers its partitions
        rss0, _ = memory(exporter.pid)
        lag = SourceLag(ucfg, JOB_NAME)
        counter_recs = RecordCounter(ucfg, ucfg.kafka.topics.recommendations)
        counter_recs.start()
        say(f"feeding {total:,} {stream} events at {rate:,.0f} events/s ({minutes:g} min); exporter pid "
            f"{exporter.pid}, RSS {fmt(rss0 and rss0 / 2**20)} MiB")
        t0 = time.time()
        feeder = Feeder(ucfg, counter, total, rate)
        feeder.start()
        last_print = 0.0
        drain_until = None

        def take_sample() -> dict:
            now = time.time()
            rss, hwm = memory(exporter.pid)
            version, counts = newest_counts(registry)
            fed = _ends(ucfg, ucfg.kafka.topics.raw, committed=False)
            scored = counter_recs.count
            s = {"t": round(now - t0, 2), "rss": rss, "hwm": hwm, "jvm_rss": memory(flink_jvm_pid())[0],
                 "events_generated": counter.count, "users_fed": len(counter.users), "fed": fed,
                 "scored": scored, "lag_scored": fed - scored if fed is not None and scored is not None else None,
                 "source_lag": lag.sample(), "committed": _ends(ucfg, ucfg.kafka.topics.recommendations, True),
                 "newest_version": version, "users_with_vectors": counts.get("users_with_vectors"),
                 "current": registry.current()}
            samples.append(s)
            return s

        while True:
            step = time.time()
            s = take_sample()
            if s["t"] - last_print >= progress_s:
                last_print = s["t"]
                fates = registry_fates(registry.read_log())
                say(f"t={s['t']:.0f}s fed {fmt(s['fed'])} ({fmt(len(counter.users))} users) scored {fmt(s['scored'])} "
                    f"lag {fmt(s['lag_scored'])} (source, committed: {fmt(s['source_lag'])}) | versions "
                    f"{fates['exported']} exported, {fates['promoted']} promoted, {fates['rejected']} rejected "
                    f"({fates['guards']} guards), {fates['held']} held, CURRENT {s['current']} | exporter RSS "
                    f"{fmt(s['rss'] and s['rss'] / 2**20)} MiB, {fmt(s['users_with_vectors'])} user vectors")
            if feeder.error is not None:
                raise RuntimeError(f"feeding failed: {feeder.error!r}")
            if not feeder.is_alive():
                if drain_until is None:
                    res = feeder.result
                    say(f"fed {res.delivered:,} events in {res.seconds:.0f} s ({res.rate:,.0f} events/s, "
                        f"{res.failed} failed); waiting up to {drain_s:.0f} s for the job to score them")
                    drain_until = time.time() + drain_s
                    result["fed_seconds"] = round(res.seconds, 2)
                elif (s["lag_scored"] is not None and s["lag_scored"] <= max(5, res.delivered // 1000)) \
                        or time.time() > drain_until:
                    result["drained"] = s["lag_scored"] is not None and s["lag_scored"] <= max(5, res.delivered // 1000)
                    result["drain_s"] = round(time.time() - t0 - result["fed_seconds"], 1)
                    break
            time.sleep(max(0.2, sample_s - (time.time() - step)))
        # the exactly-once sinks commit on checkpoint completion: let two more happen
        time.sleep(2.5 * ucfg.flink.checkpoint_interval_ms / 1000)
        take_sample()
        result["events_fed"] = feeder.result.delivered
        result["feed_rate"] = feeder.result.rate
        result["users_fed"] = len(counter.users)
    finally:
        if counter_recs is not None:
            counter_recs.stop()
        cancel_job(client)
        cancel_job(features_client)
        exporter_hwm = None
        if exporter is not None:
            _, exporter_hwm = memory(exporter.pid)
            stop_process(exporter)
        result["samples"] = samples
        result["exporter_hwm"] = exporter_hwm
        write_result(result, stem)
    try:
        say("reading the registry log and every recommendation record")
        entries = registry.read_log()
        rows = version_decisions(entries, t0)
        result["registry"] = {**registry_fates(entries, undecided=len(registry.undecided())),
                              "current": registry.current(),
                              "log_actions": dict(Counter(e.get("action") for e in entries))}
        result["versions"] = rows
        result["export_to_decision_s"] = latency_summary(rows)
        result["records"] = read_records(ucfg, int(t0 * 1000))
    finally:
        if status.started:
            broker.down(cfg, log=say)
    rss = rss_summary(samples, from_users=ucfg.exporter.gate_max_users or None)
    rss["peak_hwm"] = exporter_hwm
    sampled = [r["sample_users"] for r in rows if r.get("sample_users") is not None]
    fractions = [r["sample_fraction"] for r in rows if r.get("sample_fraction") is not None]
    last_users = [s["users_with_vectors"] for s in samples if s.get("users_with_vectors") is not None]
    result["exporter_memory"] = {**rss, "users_fed": result.get("users_fed"),
                                 "users_with_vectors_last": last_users[-1] if last_users else None,
                                 "gate_sample_users_max": max(sampled) if sampled else None,
                                 "gate_sample_users_last": sampled[-1] if sampled else None,
                                 "gate_sample_fraction_last": fractions[-1] if fractions else None}
    fed_s = result.get("fed_seconds", 1e9)
    lags = [s["lag_scored"] for s in samples if s.get("lag_scored") is not None and s["t"] <= fed_s]
    src = [s["source_lag"] for s in samples if s.get("source_lag") is not None and s["t"] <= fed_s]
    result["lag"] = {"scored_max": max(lags) if lags else None, "scored_p50": percentiles(lags, (50,))["p50"],
                     "scored_last_while_fed": lags[-1] if lags else None,
                     "source_committed_max": max(src) if src else None,
                     "source_committed_p50": percentiles(src, (50,))["p50"]}
    result["load_after"] = os.getloadavg()
    write_result(result, stem)
    try:
        plot_soak(result, stem.with_suffix(".png"))
        say(f"plot: {stem.with_suffix('.png')}")
    except Exception as exc:  # noqa: BLE001 - the figures matter more than the picture
        say(f"plot failed: {exc!r}")
    for line in summary_lines(result):
        say(line)
    say(f"results: {stem.with_suffix('.json')}")
    return result


def summary_lines(result: dict) -> list[str]:
    """The figures the soak prints at the end."""
    reg, lat = result.get("registry") or {}, result.get("export_to_decision_s") or {}
    mem, recs, lag = result.get("exporter_memory") or {}, result.get("records") or {}, result.get("lag") or {}
    served = recs.get("served_by") or {}
    mib = lambda x: fmt(x and x / 2**20, ",.0f")  # noqa: E731
    return [
        f"fed {fmt(result.get('events_fed'))} events ({fmt(result.get('users_fed'))} users) at "
        f"{fmt(result.get('feed_rate'))} events/s; {fmt(recs.get('records'))} records "
        f"({fmt(recs.get('events_without_record'))} events without one, {fmt(recs.get('duplicates'))} duplicates); "
        f"drained {result.get('drained')} {fmt(result.get('drain_s'), '.0f')} s after the feed",
        f"versions: {fmt(reg.get('exported'))} exported, {fmt(reg.get('promoted'))} promoted, "
        f"{fmt(reg.get('rejected'))} rejected (of them {fmt(reg.get('guards'))} held the live table back), "
        f"{fmt(reg.get('held'))} held, {fmt(reg.get('superseded'))} superseded, {fmt(reg.get('undecided'))} undecided; "
        f"CURRENT {reg.get('current')}",
        f"export -> decision ({fmt(lat.get('decided'))} decided on the stream): p50 {fmt(lat.get('p50'), '.1f')} s, "
        f"p95 {fmt(lat.get('p95'), '.1f')} s, max {fmt(lat.get('max'), '.1f')} s",
        f"exporter RSS: start {mib(mem.get('start'))} MiB, "
        f"peak {mib(mem.get('peak_hwm') or mem.get('peak_sampled'))} MiB, end {mib(mem.get('end'))} MiB; "
        f"{fmt(mem.get('users_with_vectors_last'))} users with vectors, gate sample "
        f"{fmt(mem.get('gate_sample_users_last'))} users "
        f"(fraction {fmt(mem.get('gate_sample_fraction_last'), '.3f')}); "
        f"{fmt(mem.get('bytes_per_user'), ',.0f')} bytes per user ({mem.get('bytes_per_user_basis')}), "
        f"{fmt(mem.get('bytes_per_user_from'), ',.0f')} past {fmt(mem.get('bytes_per_user_from_users'))} users",
        f"lag while fed (events fed - records scored): p50 {fmt(lag.get('scored_p50'))}, "
        f"max {fmt(lag.get('scored_max'))}; source committed lag p50 {fmt(lag.get('source_committed_p50'))}, "
        f"max {fmt(lag.get('source_committed_max'))}; "
        f"ingest -> record p50 {fmt((recs.get('latency_ms') or {}).get('p50'))} ms, "
        f"p99 {fmt((recs.get('latency_ms') or {}).get('p99'))} ms",
        f"served by: {served.get('by_kind')} ({len(served.get('by_model_version') or {})} model_versions, "
        f"registry versions served {served.get('registry_versions_served')})",
    ]


def plot_soak(result: dict, path: Path) -> Path:
    """Four panels: versions over time with their decisions; records per 10 s by what served
    them; the exporter's RSS and its users; events fed vs scored and the lag."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ((ax_v, ax_s), (ax_m, ax_l)) = plt.subplots(2, 2, figsize=(16, 9), sharex=True)
    fig.suptitle(f"streamrec soak {result.get('name')} ({result.get('date')}): {result.get('stream')} at "
                 f"{result.get('rate', 0):,.0f} events/s, {result.get('minutes')} min")
    style = {"promote": ("tab:green", "^"), "reject": ("tab:red", "v"), "hold": ("tab:orange", "s"),
             "supersede": ("tab:gray", "x"), None: ("k", "o")}
    rows = result.get("versions") or []
    for decision, (color, marker) in style.items():
        pts = [r for r in rows if r["decision"] == decision and not r.get("guard")]
        if pts:
            ax_v.scatter([r["decided_s"] if r["decided_s"] is not None else r["published_s"] for r in pts],
                         [int(r["version"].lstrip("v")) for r in pts], color=color, marker=marker, s=18,
                         label=f"{decision or 'undecided'} ({len(pts)})")
    guards = [r for r in rows if r.get("guard")]
    if guards:
        ax_v.scatter([r["decided_s"] for r in guards], [int(r["version"].lstrip("v")) for r in guards],
                     color="purple", marker="v", s=30, label=f"reject + guard ({len(guards)})")
    for r in rows:
        if r["decided_s"] is not None:
            ax_v.plot([r["published_s"], r["decided_s"]], [int(r["version"].lstrip("v"))] * 2, color="0.6", lw=0.6)
    lat = result.get("export_to_decision_s") or {}
    ax_v.set_title(f"versions: published -> decided (export→decision p50 {fmt(lat.get('p50'), '.1f')} s, "
                   f"p95 {fmt(lat.get('p95'), '.1f')} s)")
    ax_v.set_ylabel("version")
    if rows:
        ax_v.legend(fontsize=8)

    ks = (result.get("records") or {}).get("kinds_series") or []
    if ks:
        xs = [k[0] for k in ks]
        ax_s.stackplot(xs, *[[k[i + 1] / 10.0 for k in ks] for i in range(len(MODEL_KINDS))],
                       labels=list(MODEL_KINDS), step="post")
        ax_s.legend(fontsize=8, loc="upper left")
    ax_s.set_title("records per second by what served them (model_version)")

    samples = result.get("samples") or []
    t = [s["t"] for s in samples]
    ax_m.plot(t, [(s.get("rss") or 0) / 2**20 for s in samples], label="exporter RSS (MiB)")
    ax_m.set_ylabel("MiB")
    ax_u = ax_m.twinx()
    ax_u.plot(t, [s.get("users_fed") for s in samples], color="tab:orange", ls="--", label="users fed")
    ax_u.plot(t, [s.get("users_with_vectors") for s in samples], color="tab:green", ls=":",
              label="users with vectors (newest version)")
    ax_u.set_ylabel("users")
    h1, l1 = ax_m.get_legend_handles_labels()
    h2, l2 = ax_u.get_legend_handles_labels()
    ax_m.legend(h1 + h2, l1 + l2, fontsize=8, loc="upper left")
    ax_m.set_title("exporter memory and users")
    ax_m.set_xlabel("seconds since feeding started")

    ax_l.plot(t, [s.get("lag_scored") for s in samples], label="events fed - records scored")
    ax_l.plot(t, [s.get("source_lag") for s in samples], label="source lag (committed offsets)", lw=0.8)
    ax_l.set_ylabel("events")
    ax_r = ax_l.twinx()
    ax_r.plot(t, [s.get("fed") for s in samples], color="0.5", ls="--", lw=0.8, label="fed (cumulative)")
    ax_r.plot(t, [s.get("scored") for s in samples], color="k", ls=":", lw=0.8, label="scored (cumulative)")
    h1, l1 = ax_l.get_legend_handles_labels()
    h2, l2 = ax_r.get_legend_handles_labels()
    ax_l.legend(h1 + h2, l1 + l2, fontsize=8, loc="upper left")
    ax_l.set_title("did the pipeline keep up?")
    ax_l.set_xlabel("seconds since feeding started")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def main(argv: list[str] | None = None) -> int:
    import faulthandler
    import signal

    from streamrec.core.config import load_config

    faulthandler.register(signal.SIGUSR1)  # `kill -USR1 <pid>`: every thread's stack, should it hang

    parser = argparse.ArgumentParser(prog="python -m streamrec.bench.soak", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=1000.0, help="events per second fed (default 1000)")
    parser.add_argument("--minutes", type=float, default=15.0, help="minutes of feeding (default 15)")
    parser.add_argument("--stream", choices=STREAMS, default="synthetic",
                        help="synthetic: a growing user population (default); ml100k: ML-100k cycled, users renamed")
    parser.add_argument("--round-events", type=int, default=50_000, help="synthetic: events per round of new users")
    parser.add_argument("--round-users", type=int, default=10_000, help="synthetic: users per round")
    parser.add_argument("--without-features", action="store_true", help="leave the features job out")
    parser.add_argument("--sample-s", type=float, default=5.0)
    parser.add_argument("--progress-s", type=float, default=30.0)
    parser.add_argument("--drain-s", type=float, default=180.0, help="how long to wait for the job after the feed")
    parser.add_argument("--name", help="result name (default soak-<stream>-<rate>eps-<minutes>min)")
    parser.add_argument("--out", help="results folder (default: bench/results under the working directory)")
    args = parser.parse_args(argv)
    soak(load_config(), args.rate, args.minutes, args.stream, args.name, not args.without_features, args.sample_s,
         args.progress_s, args.drain_s, args.round_events, args.round_users, args.out,
         command=" ".join(["python -m streamrec.bench.soak", *(argv if argv is not None else sys.argv[1:])]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
