"""The Flink learning operators compute exactly what the plain-Python core computes, and a job
restored from a retained checkpoint ends with the same vectors and exactly-once recommendations.

Determinism needs a fixed item snapshot (a version planted in the registry, no exporter running)
and one partition (so the job sees one total order of events).
"""

from __future__ import annotations

import json
import time
from collections import Counter

import numpy as np
import pytest

from flink_jobs import pipeline
from model.item_table import ItemTable
from model.onnx_model import export_model_bytes, popularity_prior
from model.registry import Registry
from streamrec import replay
from streamrec.kafka_io import ensure_topics, read_topic
from udfs.embeddings import init_vector, item_key
from udfs.online_mf import ItemSnapshot, OnlineMF

pytestmark = pytest.mark.slow

N_EVENTS, N_USERS, N_ITEMS = 900, 40, 30


def _events() -> list[dict]:
    rng = np.random.default_rng(3)
    return [{"event_id": f"q{n}", "user_id": f"u{(u := int(rng.integers(N_USERS)))}",
             "item_id": f"i{(u % 3) * 10 + int(rng.integers(10))}", "event_type": "click",
             "ts": 1_700_000_000_000 + n * 1000} for n in range(N_EVENTS)]


def _config(cfg, tmp_path):
    return cfg.model_copy(update={
        "paths": cfg.paths.model_copy(update={"registry_dir": tmp_path / "registry",
                                              "checkpoint_dir": tmp_path / "checkpoints"}),
        "kafka": cfg.kafka.model_copy(update={"partitions": 1}),
        "learner": cfg.learner.model_copy(update={"item_emit_interval_ms": 0, "user_emit_interval_ms": 0}),
    })


def _plant_model(cfg) -> ItemTable:
    """A promoted registry version: the fixed item snapshot both sides learn against."""
    dim = cfg.learner.dim
    ids = sorted(f"i{n}" for n in range(N_ITEMS))
    vectors = np.stack([init_vector(item_key(i), dim, 7, 0.3) for i in ids]).astype(np.float32)
    table = ItemTable(np.array(ids), vectors, np.zeros(N_ITEMS, np.float32),
                      np.arange(N_ITEMS, dtype=np.float32))
    registry = Registry(cfg.paths_resolved.registry_dir)
    model = export_model_bytes(table.vectors, table.bias, popularity_prior(table.popularity),
                               cfg.learner.popularity_prior)
    version = registry.publish(model, {"item_ids": ids, "dim": dim},
                               attachments={"items.npz": table.to_npz_bytes()})
    registry.promote(version, actor="test", reason="fixed snapshot")
    return table


def _in_memory(cfg, table: ItemTable, clean: list[dict]) -> OnlineMF:
    model = OnlineMF(cfg.learner, snapshot_every=10**12)  # never refreshed: the planted snapshot
    model.snapshot = ItemSnapshot(list(table.item_ids), table.vectors, table.bias, table.popularity,
                                  cfg.learner.dim)
    for event in clean:
        model.learn_one(event["user_id"], event["item_id"], event["weight"], event["event_id"])
    return model


def _final_vectors(cfg, topic: str, key: str) -> dict[str, np.ndarray]:
    last = {}
    for rec in read_topic(cfg, topic):
        value = json.loads(rec.value)
        last[value[key]] = np.asarray(value["vector"], dtype=np.float32)
    return last


def _assert_same_as_core(cfg, model: OnlineMF) -> None:
    users = _final_vectors(cfg, cfg.kafka.topics.model_users, "user_id")
    items = _final_vectors(cfg, cfg.kafka.topics.model_items, "item_id")
    assert set(users) == set(model.users) and set(items) == set(model.items)
    for user, vec in users.items():
        np.testing.assert_allclose(vec, model.users[user].vector, atol=2e-6, err_msg=user)
    for item, vec in items.items():
        np.testing.assert_allclose(vec, model.items[item].vector, atol=2e-6, err_msg=item)


def test_operators_match_the_core(cfg, tmp_path):
    cfg = _config(cfg, tmp_path)
    table = _plant_model(cfg)
    ensure_topics(cfg)
    replay.produce(cfg, cfg.kafka.topics.raw, replay.encode_events(_events()), progress=False)

    pipeline.run(cfg, bounded=True, quiet=True)

    clean = [r.json() for r in read_topic(cfg, cfg.kafka.topics.clean)]
    assert len(clean) == N_EVENTS
    _assert_same_as_core(cfg, _in_memory(cfg, table, clean))


def _latest_checkpoint(cfg) -> str:
    found = sorted(cfg.paths_resolved.checkpoint_dir.glob(f"{pipeline.JOB_NAME}/*/chk-*/_metadata"),
                   key=lambda p: int(p.parent.name.split("-")[1]))
    assert found, "no retained checkpoint"
    return found[-1].parent.as_uri()


def _run_until_scored(cfg, expected: int, restore_from: str | None = None) -> None:
    """Run the pipeline unbounded until ``expected`` recommendations are committed, then cancel."""
    run = pipeline.run(cfg, bounded=False, quiet=True, wait=False, restore_from=restore_from)
    try:
        deadline = time.monotonic() + 150
        while sum(1 for _ in read_topic(cfg, cfg.kafka.topics.recommendations, idle_timeout=2)) < expected:
            assert time.monotonic() < deadline, f"fewer than {expected} recommendations committed"
            time.sleep(2)
        time.sleep(2.5)  # at least one more completed checkpoint after the last commit
    finally:
        run.job_client.cancel().result()


def test_restore_from_checkpoint_same_vectors_exactly_once(cfg, tmp_path):
    cfg = _config(cfg, tmp_path)
    table = _plant_model(cfg)
    ensure_topics(cfg)
    events = _events()
    half = N_EVENTS // 2
    replay.produce(cfg, cfg.kafka.topics.raw, replay.encode_events(events[:half]), progress=False)

    _run_until_scored(cfg, half)  # then cancelled: the checkpoint is retained
    checkpoint = _latest_checkpoint(cfg)

    replay.produce(cfg, cfg.kafka.topics.raw, replay.encode_events(events[half:]), progress=False)
    # (restored Kafka splits keep the unbounded stopping offsets of the first run, so the
    # restored job runs unbounded too)
    _run_until_scored(cfg, N_EVENTS, restore_from=checkpoint)

    recs = [r.json() for r in read_topic(cfg, cfg.kafka.topics.recommendations)]
    counts = Counter(r["source_event_id"] for r in recs)
    assert len(recs) == N_EVENTS and max(counts.values()) == 1, "not exactly once across the restore"
    # per-user learned-event counts continue across the restore
    last_events = {}
    for r in sorted(recs, key=lambda r: r["source_offset"]):
        last_events[r["user_id"]] = r["user_events"]
    assert last_events == dict(Counter(e["user_id"] for e in events))
    clean = [r.json() for r in read_topic(cfg, cfg.kafka.topics.clean)]
    assert len(clean) == N_EVENTS
    _assert_same_as_core(cfg, _in_memory(cfg, table, clean))
