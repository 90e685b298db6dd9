"""`--from-version V` before anything starts: what it refuses, and the pin it sets (once)."""

from __future__ import annotations

import numpy as np
import pytest

from streamrec.flink_jobs import pipeline
from streamrec.model.item_table import ITEMS_ATTACHMENT, ItemTable
from streamrec.model.onnx_model import export_model_bytes
from streamrec.model.registry import Registry
from streamrec.model.user_table import USERS_ATTACHMENT, UserTable
from tests.support import make_config

DIM = 4


@pytest.fixture
def fcfg(tmp_path):
    return make_config(tmp_path / "state", 19092, **{"learner.dim": DIM, "paths.registry_dir": str(tmp_path / "registry")})


def _publish(cfg, users: bool = True, dim: int = DIM) -> str:
    ids = np.array(["a", "b", "c"])
    vectors = np.ones((3, dim), np.float32)
    items = ItemTable(ids, vectors, np.zeros(3, np.float32), np.zeros(3, np.float32))
    attachments = {ITEMS_ATTACHMENT: items.to_npz_bytes()}
    if users:
        attachments[USERS_ATTACHMENT] = UserTable.of({"u1": np.zeros(dim, np.float32)}, dim).to_npz_bytes()
    meta = {"item_ids": ids.tolist(), "dim": dim}
    model = export_model_bytes(vectors, np.zeros(3), np.zeros(3), 0.0)
    return Registry(cfg.paths_resolved.registry_dir).publish(model, meta, attachments)


def test_refuses_unknown_userless_rejected_and_other_dimension_versions(fcfg):
    with pytest.raises(pipeline.FromVersionError, match="no such version"):
        pipeline.check_from_version(fcfg, "v000042")
    with pytest.raises(pipeline.FromVersionError, match="no users.npz"):
        pipeline.check_from_version(fcfg, _publish(fcfg, users=False))
    with pytest.raises(pipeline.FromVersionError, match="dim 8, but the learner's is 4"):
        pipeline.check_from_version(fcfg, _publish(fcfg, dim=8))
    rejected = _publish(fcfg)
    Registry(fcfg.paths_resolved.registry_dir).reject(rejected, "worse", {})
    with pytest.raises(pipeline.FromVersionError, match="rejected"):
        pipeline.check_from_version(fcfg, rejected)
    pipeline.check_from_version(fcfg, _publish(fcfg))  # a good one passes


def test_the_pin_is_set_once_per_run_so_a_rerun_after_a_crash_does_not_reset_again(fcfg):
    registry = Registry(fcfg.paths_resolved.registry_dir)
    version = _publish(fcfg)
    token = pipeline.pin_from_version(fcfg, version, run_id="r1")
    assert registry.current() == version and registry.pinned()["actor"] == pipeline.FROM_VERSION_ACTOR
    assert pipeline.pin_from_version(fcfg, version, run_id="r1") == token  # the same command again
    rollbacks = [e for e in registry.read_log() if e["action"] == "rollback"]
    assert len(rollbacks) == 1 and rollbacks[0]["run_id"] == "r1"
    # another run (a new lineage) or a pin ended in between: a new reset
    assert pipeline.pin_from_version(fcfg, version, run_id="r2") != token
    registry.unpin("operator", "done")
    assert pipeline.pin_from_version(fcfg, version, run_id="r2") not in (token, None)


def test_the_cli_refuses_before_starting_anything(fcfg, monkeypatch, capsys):
    from streamrec.cli import main
    from streamrec.core.config import to_env

    for key, value in to_env(fcfg).items():
        monkeypatch.setenv(key, value)
    version = _publish(fcfg, users=False)
    assert main(["run", "--from-version", version]) == 2
    err = capsys.readouterr().err
    assert f"--from-version {version}" in err and "no users.npz" in err
    assert not (fcfg.paths_resolved.state_dir / "kafka").exists()  # no broker was started for it
