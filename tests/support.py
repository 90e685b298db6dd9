"""Helpers shared by tests (fixtures live in conftest.py)."""

from __future__ import annotations

import contextlib
import json
import os
import random
import socket
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Hashable, Iterable, Iterator, Mapping

from streamrec.core.config import Config, load_config, to_env
from streamrec.core.records import RECORDS, Record
from streamrec.runtime.kafka_io import read_topic

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_config(state_dir: Path, port: int, **overrides) -> Config:
    base = {
        "paths.state_dir": str(state_dir),
        "paths.cache_dir": str(REPO / ".streamrec" / "cache"),
        "paths.data_dir": str(REPO / ".streamrec" / "data"),
        "embedded.port": port,
        "embedded.controller_port": free_port(),
        "flink.checkpoint_interval_ms": 1000,
        "ingest.features_checkpoint_interval_ms": 1000,
    }
    base.update(overrides)
    return load_config(config_file=None, env={}, overrides=base)


def export_forced(cfg: Config, timeout_s: float = 60.0):
    """One forced export by a fresh exporter (catch up, export, close): the version it published,
    promoted without the gate."""
    from streamrec.model.exporter import Exporter

    exporter = Exporter(cfg, force=True)
    try:
        result = exporter.export_once(timeout_s=timeout_s)
    finally:
        exporter.close()
    assert result is not None, "the forced export published nothing"
    return result


@dataclass(frozen=True)
class Accounting:
    """What became of every expected record in an output, by key: ``lost`` (no record),
    ``duplicated`` (key -> how many records), ``unexpected`` (key -> why: a record for no expected
    key, or one that contradicts it), ``dropped`` (key -> why: expected keys that rightly have no
    record, each with its reason). ``exact``: nothing lost, duplicated or unexpected."""

    checked: int
    lost: tuple = ()
    duplicated: dict = field(default_factory=dict)
    unexpected: dict = field(default_factory=dict)
    dropped: dict = field(default_factory=dict)

    @property
    def exact(self) -> bool:
        return not (self.lost or self.duplicated or self.unexpected)

    def __str__(self) -> str:
        return (f"{self.checked} checked: {len(self.lost)} lost {list(self.lost[:5])}, "
                f"{len(self.duplicated)} duplicated {dict(list(self.duplicated.items())[:5])}, "
                f"{len(self.unexpected)} unexpected {dict(list(self.unexpected.items())[:5])}, "
                f"{len(self.dropped)} dropped")


def account(expected: Iterable[Hashable], produced: Iterable[Hashable],
            dropped: Mapping[Hashable, str] | None = None) -> Accounting:
    """Each expected key against the produced ones: exactly one record each, or listed in
    ``dropped`` with a reason (and then none).

    >>> a = account([1, 2, 3, 4], [1, 2, 2, 5], dropped={4: "duplicate"})
    >>> a.lost, a.duplicated, a.unexpected, a.exact
    ((3,), {2: 2}, {5: 'not expected'}, False)
    >>> account([1], [1, 2], dropped={2: "dup"}).unexpected  # a dropped key with a record is wrong
    {2: 'dropped (dup), yet has a record'}
    >>> account(["a", "b"], ["b", "a"]).exact
    True
    """
    expected, dropped = set(expected), dict(dropped or {})
    counts = Counter(produced)
    unexpected = {k: "not expected" for k in counts if k not in expected}
    unexpected.update({k: f"dropped ({dropped[k]}), yet has a record" for k in counts if k in dropped})
    return Accounting(
        checked=len(expected),
        lost=tuple(sorted((k for k in expected - set(dropped) if k not in counts), key=repr)),
        duplicated={k: n for k, n in counts.items() if n > 1},
        unexpected=unexpected, dropped={k: v for k, v in dropped.items() if k in expected})


def account_recommendations(clean: list[dict], recs: list[dict]) -> Accounting:
    """Every ``events.clean`` event against the ``recommendations`` records, keyed by the
    ``events.raw`` partition and offset both carry (an event_id may come back after the dedup
    horizon, an offset never does): exactly one record each. A record that names another
    event_id than the clean event at its offset, or has no items without ``strategy: none`` and
    a ``reason``, is unexpected.

    >>> clean = [dict(event_id=f"e{n}", src_partition=0, src_offset=n) for n in range(4)]
    >>> def rec(n, eid=None, items=("x",), **kw):
    ...     return dict(source_event_id=eid or f"e{n}", source_partition=0, source_offset=n,
    ...                 items=[{"item_id": i} for i in items], strategy="model", reason=None) | kw
    >>> ok = account_recommendations(clean, [rec(0, items=(), strategy="none", reason="r"), rec(1), rec(2), rec(3)])
    >>> ok.exact, ok.checked
    (True, 4)
    >>> bad = account_recommendations(clean, [rec(0, items=()), rec(1, "e9"), rec(2), rec(2)])
    >>> bad.lost, bad.duplicated, bad.unexpected
    (((0, 3),), {(0, 2): 2}, {(0, 0): 'no items and no reason', (0, 1): 'source_event_id e9, events.clean has e1'})
    """
    ids = {(e["src_partition"], e["src_offset"]): e["event_id"] for e in clean}
    keys, wrong = [], {}
    for r in recs:
        key = (r["source_partition"], r["source_offset"])
        if key in ids and r["source_event_id"] != ids[key]:
            wrong[key] = f"source_event_id {r['source_event_id']}, events.clean has {ids[key]}"
            continue
        if not r["items"] and not (r.get("strategy") == "none" and r.get("reason")):
            wrong[key] = "no items and no reason"
            continue
        keys.append(key)
    acc = account(ids, keys)
    return Accounting(acc.checked, tuple(k for k in acc.lost if k not in wrong), acc.duplicated,
                      acc.unexpected | wrong)


def account_ingestion(raw: list, clean: list[dict], dlq: list[dict]) -> Accounting:
    """Every ``events.raw`` record (``streamrec.runtime.kafka_io.Record``) against ``events.clean`` and
    ``events.dlq``, keyed by partition and offset (both outputs carry ``src_partition`` /
    ``src_offset``): in exactly one of them, or ``dropped`` as a duplicate. Deduplication leaves
    no record of its own, so a raw record in neither output counts as dropped only if its
    ``event_id`` is in events.clean from another raw record that dedup saw first (an earlier
    offset of its partition, or another partition); otherwise it is lost.

    >>> from streamrec.runtime.kafka_io import Record
    >>> raw = [Record("raw", 0, n, None, v, 0) for n, v in enumerate(
    ...     [b'{"event_id":"a"}', b'{"event_id":"a"}', b'nope', b'{"event_id":"b"}', b'{"event_id":"c"}'])]
    >>> clean = [dict(event_id="a", src_partition=0, src_offset=0), dict(event_id="b", src_partition=0, src_offset=3)]
    >>> acc = account_ingestion(raw, clean, [dict(src_partition=0, src_offset=2, reason="invalid_json")])
    >>> acc.lost, acc.dropped, acc.checked
    (((0, 4),), {(0, 1): 'duplicate of (0, 0)'}, 5)
    """
    clean_keys = [(e["src_partition"], e["src_offset"]) for e in clean]
    first_of = {}
    for e in clean:
        first_of.setdefault(e["event_id"], (e["src_partition"], e["src_offset"]))
    produced = clean_keys + [(d["src_partition"], d["src_offset"]) for d in dlq]
    have = set(produced)
    dropped = {}
    for r in raw:
        key = (r.partition, r.offset)
        if key in have:
            continue
        try:
            event_id = json.loads(r.value).get("event_id")
        except (TypeError, ValueError, AttributeError):
            continue
        kept = first_of.get(event_id) if isinstance(event_id, str) else None
        if kept is not None and kept != key and not (kept[0] == key[0] and kept[1] > key[1]):
            dropped[key] = f"duplicate of {kept}"
    return account([(r.partition, r.offset) for r in raw], produced, dropped)


N_USERS, N_ITEMS, N_GROUPS = 120, 80, 4


def planted_stream(n_events: int, seed: int = 7) -> list[dict]:
    """A stream with planted structure (the end-to-end tests' input). Users of group g mostly interact with items of group g; a few late-coming new users."""
    rng = random.Random(seed)
    events = []
    for n in range(n_events):
        user = rng.randrange(N_USERS if n < n_events * 0.9 else N_USERS + 20)  # +20 new users at the end
        group = user % N_GROUPS
        per = N_ITEMS // N_GROUPS
        item = group * per + rng.randrange(per) if rng.random() < 0.85 else rng.randrange(N_ITEMS)
        events.append({"event_id": f"ev-{n}", "user_id": f"u{user}", "item_id": f"i{item}",
                       "event_type": rng.choice(["view", "click", "cart", "purchase"]),
                       "ts": 1_700_000_000_000 + n * 500})
    return events


def topic_record(cfg, topic: str) -> Record:
    """The record (core/records.py) of the topic named ``topic`` in ``cfg``."""
    for key, record in RECORDS.items():
        if getattr(cfg.kafka.topics, key) == topic:
            return record
    raise KeyError(f"no record is declared for topic {topic!r}")


def read_records(cfg, topic: str, **read_kwargs) -> list[dict | None]:
    """The records of ``topic`` (:func:`read_topic`), each decoded strictly by the topic's record:
    a record that drifted from its declaration fails the test (a tombstone is None)."""
    record = topic_record(cfg, topic)
    return [None if r.value is None else record.decode(r.value) for r in read_topic(cfg, topic, **read_kwargs)]


def wait_for_records(cfg, topic: str, expected: int, timeout_s: float) -> list[dict]:
    """Committed records of ``topic`` once ``expected`` are there (or what is there at timeout),
    decoded strictly (:func:`read_records`)."""
    from confluent_kafka import KafkaException

    from streamrec.runtime.kafka_io import KafkaSetupError

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            recs = read_records(cfg, topic, idle_timeout=2)
        except (KafkaException, KafkaSetupError):  # a broker just back (unfenced, leaders moving)
            if time.monotonic() > deadline:
                raise
            recs = []
        if len(recs) >= expected or time.monotonic() > deadline:
            return recs
        time.sleep(2)


class StreamrecProcess:
    """`streamrec ARGS` in its own process group (a kill reaches its Flink JVM too), output to a
    file (a pipe nobody reads would fill and stall the job)."""

    def __init__(self, cfg, log_path, *args: str):
        env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMREC_")} | to_env(cfg)
        self.log_path = log_path
        with open(log_path, "w") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "streamrec.cli", *args], cwd=REPO,
                                         env=env, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)

    @property
    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout)


@contextlib.contextmanager
def small_filesystem(mount: Path, size: str) -> Iterator[Path]:
    """A real tmpfs of ``size`` (e.g. "2m") mounted on ``mount`` for a disk-fault test: skipped,
    with the reason, where mounting is not allowed (it needs root and CAP_SYS_ADMIN)."""
    import pytest

    mount.mkdir(parents=True, exist_ok=True)
    try:
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)],
                       check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"cannot mount a tmpfs here (needs root and CAP_SYS_ADMIN): {exc}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill_up(directory: Path, chunk: int = 65_536) -> Path:
    """Write a file into ``directory`` until its filesystem is full; return it (unlink = space back)."""
    filler = directory / "filler"
    with open(filler, "wb") as fh:
        try:
            while True:
                fh.write(b"\0" * chunk)
                fh.flush()
        except OSError:
            pass
    return filler


def run_cli(cfg, *args: str) -> str:
    """`streamrec ARGS` in a process of its own with ``cfg`` (as STREAMREC_* env); its stdout,
    asserting it succeeded."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMREC_")} | to_env(cfg)
    done = subprocess.run([sys.executable, "-m", "streamrec.cli", *args], env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


# -- serving after a rollback / unpin (tests/flink_jobs/test_rollback_served.py, tests/runtime/test_cluster.py)

#: One swap check (scoring.swap_check_interval_s, the default) + one micro-batch: the bound within
#: which every recommendation names what a rollback, an unpin or the guard made serve.
SERVED_BOUND_S = 2.0 + 0.1
#: For the loaded test machine (2 shared cores: a mini-cluster of two subtasks, the producer, the
#: CLI): a version's load and a late batch.
SERVED_MARGIN_S = 3.0
#: How long each serving state is held before the next change.
SERVED_HOLD_S = SERVED_BOUND_S + SERVED_MARGIN_S + 2.0


def iso_ms(iso: str) -> int:
    """Epoch milliseconds of an ISO-8601 time (the registry's ``ts``)."""
    from datetime import datetime

    return int(datetime.fromisoformat(iso).timestamp() * 1000)


def committed(cfg, topic: str) -> int:
    """How many records ``topic`` holds (the sum of its partitions' end offsets)."""
    from streamrec.runtime.kafka_io import end_offsets

    return sum(end_offsets(cfg, topic).values())


def wait_until(pred, timeout_s: float, what: str) -> None:
    """Poll ``pred`` every 0.5 s until it is true; fail naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not pred():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)


def delay_ms(recs: list[dict], since_ms: int, until_ms: int, name) -> tuple[int, int]:
    """(first record naming ``name`` after ``since_ms``, last record not naming it before
    ``until_ms``), as delays from ``since_ms``: the second is the delay until all are served.

    >>> recs = [dict(emitted_ts=t, model_version=v) for t, v in [(5, "a"), (10, "a"), (12, "b"), (15, "a"), (20, "b")]]
    >>> delay_ms(recs, 10, 30, lambda name: name == "b")
    (2, 5)
    """
    window = [r for r in recs if since_ms <= r["emitted_ts"] < until_ms]
    first = min(r["emitted_ts"] for r in window if name(r["model_version"]))
    last_other = max((r["emitted_ts"] for r in window if not name(r["model_version"])), default=since_ms)
    return first - since_ms, last_other - since_ms
