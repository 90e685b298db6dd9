"""Helpers shared by tests (fixtures live in conftest.py)."""

from __future__ import annotations

import socket
from pathlib import Path

from streamrec.config import Config, load_config

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
    }
    base.update(overrides)
    return load_config(config_file=None, env={}, overrides=base)


def may_lack_a_record(clean: list[dict], warmup_items: int) -> set[str]:
    """Event ids that may get no recommendation: a stream's first events, while its user has had
    every item known so far (nothing to recommend, and an empty list is never published). Those
    lie before the stream has seen ``warmup_items`` distinct items (the shards learn one event at
    a time until then); twice that, for the interleaving of partitions.

    >>> clean = [dict(event_id=f"e{n}", item_id=f"i{n % 3}", ts=n, src_partition=0, src_offset=n)
    ...          for n in range(10)]
    >>> sorted(may_lack_a_record(clean, warmup_items=1))
    ['e0', 'e1']
    """
    items: set[str] = set()
    out: set[str] = set()
    for e in sorted(clean, key=lambda e: (e["ts"], e.get("src_partition", 0), e["src_offset"])):
        if len(items) >= 2 * warmup_items:
            break
        out.add(e["event_id"])
        items.add(e["item_id"])
    return out
