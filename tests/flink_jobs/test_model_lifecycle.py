"""The model lifecycle against a running pipeline, driven through the CLI as an operator would:
versions are promoted as events flow; `streamrec model rollback` pins CURRENT to the previous
version, which the job serves (scoring.serve = registry) while the pin holds for 25 s of new
events (3,000) (the exporter keeps exporting, promoting nothing); `streamrec model unpin` ends it and
promotion resumes."""

from __future__ import annotations

import json
import threading
import time

import pytest

from streamrec.flink_jobs import pipeline
from streamrec.model.registry import Registry, version_number
from streamrec import replay
from streamrec.demo import start_exporter, stop_process
from streamrec.runtime.kafka_io import ensure_topics
from tests.support import planted_stream, read_records, run_cli as cli

pytestmark = pytest.mark.slow

PIN_HOLD_S = 25


def promotions(registry: Registry) -> list[dict]:
    return [e for e in registry.read_log() if e["action"] == "promote"]


def wait_until(pred, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not pred():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)


def test_rollback_pins_while_events_flow_then_unpin_resumes_promotion(cfg, tmp_path):
    cfg = cfg.model_copy(update={
        "paths": cfg.paths.model_copy(update={"registry_dir": tmp_path / "registry"}),
        # not about the gate (tests/flink_jobs/test_gate_in_stream.py runs it with the default
        # margin): margin 1.0 promotes at the first look, so versions move at a pace this test
        # can wait for; the cadence's event minimum is scaled to the 120 events/s stream
        "exporter": cfg.exporter.model_copy(update={"interval_s": 1.0, "every_n_changes": 40,
                                                    "gate_margin": 1.0, "gate_min_events": 50,
                                                    "gate_max_wait_s": 10.0, "export_min_events": 300}),
        "learner": cfg.learner.model_copy(update={"changelog_interval_ms": 300}),
        "scoring": cfg.scoring.model_copy(update={"swap_check_interval_s": 0.5, "serve": "registry"}),
    })
    registry = Registry(cfg.paths_resolved.registry_dir)
    ensure_topics(cfg)
    # a steady stream for the whole test: ~40 s to the first versions, the 25 s of the pin, the
    # resumption (120 events/s)
    stop = threading.Event()

    def items():  # until the test has seen what it waits for: then the stream ends
        for item in replay.encode_events(planted_stream(15_000)):
            if stop.is_set():
                return
            yield item

    exporter = start_exporter(cfg, tmp_path / "exporter.log")
    run = pipeline.run(cfg, bounded=False, quiet=True, wait=False)
    producing = threading.Thread(target=replay.produce, args=(cfg, cfg.kafka.topics.raw, items()),
                                 kwargs={"rate": 120, "progress": False}, daemon=True)
    try:
        time.sleep(10)
        producing.start()
        wait_until(lambda: len(promotions(registry)) >= 3, 150, "three promotions")

        out = cli(cfg, "model", "rollback", "--reason", "lifecycle test: CTR dropped")
        pinned_to = registry.current()
        # what CURRENT was is read from the rollback's own log entry: the exporter may promote
        # between a read here and the command (a CI run did: the test then saw no change)
        rolled = [e for e in registry.read_log() if e["action"] == "rollback"][-1]
        assert rolled["version"] == pinned_to != rolled["from"] and rolled["from"] is not None
        assert pinned_to in out and registry.pinned()["version"] == pinned_to
        pinned_at = time.time()
        promoted_before = len(promotions(registry))
        newest_at_pin = max(version_number(v) for v in registry.list_versions())
        time.sleep(PIN_HOLD_S)
        # the pin held: CURRENT never moved, nothing was promoted, the exporter kept exporting
        assert registry.current() == pinned_to and registry.pinned() is not None
        assert len(promotions(registry)) == promoted_before
        assert max(version_number(v) for v in registry.list_versions()) > newest_at_pin
        assert any(e["action"] == "hold" for e in registry.read_log()), "nothing was held while pinned"
        listed = json.loads(cli(cfg, "model", "list", "--json"))
        assert listed["pin"]["version"] == pinned_to and listed["current"] == pinned_to

        cli(cfg, "model", "unpin", "--reason", "lifecycle test: fixed")
        assert registry.pinned() is None
        wait_until(lambda: len(promotions(registry)) > promoted_before, 90, "a promotion after the unpin")
        resumed = registry.current()
        assert resumed != pinned_to
        unpinned_at = time.time()
        time.sleep(5)  # the job swaps to the promoted version within swap_check_interval_s
    finally:
        stop.set()
        if producing.ident is not None:  # the stream ends (nothing produces into a stopped broker)
            producing.join(180)
        time.sleep(cfg.flink.checkpoint_interval_ms / 1000 + 1)  # a checkpoint commits the last records
        run.cancel()
        stop_process(exporter)

    recs = read_records(cfg, cfg.kafka.topics.recommendations)
    model_recs = [r for r in recs if r["strategy"] == "model"]
    # while the pin held, the job served the pinned version (after its swap check), never a newer one
    during = [r for r in model_recs if pinned_at + 2 < r["emitted_ts"] / 1000 < pinned_at + PIN_HOLD_S]
    assert during and {r["model_version"] for r in during} == {pinned_to}, \
        {r["model_version"] for r in during}
    # after the unpin the job follows promotion again: only versions promoted after the pin
    after = {r["model_version"] for r in model_recs if r["emitted_ts"] / 1000 > unpinned_at + 2}
    assert after and all(version_number(v) >= version_number(resumed) for v in after), (after, resumed)
    # who, when and why: the rollback, the pin and the unpin are in the log with the operator's reason
    actions = [(e["action"], e.get("reason")) for e in registry.read_log()]
    assert ("rollback", "lifecycle test: CTR dropped") in actions
    assert ("pin", "lifecycle test: CTR dropped") in actions
    assert ("unpin", "lifecycle test: fixed") in actions
