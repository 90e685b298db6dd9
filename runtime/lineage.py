"""Which state a job run starts from: resume by default, start over only on purpose.

A *lineage* is the chain of runs of one job on one checkpoint directory
(``<paths.checkpoint_dir>/<job name>/``). Its ``lineage.json`` records what its checkpoints can
only be restored by (code version, Python execution mode, state backend, the source topic and
cluster) and the run id that names the sinks' Kafka transactions, so that:

- a plain re-run of the same command resumes from the newest completed, retained checkpoint (or
  the savepoint the lineage last recorded), and says which;
- ``--fresh`` starts over, and says what it discards;
- a checkpoint that cannot be restored (other code version, other execution mode, corrupt) is a
  clear error, never a silent fresh start;
- a bounded run that finished (Flink discards the checkpoints of a finished job) is not silently
  recomputed: re-running it would publish every recommendation again;
- every lineage has its own transactional-id prefix, so two jobs never fence each other, while
  the restarts and resumes of one job keep it (Flink aborts its lingering transactions by it).

>>> plan = RunPlan(run_id="r1", restore_from=None, reason="fresh: no checkpoint yet")
>>> plan.transactional_id_prefix("streamrec-pipeline", "recommendations")
'streamrec-pipeline-r1-recommendations'
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import time
import uuid
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from urllib.parse import unquote, urlparse

from streamrec.core.config import Config

LINEAGE_FILE = "lineage.json"


class LineageError(RuntimeError):
    """The job cannot resume from its checkpoint, or refuses to start over without --fresh."""


def code_version() -> str:
    try:
        return version("streamrec")
    except PackageNotFoundError:
        return "unknown"


@dataclass(frozen=True)
class RunPlan:
    run_id: str
    restore_from: Path | None
    reason: str  # one line for the user: what this run starts from, and why
    discarded: list[Path] = field(default_factory=list)
    runs: int = 1  # how many runs this lineage has had, this one included

    def transactional_id_prefix(self, job_name: str, topic: str) -> str:
        return f"{job_name}-{self.run_id}-{topic}"


def _identity(cfg: Config, source_topic: str | None = None) -> dict:
    """What a checkpoint of this job can only be restored by."""
    return {
        "code_version": code_version(),
        "execution_mode": cfg.flink.execution_mode,  # a switch restores empty state, silently
        "state_backend": cfg.flink.state_backend,
        "source": f"{cfg.bootstrap_servers}/{source_topic or cfg.kafka.topics.raw}",
    }


def job_dir(cfg: Config, job_name: str) -> Path:
    return cfg.paths_resolved.checkpoint_dir / job_name


class RunLock:
    """An exclusive lock on one job's lineage while a run of it is alive.

    Two runs on one state directory shared the lineage, the transactional-id prefix and the
    consumer group (the second declared a fresh start, and events.clean got every event twice),
    and ``--fresh`` in a second shell deleted the live run's checkpoints. The lock is an
    ``flock`` on ``<checkpoint_dir>/.<job name>.lock`` (beside the lineage: ``--fresh`` empties
    the lineage's directory), so the kernel releases it when the holder dies, even by SIGKILL; the
    file names the holder (pid, host, start, command) for the error the next run prints.

    >>> import tempfile
    >>> d = Path(tempfile.mkdtemp())
    >>> with RunLock(d / ".job.lock", "job"):
    ...     try:
    ...         RunLock(d / ".job.lock", "job").acquire()
    ...     except LineageError as exc:
    ...         print(str(exc)[:39])
    another run of job holds this state dir
    >>> RunLock(d / ".job.lock", "job").acquire().release()  # free again
    """

    def __init__(self, path: Path, job_name: str):
        self.path, self.job_name, self._fd = path, job_name, None

    def acquire(self) -> "RunLock":
        import fcntl
        import socket
        import sys

        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 4096).decode("utf-8", "replace")
            os.close(fd)
            try:
                who = json.loads(holder)
                named = (f"pid {who.get('pid')} on {who.get('host')}, since {who.get('started')}: "
                         f"{who.get('command')}")
            except ValueError:
                named = "holder unknown"
            raise LineageError(
                f"another run of {self.job_name} holds this state dir ({named}); stop it first, "
                f"or give this run a state dir of its own (paths.state_dir); lock: {self.path}") from None
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({
            "pid": os.getpid(), "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "command": " ".join(sys.argv)[:300]}).encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def run_lock(cfg: Config, job_name: str) -> RunLock:
    """The lock of ``job_name``'s lineage in ``cfg``'s state dir (not yet acquired)."""
    return RunLock(cfg.paths_resolved.checkpoint_dir / f".{job_name}.lock", job_name)


def read_lineage(directory: Path) -> dict | None:
    try:
        return json.loads((directory / LINEAGE_FILE).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise LineageError(f"{directory / LINEAGE_FILE} is unreadable ({exc}); run with --fresh "
                           "to start over") from None


def write_lineage(directory: Path, lineage: dict) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / f".{LINEAGE_FILE}.tmp"
    tmp.write_text(json.dumps(lineage, indent=1) + "\n")
    tmp.replace(directory / LINEAGE_FILE)


def retained_checkpoints(directory: Path) -> list[Path]:
    """Completed checkpoints under ``<directory>/<flink job id>/chk-N``, newest first (a
    checkpoint is complete once Flink wrote its ``_metadata``)."""
    found = [chk for chk in directory.glob("*/chk-*") if (chk / "_metadata").is_file()]
    return sorted(found, key=lambda p: ((p / "_metadata").stat().st_mtime, int(p.name[4:])), reverse=True)


def local_path(location: str | Path) -> Path:
    """A checkpoint / savepoint location as a local path (Flink prints ``file:/...`` URIs).

    >>> local_path("file:/data/savepoints/savepoint-1"), local_path("file:///a/b"), local_path("/c")
    (PosixPath('/data/savepoints/savepoint-1'), PosixPath('/a/b'), PosixPath('/c'))
    """
    text = str(location)
    if text.startswith("file:"):
        return Path(unquote(urlparse(text).path))
    return Path(text)


def _check_restorable(path: Path, lineage: dict, identity: dict) -> None:
    metadata = path / "_metadata" if path.is_dir() else path
    if not metadata.is_file() or metadata.stat().st_size == 0:
        raise LineageError(f"cannot resume from {path}: its _metadata is missing or empty (corrupt); "
                           "restore another with --restore-from PATH or start over with --fresh")
    for key in ("code_version", "execution_mode", "state_backend", "source"):
        if lineage.get(key) != identity[key]:
            raise LineageError(
                f"cannot resume from {path}: it was written with {key}={lineage.get(key)!r}, this run "
                f"has {key}={identity[key]!r}; restore it with the matching setting or code, or start "
                "over with --fresh (discards its state)")


def _claimable(cfg: Config, directory: Path, path: Path) -> Path:
    """The snapshot this run may restore in CLAIM mode (the changelog state backend has no
    NO_CLAIM restore): Flink then owns it and deletes its files once later checkpoints subsume
    it. The lineage's own checkpoints are restored as they are; a savepoint (self-contained) is
    copied into the lineage's directory first, so the one the user keeps is never touched."""
    if not cfg.flink.state_changelog or path.resolve().is_relative_to(directory.resolve()):
        return path
    if path.is_dir() and path.name.startswith("savepoint-") and (path / "_metadata").is_file():
        copy = directory / "claimed" / path.name
        if not copy.exists():
            shutil.copytree(path, copy)
        return copy
    raise LineageError(
        f"cannot restore {path} with flink.state_changelog on: that restore claims the snapshot "
        "(Flink would delete files of it later), and only a savepoint-* directory is copied first; "
        "restore it with STREAMREC_FLINK__STATE_CHANGELOG=false, or take a savepoint of it")


def plan_run(cfg: Config, job_name: str, fresh: bool = False, restore_from: str | None = None,
             bounded: bool = False, source_topic: str | None = None) -> RunPlan:
    """Decide where this run starts and record it in the lineage file (before the job starts).
    ``source_topic``: the topic the job reads (default: the raw events)."""
    directory = job_dir(cfg, job_name)
    identity = _identity(cfg, source_topic)
    lineage = read_lineage(directory)
    if fresh:
        discarded = sorted(p for p in directory.iterdir()) if directory.is_dir() else []
        what = (f"discarded {len(retained_checkpoints(directory))} retained checkpoint(s) and the "
                f"lineage of run {lineage.get('run_id')}" if lineage else "nothing to discard")
        for path in discarded:
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        return _start(directory, identity, bounded, f"fresh start (--fresh): {what}", discarded)
    if restore_from:
        path = local_path(restore_from)
        if not path.exists():
            raise LineageError(f"--restore-from {restore_from}: no such checkpoint or savepoint")
        if lineage:
            _check_restorable(path, lineage, identity)
            return _resume(directory, lineage, bounded, _claimable(cfg, directory, path),
                           f"restoring {path} (--restore-from)")
        return _start(directory, identity, bounded, f"restoring {path} (--restore-from)", [],
                      _claimable(cfg, directory, path))
    if lineage is None:
        return _start(directory, identity, bounded, "fresh start: no earlier run in this state directory")
    if lineage.get("finished"):
        # Checkpoints left behind by a finished job predate its final commit: resuming from one
        # would publish its last records again.
        raise LineageError(
            f"the last run ({lineage['run_id']}) finished its bounded input; re-running would "
            "recompute and publish its recommendations again: run with --fresh to start over on "
            "purpose (or --restore-from a savepoint)")
    checkpoints = retained_checkpoints(directory)
    savepoint = local_path(lineage["savepoint"]) if lineage.get("savepoint") else None
    candidates = [p for p in (checkpoints[:1] + ([savepoint] if savepoint else [])) if p.exists()]
    if candidates:
        newest = max(candidates, key=lambda p: (p / "_metadata" if p.is_dir() else p).stat().st_mtime)
        _check_restorable(newest, lineage, identity)
        kind = "savepoint" if newest == savepoint else "checkpoint"
        return _resume(directory, lineage, bounded, _claimable(cfg, directory, newest),
                       f"resuming run {lineage['run_id']} from its latest {kind} {newest}")
    if lineage.get("resumed_from"):
        raise LineageError(
            f"run {lineage['run_id']} resumed from {lineage['resumed_from']} before, but no completed "
            f"checkpoint of it is left in {directory} (deleted?); run with --fresh to start over, "
            "or --restore-from PATH")
    # Exactly-once sinks commit only when a checkpoint completes: a run that never completed one
    # published nothing, so starting it again from scratch duplicates nothing.
    return _start(directory, identity, bounded, f"fresh start: run {lineage['run_id']} never "
                  "completed a checkpoint (nothing of it was committed)", [])


def _start(directory: Path, identity: dict, bounded: bool, reason: str, discarded=None,
           restore: Path | None = None) -> RunPlan:
    lineage = {"run_id": uuid.uuid4().hex[:10], **identity, "created": time.time(), "runs": 1,
               "bounded": bounded, "driver_pid": os.getpid()}
    write_lineage(directory, lineage)
    return RunPlan(lineage["run_id"], restore, reason, list(discarded or []))


def _resume(directory: Path, lineage: dict, bounded: bool, path: Path, reason: str) -> RunPlan:
    lineage = {**lineage, "runs": lineage.get("runs", 0) + 1, "bounded": bounded,
               "resumed_from": str(path), "driver_pid": os.getpid()}
    lineage.pop("finished", None)
    write_lineage(directory, lineage)
    return RunPlan(lineage["run_id"], path, reason, runs=lineage["runs"])


def mark_finished(cfg: Config, job_name: str) -> None:
    directory = job_dir(cfg, job_name)
    lineage = read_lineage(directory)
    if lineage:
        write_lineage(directory, {**lineage, "finished": True, "finished_at": time.time()})


def mark_savepoint(cfg: Config, job_name: str, savepoint: str) -> None:
    record(cfg, job_name, savepoint=savepoint)


def record(cfg: Config, job_name: str, **fields) -> None:
    """Add ``fields`` to the lineage file of ``job_name`` (if it has one)."""
    directory = job_dir(cfg, job_name)
    lineage = read_lineage(directory)
    if lineage:
        write_lineage(directory, {**lineage, **fields})


def run_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The command-line options every job driver with a lineage takes (``python -m flink_jobs.X``)."""
    parser.add_argument("--bounded", action="store_true", help="stop at the end offsets present at start")
    parser.add_argument("--restore-from", help="a retained checkpoint or savepoint path")
    parser.add_argument("--fresh", action="store_true", help="start over: discard the retained checkpoints")
    parser.add_argument("--no-wait", action="store_true", help="return once submitted (cluster mode)")
    return parser


def source_topic_pattern(topic: str, run_id: str) -> str:
    """A lineage's source subscribes to ``topic`` plus the lineage's restore triggers.

    >>> print(source_topic_pattern("events.raw", "r1"))
    ^events\\.raw(\\.restore\\-r1\\-[0-9]+)?$
    """
    return f"^{re.escape(topic)}({re.escape(f'.restore-{run_id}-')}[0-9]+)?$"


def restore_trigger_topic(topic: str, plan: RunPlan) -> str:
    """An empty one-partition topic created before a bounded run resumes.

    A bounded Kafka source restored from a checkpoint reads to its stopping offsets and then waits
    forever for a "no more splits" signal its restored enumerator never sends when it finds no new
    partition (FLINK-31006 / FLINK-33466, open in connector 5.0.0 and 4.0.1). A new partition
    matching the source's pattern (:func:`source_topic_pattern`) makes that enumerator signal the
    end: the job then finishes, with its final watermark flushing every window and timer, as a
    fresh bounded run does."""
    return f"{topic}.restore-{plan.run_id}-{plan.runs}"
