"""What the benchmark reads of the processes it runs, from ``/proc`` (Linux): memory, CPU time per
process and per thread, waits for a core, listening ports, the Flink JVM's pid; and the machine.

The Flink JVM hosts the local mini-cluster and, in thread mode, the Python operators, so its
threads are the pipeline's operator chains (Flink names a task thread after its chain).
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
from pathlib import Path
from typing import Sequence


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


def broker_process(cfg) -> int | None:
    """The embedded broker's pid (None for an external Kafka: its CPU is not on this machine)."""
    from streamrec.runtime import broker

    status = broker.status(cfg)
    return status.pid if status and status.embedded else None


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
