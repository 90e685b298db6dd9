"""Helpers shared by tests (fixtures live in conftest.py)."""

from __future__ import annotations

import os
import random
import socket
import subprocess
import sys
import time
from pathlib import Path

from streamrec.config import Config, load_config, to_env
from streamrec.kafka_io import read_topic

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
    from model.exporter import Exporter

    exporter = Exporter(cfg, force=True)
    try:
        result = exporter.export_once(timeout_s=timeout_s)
    finally:
        exporter.close()
    assert result is not None, "the forced export published nothing"
    return result


def may_lack_a_record(clean: list[dict], batch: int = 256) -> set[str]:
    """Event ids that may get no recommendation: an event whose user, by then, had every item the
    shard's catalogue held (nothing to recommend, and an empty list is never published). A batch
    is scored against the catalogue as of its start, and a batch holds at most ``batch`` events
    (``scoring.max_batch_events``), so the catalogue holds at least the items of the events of
    the event's own partition ``batch`` or more positions earlier (a partition is read in order):
    only an event whose user had all of those can be one. With a backlog the source may read a
    whole burst of one partition first (ML-100k's first 3,000 events: one user's 56; in a CI run
    two events of another heavy user, whose batch brought the items it lacked).

    >>> clean = [dict(event_id=f"e{n}", user_id="u" if n < 3 else "v", item_id=f"i{n}",
    ...               src_partition=0, src_offset=n) for n in range(5)]
    >>> sorted(may_lack_a_record(clean, batch=1))
    ['e0', 'e1', 'e2']
    >>> sorted(may_lack_a_record(clean, batch=4))  # e3 may share a batch with all of them
    ['e0', 'e1', 'e2', 'e3']
    """
    out: set[str] = set()
    by_partition: dict[int, list[dict]] = {}
    for e in clean:
        by_partition.setdefault(e.get("src_partition", 0), []).append(e)
    for events in by_partition.values():
        ordered = sorted(events, key=lambda e: e["src_offset"])
        known: set[str] = set()
        history: dict[str, set[str]] = {}
        for n, e in enumerate(ordered):
            if n >= batch:
                known.add(ordered[n - batch]["item_id"])
            had = history.setdefault(e["user_id"], set())
            had.add(e["item_id"])
            if had >= known:
                out.add(e["event_id"])
    return out


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


def wait_for_records(cfg, topic: str, expected: int, timeout_s: float) -> list[dict]:
    """Committed records of ``topic`` once ``expected`` are there (or what is there at timeout)."""
    deadline = time.monotonic() + timeout_s
    while True:
        recs = [r.json() for r in read_topic(cfg, topic, idle_timeout=2)]
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
