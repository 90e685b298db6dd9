"""``streamrec bench`` / ``make bench``: ML-100k through the whole pipeline, measured.

Four phases, each on fresh ``bench.*`` topics, a fresh registry and fresh checkpoints under
``<state_dir>/bench/`` (nothing of the user's own is touched):

1. **throughput**: the events are replayed into ``bench.events.raw`` first, then the exporter
   sidecar (a subprocess) and the pipeline job (bounded) run together, as in ``streamrec demo``.
   Throughput = events / (last - first ``emitted_ts`` of the recommendations), i.e. from the first
   to the last event through the whole graph (the wall time including job start-up is reported
   too). While the job runs a monitor thread samples, every 2 seconds, the Flink
   mini-cluster's REST API (per-vertex busy / back-pressured time, checkpoints) and ``/proc``
   (RSS and peak RSS of the Flink JVM, which hosts the thread-mode Python operators, and of the
   exporter). Then the features job runs over the clean events the pipeline wrote, as
   ``streamrec run --bounded`` runs it, timed and measured on its own (``throughput.features_job``;
   the feature rows are checked against the plain-Python reference).
2. **quality**: :func:`streamrec.evaluate.evaluate_topics` on the throughput run's topics
   (pipeline vs windowed popularity vs the sequential reference) and rolling recall@10 series.
3. **capacity** (unless ``--latency-rate`` is given): the jobs of the latency phase (the
   unbounded pipeline, the features job beside it, the exporter), at its checkpoint interval, over
   a backlog of the same events on ``bench.cap.*`` topics: events / (first recommendation -> the
   later of the last recommendation and the features job having read every clean event). The
   throughput phase measures the recommendations' path alone; the latency phase's jobs share the
   cores with the features job and checkpoint more often, so it runs at half of this figure.
4. **latency**: the pipeline is started unbounded on ``bench.lat.*`` topics with the exporter
   and the features job beside it (as ``streamrec run`` starts them);
   warm-up events are sent at the target rate for 20 s (at least 500) and scored first (the
   fresh job's JIT and Python operator warm-up, first model export), then events are replayed at
   a fixed rate (half the capacity of phase 3) for
   ``--latency-seconds``; latency = ``emitted_ts`` - the Kafka timestamp of the source record in
   ``events.raw`` (found by ``(source_partition, source_offset)``), over the measured records
   only. ``emitted_ts`` is when the Scorer produced the record; a ``read_committed`` consumer
   sees it only when the checkpoint commits the sink's transaction (up to one checkpoint
   interval later). The job is cancelled at the end.

Writes ``bench/results/<YYYY-MM-DD>-<name>.json`` and ``<YYYY-MM-DD>-<name>.png`` and prints a
table. The pure helpers (percentiles, series, /proc parsing) are unit-tested in
``tests/bench/test_bench_helpers.py``.
"""

from __future__ import annotations

import datetime
import http.client
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"
JOB_NAME = "streamrec-pipeline"


# ------------------------------------------------------------------------------------------------
# pure helpers (tested)


def percentiles(values: Sequence[float], qs: Iterable[float] = (50, 95, 99)) -> dict[str, float | None]:
    """``{"p50": .., "p95": .., "p99": ..}`` with linear interpolation; None for no values.

    >>> percentiles([1, 2, 3, 4], qs=(50,))
    {'p50': 2.5}
    """
    arr = np.asarray(list(values), dtype=np.float64)
    out: dict[str, float | None] = {}
    for q in qs:
        key = f"p{q:g}"
        out[key] = float(np.percentile(arr, q)) if arr.size else None
    return out


def span_throughput(count: int, first_ms: int | None, last_ms: int | None) -> float | None:
    """``count`` events over the span first..last (ms) in events/s; None when undefined."""
    if not count or first_ms is None or last_ms is None or last_ms <= first_ms:
        return None
    return count / ((last_ms - first_ms) / 1000.0)


def time_reached(samples: Sequence[tuple[float, float]], target: float) -> float | None:
    """When a growing count first reached ``target``, from ``(time, count)`` samples: linear
    between the last sample below it and the first at or above it (None if never reached).

    >>> time_reached([(0.0, 0), (1.0, 40), (2.0, 100)], 70)
    1.5
    >>> time_reached([(0.0, 0), (1.0, 40)], 70) is None
    True
    """
    before = None
    for t, count in samples:
        if count >= target:
            if before is None or count == before[1]:
                return t
            t0, c0 = before
            return t0 + (target - c0) / (count - c0) * (t - t0)
        before = (t, count)
    return None


def rate_series(times_ms: Sequence[int], bin_s: float = 1.0, t0_ms: int | None = None) -> list[list[float]]:
    """Events per second in consecutive bins: ``[[t_s (bin start, from t0), events/s], ...]``.

    >>> rate_series([0, 100, 1500, 3100], bin_s=1.0)
    [[0.0, 2.0], [1.0, 1.0], [2.0, 0.0], [3.0, 1.0]]
    """
    if not len(times_ms):
        return []
    t = np.asarray(times_ms, dtype=np.float64)
    t0 = float(t.min() if t0_ms is None else t0_ms)
    idx = np.floor((t - t0) / (bin_s * 1000.0)).astype(np.int64)
    idx = idx[idx >= 0]
    counts = np.bincount(idx)
    return [[round(n * bin_s, 3), float(c) / bin_s] for n, c in enumerate(counts)]


def latency_series(times_ms: Sequence[int], latencies_ms: Sequence[float], bin_s: float = 1.0,
                   t0_ms: int | None = None) -> list[dict]:
    """Per time bin: ``{"t_s", "n", "p50", "p99"}`` of the latencies whose time falls in it.

    >>> latency_series([0, 10, 1200], [5, 15, 7])
    [{'t_s': 0.0, 'n': 2, 'p50': 10.0, 'p99': 14.9}, {'t_s': 1.0, 'n': 1, 'p50': 7.0, 'p99': 7.0}]
    """
    if not len(times_ms):
        return []
    t = np.asarray(times_ms, dtype=np.float64)
    lat = np.asarray(latencies_ms, dtype=np.float64)
    t0 = float(t.min() if t0_ms is None else t0_ms)
    idx = np.floor((t - t0) / (bin_s * 1000.0)).astype(np.int64)
    out = []
    for b in np.unique(idx[idx >= 0]):
        sel = lat[idx == b]
        out.append({"t_s": round(float(b) * bin_s, 3), "n": int(sel.size),
                    "p50": round(float(np.percentile(sel, 50)), 3),
                    "p99": round(float(np.percentile(sel, 99)), 3)})
    return out


def batch_histogram(record_batch_sizes: Iterable[int]) -> dict[int, int]:
    """Scoring batches by size, from the ``batch_size`` of each record (a batch of b records
    contributes b records of batch_size b).

    >>> batch_histogram([1, 3, 3, 3, 2, 2])
    {1: 1, 2: 1, 3: 1}
    """
    records = Counter(int(b) for b in record_batch_sizes)
    return {size: -(-n // size) for size, n in sorted(records.items())}


def batch_summary(record_batch_sizes: Sequence[int]) -> dict:
    hist = batch_histogram(record_batch_sizes)
    batches = sum(hist.values())
    records = len(record_batch_sizes)
    return {
        "batches": batches,
        "records": records,
        "mean_batch": records / batches if batches else None,
        "max_batch": max(hist) if hist else None,
        "record_weighted_p50": percentiles(record_batch_sizes, (50,))["p50"],
        "histogram": {str(k): v for k, v in hist.items()},
    }


def downsample(values: Sequence[float], max_points: int = 500) -> list[list[float]]:
    """``[[index, value], ...]`` with at most ~``max_points`` evenly spaced points (last kept).

    >>> downsample([0.0, 1.0, 2.0, 3.0, 4.0], max_points=2)
    [[0, 0.0], [3, 3.0], [4, 4.0]]
    """
    n = len(values)
    if n == 0:
        return []
    step = max(1, -(-n // max_points))
    idx = list(range(0, n, step))
    if idx[-1] != n - 1:
        idx.append(n - 1)
    return [[i, round(float(values[i]), 6)] for i in idx]


def parse_status_kb(status_text: str, field: str) -> int | None:
    """A ``kB`` field of ``/proc/<pid>/status`` in bytes.

    >>> parse_status_kb("Name:\\tjava\\nVmHWM:\\t  2048 kB\\nVmRSS:\\t 1024 kB\\n", "VmHWM")
    2097152
    """
    for line in status_text.splitlines():
        if line.startswith(field + ":"):
            parts = line.split()
            if len(parts) >= 2 and parts[1].isdigit():
                return int(parts[1]) * 1024
    return None


def parse_listening(net_tcp_text: str) -> dict[int, int]:
    """``{socket inode: port}`` of the LISTEN sockets in a ``/proc/net/tcp`` or ``tcp6`` table.

    >>> txt = ("  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\\n"
    ...        "   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4242 1\\n"
    ...        "   1: 0100007F:1F91 0100007F:C350 01 00000000:00000000 00:00000000 00000000     0        0 4243 1\\n")
    >>> parse_listening(txt)
    {4242: 8080}
    """
    out = {}
    for line in net_tcp_text.splitlines()[1:]:
        parts = line.split()
        if len(parts) < 10 or parts[3] != "0A":
            continue
        port = int(parts[1].rsplit(":", 1)[1], 16)
        out[int(parts[9])] = port
    return out


def parse_ppid(stat_text: str) -> int:
    """The parent pid from a ``/proc/<pid>/stat`` line (the command may contain spaces).

    >>> parse_ppid("123 (java (x)) S 45 123 123 0")
    45
    """
    return int(stat_text[stat_text.rindex(")") + 2:].split()[1])


# ------------------------------------------------------------------------------------------------
# /proc and the Flink REST API


def _read(path: str) -> str | None:
    try:
        with open(path) as fh:
            return fh.read()
    except OSError:
        return None


def descendants(pid: int) -> list[tuple[int, str]]:
    """``(pid, comm)`` of every descendant process of ``pid``."""
    parents: dict[int, list[tuple[int, str]]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        stat = _read(f"/proc/{entry}/stat")
        if not stat:
            continue
        try:
            comm = stat[stat.index("(") + 1:stat.rindex(")")]
            parents.setdefault(parse_ppid(stat), []).append((int(entry), comm))
        except (ValueError, IndexError):
            continue
    out, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            out.append(child)
            todo.append(child[0])
    return out


def flink_jvm_pid(parent: int | None = None) -> int | None:
    """The PyFlink gateway JVM started by this process (the local mini-cluster runs in it), not
    the embedded Kafka broker's JVM, which may be a child of this process too."""
    from streamrec.runtime.broker import MAIN_CLASS

    for pid, comm in descendants(parent or os.getpid()):
        cmdline = (_read(f"/proc/{pid}/cmdline") or "").split("\0")
        if comm == "java" and MAIN_CLASS not in cmdline:
            return pid
    return None


def memory(pid: int | None) -> tuple[int | None, int | None]:
    """(RSS, peak RSS = VmHWM) in bytes of ``pid``."""
    text = _read(f"/proc/{pid}/status") if pid else None
    if not text:
        return None, None
    return parse_status_kb(text, "VmRSS"), parse_status_kb(text, "VmHWM")


def parse_cpu_ticks(stat_text: str) -> int:
    """utime + stime (clock ticks) from a ``/proc/<pid>/stat`` line.

    >>> parse_cpu_ticks("123 (java (x)) S 45 123 123 0 -1 0 0 0 0 0 700 300 0 0")
    1000
    """
    fields = stat_text[stat_text.rindex(")") + 2:].split()
    return int(fields[11]) + int(fields[12])


def cpu_seconds(pid: int | None) -> float | None:
    """CPU time (user + system) ``pid`` has used so far, from /proc."""
    text = _read(f"/proc/{pid}/stat") if pid else None
    return parse_cpu_ticks(text) / os.sysconf("SC_CLK_TCK") if text else None


def cpu_us_per_event(before: float | None, after: float | None, events: int) -> float | None:
    if after is None or not events:
        return None
    return round((after - (before or 0.0)) * 1e6 / events, 1)


#: JVM-internal threads by the start of their name, at most the 15 characters the kernel keeps
#: (the rest are Flink's task threads, one per subtask and chain, named after the chain, and
#: "other": start-up, REST, RPC, ...).
_THREAD_GROUPS = (("C1 CompilerThre", "JIT compilers"), ("C2 CompilerThre", "JIT compilers"),
                  ("GC Thread", "garbage collector"), ("G1 ", "garbage collector"),
                  ("rocksdb:", "RocksDB background (flush, compaction)"),
                  ("kafka-producer-", "Kafka producers' network threads"),
                  ("Source Data Fet", "Kafka source fetcher"))
_SUBTASK = re.compile(r" \(\d+/\d+\)(#\d+)?$")


def thread_group(name: str) -> str:
    """Where a JVM thread's CPU is reported: a task thread under its chain's name (one line per
    operator chain, subtasks summed), JVM and client internals by kind.

    >>> thread_group("C2 CompilerThread0"), thread_group("rocksdb:low")
    ('JIT compilers', 'RocksDB background (flush, compaction)')
    >>> thread_group("Deduplicate[12] -> Calc[13] (1/2)#0"), thread_group("Thread-3")
    ('task: Deduplicate[12] -> Calc[13]', 'other')
    """
    for prefix, group in _THREAD_GROUPS:
        if name.startswith(prefix):
            return group
    if _SUBTASK.search(name):
        return "task: " + _SUBTASK.sub("", name)
    return "other"


def _thread_files(pid: int | None, name: str) -> dict[int, str]:
    """``{tid: text}`` of ``/proc/<pid>/task/<tid>/<name>`` for every thread of ``pid`` still there."""
    if not pid:
        return {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return {}
    texts = {int(tid): _read(f"/proc/{pid}/task/{tid}/{name}") for tid in tids}
    return {tid: text for tid, text in texts.items() if text}


def thread_cpu(pid: int | None) -> dict[int, tuple[str, float]]:
    """``{tid: (comm, CPU seconds)}`` of every thread of ``pid`` (``comm``: the kernel's first 15
    characters of the thread's name)."""
    tick = os.sysconf("SC_CLK_TCK")
    return {tid: (stat[stat.index("(") + 1:stat.rindex(")")], parse_cpu_ticks(stat) / tick)
            for tid, stat in _thread_files(pid, "stat").items()}


def parse_schedstat_wait(schedstat_text: str) -> float | None:
    """Seconds a thread has spent runnable but waiting for a core, from ``/proc/<pid>/task/<tid>/
    schedstat`` (``run_ns wait_ns timeslices``); None where the kernel keeps no schedstats.

    >>> parse_schedstat_wait("1500000000 2500000000 321")
    2.5
    >>> parse_schedstat_wait("") is None
    True
    """
    fields = schedstat_text.split()
    return int(fields[1]) / 1e9 if len(fields) >= 2 else None


def thread_waits(pid: int | None) -> dict[int, float]:
    """``{tid: seconds waited for a core}`` of every thread of ``pid``: on a machine with fewer
    cores than runnable threads, a task thread's CPU time alone hides that it was starved."""
    waits = {tid: parse_schedstat_wait(text) for tid, text in _thread_files(pid, "schedstat").items()}
    return {tid: wait for tid, wait in waits.items() if wait is not None}


def parse_jstack_names(text: str) -> dict[int, str]:
    """``{tid: full thread name}`` from a ``jstack`` dump (``nid`` is the Linux thread id).

    >>> parse_jstack_names('"C2 CompilerThread0" #14 daemon prio=9 os_prio=0 cpu=1.2ms tid=0x7f nid=0x4a2b waiting')
    {18987: 'C2 CompilerThread0'}
    """
    return {int(m.group(2), 16): m.group(1)
            for m in re.finditer(r'^"(.*)" .*?\bnid=(0x[0-9a-f]+)', text, re.M)}


def java_thread_names(pid: int) -> dict[int, str]:
    """The JVM's full thread names (Flink names a task thread after its whole operator chain;
    the kernel keeps 15 characters), from ``jstack`` next to the JVM's own ``java``."""
    java = Path(os.path.realpath(f"/proc/{pid}/exe"))
    jstack = java.with_name("jstack") if java.with_name("jstack").exists() else shutil.which("jstack")
    if not jstack:
        return {}
    try:
        dump = subprocess.run([str(jstack), str(pid)], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    return parse_jstack_names(dump)


def thread_cpu_table(threads: dict[int, tuple[str, float]], names: dict[int, str], events: int,
                     waits: dict[int, float] | None = None) -> list[dict]:
    """CPU µs per event by :func:`thread_group` (the JVM's threads as last sampled), largest first;
    with ``waits`` (:func:`thread_waits`) also the seconds the group's threads waited for a core
    and that wait's share of the time they wanted one (run + wait).

    >>> thread_cpu_table({1: ("C2 CompilerThre", 2.0), 2: ("Dedup (1/1)#0", 1.0), 3: ("C1 CompilerThre", 1.0)},
    ...                  {2: "Dedup -> Calc (1/1)#0"}, 1_000_000)[0]
    {'threads': 'JIT compilers', 'cpu_us_per_event': 3.0, 'cpu_s': 3.0, 'count': 2}
    >>> thread_cpu_table({2: ("Dedup (1/1)#0", 1.0)}, {}, 1_000, waits={2: 3.0})[0]["waited_for_core_share"]
    0.75
    """
    groups: dict[str, list[int]] = {}
    for tid, (comm, _) in threads.items():
        groups.setdefault(thread_group(names.get(tid, comm)), []).append(tid)
    rows = []
    for group, tids in groups.items():
        cpu = sum(threads[t][1] for t in tids)
        row = {"threads": group, "cpu_us_per_event": round(cpu * 1e6 / events, 1) if events else None,
               "cpu_s": round(cpu, 2), "count": len(tids)}
        known = [waits[t] for t in tids if waits and t in waits]
        if known:
            wait = sum(known)
            row["waited_for_core_s"] = round(wait, 2)
            row["waited_for_core_share"] = round(wait / (cpu + wait), 2) if cpu + wait > 0 else None
        rows.append(row)
    return sorted(rows, key=lambda r: -r["cpu_s"])


def cpu_timeline(samples: Sequence[tuple[float, dict[str, float]]], bin_s: float = 5.0,
                 top: int = 7) -> dict[str, list[list[float]]]:
    """Cores used per thread group over time, from cumulative CPU seconds sampled as
    ``(t, {group: cpu_s})``: one point per ``bin_s`` for the ``top`` groups of most CPU, the rest
    summed as "rest" (shows which stage takes the machine in which part of a run).

    >>> cpu_timeline([(0, {"a": 0.0, "b": 0.0}), (10, {"a": 5.0, "b": 1.0}), (20, {"a": 15.0, "b": 1.0})], top=1)
    {'a': [[10, 0.5], [20, 1.0]], 'rest': [[10, 0.1], [20, 0.0]]}
    """
    points: list[tuple[float, dict[str, float]]] = []
    for t, groups in samples:
        if not points or t - points[-1][0] >= bin_s:
            points.append((t, groups))
    if len(points) < 2:
        return {}
    final = points[-1][1]
    keep = sorted(final, key=lambda g: -final[g])[:top]
    out: dict[str, list[list[float]]] = {g: [] for g in (*keep, "rest")}
    for (t0, g0), (t1, g1) in zip(points, points[1:]):
        dt = t1 - t0
        used = {g: max(0.0, g1.get(g, 0.0) - g0.get(g, 0.0)) / dt for g in set(g0) | set(g1)}
        for g in keep:
            out[g].append([round(t1, 2), round(used.get(g, 0.0), 3)])
        out["rest"].append([round(t1, 2), round(sum(v for g, v in used.items() if g not in keep), 3)])
    return out


def listening_ports(pid: int) -> list[int]:
    inodes = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if link.startswith("socket:["):
                inodes.add(int(link[8:-1]))
    except OSError:
        return []
    ports = set()
    for table in ("tcp", "tcp6"):
        for inode, port in parse_listening(_read(f"/proc/{pid}/net/{table}") or "").items():
            if inode in inodes:
                ports.add(port)
    return sorted(ports)


class FlinkRest:
    """The local mini-cluster's REST API (``rest.bind-port`` is 0 = random: found from the JVM's
    listening sockets, re-discovered when a new mini-cluster starts)."""

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


def _short(name: str, n: int = 70) -> str:
    name = " ".join(name.replace("<br/>", " ").split())
    return name if len(name) <= n else name[: n - 1] + "…"


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
                    if "ShardLearner" in v["name"]:
                        self._sample_exchange(jid, vid)
                vertices[vid] = entry
            sample["vertices"] = vertices
            cps = self.rest.get(f"/jobs/{jid}/checkpoints", self.jvm) or {}
            self.checkpoint_counts = cps.get("counts", self.checkpoint_counts)
            for h in cps.get("history", []) or []:
                if h.get("status") == "FAILED" and h.get("id") is not None:
                    self.failed_checkpoints[h["id"]] = _short(str(h.get("failure_message") or "?"), 160)
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
            return _short(thread_group(self.thread_names.get(tid, self.threads[tid][0])), 60)

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
        scorer = self.vertex_id("Scorer")
        if src and self.vertex_records.get(src, {}).get("write") is not None:
            done = self.vertex_records[src]["write"]
            parts.append(f"source out {done:,}" + (f"/{self.expected:,}" if self.expected else ""))
        if scorer and self.vertex_records.get(scorer, {}).get("read") is not None:
            parts.append(f"scorer in {self.vertex_records[scorer]['read']:,}")
        # the REST API reports a vertex without a measurement yet as a string ("NaN")
        busy = [(b if isinstance(b := e.get("busyTimeMsPerSecond"), (int, float)) else 0, vid)
                for vid, e in (sample.get("vertices") or {}).items()]
        if busy:
            b, vid = max(busy, key=lambda bv: bv[0])
            parts.append(f"busiest {_short(self.vertex_names[vid], 40)} {b:.0f} ms/s")
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
                "vertex": _short(name, 200),
                "busy_ms_per_s": _mean(vals.get("busyTimeMsPerSecond")),
                "backpressured_ms_per_s": _mean(vals.get("backPressuredTimeMsPerSecond")),
                "idle_ms_per_s": _mean(vals.get("idleTimeMsPerSecond")),
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


def _mean(values: list[float] | None) -> float | None:
    return round(float(np.mean(values)), 1) if values else None


# ------------------------------------------------------------------------------------------------
# the phases


def broker_process(cfg) -> int | None:
    """The embedded broker's pid (None for an external Kafka: its CPU is not on this machine)."""
    from streamrec.runtime import broker

    status = broker.status(cfg)
    return status.pid if status and status.embedded else None


def bench_config(cfg, prefix: str, subdir: str):
    """``cfg`` with ``<prefix>.*`` topics and registry/checkpoints under ``<state_dir>/bench/<subdir>``
    (the pattern of :func:`streamrec.demo.demo_config`)."""
    topics = {name: f"{prefix}.{value}" for name, value in cfg.kafka.topics.model_dump().items()}
    paths = cfg.paths_resolved
    root = paths.state_dir / "bench" / subdir
    return cfg.model_copy(update={
        "kafka": cfg.kafka.model_copy(update={"topics": cfg.kafka.topics.model_copy(update=topics)}),
        "paths": paths.model_copy(update={"registry_dir": root / "registry",
                                          "checkpoint_dir": root / "checkpoints"}),
        "exporter": cfg.exporter.model_copy(update={"interval_s": min(cfg.exporter.interval_s, 5.0)}),
        # the REST API's metrics at most 0.5 s old (Flink's default: 10 s), for the samples
        "flink": cfg.flink.model_copy(update={"settings": {
            "metrics.fetcher.update-interval": "500", **cfg.flink.settings}}),
    })


def _fresh(cfg) -> Path:
    from streamrec.runtime import kafka_io

    topics = cfg.kafka.topics.all()
    kafka_io.delete_topics(cfg, topics)
    kafka_io.ensure_topics(cfg, topics)
    root = cfg.paths_resolved.registry_dir.parent
    shutil.rmtree(root, ignore_errors=True)
    cfg.paths_resolved.registry_dir.mkdir(parents=True)
    return root


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


def throughput_phase(cfg, events: list[dict], say, progress: bool, sample_s: float) -> tuple[dict, object]:
    from streamrec.flink_jobs import features as features_job
    from streamrec.flink_jobs import pipeline
    from streamrec.runtime import kafka_io
    from streamrec import replay
    from streamrec.demo import start_exporter, stop_process

    tcfg = bench_config(cfg, "bench", "throughput")
    root = _fresh(tcfg)
    say(f"throughput phase: replaying {len(events):,} events into {tcfg.kafka.topics.raw}")
    res = replay.produce(tcfg, tcfg.kafka.topics.raw, replay.encode_events(events), total=len(events),
                         progress=progress)
    if res.failed:
        raise RuntimeError(f"replay failed: {res.failed} records undelivered ({res.first_error})")
    say(f"replayed {res.delivered:,} events at {res.rate:,.0f} events/s; starting the exporter and the "
        "bounded pipeline job")
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
    # The features job, as `streamrec run --bounded` runs it: after the pipeline, over the clean
    # events it wrote (its own figures: it is off the recommendations' path)
    say("pipeline finished; the features job over its clean events")
    jvm_cpu_pipeline, broker_cpu2 = cpu_seconds(monitor.jvm), cpu_seconds(broker_pid)
    threads_before = thread_cpu(monitor.jvm)
    features_run = features_job.run(tcfg, bounded=True, quiet=True)
    features_cpu = {"flink_jvm": cpu_us_per_event(jvm_cpu_pipeline, cpu_seconds(monitor.jvm), res.delivered),
                    "broker": cpu_us_per_event(broker_cpu2, cpu_seconds(broker_pid), res.delivered)}
    # its share of the JVM by thread (kernel thread names: the first 15 characters). Only threads
    # alive at the end: the finished job's task threads have exited, their CPU is in the total only
    features_threads = thread_cpu_table(
        {tid: (name, cpu - threads_before.get(tid, (name, 0.0))[1])
         for tid, (name, cpu) in thread_cpu(monitor.jvm).items()}, {}, res.delivered)
    broker_rss, broker_hwm = memory(broker_pid)
    n = res.delivered
    # The mini-cluster JVM is started by this run: its whole CPU time (start-up included) counts.
    cpu = {"flink_jvm": cpu_us_per_event(0.0, jvm_cpu_pipeline, n),
           "broker": cpu_us_per_event(broker_cpu0, broker_cpu1, n),
           "exporter": cpu_us_per_event(exporter_cpu0, exporter_cpu1, n),
           "flink_jvm_incl_features_job": cpu_us_per_event(0.0, jvm_cpu_pipeline, n)
           + (features_cpu["flink_jvm"] or 0.0)}
    # the JVM's CPU by thread: each operator chain's task thread, the JIT compilers, GC, RocksDB
    threads = thread_cpu_table(monitor.threads, monitor.thread_names, n, monitor.waits)
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
        "memory": {"jvm_peak_rss": jvm_hwm, "exporter_peak_rss": exporter_hwm,
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
    shard = ShardModel(LearnerParams.of(cfg.learner), ShardSettings(
        top_k=sc.top_k, cold_start_min_events=sc.cold_start_min_events, seen_filter_bits=sc.seen_filter_bits,
        seen_filter_hashes=sc.seen_filter_hashes, warmup_items=sc.warmup_items, max_batch_events=sc.max_batch_events))
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


def _stable(count, seconds: float) -> bool:
    """Whether ``count()`` is the same after ``seconds``."""
    before = count()
    time.sleep(seconds)
    return count() == before


def _wait(pred, timeout_s: float, step_s: float = 1.0) -> bool:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if pred():
            return True
        time.sleep(step_s)
    return pred()


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


def unbounded_config(cfg, prefix: str, subdir: str, checkpoint_interval_ms: int | None = None):
    """:func:`bench_config` for a phase with unbounded jobs, at ``checkpoint_interval_ms`` if given."""
    ucfg = bench_config(cfg, prefix, subdir)
    if checkpoint_interval_ms:
        ucfg = ucfg.model_copy(update={"flink": ucfg.flink.model_copy(
            update={"checkpoint_interval_ms": checkpoint_interval_ms})})
    return ucfg


def start_unbounded(ucfg, root: Path, with_features: bool):
    """The exporter, the unbounded pipeline job and, ``with_features``, the features job beside it
    (same JVM, its own mini-cluster and checkpoints), as ``streamrec run`` starts them. Returns
    ``(exporter process, pipeline job client, features job client or None)``."""
    from streamrec.flink_jobs import features as features_job
    from streamrec.flink_jobs import pipeline
    from streamrec.flink_jobs.env import build_runtime
    from streamrec.runtime import kafka_io
    from streamrec.demo import start_exporter, stop_process

    exporter = start_exporter(ucfg, root / "exporter.log")
    kafka_io.ensure_topics(ucfg)
    client = None
    try:
        rt = build_runtime(ucfg, JOB_NAME)
        statements = pipeline.build(rt, ucfg, False)
        statements.attach_as_datastream()
        client = rt.env.execute_async(JOB_NAME)
        features_client = features_job.run(ucfg, wait=False, quiet=True).job_client if with_features else None
    except BaseException:
        _cancel(client)
        stop_process(exporter)
        raise
    return exporter, client, features_client


def _cancel(client) -> None:
    """Cancel a job, best effort (on the way out)."""
    if client is None:
        return
    try:
        client.cancel().result()
    except Exception:  # noqa: BLE001 - best effort on the way out
        pass


def _all_running(monitor: "Monitor", job_id: str) -> bool:
    job = monitor.rest.get(f"/jobs/{job_id}", monitor.jvm) if monitor.jvm else None
    vs = (job or {}).get("vertices", [])
    return bool(vs) and all(v.get("status") == "RUNNING" for v in vs)


def records_written(ucfg, topic: str) -> int:
    """Records written to ``topic``, committed or not (transaction markers add a few offsets:
    a count may look complete a little early; the callers wait for more checkpoints after)."""
    from streamrec.runtime import kafka_io

    return sum(kafka_io.end_offsets(ucfg, topic, read_committed=False).values())


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
    root = _fresh(ccfg)
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
        scored_all = _wait(lambda: records_written(ccfg, ccfg.kafka.topics.recommendations)
                           >= n - max(5, n // 100) and _stable(
                               lambda: records_written(ccfg, ccfg.kafka.topics.recommendations), 3.0), 900)
        if not scored_all:
            say("warning: the pipeline had not scored every event after 900 s")
        # the exactly-once sinks commit on checkpoint completion: two more checkpoints
        done_before = len(monitor.checkpoints)
        _wait(lambda: len(monitor.checkpoints) >= done_before + 2, 4 * ccfg.flink.checkpoint_interval_ms / 1000 + 30)
        if features_monitor:  # every clean event is committed now: what the features job must read
            clean = sum(1 for _ in kafka_io.read_topic(ccfg, ccfg.kafka.topics.clean))
            features_read_all = _wait(lambda: bool(features_monitor.read)
                                      and features_monitor.read[-1][1] >= clean, 600, step_s=0.5)
            if not features_read_all:
                say(f"warning: the features job had not read the {clean:,} clean events after 600 s")
    finally:
        cpu1 = {"flink_jvm": cpu_seconds(jvm), "broker": cpu_seconds(broker_pid),
                "exporter": cpu_seconds(exporter.pid)}
        _cancel(client)
        _cancel(features_client)
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
    say(f"capacity: {_fmt(out['events_per_s'])} events/s through "
        + ("both jobs" if with_features else "the pipeline")
        + f" (the pipeline's recommendations {_fmt(out['pipeline_events_per_s'])} events/s)")
    return out


def latency_phase(cfg, events: list[dict], rate: float, seconds: float, say, progress: bool,
                  sample_s: float, warmup: int = 500, checkpoint_interval_ms: int | None = None,
                  warmup_s: float = 20.0, with_features: bool = True) -> dict:
    from streamrec.runtime import kafka_io
    from streamrec import replay
    from streamrec.demo import stop_process

    lcfg = unbounded_config(cfg, "bench.lat", "latency", checkpoint_interval_ms)
    root = _fresh(lcfg)
    n = max(1, int(rate * seconds))
    # warm-up at the target rate for warmup_s (at least ``warmup`` events): a fresh job compiles
    # (JIT) its generated code and opens its Python operators under that load, and the backlog
    # it builds meanwhile (measured: p50 up to 7.5 s in the first 20 s at 757 events/s, 0.3 s
    # after 50 s) is start-up, not the latency of a running job
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
        if not _wait(lambda: _all_running(monitor, job_id), 180):
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
            if not _wait(lambda: scored() >= warm // 2 and _stable(scored, 3.0), 180):
                say(f"warning: only {scored()} of {warm} warm-up events scored after 180 s")
            say(f"warm-up done ({scored():,} records for {warm:,} events); measuring")
        base = scored()
        measure_from_ms = int(time.time() * 1000)
        res = replay.produce(lcfg, lcfg.kafka.topics.raw, replay.encode_events(stream), total=n, rate=rate,
                             progress=progress)
        say(f"replayed {res.delivered:,} events at {res.rate:,.0f} events/s; waiting for the job to drain")
        drained_ok = _wait(lambda: scored() >= base + res.delivered - max(5, res.delivered // 100), 180)
        if not drained_ok:
            say("warning: the scorer had not seen every event after 180 s")
        # the exactly-once sink commits on checkpoint completion: wait for two more checkpoints
        done_before = len(monitor.checkpoints)
        _wait(lambda: len(monitor.checkpoints) >= done_before + 2,
              4 * lcfg.flink.checkpoint_interval_ms / 1000 + 30)
        client.cancel().result()
        cancelled = True
    finally:
        if not cancelled:
            try:
                client.cancel().result()
            except Exception:  # noqa: BLE001 - best effort on the way out
                pass
        _cancel(features_client)
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


# ------------------------------------------------------------------------------------------------
# machine + report


def machine() -> dict:
    mem = parse_status_kb(_read("/proc/meminfo") or "", "MemTotal")
    try:
        java = subprocess.run(["java", "-version"], capture_output=True, text=True, timeout=30).stderr
        java = java.splitlines()[0] if java else None
    except (OSError, subprocess.SubprocessError):
        java = None
    try:
        from importlib.metadata import version

        pyflink = version("apache-flink")
        ort = version("onnxruntime")
    except Exception:  # noqa: BLE001
        pyflink = ort = None
    cpu = next((ln.split(":", 1)[1].strip() for ln in (_read("/proc/cpuinfo") or "").splitlines()
                if ln.startswith("model name")), None)
    return {"cpus": os.cpu_count(), "cpu_model": cpu, "memory_bytes": mem, "python": platform.python_version(),
            "java": java, "pyflink": pyflink, "onnxruntime": ort, "platform": platform.platform(),
            "gpu": "none" if not Path("/dev/nvidia0").exists() else "present"}


def _ratio(a, b) -> float | None:
    return a / b if a and b else None


def _mib(x) -> str:
    return f"{x / 2**20:,.0f} MiB" if x else "-"


def _fmt(x, spec: str = ",.0f") -> str:
    return "-" if x is None else format(x, spec)


def table(result: dict) -> str:
    t, lat, q = result.get("throughput") or {}, result.get("latency") or {}, result.get("quality") or {}
    cp = t.get("checkpoints") or {}
    latest = cp.get("latest") or {}
    rows = [
        ("events", _fmt(t.get("events"))),
        ("throughput, first→last recommendation", f"{_fmt(t.get('events_per_s'))} events/s"),
        ("throughput incl. job start-up", f"{_fmt(t.get('events_per_s_incl_startup'))} events/s "
                                          f"({_fmt(t.get('wall_s'), '.0f')} s wall)"),
        ("sequential reference (same events, top-k each)", f"{_fmt(t.get('reference_events_per_s'))} events/s, "
                                                           f"{_fmt(t.get('reference_cpu_us_per_event'))} CPU µs/event"),
        ("pipeline / reference throughput", _fmt(_ratio(t.get("events_per_s"), t.get("reference_events_per_s")), ".2f")),
        ("learner batches (events): mean / max", f"{_fmt((t.get('batch') or {}).get('mean_batch'), '.1f')} / "
                                        f"{_fmt((t.get('batch') or {}).get('max_batch'))}"),
        ("peak RSS: Flink JVM / exporter / broker", f"{_mib((t.get('memory') or {}).get('jvm_peak_rss'))} / "
                                                    f"{_mib((t.get('memory') or {}).get('exporter_peak_rss'))} / "
                                                    f"{_mib((t.get('memory') or {}).get('broker_peak_rss'))}"),
        ("CPU µs per event: Flink JVM (pipeline) / broker / exporter",
         " / ".join(_fmt((t.get("cpu_us_per_event") or {}).get(k), ".0f")
                    for k in ("flink_jvm", "broker", "exporter"))),
        ("features job after it: s / CPU µs per event, JVM / broker",
         f"{_fmt((t.get('features_job') or {}).get('run_s'), '.1f')} / "
         + " / ".join(_fmt(((t.get("features_job") or {}).get("cpu_us_per_event") or {}).get(k), ".0f")
                      for k in ("flink_jvm", "broker"))),
        ("feature rows equal to the reference: user / item",
         " / ".join(f"{_fmt(f.get('equal'))} of {_fmt(f.get('expected'))}"
                    for f in ((t.get("features") or {}).get(k) or {} for k in ("user", "item")))),
        ("changelog records: model.items / model.users (per event)",
         f"{_fmt((t.get('changelog_records') or {}).get('model_items'))} / "
         f"{_fmt((t.get('changelog_records') or {}).get('model_users'))} "
         f"({_fmt(t.get('changelog_records_per_event'), '.2f')})"),
        ("checkpoints completed / failed", f"{(cp.get('counts') or {}).get('completed', '-')} / "
                                           f"{(cp.get('counts') or {}).get('failed', '-')}"),
        ("checkpoint duration p50 / max", f"{_fmt((cp.get('duration_ms') or {}).get('p50'))} / "
                                          f"{_fmt((cp.get('duration_ms') or {}).get('max'))} ms"),
        ("last checkpoint: full / incremental size", f"{_mib(latest.get('state_size'))} / "
                                                     f"{_mib(latest.get('checkpointed_size'))}"),
    ]
    cap = result.get("capacity") or {}
    if cap:
        jobs = "pipeline + features job" if cap.get("features_job_beside") else "pipeline"
        rows.append((f"capacity of the latency run's jobs ({jobs}, "
                     f"checkpoints every {_fmt(cap.get('checkpoint_interval_ms'))} ms)",
                     f"{_fmt(cap.get('events_per_s'))} events/s (recommendations alone "
                     f"{_fmt(cap.get('pipeline_events_per_s'))})"))
        rows.append(("  its CPU µs per event: Flink JVM / broker / exporter",
                     " / ".join(_fmt((cap.get("cpu_us_per_event") or {}).get(k), ".0f")
                                for k in ("flink_jvm", "broker", "exporter"))))
    if lat:
        lm = lat.get("latency_ms") or {}
        rows.append((f"latency at {_fmt(lat.get('target_rate'))} ev/s (emitted): p50 / p95 / p99",
                     f"{_fmt(lm.get('p50'))} / {_fmt(lm.get('p95'))} / {_fmt(lm.get('p99'))} ms"))
        rc = lat.get("read_committed_latency_ms") or {}
        rows.append((f"read_committed latency, checkpoints every {_fmt(lat.get('checkpoint_interval_ms'))} ms",
                     f"{_fmt(rc.get('p50'))} / {_fmt(rc.get('p95'))} / {_fmt(rc.get('p99'))} ms"))
        ex = lat.get("item_exchange") or {}
        if ex and (lat.get("parallelism") or 1) > 1:
            sampled = ex.get("staleness_sampled_ms") or {}
            rows.append((f"item exchange, {_fmt(lat.get('parallelism'))} shards: deltas sent / applied; "
                         "staleness p50 / p99 / max",
                         f"{_fmt(ex.get('item_deltas_sent'))} / {_fmt(ex.get('item_deltas_applied'))}; "
                         f"{_fmt(sampled.get('p50'))} / {_fmt(sampled.get('p99'))} / "
                         f"{_fmt(ex.get('item_staleness_max_ms'))} ms"))
    second = result.get("second_stream") or {}
    if second:
        rows.append((f"second stream ({_fmt(second.get('items'))} items, {_fmt(second.get('events'))} events): "
                     "core / reference recall",
                     f"{_fmt((second.get('pipeline') or {}).get('recall'), '.4f')} / "
                     f"{_fmt((second.get('reference') or {}).get('recall'), '.4f')} "
                     f"(ratio {_fmt(second.get('pipeline_over_reference'), '.2f')})"))
    peer = result.get("peer") or {}
    if peer.get("river"):
        r, o = peer["river"], peer["streamrec_core"]
        rows.append((f"peer on the first {_fmt(peer.get('events'))} events: River / streamrec core",
                     f"recall {_fmt(r.get('recall'), '.4f')} / {_fmt(o.get('recall'), '.4f')}, "
                     f"{_fmt(r.get('events_per_s'))} / {_fmt(o.get('events_per_s'))} events/s"))
    if q:
        rows.append(("recall@10 pipeline / popularity / reference",
                     " / ".join(_fmt((q.get(n) or {}).get("recall"), ".4f")
                                for n in ("pipeline", "popularity", "reference"))))
        rows.append(("coverage (first interactions with a prior list)", _fmt(q.get("coverage"), ".3f")))
    width = max(len(r[0]) for r in rows)
    lines = [f"{name:<{width}}  {value}" for name, value in rows]
    threads = (t.get("cpu_us_per_event_flink_jvm_threads") or [])[:8]
    if threads:
        lines.append("Flink JVM CPU µs per event by thread (task threads: one per operator chain):")
        for th in threads:
            waited = (f" (waited for a core {th['waited_for_core_share']:.0%} of the time it wanted one)"
                      if th.get("waited_for_core_share") is not None else "")
            lines.append(f"  {_fmt(th['cpu_us_per_event'], '6.0f')}  {_short(th['threads'], 90)}{waited}")
    busy = (t.get("vertices") or [])[:5]
    if busy:
        lines.append("busiest operators (throughput phase, mean busy / back-pressured ms per s):")
        for v in busy:
            lines.append(f"  {_fmt(v['busy_ms_per_s'], '5.0f')} / {_fmt(v['backpressured_ms_per_s'], '5.0f')}  "
                         f"{_short(v['vertex'], 90)}")
    return "\n".join(lines)


def run_bench(cfg, name: str | None = None, limit: int | None = None, latency_seconds: float = 60.0,
              latency_rate: float | None = None, skip_latency: bool = False, skip_quality: bool = False,
              progress: bool = True, sample_s: float = 2.0, out_dir: Path | None = None,
              command: str | None = None, peer_events: int = 5_000,
              latency_checkpoint_ms: int | None = None, latency_with_features: bool = True) -> dict:
    """Run the benchmark and write ``<out_dir>/<date>-<name>.json`` and ``.png``; returns the result."""
    from streamrec.runtime import assets, broker
    from streamrec import replay

    def say(msg: str) -> None:
        print(f"[bench] {msg}", flush=True)

    started = time.time()
    name = name or (f"ml100k-{limit}" if limit else "ml100k")
    stem, head = new_result(name, command, out_dir)
    say(assets.check_java())
    data_dir = assets.ml100k_dir(cfg)
    assets.connector_jars(cfg)
    assets.kafka_broker_jars(cfg)
    events = replay.ml100k_events(data_dir)
    if limit:
        events = events[:limit]
    result: dict = {
        **head,
        "settings": {
            "parallelism": cfg.flink.parallelism, "execution_mode": cfg.flink.execution_mode,
            "state_backend": cfg.flink.state_backend, "checkpoint_interval_ms": cfg.flink.checkpoint_interval_ms,
            "exactly_once": True, "python_bundle_size": cfg.flink.python_bundle_size,
            "python_bundle_time_ms": cfg.flink.python_bundle_time_ms,
            "buffer_timeout_ms": cfg.flink.buffer_timeout_ms,
            "batch_interval_ms": cfg.scoring.batch_interval_ms, "serve": cfg.scoring.serve,
            "changelog_interval_ms": cfg.learner.changelog_interval_ms, "dim": cfg.learner.dim,
            "negatives": cfg.learner.negatives, "window_slide_ms": cfg.ingest.window_slide_ms,
            "exporter_interval_s": min(cfg.exporter.interval_s, 5.0),
        },
    }
    status = broker.up(cfg, log=say)
    try:
        result["throughput"], tcfg = throughput_phase(cfg, events, say, progress, sample_s)
        _write(result, stem)
        if not skip_quality:
            result["quality"] = quality_phase(tcfg, say)
            _write(result, stem)
            result["throughput"].update(reference_phase(cfg, events, say))
            _write(result, stem)
            result["peer"] = peer_phase(cfg, events, say, peer_events)
            _write(result, stem)
            from streamrec.bench.synthetic import quality, synthetic_stream

            say("second stream: synthetic, 10k items, heavy users, 3 years (bench/synthetic.py) ...")
            result["second_stream"] = quality(cfg, synthetic_stream(100_000), say=say)
            _write(result, stem)
        if not skip_latency:
            # half the capacity of what the latency phase runs (its jobs, its checkpoint interval),
            # measured here unless a rate is given (capacity_phase says why not the throughput's)
            rate_basis = "given (--latency-rate)"
            if not latency_rate:
                result["capacity"] = capacity_phase(cfg, events, say, progress, sample_s,
                                                    checkpoint_interval_ms=latency_checkpoint_ms,
                                                    with_features=latency_with_features)
                _write(result, stem)
                capacity, rate_basis = result["capacity"].get("events_per_s"), "capacity.events_per_s / 2"
                if not capacity:
                    capacity, rate_basis = result["throughput"].get("events_per_s"), "throughput.events_per_s / 2"
                latency_rate = max(1.0, (capacity or 100.0) / 2)
            full = replay.ml100k_events(data_dir)
            result["latency"] = latency_phase(cfg, full, latency_rate, latency_seconds, say, progress, sample_s,
                                              checkpoint_interval_ms=latency_checkpoint_ms,
                                              with_features=latency_with_features)
            result["latency"]["rate_basis"] = rate_basis
    finally:
        if status.started:
            broker.down(cfg, log=say)
    result["load_after"] = os.getloadavg()
    result["total_s"] = round(time.time() - started, 1)
    _write(result, stem)
    try:
        from streamrec.bench.plots import plot_result

        plot_result(result, stem.with_suffix(".png"))
        say(f"plot: {stem.with_suffix('.png')}")
    except Exception as exc:  # noqa: BLE001 - the figures matter more than the picture
        say(f"plot failed: {exc!r}")
    print(table(result), flush=True)
    say(f"results: {stem.with_suffix('.json')} (load average before {result['load_before'][0]:.1f}, "
        f"after {result['load_after'][0]:.1f}); {result['total_s']:.0f} s in all")
    return result


def new_result(name: str, command: str | None, out_dir: Path | None = None) -> tuple[Path, dict]:
    """A benchmark's result files' stem (``<out_dir>/<date>-<name>``, the folder made) and the
    head of its record: name, date, start time, command, machine, load average."""
    out_dir = Path(out_dir or RESULTS_DIR)
    out_dir.mkdir(parents=True, exist_ok=True)
    date = datetime.date.today().isoformat()
    return out_dir / f"{date}-{name}", {
        "name": name, "date": date, "started_at": datetime.datetime.now().isoformat(timespec="seconds"),
        "command": command, "machine": machine(), "load_before": os.getloadavg()}


def _write(result: dict, stem: Path) -> None:
    path = stem.with_suffix(".json")
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=1, default=_json_default) + "\n")
    tmp.replace(path)


def _json_default(obj):
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj)}")


def main(argv: list[str] | None = None) -> int:
    import argparse
    from streamrec.core.config import load_config

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name")
    parser.add_argument("--limit", type=int)
    parser.add_argument("--latency-seconds", type=float, default=60.0)
    parser.add_argument("--latency-rate", type=float)
    parser.add_argument("--skip-latency", action="store_true")
    parser.add_argument("--skip-quality", action="store_true")
    parser.add_argument("--peer-events", type=int, default=5_000)
    parser.add_argument("--latency-checkpoint-ms", type=int)
    parser.add_argument("--latency-without-features", action="store_true")
    args = parser.parse_args(argv)
    run_bench(load_config(), args.name, args.limit, args.latency_seconds, args.latency_rate,
              args.skip_latency, args.skip_quality, peer_events=args.peer_events,
              latency_checkpoint_ms=args.latency_checkpoint_ms,
              latency_with_features=not args.latency_without_features,
              command=" ".join(["python", "bench/run_bench.py", *(argv if argv is not None else sys.argv[1:])]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
