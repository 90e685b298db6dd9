"""A rollback changes what users get, in the default mode (``scoring.serve = live``), at
parallelism 2: `streamrec model rollback V` -> within one swap check + one micro-batch (+ a
margin for a loaded test machine) every recommendation is scored by V and says so; `model unpin`
-> back to the live table, named `live+<CURRENT>`; the gate showing an export of the live model
worse than CURRENT (the guard) -> CURRENT serves; a job restarted while pinned serves the pin
from its first batch. Every record names what scored it. docs/registry.md, "Serving"."""

from __future__ import annotations

import threading
import time

import pytest

from streamrec import replay
from streamrec.flink_jobs import pipeline
from streamrec.model.registry import Registry
from streamrec.runtime.kafka_io import ensure_topics
from tests.support import (
    SERVED_BOUND_S as BOUND_S,  # one swap check (the default interval) + one micro-batch
    SERVED_HOLD_S as HOLD_S,  # how long each state is held before the next change
    SERVED_MARGIN_S as MARGIN_S,  # for the loaded test machine: a version's load and a late batch
    committed,
    delay_ms,
    export_forced,
    iso_ms as ms,
    planted_stream,
    read_records,
    run_cli as cli,
    wait_until,
)

pytestmark = pytest.mark.slow


def test_a_rollback_is_served_within_a_swap_check_until_unpin_and_across_a_restart(cfg, tmp_path):
    cfg = cfg.model_copy(update={
        "paths": cfg.paths.model_copy(update={"registry_dir": tmp_path / "registry"}),
        "learner": cfg.learner.model_copy(update={"changelog_interval_ms": 300}),
        "flink": cfg.flink.model_copy(update={"parallelism": 2}),
    })
    assert cfg.scoring.serve == "live" and cfg.scoring.swap_check_interval_s == 2.0  # the defaults
    registry = Registry(cfg.paths_resolved.registry_dir)
    ensure_topics(cfg)
    topics = cfg.kafka.topics
    stop = threading.Event()

    def events():
        for item in replay.encode_events(planted_stream(40_000)):
            if stop.is_set():
                return
            yield item

    producing = threading.Thread(target=replay.produce, args=(cfg, topics.raw, events()),
                                 kwargs={"rate": 200, "progress": False}, daemon=True)
    run = pipeline.run(cfg, bounded=False, quiet=True, wait=False, with_features=False)
    producing.start()
    try:
        wait_until(lambda: committed(cfg, topics.clean) >= 1_000 and committed(cfg, topics.model_items) > 0,
                   150, "1,000 clean events and the items changelog")
        v1 = export_forced(cfg).version  # promoted at once (the exporter's --force): live serving goes on
        learned = committed(cfg, topics.clean)
        wait_until(lambda: committed(cfg, topics.clean) >= learned + 600, 60, "600 more events")
        v2 = export_forced(cfg).version
        time.sleep(HOLD_S)

        out = cli(cfg, "model", "rollback", v1, "--reason", "rollback test")
        assert f"CURRENT: {v1}" in out
        pinned_ms = ms(registry.pinned()["ts"])
        time.sleep(HOLD_S)
        cli(cfg, "model", "unpin", "--reason", "rollback test: fixed")
        unpinned_ms = ms([e for e in registry.read_log() if e["action"] == "unpin"][-1]["ts"])
        time.sleep(HOLD_S)
        # the guard: the gate shows an export of the live model worse than CURRENT (v1), as
        # model.gate.HoldOutGate records it: the stream serves v1 until a promotion or a pin
        data, meta = registry.load(v1)
        shown_worse = registry.publish(data, {"item_ids": meta["item_ids"], "dim": meta["dim"]})
        registry.reject(shown_worse, "guard test: shown worse than CURRENT", hold_back_live=True)
        guarded_ms = ms(registry.guard()["ts"])
        time.sleep(HOLD_S)
        cli(cfg, "model", "rollback", v2, "--reason", "pinned across a restart")
        repinned_ms = ms(registry.pinned()["ts"])
        time.sleep(HOLD_S)
    except BaseException:
        run.cancel()
        stop.set()
        raise
    run.cancel()
    restarted_ms = int(time.time() * 1000)
    # the new job restores the retained checkpoint: the events after it are scored again, by it
    recommended = committed(cfg, topics.recommendations)
    run = pipeline.run(cfg, bounded=False, quiet=True, wait=False, with_features=False)
    try:
        wait_until(lambda: committed(cfg, topics.recommendations) >= recommended + 1_000, 150,
                   "1,000 recommendations of the restarted job")
    finally:
        stop.set()
        producing.join(30)
        time.sleep(2)  # one more checkpoint commits what was emitted
        run.cancel()

    recs = read_records(cfg, topics.recommendations, idle_timeout=2)
    names = {r["model_version"] for r in recs}
    # every record names what scored it: the live table (before any CURRENT, then checked
    # against one) or a registry version; nothing anonymous
    assert names <= {"live", f"live+{v1}", f"live+{v2}", v1, v2}, names
    assert {f"live+{v2}", v1, v2} <= names, names

    bound_ms = int((BOUND_S + MARGIN_S) * 1000)
    for what, since, until, expected in (("rollback", pinned_ms, unpinned_ms, v1),
                                         ("unpin", unpinned_ms, guarded_ms, f"live+{v1}"),
                                         ("live model held back", guarded_ms, repinned_ms, v1),
                                         ("second rollback", repinned_ms, restarted_ms, v2)):
        first, all_served = delay_ms(recs, since, until, lambda name: name == expected)
        print(f"{what}: first record of {expected} {first} ms after it, every record from {all_served} ms")
        late = {r["model_version"] for r in recs if since + bound_ms <= r["emitted_ts"] < until}
        assert late == {expected}, (what, late)
        assert all_served <= bound_ms, (what, all_served)
    # the restarted job serves the pin from its first batch
    after = [r for r in recs if r["emitted_ts"] > restarted_ms]
    assert len(after) >= 1_000 and {r["model_version"] for r in after} == {v2}
    print(f"restart: {len(after)} records, all {v2}")
