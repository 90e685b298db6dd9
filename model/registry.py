"""A versioned model registry kept as a plain directory tree.

Layout of ``root`` (a local path, or a shared filesystem so that every TaskManager of a cluster
reads the same registry)::

    root/
      v000001/model.onnx      the scoring graph (immutable once the directory exists)
      v000001/meta.json       metadata; only ``status``/``quality``/``history`` ever change
      v000001/items.npz       optional attachments (sha256 in meta.json ``attachments``/``files``)
      v000002/...
      CURRENT                 the promoted version's name, e.g. "v000002\\n"; a second line
                              ``operator`` when an operator's `model promote` set it (served as it is)
      PINNED                  present while an operator's rollback holds
      registry.log            append-only JSON lines: ts, action, version, from, actor, reason
      registry.log.1 ...      rotated logs (newest first); each starts with a ``snapshot`` line
      .lock                   flock()ed around every change of CURRENT, meta.json or the log
      .staging-*/             a version being written (invisible to readers)

Atomicity:

* a version is written into ``.staging-*`` and ``os.rename``\\ d to ``vNNNNNN``: readers see the
  whole directory or nothing. ``rename`` of a directory onto an existing non-empty directory
  fails, so two writers that pick the same number cannot overwrite each other: the loser takes
  the next number (no lock needed to publish);
* ``CURRENT`` and ``meta.json`` are replaced by writing a temporary file and ``os.replace``;
* retention renames a version to ``.trash-*`` before deleting it, so it vanishes in one step;
* the log is rotated under the lock; the new ``registry.log`` starts with a ``snapshot`` line that
  carries the promotion stack, so rollback targets survive a rotation;
* :meth:`Registry.load` checks the sha256 of ``model.onnx`` against ``meta.json`` and raises
  :class:`CorruptModelError` on any mismatch, missing file or unreadable metadata;
  :meth:`Registry.load_attachment` does the same for an attachment.

Version numbers only grow: the next one is one more than the highest directory present (retention
never deletes the newest), so a number is never reused.

>>> import tempfile
>>> reg = Registry(tempfile.mkdtemp())
>>> v = reg.publish(b"not really onnx", {"item_ids": ["a", "b"], "dim": 4})
>>> v, reg.current()
('v000001', None)
>>> reg.promote(v, actor="doc", reason="first model")
>>> reg.current(), reg.load(v)[1]["status"]
('v000001', 'promoted')
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import socket
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable, Generic, Iterable, Iterator, TypeVar

log = logging.getLogger(__name__)

MODEL_FILE = "model.onnx"
META_FILE = "meta.json"
CURRENT_FILE = "CURRENT"
#: Present while an operator's rollback holds: {"version", "actor", "reason", "ts"}. The exporter
#: keeps exporting but promotes nothing until `unpin` or a manual `promote` ends it.
PIN_FILE = "PINNED"
#: Present while the live model is held back: the gate showed an export of it worse than CURRENT
#: (``{"version": the rejected export, "current", "reason", "ts"}``); the stream serves CURRENT
#: until a later export is promoted (docs/registry.md, "Serving").
GUARD_FILE = "GUARD"
#: CURRENT's second line when an operator's promotion set it: the registry version is served
#: instead of the live table (docs/registry.md, "Serving"); the gate's promotions write none.
OPERATOR_MARK = "operator"
LOG_FILE = "registry.log"
LOCK_FILE = ".lock"
#: ``candidate``: published, not decided (or held by a pin); ``superseded``: never decided, a newer
#: version took its place (see docs/registry.md); ``promoted``: has been CURRENT.
STATUSES = ("candidate", "promoted", "rejected", "superseded")
#: registry.log is rotated past this size; this many rotated files are kept (exporter.log_*).
DEFAULT_LOG_MAX_BYTES = 16 * 2**20
DEFAULT_LOG_KEEP = 5
#: Log actions that :meth:`Registry.promotion_stack` replays (a cheap filter before json.loads).
_SNAPSHOT = '"action": "snapshot"'
_STACK_ACTIONS = ('"action": "promote"', '"action": "rollback"', _SNAPSHOT)
_VERSION_RE = re.compile(r"^v(\d{6,})$")
#: Attachment file names: a plain name in the version directory, not one of the registry's own.
_ATTACHMENT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_RESERVED_NAMES = {MODEL_FILE, META_FILE}

T = TypeVar("T")


class RegistryError(RuntimeError):
    """A registry operation is not possible (unknown version, nothing to roll back to, ...)."""


class PinnedError(RegistryError):
    """A promotion was refused because an operator's rollback pinned CURRENT."""


class NotARollbackTargetError(RegistryError):
    """A rollback to a version that was never promoted (or was rejected) without ``force``."""


class CorruptModelError(RegistryError):
    """A version's files are missing, partial, or do not match the sha256 in its meta.json."""


def version_name(number: int) -> str:
    """``7 -> 'v000007'``."""
    return f"v{number:06d}"


def version_number(name: str) -> int:
    """``'v000007' -> 7``; ValueError for anything that is not a version name."""
    m = _VERSION_RE.match(name)
    if not m:
        raise ValueError(f"not a version name: {name!r}")
    return int(m.group(1))


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


#: The keys every registry.log entry has (the rest are an action's extras).
_LOG_KEYS = frozenset({"ts", "action", "version", "from", "actor", "reason", "pin"})


def _now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _write_file_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to a temp file next to ``path``, fsync, then ``os.replace`` it in place."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o644)  # mkstemp makes 0600: other readers of a shared registry need r
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def _json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode()


def _parse_time(value: Any) -> datetime | None:
    try:
        when = datetime.fromisoformat(str(value))
    except (TypeError, ValueError):
        return None
    return when if when.tzinfo else when.replace(tzinfo=timezone.utc)


def _brief(figures: dict[str, Any] | None) -> dict[str, Any]:
    """The scalar gate figures (no per-model detail) that a log line carries."""
    return {k: v for k, v in (figures or {}).items() if not isinstance(v, (dict, list))}


def rollback_refusal(meta: dict[str, Any]) -> str | None:
    """Why a version may not be rolled back to without ``force`` (None: it may): it was never
    promoted, or it was rejected (also after a promotion).

    >>> rollback_refusal({"status": "promoted"}) is None
    True
    >>> rollback_refusal({"status": "candidate", "history": []})
    'it was never promoted (status candidate)'
    >>> rollback_refusal({"status": "rejected", "history": [{"action": "promote"}, {"action": "reject"}]})
    'it was rejected'
    """
    status = meta.get("status")
    if status == "rejected":
        return "it was rejected"
    promoted = status == "promoted" or any(h.get("action") == "promote" for h in meta.get("history") or [])
    return None if promoted else f"it was never promoted (status {status})"


def _buckets(summaries: dict[str, tuple[datetime | None, str | None, int]], now: datetime,
             unit: str, count: int) -> list[str]:
    """The newest promoted and the newest non-rejected version of each of the last ``count`` UTC
    clock hours / days (``unit``), the current one included. Clock-aligned buckets keep a
    representative stable: once its hour is over, nothing newer can land in it."""
    if count <= 0:
        return []

    def start(when: datetime) -> datetime:
        when = when.astimezone(timezone.utc)
        if unit == "hour":
            return when.replace(minute=0, second=0, microsecond=0)
        return when.replace(hour=0, minute=0, second=0, microsecond=0)

    step = timedelta(hours=1) if unit == "hour" else timedelta(days=1)
    oldest = start(now) - (count - 1) * step
    # per bucket the newest promoted version (what `rollback --before` picks) and the newest
    # non-rejected one (what `rollback --before --force` picks)
    best: dict[tuple[datetime, bool], tuple[datetime, int, str]] = {}
    for version, (created, status, _) in summaries.items():
        if created is None or status == "rejected":
            continue  # a representative is a rollback target: never a rejected one
        bucket = start(created)
        if bucket < oldest:
            continue
        key = (created, version_number(version), version)
        for promoted in {False, status == "promoted"}:
            if (bucket, promoted) not in best or key > best[(bucket, promoted)]:
                best[(bucket, promoted)] = key
    return sorted({v for _, _, v in best.values()}, key=version_number)


@dataclass(frozen=True)
class RegistryState:
    """What serving needs from the registry, read in one check (:meth:`Registry.state`): CURRENT,
    whether an operator's promotion set it, the pinned version (None: no pin), and the export of
    the live model the gate showed worse than CURRENT (None: the live model is not held back)."""

    current: str | None
    by_operator: bool = False
    pinned: str | None = None
    held_back: str | None = None


class Registry:
    """The registry rooted at ``root`` (created if missing). Safe for several processes/threads.

    ``registry.log`` is rotated once it grows past ``log_max_bytes`` (0: never), keeping
    ``log_keep`` rotated files (``registry.log.1`` is the newest)."""

    def __init__(self, root: str | os.PathLike[str], log_max_bytes: int = DEFAULT_LOG_MAX_BYTES,
                 log_keep: int = DEFAULT_LOG_KEEP):
        if log_max_bytes < 0 or log_keep < 1:
            raise ValueError("log_max_bytes must be >= 0 and log_keep >= 1")
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.log_max_bytes = int(log_max_bytes)
        self.log_keep = int(log_keep)
        # version -> (meta.json stat key, (created_at, status, history length)): retention runs
        # after every export and must not re-parse every meta.json (item_ids make them large).
        self._summaries: dict[str, tuple[tuple[int, int, int], tuple[datetime | None, str | None, int]]] = {}

    # ------------------------------------------------------------------ paths & locking
    def path(self, version: str) -> Path:
        version_number(version)  # validates the name
        return self.root / version

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Exclusive lock for CURRENT / meta.json / log changes (between processes and threads)."""
        fd = os.open(self.root / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            self._finish_interrupted_change()
            yield
        finally:
            os.close(fd)  # closing releases the lock

    def _finish_interrupted_change(self) -> None:
        """Redo a CURRENT change that was logged but not carried out (a writer killed between
        the two: the log is written first). Under the lock, before any other change.

        The last log line is a ``promote`` or ``rollback`` whose version CURRENT does not name
        while CURRENT is older than that line: set CURRENT (and, for a pinning rollback, the pin).
        A CURRENT written after the line (by hand) is left alone, as everywhere else."""
        last = self._last_log_entry()
        if last is None or last.get("action") not in {"promote", "rollback"}:
            return
        version = last.get("version")
        if not isinstance(version, str) or not (self.root / version).is_dir():
            return
        try:
            logged_at = datetime.fromisoformat(last["ts"]).timestamp()
            current_at = (self.root / CURRENT_FILE).stat().st_mtime
        except FileNotFoundError:
            current_at = float("-inf")
        except (KeyError, TypeError, ValueError):
            return
        by_operator = last["action"] == "promote" and bool(last.get(OPERATOR_MARK))
        if self._read_current() != (version, by_operator) and current_at < logged_at:
            if by_operator:
                self._set_current(version, by_operator=True)
            else:
                self._set_current(version)
            log.warning("registry %s: finished an interrupted %s: CURRENT = %s", self.root,
                        last["action"], version)
        if last["action"] == "rollback" and last.get("pin") and self.current() == version \
                and not (self.root / PIN_FILE).exists():
            self._write_pin(version, last.get("actor", "operator"), last.get("reason", ""),
                            {k: v for k, v in last.items() if k not in _LOG_KEYS})
            self._append_log("pin", version, last.get("from"), last.get("actor", "operator"),
                             last.get("reason", ""))

    def _last_log_entry(self) -> dict[str, Any] | None:
        path = self.root / LOG_FILE
        try:
            with open(path, "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - 65_536))
                tail = f.read()
        except FileNotFoundError:
            return None
        entries = self._parse_lines(tail.decode("utf-8", "replace").splitlines()[-2:])
        return entries[-1] if entries else None

    def _append_log(
        self, action: str, version: str | None, frm: str | None, actor: str, reason: str,
        rotate: bool = True, **extra: Any,
    ) -> None:
        """One line, fsynced. ``rotate=False`` for a line whose change is still to be carried
        out (the rotation's snapshot must see it done): :meth:`_rotate_if_due` follows it."""
        entry = {"ts": _now_iso(), "action": action, "version": version, "from": frm,
                 "actor": actor, "reason": reason}
        entry.update(extra)
        line = (json.dumps(entry, sort_keys=True, default=str) + "\n").encode()
        fd = os.open(self.root / LOG_FILE, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)  # one write of one line: O_APPEND keeps lines whole
            os.fsync(fd)
        finally:
            os.close(fd)
        if rotate:
            self._rotate_if_due()

    def _rotate_if_due(self) -> None:
        size = (self.root / LOG_FILE).stat().st_size
        if self.log_max_bytes and size > self.log_max_bytes:
            self._rotate_log(size)

    def _log_files(self) -> list[Path]:
        """Rotated log files present, oldest first (``registry.log.N`` ... ``registry.log.1``)."""
        found = []
        for entry in os.listdir(self.root):
            head, _, tail = entry.rpartition(".")
            if head == LOG_FILE and tail.isdigit():
                found.append((int(tail), self.root / entry))
        return [path for _, path in sorted(found, reverse=True)]

    def _rotate_log(self, size: int) -> None:
        """Under the lock: registry.log -> registry.log.1 (older ones shift up, the oldest beyond
        ``log_keep`` is deleted); the new log's first line is a ``snapshot`` of the promotion stack
        and the pin, from which :meth:`promotion_stack` replays."""
        try:
            pin = self.pinned()
        except RegistryError:
            pin = None  # unreadable PINNED: the file, not the log, is what holds the pin
        snapshot = {"ts": _now_iso(), "action": "snapshot", "version": None, "from": None,
                    "actor": "registry", "reason": f"log rotated at {size} bytes",
                    "current": self.current(), "stack": self.promotion_stack(), "pin": pin}
        # the new log is complete before the renames: readers miss registry.log for one rename only
        fd, tmp = tempfile.mkstemp(prefix=f".{LOG_FILE}.", suffix=".tmp", dir=self.root)
        try:
            os.fchmod(fd, 0o644)
            os.write(fd, (json.dumps(snapshot, sort_keys=True, default=str) + "\n").encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        for path in self._log_files():
            number = int(path.name.rpartition(".")[2])
            if number >= self.log_keep:
                path.unlink(missing_ok=True)
        for number in range(self.log_keep - 1, 0, -1):
            with contextlib.suppress(FileNotFoundError):
                os.rename(self.root / f"{LOG_FILE}.{number}", self.root / f"{LOG_FILE}.{number + 1}")
        os.rename(self.root / LOG_FILE, self.root / f"{LOG_FILE}.1")
        os.rename(tmp, self.root / LOG_FILE)
        _fsync_dir(self.root)
        log.info("registry %s: registry.log rotated at %d bytes", self.root, size)

    # ------------------------------------------------------------------ reading
    def list_versions(self) -> list[str]:
        """Every complete version, oldest first."""
        names = []
        for entry in os.listdir(self.root):
            if _VERSION_RE.match(entry) and (self.root / entry).is_dir():
                names.append(entry)
        return sorted(names, key=version_number)

    def current(self) -> str | None:
        """The promoted version CURRENT names, or None before the first promotion."""
        return self._read_current()[0]

    def _read_current(self) -> tuple[str | None, bool]:
        """CURRENT's version and whether an operator's promotion set it (its second line)."""
        try:
            words = (self.root / CURRENT_FILE).read_text().split()
        except FileNotFoundError:
            return None, False
        if not words:
            return None, False
        version_number(words[0])
        return words[0], words[1:2] == [OPERATOR_MARK]

    def state(self) -> RegistryState:
        """CURRENT, who set it, the pin and the guard, as serving reads them at every swap check:
        three tiny files. An unreadable PINNED or GUARD counts as none here (the CLI reports it)."""
        current, by_operator = self._read_current()
        try:
            pin = self.pinned()
        except RegistryError:
            pin = None
        try:
            guard = self.guard()
        except RegistryError:
            guard = None
        pinned = pin.get("version") if isinstance(pin, dict) else None
        held = guard.get("version") if isinstance(guard, dict) else None
        return RegistryState(current, by_operator, pinned if isinstance(pinned, str) else None,
                             held if isinstance(held, str) else None)

    def guard(self) -> dict[str, Any] | None:
        """The guard the gate set when it showed an export of the live model worse than CURRENT
        (``reject(..., hold_back_live=True)``), or None. :meth:`promote` ends it."""
        try:
            return json.loads((self.root / GUARD_FILE).read_text())
        except FileNotFoundError:
            return None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise RegistryError(f"{self.root / GUARD_FILE} is unreadable ({exc}); remove it to end "
                                "the guard") from None

    def pinned(self) -> dict[str, Any] | None:
        """The pin a rollback set (CURRENT stays on its version), or None."""
        try:
            return json.loads((self.root / PIN_FILE).read_text())
        except FileNotFoundError:
            return None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise RegistryError(f"{self.root / PIN_FILE} is unreadable ({exc}); remove it to unpin") from None

    def unpin(self, actor: str, reason: str, log_extra: dict[str, Any] | None = None) -> str | None:
        """End a pin; returns the version it held (None when nothing was pinned)."""
        with self._locked():
            pin = self.pinned()
            if pin is None:
                return None
            (self.root / PIN_FILE).unlink()
            _fsync_dir(self.root)
            self._append_log("unpin", pin["version"], None, actor, reason, **(log_extra or {}))
        log.warning("registry %s: unpinned %s by %s: %s", self.root, pin["version"], actor, reason)
        return pin["version"]

    def newest_before(self, when: datetime, promoted_only: bool = True) -> str:
        """The newest promoted version created before ``when`` (for rollback by time); with
        ``promoted_only=False`` (a forced rollback) the newest non-rejected one."""
        found = None
        for version in self.list_versions():
            summary = self._summary(version)
            if summary is None:
                continue
            created, status, _ = summary
            wanted = status == "promoted" if promoted_only else status != "rejected"
            if created is not None and created < when and wanted:
                found = version
        if found is None:
            what = "promoted version" if promoted_only else "retained version"
            raise RegistryError(f"no {what} was created before {when.isoformat()}")
        return found

    def _summary(self, version: str) -> tuple[datetime | None, str | None, int] | None:
        """``(created_at, status, history length)`` of ``version`` (None if unreadable), cached
        until its meta.json is replaced."""
        path = self.path(version) / META_FILE
        try:
            st = path.stat()
        except FileNotFoundError:
            return None
        key = (st.st_mtime_ns, st.st_size, st.st_ino)
        cached = self._summaries.get(version)
        if cached is not None and cached[0] == key:
            return cached[1]
        try:
            meta = self.read_meta(version)
        except CorruptModelError:
            return None
        value = (_parse_time(meta.get("created_at")), meta.get("status"), len(meta.get("history") or []))
        self._summaries[version] = (key, value)
        return value

    def undecided(self) -> list[str]:
        """Versions still ``candidate`` that no decision ever touched (empty history): pending
        in some exporter, or left behind by one that stopped."""
        return [v for v in self.list_versions()
                if (s := self._summary(v)) is not None and s[1] == "candidate" and s[2] == 0]

    def read_meta(self, version: str) -> dict[str, Any]:
        """``meta.json`` of ``version`` (no sha check; :meth:`load` does that)."""
        path = self.path(version) / META_FILE
        try:
            return json.loads(path.read_text())
        except FileNotFoundError:
            raise CorruptModelError(f"model {version}: {path} is missing") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise CorruptModelError(f"model {version}: {path} is not valid JSON ({exc})") from None

    def load(self, version: str) -> tuple[bytes, dict[str, Any]]:
        """``(model bytes, meta)`` of ``version``, after checking model.onnx against its sha256."""
        vdir = self.path(version)
        if not vdir.is_dir():
            raise CorruptModelError(f"model {version}: directory {vdir} does not exist")
        meta = self.read_meta(version)
        try:
            data = (vdir / MODEL_FILE).read_bytes()
        except FileNotFoundError:
            raise CorruptModelError(f"model {version}: {vdir / MODEL_FILE} is missing") from None
        expected = meta.get("sha256")
        actual = sha256_hex(data)
        if actual != expected:
            raise CorruptModelError(
                f"model {version}: sha256 of {MODEL_FILE} is {actual[:16]}…, meta.json says "
                f"{str(expected)[:16]}… ({len(data)} bytes): file is corrupt or partial"
            )
        if meta.get("version") != version:
            raise CorruptModelError(f"model {version}: meta.json names version {meta.get('version')!r}")
        return data, meta

    def load_attachment(self, version: str, name: str) -> bytes:
        """The bytes of attachment ``name`` of ``version``, checked against the sha256 recorded in
        its meta.json ``attachments``; :class:`CorruptModelError` if missing, unknown or altered."""
        vdir = self.path(version)
        if not vdir.is_dir():
            raise CorruptModelError(f"model {version}: directory {vdir} does not exist")
        meta = self.read_meta(version)
        expected = (meta.get("attachments") or {}).get(name)
        if expected is None:
            raise CorruptModelError(
                f"model {version}: no attachment {name!r} in meta.json "
                f"(has: {', '.join(sorted(meta.get('attachments') or {})) or 'none'})")
        try:
            data = (vdir / name).read_bytes()
        except FileNotFoundError:
            raise CorruptModelError(f"model {version}: attachment {vdir / name} is missing") from None
        actual = sha256_hex(data)
        if actual != expected:
            raise CorruptModelError(
                f"model {version}: sha256 of attachment {name} is {actual[:16]}…, meta.json says "
                f"{str(expected)[:16]}… ({len(data)} bytes): file is corrupt or partial"
            )
        return data

    def verify(self, version: str) -> dict[str, Any]:
        """Check every file meta.json ``files`` lists (model.onnx and the attachments) against its
        sha256; return the meta, or raise :class:`CorruptModelError` naming the first bad file."""
        _, meta = self.load(version)
        for name, expected in sorted((meta.get("files") or {}).items()):
            try:
                data = (self.path(version) / name).read_bytes()
            except FileNotFoundError:
                raise CorruptModelError(f"model {version}: {name} is missing") from None
            if sha256_hex(data) != expected:
                raise CorruptModelError(f"model {version}: sha256 of {name} does not match meta.json "
                                        f"files ({len(data)} bytes): file is corrupt or partial")
        return meta

    @staticmethod
    def _read_lines(path: Path) -> list[str]:
        try:
            return path.read_text().splitlines()
        except FileNotFoundError:
            return []

    @staticmethod
    def _parse_lines(lines: Iterable[str]) -> list[dict[str, Any]]:
        out = []
        for line in lines:
            with contextlib.suppress(json.JSONDecodeError):
                if line.strip():
                    out.append(json.loads(line))
        return out

    def read_log(self, rotated: bool = True) -> list[dict[str, Any]]:
        """All log entries, oldest first, the rotated files' too unless ``rotated`` is False (a
        torn last line, if any, is skipped). Each rotated-into file starts with a ``snapshot``."""
        paths = (self._log_files() if rotated else []) + [self.root / LOG_FILE]
        return [entry for path in paths for entry in self._parse_lines(self._read_lines(path))]

    def record_refusal(self, version: str, reason: str, actor: str) -> None:
        """A reader (a scoring operator) refused to serve ``version``: logged (action ``refuse``),
        so `streamrec model list` / `model log` show it; the version's files are not touched."""
        with self._locked():
            self._append_log("refuse", version, self.current(), actor, reason)

    def refusals(self) -> dict[str, list[dict[str, Any]]]:
        """``{version: [refuse log entries]}``: who refused which version, when and why."""
        out: dict[str, list[dict[str, Any]]] = {}
        for entry in self.read_log():
            if entry.get("action") == "refuse":
                out.setdefault(str(entry.get("version")), []).append(entry)
        return out

    def promotion_stack(self) -> list[str]:
        """The chain of promoted versions replayed from the log; the last one is CURRENT.

        ``promote`` pushes; ``rollback`` to a version in the chain drops everything above it, so
        rolling back twice walks further back rather than bouncing between two versions. The
        replay starts at the newest ``snapshot`` (the first line of a log after a rotation), so
        it reads one file, not the whole history.
        """
        chunks: list[list[str]] = []
        for path in [self.root / LOG_FILE] + self._log_files()[::-1]:  # newest file first
            lines = self._read_lines(path)
            chunks.append(lines)
            if lines and _SNAPSHOT in lines[0]:
                break  # a snapshot: everything older is summed up in it
        relevant = (line for lines in reversed(chunks) for line in lines
                    if any(a in line for a in _STACK_ACTIONS))
        stack: list[str] = []
        for entry in self._parse_lines(relevant):
            action, version = entry.get("action"), entry.get("version")
            if action == "snapshot":
                stack = [v for v in entry.get("stack") or [] if isinstance(v, str)]
            elif action == "promote":
                stack.append(version)
            elif action == "rollback":
                if version in stack:
                    last = len(stack) - 1 - stack[::-1].index(version)
                    del stack[last + 1:]
                else:
                    stack.append(version)
        return stack

    def previous_promoted(self) -> str | None:
        """The version a default :meth:`rollback` returns to: the nearest version below CURRENT
        in :meth:`promotion_stack` that still exists and was not rejected later (or None)."""
        stack = self.promotion_stack()
        current = self.current()
        if current is not None and (not stack or stack[-1] != current):
            stack.append(current)  # CURRENT set outside the log: trust CURRENT
        for version in reversed(stack[:-1]):
            if version == current or not (self.root / version).is_dir():
                continue
            summary = self._summary(version)
            if summary is not None and summary[1] == "rejected":
                continue
            return version
        return None

    # ------------------------------------------------------------------ writing
    def publish(
        self,
        model_bytes: bytes,
        meta: dict[str, Any],
        attachments: dict[str, bytes] | None = None,
    ) -> str:
        """Store a new version as a ``candidate`` and return its name.

        ``meta`` supplies ``item_ids`` (index order), ``dim`` and optionally
        ``training_position``, ``exporter_config``, ``extra`` and any other key (the exporter's
        are listed in docs/registry.md); the registry fills in ``version``, ``sha256``,
        ``created_at``, ``item_count``, ``status``, ``quality``, ``attachments`` (``{name:
        sha256}`` of the extra files, e.g. the exporter's ``items.npz``, written into the same
        staging directory, so they appear atomically with the model) and ``files`` (``{name:
        sha256}`` of every file of the version: model.onnx and the attachments).
        """
        meta = dict(meta)
        attachments = dict(attachments or {})
        for name, blob in attachments.items():
            if not isinstance(name, str) or not _ATTACHMENT_RE.match(name) or name in _RESERVED_NAMES:
                raise ValueError(f"invalid attachment name {name!r}: a plain file name other than "
                                 f"{MODEL_FILE} / {META_FILE} ([A-Za-z0-9._-], no leading dot)")
            if not isinstance(blob, (bytes, bytearray, memoryview)):
                raise ValueError(f"attachment {name!r} must be bytes, got {type(blob).__name__}")
        item_ids = meta.get("item_ids")
        if not isinstance(item_ids, list) or not all(isinstance(i, str) for i in item_ids):
            raise ValueError("meta['item_ids'] must be a list of item id strings in index order")
        if len(set(item_ids)) != len(item_ids):
            raise ValueError("meta['item_ids'] contains duplicates")
        if meta.get("item_count", len(item_ids)) != len(item_ids):
            raise ValueError(f"meta['item_count'] = {meta['item_count']} but {len(item_ids)} item_ids")
        if not isinstance(meta.get("dim"), int) or meta["dim"] < 1:
            raise ValueError("meta['dim'] must be a positive int")
        meta["item_count"] = len(item_ids)
        meta["sha256"] = sha256_hex(model_bytes)
        meta["created_at"] = _now_iso()
        meta["status"] = "candidate"
        meta.setdefault("training_position", {"offsets": {}, "watermark": None})
        meta.setdefault("exporter_config", {})
        meta.setdefault("quality", {"candidate": None, "current": None})
        meta.setdefault("extra", {})
        meta["attachments"] = {name: sha256_hex(bytes(blob)) for name, blob in sorted(attachments.items())}
        meta["files"] = {MODEL_FILE: meta["sha256"], **meta["attachments"]}
        meta["history"] = []

        staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=self.root))
        try:
            os.chmod(staging, 0o755)  # mkdtemp makes 0700
            with open(staging / MODEL_FILE, "wb") as fh:
                fh.write(model_bytes)
                fh.flush()
                os.fsync(fh.fileno())
            for name, blob in attachments.items():
                with open(staging / name, "wb") as fh:
                    fh.write(blob)
                    fh.flush()
                    os.fsync(fh.fileno())
            number = self._next_number()
            while True:
                version = version_name(number)
                meta["version"] = version
                _write_file_atomic(staging / META_FILE, _json_bytes(meta))
                _fsync_dir(staging)
                try:
                    os.rename(staging, self.root / version)
                    break
                except OSError as exc:
                    if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY, errno.EISDIR):
                        raise
                    number = max(number + 1, self._next_number())  # another writer took it
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        _fsync_dir(self.root)
        with self._locked():
            self._append_log("publish", version, None, "registry", "candidate published",
                             sha256=meta["sha256"], item_count=meta["item_count"])
        return version

    def _next_number(self) -> int:
        versions = self.list_versions()
        return version_number(versions[-1]) + 1 if versions else 1

    def _update_meta(self, version: str, change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
        meta = self.read_meta(version)
        change(meta)
        _write_file_atomic(self.path(version) / META_FILE, _json_bytes(meta))
        return meta

    def _set_current(self, version: str, by_operator: bool = False) -> None:
        text = f"{version}\n{OPERATOR_MARK}\n" if by_operator else f"{version}\n"
        _write_file_atomic(self.root / CURRENT_FILE, text.encode())

    def _write_pin(self, version: str, actor: str, reason: str, extra: dict[str, Any]) -> None:
        _write_file_atomic(self.root / PIN_FILE, _json_bytes(
            {"version": version, "actor": actor, "reason": reason, "ts": _now_iso(), **extra}))

    def promote(
        self, version: str, actor: str, reason: str, figures: dict[str, Any] | None = None,
        log_extra: dict[str, Any] | None = None, operator: bool = False,
    ) -> None:
        """Verify ``version``, mark it ``promoted`` and point CURRENT at it.

        ``log_extra`` adds keys to the registry.log entry and the history entry (e.g. ``user``).
        ``operator``: an operator's promotion (`streamrec model promote`): it ends a pin, and
        CURRENT says so (its ``operator`` line), so the version is served as it is, instead of
        the live table, until the next promotion (docs/registry.md, "Serving"). Without it, a
        pin refuses the promotion (:class:`PinnedError`)."""
        self.load(version)  # refuses a corrupt model before it can be served
        with self._locked():
            pin = self.pinned()
            if pin is not None and not operator:
                raise PinnedError(f"CURRENT is pinned to {pin['version']} by {pin.get('actor')} "
                                  f"({pin.get('reason')}): {version} is not promoted; "
                                  "`streamrec model unpin` or `promote V` ends the pin")
            if pin is not None:
                (self.root / PIN_FILE).unlink()
                self._append_log("unpin", pin["version"], None, actor, f"promote {version}",
                                 **(log_extra or {}))
            # a promotion ends the guard: the version promoted is what the stream serves next
            with contextlib.suppress(FileNotFoundError):
                (self.root / GUARD_FILE).unlink()
            previous, previous_by_operator = self._read_current()
            if previous == version and (previous_by_operator or not operator):
                log.info("registry %s: %s is already CURRENT, nothing to promote", self.root, version)
                return

            def change(meta: dict[str, Any]) -> None:
                meta["status"] = "promoted"
                if figures is not None:
                    meta["quality"] = dict(figures)
                meta.setdefault("history", []).append(
                    {"ts": _now_iso(), "action": "promote", "actor": actor, "reason": reason,
                     **({OPERATOR_MARK: True} if operator else {}), **(log_extra or {})})

            self._update_meta(version, change)
            extra = {**({"figures": _brief(figures)} if figures else {}),
                     **({OPERATOR_MARK: True} if operator else {}), **(log_extra or {})}
            # logged first: a writer killed in between leaves a change the next one finishes
            self._append_log("promote", version, previous, actor, reason, rotate=False, **extra)
            if operator:
                self._set_current(version, by_operator=True)
            else:
                self._set_current(version)
            self._rotate_if_due()
        log.info("registry %s: promoted %s (was %s) by %s: %s", self.root, version, previous, actor, reason)

    def _record_decision(self, version: str, status: str, action: str, reason: str,
                         figures: dict[str, Any] | None, actor: str, **log_extra: Any) -> None:
        """Set ``version``'s status (with the gate's figures) and log the decision; under the lock."""
        def change(meta: dict[str, Any]) -> None:
            meta["status"] = status
            if figures is not None:
                meta["quality"] = dict(figures)
            meta.setdefault("history", []).append(
                {"ts": _now_iso(), "action": action, "actor": actor, "reason": reason})

        self._update_meta(version, change)
        extra = {"figures": _brief(figures)} if figures else {}
        self._append_log(action, version, self.current(), actor, reason, **extra,
                         **{k: v for k, v in log_extra.items() if v})

    def hold(self, version: str, reason: str, figures: dict[str, Any] | None = None,
             actor: str = "gate") -> None:
        """Record that ``version`` stays a candidate because CURRENT is pinned."""
        with self._locked():
            self._record_decision(version, "candidate", "hold", reason, figures, actor)
        log.info("registry %s: %s held: %s", self.root, version, reason)

    def reject(
        self, version: str, reason: str, figures: dict[str, Any] | None = None, actor: str = "gate",
        hold_back_live: bool = False,
    ) -> None:
        """Mark ``version`` ``rejected`` (it stays on disk until retention removes it).

        ``hold_back_live``: the gate showed this export of the live model worse than CURRENT, so
        the stream serves CURRENT instead of the live table until a later export is promoted
        (GUARD_FILE). Written before the decision is logged: a writer killed in between leaves
        the safe side (CURRENT served)."""
        with self._locked():
            current = self.current()
            if current == version:
                raise RegistryError(f"cannot reject {version}: it is CURRENT (roll back first)")
            if hold_back_live and current is not None:
                _write_file_atomic(self.root / GUARD_FILE, _json_bytes(
                    {"version": version, "current": current, "reason": reason, "ts": _now_iso()}))
            self._record_decision(version, "rejected", "reject", reason, figures, actor,
                                  hold_back_live=bool(hold_back_live and current is not None))
        log.info("registry %s: rejected %s: %s", self.root, version, reason)

    def supersede(
        self, version: str, reason: str, figures: dict[str, Any] | None = None, actor: str = "gate"
    ) -> None:
        """Mark a never-decided ``version`` ``superseded``: a newer version took its place before
        the gate could decide it (the reason says which and why)."""
        with self._locked():
            if self.current() == version:
                raise RegistryError(f"cannot supersede {version}: it is CURRENT")
            self._record_decision(version, "superseded", "supersede", reason, figures, actor)
        log.info("registry %s: %s superseded: %s", self.root, version, reason)

    def rollback(
        self, to: str | None = None, actor: str = "operator", reason: str = "",
        log_extra: dict[str, Any] | None = None, pin: bool = True, force: bool = False,
    ) -> str:
        """Point CURRENT at ``to`` (default: the previously promoted version) and, with ``pin``,
        pin it there (the exporter then promotes nothing until an unpin); return it.

        A version that was never promoted (a candidate, a superseded one) or was rejected is
        refused (:class:`NotARollbackTargetError`, one sentence) unless ``force``: nobody ever
        decided it was good to serve. ``log_extra`` adds keys to the registry.log entry and the
        history entry (e.g. ``user``)."""
        with self._locked():
            previous = self.current()
            target = to if to is not None else self.previous_promoted()
            if target is None:
                raise RegistryError("nothing to roll back to: fewer than two promotions in the log")
            if target == previous and not pin:
                raise RegistryError(f"{target} is already CURRENT")
            meta = self.read_meta(target)
            refusal = rollback_refusal(meta)
            if refusal and not force:
                raise NotARollbackTargetError(f"cannot roll back to {target}: {refusal}; "
                                              "`--force` rolls back to it anyway")
            self.load(target)  # sha check: never roll back onto a corrupt model
            forced = {"forced": True} if refusal else {}
            self._update_meta(target, lambda m: m.setdefault("history", []).append(
                {"ts": _now_iso(), "action": "rollback", "actor": actor, "reason": reason,
                 **forced, **(log_extra or {})}))
            # logged first (with whether it pins): _finish_interrupted_change completes it
            self._append_log("rollback", target, previous, actor, reason, rotate=False, pin=pin,
                             **forced, **(log_extra or {}))
            self._set_current(target)
            self._rotate_if_due()
            if pin:
                self._write_pin(target, actor, reason, log_extra or {})
                self._append_log("pin", target, previous, actor, reason, **(log_extra or {}))
        log.warning("registry %s: rolled back %s -> %s by %s: %s", self.root, previous, target, actor, reason)
        return target

    def enforce_retention(
        self, keep_last_n: int, hourly_hours: int = 0, daily_days: int = 0,
        now: datetime | None = None, protect: Iterable[str] = (),
    ) -> list[str]:
        """Delete every version no rule keeps; return the deleted names.

        Kept: the newest ``keep_last_n``; the newest promoted version and the newest non-rejected
        one (by meta.json ``created_at``) of each of the last ``hourly_hours`` UTC clock hours and of each of the
        last ``daily_days`` UTC days, the current ones included (0 disables a rule); CURRENT,
        the pin's version, the default rollback target and ``protect`` (e.g. a pending
        candidate). ``now`` (aware) is the clock, for tests. The ``retention`` log entry lists the
        deleted versions and, under ``kept``, every kept version under the first rule that kept it.

        >>> import tempfile
        >>> reg = Registry(tempfile.mkdtemp())
        >>> for _ in range(4):
        ...     _ = reg.publish(b"m", {"item_ids": ["a"], "dim": 2})
        >>> reg.enforce_retention(2, hourly_hours=0)
        ['v000001', 'v000002']
        >>> reg.read_log()[-1]["kept"]
        {'last_n': ['v000003', 'v000004']}
        """
        if keep_last_n < 1:
            raise ValueError("keep_last_n must be >= 1")
        if hourly_hours < 0 or daily_days < 0:
            raise ValueError("hourly_hours and daily_days must be >= 0 (0 disables the rule)")
        now = now if now is not None else datetime.now(timezone.utc)
        if now.tzinfo is None:
            raise ValueError("now must be timezone-aware")
        deleted = []
        with self._locked():
            versions = self.list_versions()
            summaries = {v: s for v in versions if (s := self._summary(v)) is not None}
            pin = self.pinned()
            rules: list[tuple[str, list[str]]] = [
                ("current", [v for v in [self.current()] if v]),
                ("pin", [pin["version"]] if pin and pin.get("version") else []),
                ("rollback_target", [v for v in [self.previous_promoted()] if v]),
                ("protected", sorted(set(protect), key=version_number)),
                ("last_n", versions[-keep_last_n:]),
                ("hourly", _buckets(summaries, now, "hour", hourly_hours)),
                ("daily", _buckets(summaries, now, "day", daily_days)),
            ]
            kept: dict[str, list[str]] = {}
            keep: set[str] = set()
            for rule, names in rules:
                fresh = [v for v in names if v not in keep]
                if fresh:
                    kept[rule] = fresh
                    keep.update(fresh)
            for version in versions:
                if version in keep:
                    continue
                trash = self.root / f".trash-{version}-{uuid.uuid4().hex[:8]}"
                try:
                    os.rename(self.root / version, trash)
                except FileNotFoundError:
                    continue
                shutil.rmtree(trash, ignore_errors=True)
                self._summaries.pop(version, None)
                deleted.append(version)
            if deleted:
                self._append_log("retention", None, None, "registry",
                                 f"keep_last_n={keep_last_n} hourly_hours={hourly_hours} "
                                 f"daily_days={daily_days}", deleted=deleted, kept=kept)
        return deleted

    def clean_staging(self, older_than_s: float = 3600.0) -> list[str]:
        """Remove ``.staging-*``/``.trash-*`` left by crashed writers (older than the limit)."""
        removed = []
        cutoff = time.time() - older_than_s
        for entry in os.listdir(self.root):
            if entry.startswith((".staging-", ".trash-")):
                path = self.root / entry
                with contextlib.suppress(OSError):
                    if path.stat().st_mtime < cutoff:
                        shutil.rmtree(path, ignore_errors=True)
                        removed.append(entry)
        return removed


class CurrentModelWatcher(Generic[T]):
    """Follow CURRENT and keep the newest verified model loaded.

    ``loader(model_bytes, meta)`` turns a verified version into the object to serve (e.g.
    ``ScoringModel.from_bytes``). :meth:`check` reads the tiny CURRENT file (one ``open``/``read``,
    cheaper than anything it could race with) and loads only when the name changed. A corrupt or
    unloadable version is logged once and skipped (retried quietly every ``retry_failed_s``, in
    case the failure was a transient filesystem error); the previous model keeps serving.

    Use :meth:`maybe_check` from an operator's processing loop (it checks at most every
    ``interval_s``), or :meth:`start` for a daemon thread that polls.
    """

    def __init__(
        self,
        registry: Registry,
        loader: Callable[[bytes, dict[str, Any]], T],
        interval_s: float = 2.0,
        on_change: Callable[[str, T], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        retry_failed_s: float = 60.0,
        actor: str | None = None,
        target: Callable[[], str | None] | None = None,
    ):
        if interval_s <= 0:
            raise ValueError("interval_s must be > 0")
        self.registry = registry
        #: the version to have loaded (default: CURRENT); the shard learner passes its serving
        #: decision's (udfs/learner_core.py), None: load nothing
        self.target = target if target is not None else registry.current
        self.loader = loader
        self.interval_s = interval_s
        self.on_change = on_change
        self._clock = clock
        self._lock = threading.Lock()
        self._model: T | None = None
        self._version: str | None = None
        self.retry_failed_s = retry_failed_s
        #: who a refusal is logged as: this process
        self.actor = actor or f"scorer@{socket.gethostname()}:{os.getpid()}"
        self._failed: dict[str, float] = {}  # version -> when it last failed
        self._last_check = float("-inf")
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self.loads = 0
        self.failures = 0

    @property
    def version(self) -> str | None:
        return self._version

    @property
    def model(self) -> T | None:
        return self._model

    def get(self) -> tuple[str | None, T | None]:
        """``(version, model)`` as one consistent pair."""
        with self._lock:
            return self._version, self._model

    def check(self) -> bool:
        """Poll CURRENT now; return True when a new model was swapped in."""
        self._last_check = self._clock()
        for _ in range(3):  # CURRENT may move while we load: follow it a few steps
            try:
                target = self.target()
            except (OSError, ValueError) as exc:
                log.warning("model registry %s: cannot read CURRENT: %s", self.registry.root, exc)
                return False
            if target is None or target == self._version:
                return False
            failed_at = self._failed.get(target)
            if failed_at is not None and self._clock() - failed_at < self.retry_failed_s:
                return False
            try:
                data, meta = self.registry.load(target)
                model = self.loader(data, meta)
            except Exception as exc:  # noqa: BLE001 - any failure: keep serving the old model
                if self.target() != target:
                    continue  # CURRENT moved on (e.g. retention raced us): try the new one
                first = target not in self._failed
                self._failed[target] = self._clock()
                self.failures += 1
                if first:  # one line per bad version, not one per poll
                    log.error(
                        "model %s refused, still serving %s: %s",
                        target, self._version or "no model", exc,
                    )
                    try:  # visible to operators: `streamrec model list` shows the refusal
                        self.registry.record_refusal(target, str(exc), self.actor)
                    except OSError as log_exc:  # serving never depends on the log being writable
                        log.warning("model registry %s: cannot log the refusal: %s", self.registry.root, log_exc)
                return False
            with self._lock:
                previous = self._version
                self._model, self._version = model, target
            self.loads += 1
            log.info("model swapped %s -> %s", previous or "none", target)
            if self.on_change is not None:
                self.on_change(target, model)
            return True
        return False

    def maybe_check(self) -> bool:
        """:meth:`check` if ``interval_s`` has passed since the last one."""
        if self._clock() - self._last_check < self.interval_s:
            return False
        return self.check()

    def start(self) -> "CurrentModelWatcher[T]":
        """Check once now, then poll in a daemon thread until :meth:`stop`."""
        self.check()
        self._stop.clear()

        def loop() -> None:
            while not self._stop.wait(self.interval_s):
                try:
                    self.check()
                except Exception:  # noqa: BLE001 - the thread must survive anything
                    log.exception("model watcher check failed")

        self._thread = threading.Thread(target=loop, name="model-watcher", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5 * self.interval_s + 1)
            self._thread = None
