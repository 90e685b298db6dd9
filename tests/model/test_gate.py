"""Quality gate on a synthetic set with planted cluster structure, real ONNX models."""

import numpy as np
import pytest

from streamrec.model.gate import (PROMOTE, REJECT, WAIT, UserSample, evaluate, evaluate_recall, gate_decision,
                                  look_schedule, look_z, paired_decision, run_gate)
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

    # a slightly perturbed good model: on 360 events its paired difference is a tie with a 0.02
    # margin (one look, at the cap: rejected, CURRENT stays) and clears a 0.05 margin (promoted)
    noisy = items + 0.05 * np.random.default_rng(3).normal(size=items.shape).astype(np.float32)
    v3 = reg.publish(_model(noisy, ids, None)[0], {"item_ids": ids, "dim": DIM})
    tie = run_gate(reg, v3, ScoringModel.from_registry(reg, v3, providers=CPU), good,
                   users, events, seen, k=10, margin=0.02)
    f = tie.figures
    assert not tie.promote and f["lower_bound"] < -0.02 < f["upper_bound"] and "a tie at the cap" in tie.reason
    v4 = reg.publish(_model(noisy, ids, None)[0], {"item_ids": ids, "dim": DIM})
    ok = run_gate(reg, v4, ScoringModel.from_registry(reg, v4, providers=CPU), good,
                  users, events, seen, k=10, margin=0.05)
    assert ok.promote and reg.current() == v4 and ok.figures["lower_bound"] > -0.05
    assert reg.read_meta(v4)["status"] == "promoted"


def test_gate_decision():
    assert gate_decision(0.0, None, 0.02)[0]
    assert gate_decision(0.5, 0.5, 0.0)[0]
    assert gate_decision(0.49, 0.5, 0.02)[0]
    promote, reason = gate_decision(0.4, 0.5, 0.02)
    assert not promote and "0.4000" in reason and "0.5000" in reason
    assert not gate_decision(float("nan"), 0.5, 0.02)[0]


# --------------------------------------------------------------------------- the paired decision rule
def _hits(n_both, n_cand_only, n_ref_only, n_neither):
    cand = [True] * n_both + [True] * n_cand_only + [False] * n_ref_only + [False] * n_neither
    ref = [True] * n_both + [False] * n_cand_only + [True] * n_ref_only + [False] * n_neither
    return cand, ref


def test_the_paired_rule_promotes_a_clearly_better_candidate():
    d = paired_decision(*_hits(50, 40, 5, 405), margin=0.02, z=look_z(0.95, 4))
    assert (d.verdict, d.n, d.wins, d.losses, d.diff) == (PROMOTE, 500, 40, 5, 0.07)
    assert d.lower > -0.02 and "lower bound > -margin" in d.reason("current v000001")


def test_the_paired_rule_rejects_a_clearly_worse_candidate():
    d = paired_decision(*_hits(50, 5, 40, 405), margin=0.02, z=look_z(0.95, 4))
    assert (d.verdict, d.diff) == (REJECT, -0.07) and d.upper < -0.02
    assert "upper bound < -margin" in d.reason()


def test_the_paired_rule_waits_on_a_tie_with_few_events_and_rejects_it_at_the_cap():
    tie = _hits(10, 15, 15, 60)  # 100 events, as many wins as losses
    d = paired_decision(*tie, margin=0.02, z=look_z(0.95, 4))
    assert (d.verdict, d.diff) == (WAIT, 0.0) and d.lower < -0.02 < d.upper
    assert "collecting more events" in d.reason()
    final = paired_decision(*tie, margin=0.02, z=look_z(0.95, 4), final=True)
    assert final.verdict == REJECT and "a tie at the cap" in final.reason()
    # the same tie on many events is no tie: equal models are promoted (within the margin)
    many = _hits(100, 150, 150, 1600)
    assert paired_decision(*many, margin=0.02, z=look_z(0.95, 4)).verdict == PROMOTE


def test_identical_models_need_events_before_the_bound_clears_the_margin():
    z = look_z(0.95, 4)
    assert paired_decision([True] * 20, [True] * 20, margin=0.02, z=z).verdict == WAIT
    assert paired_decision([True] * 500, [True] * 500, margin=0.02, z=z).verdict == PROMOTE


def test_looks_and_their_confidence():
    assert look_schedule(500, 2000) == [500, 1000, 2000]
    assert look_z(0.95, 4) == pytest.approx(2.2414, abs=1e-4)


def test_the_user_sample_is_bounded_and_deterministic():
    a, b = UserSample(1000), UserSample(1000)
    for n in range(20_000):
        a.admit(f"user{n}")
    for n in reversed(range(20_000)):
        b.admit(f"user{n}")
    assert 500 <= len(a) <= 1000 and set(a.members) == set(b.members)  # order does not matter
    assert a.fraction == b.fraction == 1 / 32  # 20 000 users: halved until at most 1 000 remain
    assert all(UserSample.hash(u) < a.threshold for u in a.members)
