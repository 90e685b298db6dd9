"""The exporter killed with SIGKILL mid-export, 20 times at random points: a reader of the
registry never sees a partial version, and CURRENT always names a version that loads
(model sha256, items.npz, finite weights)."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time

import pytest

from model.item_table import load_item_table
from model.registry import Registry
from model.scoring import ScoringModel
from streamrec.config import to_env
from tests.model.test_exporter import World, _cfg, produce_world
from tests.support import REPO

pytestmark = pytest.mark.slow

KILLS = 20


def _export(cfg, cwd) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMREC_")} | to_env(cfg)
    env["PYTHONPATH"] = str(REPO)
    return subprocess.Popen([sys.executable, "-m", "streamrec.cli", "exporter", "--once", "--force"],
                            cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)


def _assert_registry_sound(reg: Registry, dim: int) -> None:
    for version in reg.list_versions():  # every visible version is whole
        data, meta = reg.load(version)
        load_item_table(reg, version, expected_dim=dim)
        assert meta["version"] == version
    current = reg.current()
    if current is not None:
        assert current in reg.list_versions()
        ScoringModel.from_registry(reg)  # CURRENT loads, sha-checked, finite


def test_kill9_of_the_exporter_mid_export_never_exposes_a_partial_version(cfg, tmp_path):
    cfg = _cfg(cfg, tmp_path, retention=50)
    produce_world(cfg, World(seed=5))
    reg = Registry(cfg.paths_resolved.registry_dir)
    t0 = time.monotonic()
    assert _export(cfg, tmp_path).wait(120) == 0
    full_s = time.monotonic() - t0  # one whole export, process start included
    assert reg.current() == "v000001"
    rng = random.Random(20)
    killed_mid_write = 0
    for _ in range(KILLS):
        before = set(reg.list_versions())
        proc = _export(cfg, tmp_path)
        time.sleep(rng.uniform(0.3, 1.0) * full_s)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
        killed_mid_write += set(reg.list_versions()) == before
        _assert_registry_sound(reg, cfg.learner.dim)
    # one export after the storm works and is promoted
    assert _export(cfg, tmp_path).wait(120) == 0
    _assert_registry_sound(reg, cfg.learner.dim)
    assert reg.current() == reg.list_versions()[-1]
    assert killed_mid_write > 0, "no kill landed before the version was published: widen the window"
