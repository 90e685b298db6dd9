"""At parallelism 2 the shards exchange their item steps (udfs/item_exchange.py), exactly once.

An unbounded pipeline on the local mini-cluster with two shards. Phase 1: users of both shards
view a shared item. Once the deltas have crossed, phase 2: one more view per shard. A shard's
``model.items`` record of the item after phase 2 then counts every phase-1 view, its own shard's
and the other's (without the exchange each shard counts its own users' views only), and counts
them once: the popularity is an exact sum of the clean events' weights, so a delta applied twice
or lost would show.
"""

from __future__ import annotations

import time

import pytest

from flink_jobs import pipeline
from streamrec import replay
from streamrec.kafka_io import read_topic
from tests.support import wait_for_records
from udfs.shard_model import shard_of

pytestmark = pytest.mark.slow

T0 = 1_700_000_000_000
SHARED = "shared"


def _view(event_id: str, user: str, item: str, n: int) -> dict:
    return {"event_id": event_id, "user_id": user, "item_id": item, "event_type": "view", "ts": T0 + n * 1_000}


def _wait_learned(cfg, counts: dict[str, int], timeout_s: float = 180) -> None:
    """Until the users' changelog (model.users) shows each user with its count of learned events."""
    deadline = time.monotonic() + timeout_s
    learned: dict[str, int] = {}
    while time.monotonic() < deadline:
        for r in read_topic(cfg, cfg.kafka.topics.model_users, idle_timeout=2):
            doc = r.json()
            learned[doc["user_id"]] = max(learned.get(doc["user_id"], 0), doc["events"])
        if all(learned.get(u, 0) >= n for u, n in counts.items()):
            return
        time.sleep(1)
    raise AssertionError(f"not learned in {timeout_s:.0f} s: "
                         f"{ {u: learned.get(u, 0) for u, n in counts.items() if learned.get(u, 0) < n} }")


def test_shards_add_each_others_item_steps_once(cfg, tmp_path):
    cfg = cfg.model_copy(update={
        "flink": cfg.flink.model_copy(update={"parallelism": 2, "checkpoint_interval_ms": 500}),
        "learner": cfg.learner.model_copy(update={"exchange_interval_ms": 200, "changelog_interval_ms": 200}),
        "paths": cfg.paths.model_copy(update={"registry_dir": tmp_path / "registry"}),
    })
    users = [f"u{n}" for n in range(40)]
    by_shard = {s: [u for u in users if shard_of(u, 2) == s] for s in (0, 1)}
    assert all(len(v) >= 10 for v in by_shard.values()), by_shard
    # phase 1: every user views a few items of its own and the shared one
    phase1 = [_view(f"p1-{u}-{k}", u, f"i{(n * 3 + k) % 30}", n * 4 + k)
              for n, u in enumerate(users) for k in range(3)]
    phase1 += [_view(f"p1-{u}-shared", u, SHARED, 200 + n) for n, u in enumerate(users)]
    phase2 = [_view(f"p2-{by_shard[s][0]}", by_shard[s][0], SHARED, 300 + s) for s in (0, 1)]

    run = pipeline.run(cfg, bounded=False, wait=False, fresh=True, quiet=True, with_features=False)
    try:
        send = lambda events: replay.produce(cfg, cfg.kafka.topics.raw, replay.encode_events(events),  # noqa: E731
                                             progress=False)
        send(phase1)
        # every phase-1 event learned (the users' changelog counts them; an event with nothing
        # to recommend, a shard's first ones, gets no recommendation but is learned)
        _wait_learned(cfg, {u: 4 for u in users})
        deltas = wait_for_records(cfg, cfg.kafka.topics.item_deltas, 2, timeout_s=60)
        time.sleep(4)  # an exchange interval, a checkpoint and a micro-batch, with room to spare
        send(phase2)
        _wait_learned(cfg, {e["user_id"]: 5 for e in phase2})
        time.sleep(2)  # the items' changelog flush of the same batch, committed
        clean = [r.json() for r in read_topic(cfg, cfg.kafka.topics.clean, idle_timeout=2)]
        shared_records = [r.json() for r in read_topic(cfg, cfg.kafka.topics.model_items, idle_timeout=2)
                          if r.key == SHARED.encode()]
    finally:
        run.cancel()

    origins = {r.key.decode().rsplit(":", 1)[1] for r in read_topic(cfg, cfg.kafka.topics.item_deltas, idle_timeout=2)}
    assert origins == {str(k) for k in pipeline.shard_keys(2)}, origins  # both shards sent
    assert all(d["delta"] == 1 and d["items"] for d in deltas)
    weight = {e["event_id"]: e["weight"] for e in clean}
    phase1_total = sum(weight[e["event_id"]] for e in phase1 if e["item_id"] == SHARED)
    own = {s: sum(weight[e["event_id"]] for e in phase1 if e["item_id"] == SHARED and shard_of(e["user_id"], 2) == s)
           for s in (0, 1)}
    w2 = [weight[e["event_id"]] for e in phase2]
    assert max(own.values()) + max(w2) < phase1_total  # so a shard alone cannot reach the total
    final = max(r["popularity"] for r in shared_records)
    # a shard's phase-2 record: all of phase 1, its own phase-2 view, and maybe the other's
    assert final in (pytest.approx(phase1_total + min(w2)), pytest.approx(phase1_total + max(w2)),
                     pytest.approx(phase1_total + sum(w2))), (final, phase1_total, own, w2)
