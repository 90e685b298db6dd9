"""The exporter's registry on a real small filesystem (tmpfs) that fills up, then turns read-only:
the sidecar keeps running, says in one line what is wrong, publishes nothing partial, and
publishes the next version once the filesystem takes writes again. Needs root (mount)."""

from __future__ import annotations

import logging
import os
import subprocess
import threading
import time

import pytest

from streamrec.model.exporter import Exporter
from streamrec.model.registry import Registry
from tests.model.test_exporter import World, _cfg, produce, produce_world
from tests.model.test_exporter_faults import _assert_registry_sound
from tests.support import fill_up, small_filesystem

pytestmark = pytest.mark.slow


@pytest.fixture
def small_disk(tmp_path):
    with small_filesystem(tmp_path / "disk", "2m") as mount:
        yield mount


def _wait(condition, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def _storage_errors(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.levelno >= logging.ERROR and "cannot be written" in r.getMessage()]


def test_full_then_read_only_registry_disk(cfg, tmp_path, small_disk, caplog):
    caplog.set_level(logging.INFO, logger="streamrec")
    cfg = _cfg(cfg, small_disk, interval_s=0.5, every_n_changes=1)
    world = World(seed=11)
    produce_world(cfg, world)
    reg = Registry(cfg.paths_resolved.registry_dir)
    filler = fill_up(small_disk)
    exporter = Exporter(cfg, force=True)
    runner = threading.Thread(target=exporter.run, daemon=True)
    runner.start()
    try:
        # full: it fails, says so in one line per try, and leaves nothing half-written
        _wait(lambda: exporter.failures >= 2, 60, "two failed exports on a full disk")
        errors = _storage_errors(caplog)
        assert errors and "ENOSPC" in errors[0] and str(cfg.paths_resolved.registry_dir) in errors[0]
        assert not any(r.exc_info for r in caplog.records if "cannot be written" in r.getMessage())
        assert reg.list_versions() == [] and reg.current() is None
        assert [p.name for p in reg.root.glob(".staging-*")] == []
        # space returns: the next try publishes (forced: promoted), whole
        filler.unlink()
        _wait(lambda: reg.current() is not None, 60, "a version once space returned")
        first = reg.current()
        _assert_registry_sound(reg, cfg.learner.dim)

        # read-only: the same, with EROFS; then writable again, the changed items are published
        subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
        failures = exporter.failures
        produce(cfg, cfg.kafka.topics.model_items, world.item_records(world.shuffled()), transactional=True)
        _wait(lambda: exporter.failures >= failures + 1, 60, "a failed export on a read-only disk")
        assert any("EROFS" in m for m in _storage_errors(caplog))
        assert reg.current() == first and reg.list_versions() == [first]
        subprocess.run(["mount", "-o", "remount,rw", str(small_disk)], check=True)
        _wait(lambda: reg.current() not in (None, first), 60, "a new version once writable")
        _assert_registry_sound(reg, cfg.learner.dim)
        assert runner.is_alive()  # the sidecar never died
    finally:
        if os.path.ismount(small_disk):
            subprocess.run(["mount", "-o", "remount,rw", str(small_disk)], check=False)
        exporter.stop()
        runner.join(30)
