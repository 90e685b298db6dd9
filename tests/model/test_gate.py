"""Quality gate on a synthetic set with planted cluster structure, real ONNX models."""

import numpy as np
import pytest

from streamrec.model.gate import evaluate, evaluate_recall, gate_decision, run_gate
from streamrec.model.onnx_model import export_model_bytes
from streamrec.model.registry import Registry
from streamrec.model.scoring import ScoringModel

CPU = ["CPUExecutionProvider"]
CLUSTERS, PER_CLUSTER, DIM, USERS = 10, 20, 16, 120


def _world(seed=0):
    """Items and users in 10 clusters; each user's events and history are in its own cluster."""
    rng = np.random.default_rng(seed)
    centroids = rng.normal(size=(CLUSTERS, DIM)) * 3
    n = CLUSTERS * PER_CLUSTER
    cluster_of = np.repeat(np.arange(CLUSTERS), PER_CLUSTER)
    items = (centroids[cluster_of] + rng.normal(size=(n, DIM))).astype(np.float32)
    item_ids = [f"item{j}" for j in range(n)]
    users, events, seen = {}, [], {}
    for u in range(USERS):
        c = u % CLUSTERS
        uid = f"user{u}"
        users[uid] = (centroids[c] + 0.3 * rng.normal(size=DIM)).astype(np.float32)
        members = rng.permutation(np.flatnonzero(cluster_of == c))
        seen[uid] = {item_ids[j] for j in members[:5]}
        events += [(uid, item_ids[j]) for j in members[5:8]]
    events += [("ghost-user", "item0"), ("ghost-user", "item1")]  # no vector: skipped
    return items, item_ids, users, events, seen


def _model(items, item_ids, version):
    n = len(item_ids)
    data = export_model_bytes(items, np.zeros(n), np.zeros(n), 0.0)
    return data, ScoringModel.from_bytes(data, {"version": version, "item_ids": item_ids, "dim": DIM}, CPU)


def test_recall_counts_and_skips():
    items, ids, users, events, seen = _world()
    _, good = _model(items, ids, "v1")
    res = evaluate(good, users, events, seen, k=10)
    assert res.skipped_no_vector == 2 and res.evaluated == 3 * USERS and res.users == USERS
    assert res.recall == res.hits / res.evaluated > 0.4
    assert evaluate_recall(good, users, events, seen, k=10) == res.recall
    # held-out items are never excluded, even if the caller also lists them as seen
    seen_with_targets = {u: s | {i for uu, i in events if uu == u} for u, s in seen.items()}
    assert evaluate_recall(good, users, events, seen_with_targets, k=10) == res.recall
    # an item the model does not know is a miss, and counted
    res2 = evaluate(good, users, [("user0", "brand-new-item")], seen, k=10)
    assert res2.recall == 0.0 and res2.unknown_items == 1
    assert evaluate(good, users, [], seen).recall == 0.0


def test_gate_rejects_degraded_model_and_marks_it(tmp_path):
    items, ids, users, events, seen = _world()
    reg = Registry(tmp_path)
    good_bytes, _ = _model(items, ids, None)
    v1 = reg.publish(good_bytes, {"item_ids": ids, "dim": DIM})
    good = ScoringModel.from_registry(reg, v1, providers=CPU)
    first = run_gate(reg, v1, good, None, users, events, seen, k=10, margin=0.02)
    assert first.promote and reg.current() == v1

    shuffled = items[np.random.default_rng(7).permutation(len(ids))]  # same ids, wrong vectors
    bad_bytes, _ = _model(shuffled, ids, None)
    v2 = reg.publish(bad_bytes, {"item_ids": ids, "dim": DIM})
    bad = ScoringModel.from_registry(reg, v2, providers=CPU)
    result = run_gate(reg, v2, bad, good, users, events, seen, k=10, margin=0.02)
    assert not result.promote
    assert result.candidate.recall < 0.2 < 0.4 < result.current.recall
    assert reg.current() == v1
    meta = reg.read_meta(v2)
    assert meta["status"] == "rejected"
    assert meta["quality"]["candidate"] == pytest.approx(result.candidate.recall)
    assert meta["quality"]["current"] == pytest.approx(result.current.recall)
    assert meta["quality"]["current_version"] == v1 and meta["quality"]["metric"] == "recall@10"
    assert reg.read_log()[-1]["action"] == "reject"

    # a slightly perturbed good model passes and is promoted
    noisy = items + 0.05 * np.random.default_rng(3).normal(size=items.shape).astype(np.float32)
    v3 = reg.publish(_model(noisy, ids, None)[0], {"item_ids": ids, "dim": DIM})
    ok = run_gate(reg, v3, ScoringModel.from_registry(reg, v3, providers=CPU), good,
                  users, events, seen, k=10, margin=0.02)
    assert ok.promote and reg.current() == v3
    assert reg.read_meta(v3)["status"] == "promoted"


def test_gate_decision():
    assert gate_decision(0.0, None, 0.02)[0]
    assert gate_decision(0.5, 0.5, 0.0)[0]
    assert gate_decision(0.49, 0.5, 0.02)[0]
    promote, reason = gate_decision(0.4, 0.5, 0.02)
    assert not promote and "0.4000" in reason and "0.5000" in reason
    assert not gate_decision(float("nan"), 0.5, 0.02)[0]
