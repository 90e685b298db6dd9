"""What the shard learner serves (udfs/learner_core.py ``serving_decision``): the pure decision,
then the learner following a real registry in process: a pin, an unpin, an operator's and the
gate's promotions, a restart while pinned, and a pinned version that cannot be loaded."""

import dataclasses
import json

import numpy as np
import pytest

from streamrec.core.records import RECOMMENDATION
from streamrec.model.item_table import ITEMS_ATTACHMENT, ItemTable
from streamrec.model.onnx_model import export_model_bytes
from streamrec.model.registry import Registry, RegistryState
from streamrec.udfs.learner_core import LearnerCore, LearnerSettings, Serving, ShardState, serving_decision
from streamrec.udfs.online_mf import LearnerParams
from streamrec.udfs.shard_model import Event, ShardSettings

DIM = 8
T0 = 1_800_000_000_000


@pytest.mark.parametrize("serve, state, expected", [
    # no registry followed, or nothing promoted yet: the live table, plainly named
    ("live", None, Serving(None, "live")),
    ("live", RegistryState(None), Serving(None, "live")),
    # the gate promoted: the live table goes on, named after the CURRENT it was checked against
    ("live", RegistryState("v000012"), Serving(None, "live+v000012")),
    # an operator's choice is served as it is: a pin (rollback), a promotion
    ("live", RegistryState("v000002", pinned="v000002"), Serving("v000002", "live+v000002")),
    ("live", RegistryState("v000013", by_operator=True), Serving("v000013", "live+v000013")),
    # serve = registry: CURRENT whoever promoted it; a pin names CURRENT too
    ("registry", RegistryState("v000012"), Serving("v000012", "live+v000012")),
    ("registry", RegistryState("v000002", pinned="v000002"), Serving("v000002", "live+v000002")),
    ("registry", RegistryState(None), Serving(None, "live")),
])
def test_the_decision(serve, state, expected):
    decided = serving_decision(serve, state)
    assert decided == expected
    assert decided.name == (expected.version or expected.live_name)


def test_an_unknown_serve_mode_is_refused():
    with pytest.raises(ValueError, match="scoring.serve must be 'live' or 'registry', got 'lve'"):
        serving_decision("lve", RegistryState("v000001"))


# -- the learner following a registry -----------------------------------------------------------

def _publish(registry: Registry, seed: int, items: int = 12) -> str:
    rng = np.random.default_rng(seed)
    table = ItemTable(np.array([f"i{n}" for n in range(items)]), rng.normal(size=(items, DIM)).astype(np.float32),
                      np.zeros(items, np.float32), np.arange(items, dtype=np.float32))
    model = export_model_bytes(table.vectors, table.bias, np.zeros(items), 0.0)
    return registry.publish(model, {"item_ids": table.item_ids.tolist(), "dim": DIM},
                            {ITEMS_ATTACHMENT: table.to_npz_bytes()})


def _settings(registry: Registry, serve: str = "live") -> LearnerSettings:
    # a check before every batch: the test steps through registry changes batch by batch
    return LearnerSettings(LearnerParams.of(None, dim=DIM, seed=4), ShardSettings(top_k=3, warmup_items=0),
                           state_ttl_ms=86_400_000, changelog_interval_ms=5_000, provider="cpu", serve=serve,
                           registry_dir=str(registry.root), swap_check_interval_s=1e-9)


class Stream:
    """Batches of events for one learner; each returns its records' ``model_version`` values."""

    def __init__(self, core: LearnerCore, state: ShardState | None = None):
        self.core, self.state, self.n = core, state or ShardState.in_memory(), 0

    def names(self, events: int = 6) -> set[str]:
        batch = [Event(f"e{k}", f"u{k % 3}", f"i{(k * 5) % 12}", 1.0, 1_000 + k, 0, k)
                 for k in range(self.n, self.n + events)]
        self.n += events
        out = self.core.on_batch(0, self.state, ",".join(json.dumps(list(e)) for e in batch), now_ms=T0 + self.n)
        return {RECOMMENDATION.decode(v)["model_version"] for kind, _, v in out.records if kind == "recommendation"}


def test_the_default_serves_the_live_table_until_an_operator_chooses_a_version(tmp_path):
    registry = Registry(tmp_path / "registry")
    v1, v2, v3, v4 = (_publish(registry, seed) for seed in range(4))
    stream = Stream(LearnerCore(_settings(registry)))
    assert stream.names() == {"live"}  # before any promotion
    registry.promote(v1, actor="gate", reason="first")
    registry.promote(v2, actor="gate", reason="better")
    assert stream.names() == {"live+v000002"}  # the gate's promotions keep the live table
    registry.rollback(actor="alice", reason="bad CTR")  # pins v1
    assert stream.names() == {v1}
    assert registry.unpin(actor="alice", reason="fixed") == v1
    assert stream.names() == {"live+v000001"}
    registry.promote(v3, actor="cli", reason="manual", operator=True)
    assert stream.names() == {v3}
    registry.promote(v4, actor="gate", reason="better")  # the next promotion: back to the live table
    assert stream.names() == {"live+v000004"}
    registry.promote(v4, actor="cli", reason="serve it as it is", operator=True)  # already CURRENT
    assert stream.names() == {v4}
    assert stream.core.serving == Serving(v4, "live+v000004")


def test_a_restarted_learner_serves_the_pin_from_its_first_batch(tmp_path):
    registry = Registry(tmp_path / "registry")
    v1, v2 = (_publish(registry, seed) for seed in range(2))
    for version in (v1, v2):
        registry.promote(version, actor="gate", reason="ok")
    first = Stream(LearnerCore(_settings(registry)))
    assert first.names() == {"live+v000002"}
    registry.rollback(to=v1, actor="alice", reason="pin")
    restarted = Stream(LearnerCore(dataclasses.replace(_settings(registry), swap_check_interval_s=3600.0)),
                       first.state)
    # (no check is due for an hour: the pin was read at open)
    assert restarted.names() == {v1}


def test_a_pinned_version_that_cannot_be_loaded_is_not_served(tmp_path, caplog):
    registry = Registry(tmp_path / "registry")
    v1, v2 = (_publish(registry, seed) for seed in range(2))
    registry.promote(v1, actor="gate", reason="ok")
    registry.promote(v2, actor="gate", reason="ok")
    stream = Stream(LearnerCore(_settings(registry)))
    assert stream.names() == {"live+v000002"}
    registry.rollback(to=v1, actor="alice", reason="pin")
    (registry.path(v1) / ITEMS_ATTACHMENT).write_bytes(b"damaged after the rollback")
    # what served before goes on, named after what it was checked against; the refusal is logged once
    assert stream.names() == {"live+v000001"} and stream.names() == {"live+v000001"}
    assert [e["version"] for e in registry.read_log() if e["action"] == "refuse"] == [v1]


def test_the_registry_mode_serves_every_promotion(tmp_path):
    registry = Registry(tmp_path / "registry")
    v1, v2 = (_publish(registry, seed) for seed in range(2))
    stream = Stream(LearnerCore(_settings(registry, serve="registry")))
    assert stream.names() == {"live"}
    registry.promote(v1, actor="gate", reason="ok")
    assert stream.names() == {v1}
    registry.promote(v2, actor="gate", reason="ok")
    assert stream.names() == {v2}
    registry.rollback(actor="alice", reason="pin")
    assert stream.names() == {v1}
