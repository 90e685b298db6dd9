"""Shared fixtures: an embedded broker on a free port with its own state dir, per-test topics.

Downloaded assets (connector jars, ML-100k) are shared with the checkout's `.streamrec/` cache
(`make setup` fetched them), so the suite never downloads them twice.
"""

from __future__ import annotations

import uuid

import pytest

from streamrec.runtime import broker
from streamrec.core.config import Config
from tests.support import free_port, make_config


@pytest.fixture(scope="session")
def broker_cfg(tmp_path_factory) -> Config:
    """A running embedded broker for the whole session, stopped at the end."""
    cfg = make_config(tmp_path_factory.mktemp("streamrec-state"), free_port())
    broker.up(cfg, log=lambda m: None)
    yield cfg
    broker.down(cfg, log=lambda m: None)


@pytest.fixture
def cfg(broker_cfg, request) -> Config:
    """The session broker's config with topic names and a checkpoint dir unique to this test."""
    suffix = f"{request.node.name[:40]}-{uuid.uuid4().hex[:6]}".replace("[", "-").replace("]", "")
    topics = {name: f"{value}.{suffix}" for name, value in broker_cfg.kafka.topics.model_dump().items()}
    checkpoints = broker_cfg.paths_resolved.state_dir / "checkpoints" / suffix
    return broker_cfg.model_copy(update={
        "kafka": broker_cfg.kafka.model_copy(update={
            "topics": broker_cfg.kafka.topics.model_copy(update=topics)}),
        # one job lineage per test: a run resumes from its own checkpoints only
        "paths": broker_cfg.paths.model_copy(update={"checkpoint_dir": checkpoints}),
    })
