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
