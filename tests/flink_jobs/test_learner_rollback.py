"""Model and learner go back together (issue 15, item 5): `streamrec run --from-version V`.

The pipeline learns a first stream, the exporter publishes V1 (with its users.npz), the pipeline
learns more and V2 follows; the job is cancelled (its checkpoint retained) and run again with
``--from-version V1``. The shard's first changelog records after the restart are V1 exactly:
every item of V1 with V1's vector and bias, a tombstone for each item V1 lacks, every user of
the shard with V1's vector (or its deterministic initial one if V1 had none for it). CURRENT is
pinned to V1, and the stream goes on: the new events are recommended once, the old ones not again.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from streamrec.flink_jobs import pipeline
from streamrec.model.item_table import load_item_table
from streamrec.model.registry import Registry
from streamrec.model.user_table import load_user_table
from streamrec import replay
from streamrec.runtime.kafka_io import end_offsets, ensure_topics, read_topic
from tests.support import account_recommendations, export_forced, planted_stream, read_records
from streamrec.udfs.embeddings import init_vector, user_key
from streamrec.udfs.online_mf import LearnerParams

pytestmark = pytest.mark.slow


def _config(cfg, tmp_path):
    return cfg.model_copy(update={
        "paths": cfg.paths.model_copy(update={"registry_dir": tmp_path / "registry"}),
        "learner": cfg.learner.model_copy(update={"changelog_interval_ms": 300}),
    })


def _committed(cfg, topic: str) -> int:
    return sum(end_offsets(cfg, topic).values())


def _run_until(cfg, done, **kwargs):
    """Start the pipeline (unbounded) and return it once ``done()`` holds (the learner only: the
    features job has no part in a rollback)."""
    run = pipeline.run(cfg, bounded=False, quiet=True, wait=False, with_features=False, **kwargs)
    deadline = time.monotonic() + 150
    while not done():
        if time.monotonic() > deadline:
            run.cancel()
            raise AssertionError("the pipeline made no progress in 150 s")
        time.sleep(1)
    return run


def _first_after(cfg, topic: str, marks: dict[int, int]) -> dict[str, dict | None]:
    """The first record per key past ``marks`` (end offsets before the restart): None = tombstone."""
    out: dict[str, dict | None] = {}
    for r in read_topic(cfg, topic, idle_timeout=2):
        if r.offset >= marks.get(r.partition, 0):
            out.setdefault(r.key.decode(), r.json() if r.value is not None else None)
    return out


def test_run_from_version_puts_the_versions_vectors_back_and_pins_it(cfg, tmp_path):
    cfg = _config(cfg, tmp_path)
    ensure_topics(cfg)
    topics = cfg.kafka.topics
    stream = planted_stream(4_200)
    first, second, third = stream[:2_000], stream[2_000:4_000], stream[4_000:]
    registry = Registry(cfg.paths_resolved.registry_dir)

    replay.produce(cfg, topics.raw, replay.encode_events(first), progress=False)
    run = _run_until(cfg, lambda: _committed(cfg, topics.clean) >= len(first))
    try:
        time.sleep(3)  # the changelog flush after the last batch is committed
        v1 = export_forced(cfg).version
        replay.produce(cfg, topics.raw, replay.encode_events(second), progress=False)
        while _committed(cfg, topics.clean) < len(first) + len(second):
            time.sleep(1)
        time.sleep(3)
        v2 = export_forced(cfg).version
        time.sleep(2)  # one more checkpoint after the last commit
    finally:
        run.cancel()

    items1 = load_item_table(registry, v1, expected_dim=cfg.learner.dim)
    users1 = load_user_table(registry, v1, expected_dim=cfg.learner.dim).as_dict()
    items2 = load_item_table(registry, v2, expected_dim=cfg.learner.dim)
    assert len(users1) > 50 and len(items2) >= len(items1)
    assert not np.allclose(items2.vectors[:len(items1)], items1.vectors)  # the learner moved on

    marks = {name: end_offsets(cfg, getattr(topics, name)) for name in ("model_items", "model_users")}
    recommended_before = _committed(cfg, topics.recommendations)
    replay.produce(cfg, topics.raw, replay.encode_events(third), progress=False)
    # until every event has its record (one each, `none` included), then one more checkpoint
    run = _run_until(cfg, lambda: _committed(cfg, topics.clean) >= len(stream) and sum(
        1 for _ in read_topic(cfg, topics.recommendations, idle_timeout=1)) >= len(stream), from_version=v1)
    try:
        time.sleep(3)
    finally:
        run.cancel()
    assert recommended_before > 0

    # CURRENT is pinned to V1 by the run, with who and why
    pin = registry.pinned()
    assert registry.current() == v1 and pin["version"] == v1 and pin["actor"] == pipeline.FROM_VERSION_ACTOR

    # the first item records after the restart are V1's table exactly; V2-only items are tombstoned
    items_after = _first_after(cfg, topics.model_items, marks["model_items"])
    v1_ids = items1.item_ids.tolist()
    restored = {i: doc for i, doc in items_after.items() if doc is not None}
    assert set(restored) == set(v1_ids)
    tombstoned = {i for i, doc in items_after.items() if doc is None}
    assert tombstoned == set(items2.item_ids.tolist()) - set(v1_ids)
    got = np.array([restored[i]["vector"] for i in v1_ids], np.float32)
    assert np.allclose(got, items1.vectors, atol=1e-6, rtol=0)
    assert np.allclose([restored[i]["bias"] for i in v1_ids], items1.bias, atol=1e-6, rtol=0)

    # every user the shard had: V1's vector, or its deterministic initial one (a user first seen
    # after the restart has no reset record: its first one is learned)
    users_after = _first_after(cfg, topics.model_users, marks["model_users"])
    had = set(users_after) & {e["user_id"] for e in first + second}
    assert len(had) >= len(users1) and set(users1) <= had
    p = LearnerParams.of(None, **cfg.learner.model_dump())
    for user_id in had:
        doc = users_after[user_id]
        expected = users1.get(user_id)
        if expected is None:
            expected = init_vector(user_key(user_id), p.dim, p.seed, p.init_scale)
        assert np.allclose(doc["vector"], expected, atol=1e-6, rtol=0), user_id

    # the stream went on from the retained checkpoint: each event recommended exactly once, the
    # old ones not again, the new ones too
    recs = read_records(cfg, topics.recommendations)
    clean = read_records(cfg, topics.clean)
    recommended = account_recommendations(clean, recs)
    assert recommended.exact and recommended.checked == len(stream), recommended
