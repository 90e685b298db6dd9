"""Watchers of a running benchmark job, each a thread sampling until stopped: :class:`Monitor` (the
Flink mini-cluster's REST API and ``/proc``), :class:`SourceProgress` (one job's Kafka source,
often) and :class:`CommittedWatcher` (the recommendations as a ``read_committed`` reader sees them).
"""

from __future__ import annotations

import http.client
import json
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter

import numpy as np

from streamrec.bench.jobs import JOB_NAME
from streamrec.bench.probes import (cpu_timeline, flink_jvm_pid, java_thread_names, listening_ports, memory,
                                    thread_cpu, thread_group, thread_waits)
from streamrec.bench.report import shorten
from streamrec.bench.stats import mean_or_none, percentiles

#: The start of the learner's vertex name (flink_jobs/pipeline.py names it "ShardLearner (...)"):
#: its input is one record per micro-batch, and it reports the item exchange's metrics.
LEARNER_VERTEX = "ShardLearner"


class FlinkRest:
    """The local mini-cluster's REST API (a free port each mini-cluster picks at start: found from
    the JVM's listening sockets, re-discovered when a new mini-cluster starts)."""

    def __init__(self, job_name: str | None = JOB_NAME):
        self.port: int | None = None
        self.not_rest: set[int] = set()  # e.g. the py4j gateway port: never probe it twice
        #: the mini-cluster running this job (the features job runs in one of its own, same JVM)
        self.job_name = job_name

    def _get(self, port: int, path: str, timeout: float = 2.0, method: str = "GET"):
        req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method)
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            body = resp.read()
        return json.loads(body) if body else None

    def discover(self, jvm: int | None) -> int | None:
        if jvm is None:
            return None
        for port in listening_ports(jvm):
            if port in self.not_rest:
                continue
            try:
                cfg = self._get(port, "/config", timeout=3.0)
            except http.client.BadStatusLine:  # not HTTP (py4j, RPC, blob server), RemoteDisconnected too
                self.not_rest.add(port)
                continue
            except Exception:  # noqa: BLE001 - e.g. the REST server is still starting: try again later
                continue
            if isinstance(cfg, dict) and "flink-version" in cfg:
                if self.job_name and not self._runs(port, self.job_name):
                    continue
                self.port = port
                return port
        return None

    def _runs(self, port: int, job_name: str) -> bool:
        try:
            jobs = (self._get(port, "/jobs/overview", timeout=3.0) or {}).get("jobs", [])
        except Exception:  # noqa: BLE001 - still starting: try again later
            return False
        return any(j.get("name") == job_name for j in jobs)

    def get(self, path: str, jvm: int | None = None, method: str = "GET"):
        if self.port is None and self.discover(jvm) is None:
            return None
        try:
            return self._get(self.port, path, method=method)
        except urllib.error.HTTPError:
            return None  # e.g. 404 for a job that is gone: the port is still right
        except Exception:  # noqa: BLE001 - the mini-cluster went away: re-discover next time
            self.port = None
            return None


class Monitor(threading.Thread):
    """Samples the Flink JVM, the exporter and the running pipeline job until stopped."""

    METRICS = "busyTimeMsPerSecond,backPressuredTimeMsPerSecond,idleTimeMsPerSecond"

    def __init__(self, say, exporter_pid: int | None = None, interval_s: float = 2.0,
                 progress_s: float = 10.0, expected: int | None = None):
        super().__init__(daemon=True, name="bench-monitor")
        self.say, self.exporter_pid, self.interval_s = say, exporter_pid, interval_s
        self.progress_s, self.expected = progress_s, expected
        self.rest = FlinkRest()
        self.stop_event = threading.Event()
        self.started_at = time.time()
        self.jvm: int | None = None
        self.job_id: str | None = None
        self.job_state: str | None = None
        self.samples: list[dict] = []
        self.checkpoints: dict[int, dict] = {}
        self.failed_checkpoints: dict[int, str] = {}
        self.checkpoint_counts: dict = {}
        self.vertex_names: dict[str, str] = {}
        self.vertex_records: dict[str, dict] = {}
        self.peak = {"jvm_rss": 0, "exporter_rss": 0}
        # the shard learner's item exchange (parallelism > 1, unbounded): REST id -> metric name,
        # the last values, the staleness of every sample
        self.exchange_ids: dict[str, str] = {}
        self.exchange: dict[str, float] = {}
        self.exchange_staleness: list[float] = []
        self._last_progress = 0.0
        # the JVM's threads as last seen (a task thread's CPU stays counted after it exits) and
        # their full names (jstack, re-read at most every 20 s while unnamed threads work)
        self.threads: dict[int, tuple[str, float]] = {}
        self.waits: dict[int, float] = {}  # tid -> seconds runnable but waiting for a core
        self.thread_names: dict[int, str] = {}
        self._names_read_at = 0.0
        # (seconds since start, {tid: cumulative CPU s}) per sample, for thread_timeline()
        self.thread_samples: list[tuple[float, dict[int, float]]] = []

    def stop(self) -> None:
        self.stop_event.set()
        self.join(timeout=30)

    def run(self) -> None:
        while not self.stop_event.is_set():
            t = time.time()
            try:
                self.sample()
            except Exception as exc:  # a sampling hiccup must never stop the benchmark
                self.say(f"monitor: sample failed: {exc!r}")
            self.stop_event.wait(max(0.1, self.interval_s - (time.time() - t)))

    def _find_job(self) -> str | None:
        overview = self.rest.get("/jobs/overview", self.jvm)
        if not overview:
            return None
        jobs = [j for j in overview.get("jobs", []) if j.get("name") == JOB_NAME]
        if not jobs:
            return None
        job = max(jobs, key=lambda j: j.get("start-time", 0))
        self.job_state = job.get("state")
        return job["jid"]

    def sample(self) -> None:
        now = time.time()
        if self.jvm is None:
            self.jvm = flink_jvm_pid()
        jvm_rss, _ = memory(self.jvm)
        exp_rss, _ = memory(self.exporter_pid)
        self._sample_threads(now)
        sample: dict = {"t": round(now - self.started_at, 2), "jvm_rss": jvm_rss, "exporter_rss": exp_rss}
        self.peak["jvm_rss"] = max(self.peak["jvm_rss"], jvm_rss or 0)
        self.peak["exporter_rss"] = max(self.peak["exporter_rss"], exp_rss or 0)
        jid = self._find_job() if self.jvm else None
        if jid:
            self.job_id = jid
            job = self.rest.get(f"/jobs/{jid}", self.jvm) or {}
            self.job_state = job.get("state", self.job_state)
            vertices = {}
            for v in job.get("vertices", []):
                vid = v["id"]
                self.vertex_names[vid] = v["name"]
                m = v.get("metrics", {})
                self.vertex_records[vid] = {"read": m.get("read-records"), "write": m.get("write-records")}
                entry = {"status": v.get("status"), "read": m.get("read-records"),
                         "write": m.get("write-records")}
                if v.get("status") == "RUNNING":
                    metrics = self.rest.get(f"/jobs/{jid}/vertices/{vid}/subtasks/metrics?get={self.METRICS}",
                                            self.jvm) or []
                    for item in metrics:
                        entry[item["id"]] = item.get("avg")
                    if LEARNER_VERTEX in v["name"]:
                        self._sample_exchange(jid, vid)
                vertices[vid] = entry
            sample["vertices"] = vertices
            cps = self.rest.get(f"/jobs/{jid}/checkpoints", self.jvm) or {}
            self.checkpoint_counts = cps.get("counts", self.checkpoint_counts)
            for h in cps.get("history", []) or []:
                if h.get("status") == "FAILED" and h.get("id") is not None:
                    self.failed_checkpoints[h["id"]] = shorten(str(h.get("failure_message") or "?"), 160)
                if h.get("status") == "COMPLETED":
                    self.checkpoints[h["id"]] = {
                        k: h.get(k) for k in ("id", "trigger_timestamp", "latest_ack_timestamp",
                                              "end_to_end_duration", "state_size", "checkpointed_size",
                                              "is_savepoint")}
            sample["checkpoints_completed"] = self.checkpoint_counts.get("completed")
        self.samples.append(sample)
        if now - self._last_progress >= self.progress_s:
            self._last_progress = now
            self.say(self.progress_line(sample))

    #: The shard learner's item-exchange metrics (udfs/flink_operators.py) and how they add up
    #: over its subtasks.
    EXCHANGE_METRICS = {"item_deltas_sent": "sum", "item_deltas_applied": "sum", "item_exchange_lag_ms": "max",
                        "item_staleness_ms": "max", "item_staleness_max_ms": "max"}

    def _sample_exchange(self, jid: str, vid: str) -> None:
        """The exchange's figures now, and the largest staleness seen in a sample (at parallelism
        > 1 in an unbounded run; a user metric's REST id starts with the operator's name)."""
        if not self.exchange_ids:
            listed = self.rest.get(f"/jobs/{jid}/vertices/{vid}/subtasks/metrics", self.jvm) or []
            self.exchange_ids = {m["id"]: m["id"].rsplit(".", 1)[-1] for m in listed
                                 if m["id"].rsplit(".", 1)[-1] in self.EXCHANGE_METRICS}
            if not self.exchange_ids:
                return
        query = urllib.parse.quote(",".join(self.exchange_ids))
        for item in self.rest.get(f"/jobs/{jid}/vertices/{vid}/subtasks/metrics?get={query}", self.jvm) or []:
            name = self.exchange_ids.get(item["id"])
            if name:
                self.exchange[name] = item.get(self.EXCHANGE_METRICS[name])
        if self.exchange.get("item_staleness_ms") is not None:
            self.exchange_staleness.append(self.exchange["item_staleness_ms"])

    def exchange_summary(self) -> dict | None:
        """The item exchange as the last sample saw it, with the staleness over the samples."""
        if not self.exchange:
            return None
        sampled = [x for x in self.exchange_staleness if x]
        return {**self.exchange, "staleness_sampled_ms": percentiles(sampled) if sampled else None}

    def _sample_threads(self, now: float) -> None:
        current = thread_cpu(self.jvm)
        self.threads.update(current)
        self.waits.update(thread_waits(self.jvm))
        unnamed = any(tid not in self.thread_names and cpu > 0.5 and thread_group(comm) == "other"
                      for tid, (comm, cpu) in current.items())
        if unnamed and now - self._names_read_at >= 20.0:
            self._names_read_at = now
            self.thread_names.update(java_thread_names(self.jvm))
        if self.threads:
            self.thread_samples.append((now - self.started_at,
                                        {tid: seconds for tid, (_, seconds) in self.threads.items()}))

    def thread_timeline(self) -> dict[str, list[list[float]]]:
        """:func:`cpu_timeline` of the run, threads grouped by their final names (a task thread's
        full name is read by jstack only after it starts working)."""
        def group(tid: int) -> str:
            return shorten(thread_group(self.thread_names.get(tid, self.threads[tid][0])), 60)

        grouped = []
        for t, per_thread in self.thread_samples:
            groups: dict[str, float] = {}
            for tid, seconds in per_thread.items():
                groups[group(tid)] = groups.get(group(tid), 0.0) + seconds
            grouped.append((t, groups))
        return cpu_timeline(grouped)

    def vertex_id(self, contains: str) -> str | None:
        for vid, name in self.vertex_names.items():
            if contains in name:
                return vid
        return None

    def progress_line(self, sample: dict) -> str:
        parts = [f"t={sample['t']:.0f}s"]
        if self.job_state:
            parts.append(f"job {self.job_state}")
        src = self.vertex_id("Source")
        learner = self.vertex_id(LEARNER_VERTEX)
        if src and self.vertex_records.get(src, {}).get("write") is not None:
            done = self.vertex_records[src]["write"]
            parts.append(f"source out {done:,}" + (f"/{self.expected:,}" if self.expected else ""))
        if learner and self.vertex_records.get(learner, {}).get("read") is not None:
            parts.append(f"learner batches in {self.vertex_records[learner]['read']:,}")
        # the REST API reports a vertex without a measurement yet as a string ("NaN")
        busy = [(b if isinstance(b := e.get("busyTimeMsPerSecond"), (int, float)) else 0, vid)
                for vid, e in (sample.get("vertices") or {}).items()]
        if busy:
            b, vid = max(busy, key=lambda bv: bv[0])
            parts.append(f"busiest {shorten(self.vertex_names[vid], 40)} {b:.0f} ms/s")
        if self.checkpoint_counts:
            parts.append(f"checkpoints {self.checkpoint_counts.get('completed', 0)} ok"
                         f"/{self.checkpoint_counts.get('failed', 0)} failed")
        if sample.get("jvm_rss"):
            parts.append(f"JVM RSS {sample['jvm_rss'] / 2**20:,.0f} MiB")
        return " | ".join(parts)

    def busy_table(self) -> list[dict]:
        """Per vertex: mean busy / back-pressured / idle ms per second over the RUNNING samples."""
        acc: dict[str, dict[str, list[float]]] = {}
        for s in self.samples:
            for vid, e in (s.get("vertices") or {}).items():
                if e.get("status") != "RUNNING":
                    continue
                for key in ("busyTimeMsPerSecond", "backPressuredTimeMsPerSecond", "idleTimeMsPerSecond"):
                    val = e.get(key)
                    if isinstance(val, (int, float)) and not (isinstance(val, float) and np.isnan(val)):
                        acc.setdefault(vid, {}).setdefault(key, []).append(float(val))
        rows = []
        for vid, name in self.vertex_names.items():
            vals = acc.get(vid, {})
            rows.append({
                "vertex": shorten(name, 200),
                "busy_ms_per_s": mean_or_none(vals.get("busyTimeMsPerSecond")),
                "backpressured_ms_per_s": mean_or_none(vals.get("backPressuredTimeMsPerSecond")),
                "idle_ms_per_s": mean_or_none(vals.get("idleTimeMsPerSecond")),
                "samples": len(vals.get("busyTimeMsPerSecond", [])),
                "records_in": self.vertex_records.get(vid, {}).get("read"),
                "records_out": self.vertex_records.get(vid, {}).get("write"),
            })
        return sorted(rows, key=lambda r: -(r["busy_ms_per_s"] or 0))

    def checkpoint_summary(self) -> dict:
        done = sorted(self.checkpoints.values(), key=lambda c: c["id"])
        durations = [c["end_to_end_duration"] for c in done if c.get("end_to_end_duration") is not None]
        latest = done[-1] if done else None
        return {
            "counts": self.checkpoint_counts,
            "completed_seen": len(done),
            "duration_ms": {**percentiles(durations, (50, 95)), "max": max(durations) if durations else None},
            "latest": latest,
            # the reasons of the failed checkpoints seen in the REST history (it keeps the last few)
            "failure_reasons": dict(Counter(self.failed_checkpoints.values()).most_common(5)),
            "max_state_size": max((c.get("state_size") or 0 for c in done), default=None),
            "max_checkpointed_size": max((c.get("checkpointed_size") or 0 for c in done), default=None),
        }


class SourceProgress(threading.Thread):
    """How many records a job's Kafka source has read, sampled every ``interval_s`` until stopped:
    ``read`` = ``[(wall time, records)]``. The source operator's own counter (FLIP-33
    ``numRecordsIn``, summed over its subtasks): the vertex's output can be pre-aggregated (the
    features job chains a local window aggregate to its source). Lighter than :class:`Monitor`
    (no /proc, one REST call per sample), so it can sample often."""

    def __init__(self, job_name: str, interval_s: float = 0.5):
        super().__init__(daemon=True, name="bench-source-progress")
        self.job_name, self.interval_s = job_name, interval_s
        self.rest = FlinkRest(job_name)
        self.read: list[tuple[float, float]] = []
        self.stop_event = threading.Event()
        self._jvm: int | None = None
        self._where: tuple[str, str, str] | None = None  # job id, vertex id, metric id

    def stop(self) -> None:
        self.stop_event.set()
        self.join(timeout=30)

    def run(self) -> None:
        while not self.stop_event.wait(self.interval_s):
            try:
                self.sample()
            except Exception:  # noqa: BLE001 - a sampling hiccup must never stop the benchmark
                pass

    def _locate(self) -> tuple[str, str, str] | None:
        self._jvm = self._jvm or flink_jvm_pid()
        jobs = [j for j in (self.rest.get("/jobs/overview", self._jvm) or {}).get("jobs", [])
                if j.get("name") == self.job_name and j.get("state") == "RUNNING"]
        if not jobs:
            return None
        jid = max(jobs, key=lambda j: j.get("start-time", 0))["jid"]
        for v in (self.rest.get(f"/jobs/{jid}", self._jvm) or {}).get("vertices", []):
            if v["name"].startswith("Source") and v.get("status") == "RUNNING":
                listed = self.rest.get(f"/jobs/{jid}/vertices/{v['id']}/subtasks/metrics", self._jvm) or []
                metric = next((m["id"] for m in listed
                               if m["id"].startswith("Source__") and m["id"].endswith(".numRecordsIn")), None)
                if metric:
                    return jid, v["id"], metric
        return None

    def sample(self) -> None:
        self._where = self._where or self._locate()
        if self._where is None:
            return
        jid, vid, metric = self._where
        now = time.time()
        for item in self.rest.get(f"/jobs/{jid}/vertices/{vid}/subtasks/metrics?get="
                                  f"{urllib.parse.quote(metric)}&agg=sum", self._jvm) or []:
            if isinstance(item.get("sum"), (int, float)):
                self.read.append((now, float(item["sum"])))


class CommittedWatcher(threading.Thread):
    """A read_committed consumer of the recommendations topic, run during the latency phase: the
    time each record became visible to it (``seen_ms`` by ``(source_partition, source_offset)``),
    which is what a downstream consumer of an exactly-once sink experiences."""

    def __init__(self, cfg, topic: str):
        super().__init__(daemon=True)
        from streamrec.runtime import kafka_io

        self.consumer = kafka_io.consumer(cfg, read_committed=True)
        self.consumer.subscribe([topic])
        self.seen_ms: dict[tuple[int, int], int] = {}
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.is_set():
            for msg in self.consumer.consume(1000, timeout=0.2):
                if msg.error() or msg.value() is None:
                    continue
                now = int(time.time() * 1000)
                rec = json.loads(msg.value())
                self.seen_ms.setdefault((rec.get("source_partition"), rec.get("source_offset")), now)

    def stop(self) -> None:
        self._done.set()
        self.join(10)
        self.consumer.close()
