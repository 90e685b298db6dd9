"""The Flink shard learner computes exactly what the plain-Python shard computes, batch for batch,
and a job restored from a retained checkpoint ends with the same vectors and exactly-once
recommendations.

Micro-batches are processing-time windows, so their boundaries differ from run to run: the test
reads them back from the recommendations (one partition: a batch is a run of consecutive offsets,
each record carries its batch's size) and feeds the same batches to :class:`ShardModel`.
"""

from __future__ import annotations

import json
import time
from collections import Counter

import numpy as np
import pytest

from streamrec.flink_jobs import pipeline
from streamrec import replay
from streamrec.runtime.kafka_io import ensure_topics, read_topic
from tests.support import account_recommendations, read_records
from streamrec.udfs.online_mf import LearnerParams
from streamrec.udfs.shard_model import Event, ShardModel, ShardSettings

pytestmark = pytest.mark.slow

N_EVENTS, N_USERS, N_ITEMS = 900, 40, 60


def _events() -> list[dict]:
    rng = np.random.default_rng(3)
    return [{"event_id": f"q{n}", "user_id": f"u{(u := int(rng.integers(N_USERS)))}",
             "item_id": f"i{(u % 3) * 20 + int(rng.integers(20))}", "event_type": "click",
             "ts": 1_700_000_000_000 + n * 1000} for n in range(N_EVENTS)]


def _config(cfg, tmp_path):
    return cfg.model_copy(update={
        "paths": cfg.paths.model_copy(update={"registry_dir": tmp_path / "registry",
                                              "checkpoint_dir": tmp_path / "checkpoints"}),
        "kafka": cfg.kafka.model_copy(update={"partitions": 1}),
        "learner": cfg.learner.model_copy(update={"changelog_interval_ms": 0}),
        # small windows: many batches; warm-up of 10 items: both code paths are exercised
        "scoring": cfg.scoring.model_copy(update={"batch_interval_ms": 20, "warmup_items": 10}),
    })


def _batches(clean: list[dict], recs: list[dict]) -> list[list[dict]]:
    """The job's batches, read back from the records' offsets and batch sizes."""
    clean = sorted(clean, key=lambda e: e["src_offset"])
    size_at = {r["source_offset"]: r["batch_size"] for r in recs}
    batches, n = [], 0
    while n < len(clean):  # (every event has a record, `none` included)
        size = size_at[clean[n]["src_offset"]]
        batches.append(clean[n:n + size])
        n += size
    return batches


def _in_memory(cfg, clean: list[dict], recs: list[dict]) -> tuple[ShardModel, dict, list[dict]]:
    sc = cfg.scoring
    shard = ShardModel(LearnerParams.of(cfg.learner), ShardSettings(
        top_k=sc.top_k, cold_start_min_events=sc.cold_start_min_events, seen_filter_bits=sc.seen_filter_bits,
        seen_filter_hashes=sc.seen_filter_hashes, warmup_items=sc.warmup_items, max_batch_events=sc.max_batch_events))
    users: dict[str, bytes] = {}
    out_recs: list[dict] = []
    for batch in _batches(clean, recs):
        events = [Event(e["event_id"], e["user_id"], e["item_id"], e["weight"], e["ts"], e["src_partition"],
                        e["src_offset"]) for e in batch]
        out = shard.process(events, users, now_ms=0)
        users.update(out.user_records)
        out_recs += out.recommendations
    return shard, users, out_recs


def _final_vectors(cfg, topic: str, key: str) -> dict[str, np.ndarray]:
    last = {}
    for rec in read_topic(cfg, topic):
        value = json.loads(rec.value)
        last[value[key]] = np.asarray(value["vector"], dtype=np.float32)
    return last


def _assert_same_as_core(cfg, clean: list[dict], recs: list[dict]) -> None:
    from streamrec.udfs.shard_model import decode_user

    shard, user_records, core_recs = _in_memory(cfg, clean, recs)
    users = _final_vectors(cfg, cfg.kafka.topics.model_users, "user_id")
    items = _final_vectors(cfg, cfg.kafka.topics.model_items, "item_id")
    assert set(users) == set(user_records) and set(items) == set(shard.items.ids)
    for user, vec in users.items():
        np.testing.assert_allclose(vec, decode_user(user_records[user]).vector, atol=2e-6, err_msg=user)
    for item, vec in items.items():
        np.testing.assert_allclose(vec, shard.item_vector(item), atol=2e-6, err_msg=item)
    # the same lists, item for item
    job = {r["source_event_id"]: [i["item_id"] for i in r["items"]] for r in recs}
    core = {r["source_event_id"]: [i["item_id"] for i in r["items"]] for r in core_recs}
    assert job == core


def test_operator_matches_the_core(cfg, tmp_path):
    cfg = _config(cfg, tmp_path)
    ensure_topics(cfg)
    replay.produce(cfg, cfg.kafka.topics.raw, replay.encode_events(_events()), progress=False)

    pipeline.run(cfg, bounded=True, quiet=True)

    clean = read_records(cfg, cfg.kafka.topics.clean)
    recs = read_records(cfg, cfg.kafka.topics.recommendations)
    assert len(clean) == N_EVENTS
    recommended = account_recommendations(clean, recs)  # one record per event, exactly
    assert recommended.exact and recommended.checked == N_EVENTS, recommended
    assert len({r["batch_size"] for r in recs}) > 3, "the job ran few distinct batches"
    _assert_same_as_core(cfg, clean, recs)


def _latest_checkpoint(cfg) -> str:
    found = sorted(cfg.paths_resolved.checkpoint_dir.glob(f"{pipeline.JOB_NAME}/*/chk-*/_metadata"),
                   key=lambda p: int(p.parent.name.split("-")[1]))
    assert found, "no retained checkpoint"
    return found[-1].parent.as_uri()


def _run_until_scored(cfg, expected: int, restore_from: str | None = None) -> None:
    """Run the pipeline unbounded until ``expected`` recommendations are committed, then cancel."""
    # the learner only: the features job has nothing to do with what this compares
    run = pipeline.run(cfg, bounded=False, quiet=True, wait=False, restore_from=restore_from,
                       with_features=False)
    try:
        deadline = time.monotonic() + 150
        while sum(1 for _ in read_topic(cfg, cfg.kafka.topics.recommendations, idle_timeout=2)) < expected:
            assert time.monotonic() < deadline, f"fewer than {expected} recommendations committed"
            time.sleep(2)
        time.sleep(2.5)  # at least one more completed checkpoint after the last commit
    finally:
        run.cancel()


def test_restore_from_checkpoint_same_vectors_exactly_once(cfg, tmp_path):
    cfg = _config(cfg, tmp_path)
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

    recs = read_records(cfg, cfg.kafka.topics.recommendations)
    clean = read_records(cfg, cfg.kafka.topics.clean)
    recommended = account_recommendations(clean, recs)
    assert recommended.exact and recommended.checked == N_EVENTS, f"not exactly once across the restore: {recommended}"
    # per-user learned-event counts continue across the restore
    last_events = {}
    for r in sorted(recs, key=lambda r: r["source_offset"]):
        last_events[r["user_id"]] = r["user_events"]
    totals = dict(Counter(e["user_id"] for e in events))
    assert all(last_events[u] == totals[u] for u in last_events) and len(last_events) == len(totals)
    assert len(clean) == N_EVENTS
    _assert_same_as_core(cfg, clean, recs)
