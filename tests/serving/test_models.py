"""Request-time scoring follows CURRENT like the stream: swaps, pins, and refuses what the job's
loader refuses while the previous version keeps serving (a real registry, no Kafka)."""

from __future__ import annotations

import numpy as np
import pytest

from streamrec.core.config import load_config
from streamrec.model.item_table import ItemTable
from streamrec.model.onnx_model import export_model_bytes, popularity_prior
from streamrec.model.registry import Registry
from streamrec.serving.models import ModelServer, NoModelError

DIM = 4


def publish(registry: Registry, vectors: np.ndarray, popularity: np.ndarray, prior_weight: float = 0.0) -> str:
    ids = np.array([f"i{n}" for n in range(len(vectors))])
    table = ItemTable(ids, vectors.astype(np.float32), np.zeros(len(ids), np.float32), popularity.astype(np.float32))
    model = export_model_bytes(table.vectors, table.bias, popularity_prior(table.popularity), prior_weight)
    return registry.publish(model, {"item_ids": ids.tolist(), "dim": DIM}, {"items.npz": table.to_npz_bytes()})


@pytest.fixture
def server(tmp_path):
    cfg = load_config(config_file=None, env={}, overrides={
        "paths.state_dir": str(tmp_path), "learner.dim": DIM, "scoring.provider": "cpu"})
    server = ModelServer(cfg, popular_k=3)
    yield server
    server.stop()


def test_scores_follow_current_and_refuse_a_bad_version(server):
    registry = server.registry
    with pytest.raises(NoModelError, match="no CURRENT"):
        server.score(None, 2, (), None)
    eye = np.eye(DIM, dtype=np.float32)
    first = publish(registry, eye, np.array([1, 5, 3, 0]))
    registry.promote(first, actor="test", reason="first")
    server.watcher.check()
    user = np.array([0.1, 0.2, 0.9, 0.4], np.float32)
    scored = server.score(user, 2, (), None)
    assert scored.version == first and [i for i, _ in scored.items] == ["i2", "i3"]
    assert [i for i, _ in server.score(user, 2, {"i2"}, None).items] == ["i3", "i1"]
    ranked = server.score(user, 5, (), ("i0", "i9", "i3"))
    assert [i for i, _ in ranked.items] == ["i3", "i0"] and ranked.unknown_candidates == ["i9"]
    assert server.current()[1].popular == ("i1", "i2", "i0")

    # a version of another dimension: the stream's loader refuses it, the previous one serves on
    wrong = publish(registry, np.eye(DIM + 1, dtype=np.float32)[:, :DIM + 1], np.zeros(DIM + 1))
    registry.promote(wrong, actor="test", reason="poisoned")
    server.watcher.check()
    assert server.score(user, 2, (), None).version == first
    assert wrong in registry.refusals()

    # a good newer version swaps in; a rollback pins the old one and scoring follows it
    newer = publish(registry, -eye, np.ones(DIM))
    registry.promote(newer, actor="test", reason="newer")
    server.watcher.check()
    assert server.score(user, 1, (), None).version == newer
    registry.rollback(first, actor="test", reason="pin")
    server.watcher.check()
    described = server.describe()
    assert server.score(user, 1, (), None).version == first == described["serving"] == described["pin"]["version"]
    assert {v["version"]: v["refused"] for v in described["versions"]}[wrong]


def test_a_user_without_a_vector_gets_the_item_prior(server):
    version = publish(server.registry, np.eye(DIM, dtype=np.float32), np.array([0, 9, 2, 5]), prior_weight=0.5)
    server.registry.promote(version, actor="test", reason="first")
    server.watcher.check()
    assert [i for i, _ in server.score(None, 4, (), None).items] == ["i1", "i3", "i2", "i0"]
