"""The held-out gate (model.gate.HoldOutGate) on real ONNX models in a real registry: a candidate
is scored only on events past its training position, with the user vectors of its export,
against CURRENT (or, for the first model, its popularity baseline); refusals, supersession,
pins and --force. No Kafka: events are fed as (partition, offset, user, item)."""

import numpy as np
import pytest
from onnx import numpy_helper

from streamrec.model.gate import BASELINE, HoldOutGate, check_candidate
from streamrec.model.onnx_model import build_scoring_model, export_model_bytes
from streamrec.model.registry import Registry
from streamrec.model.scoring import ScoringModel
from tests.model.test_gate import DIM, _world

CPU = ["CPUExecutionProvider"]


def _loader(data, meta):
    return ScoringModel.from_bytes(data, meta, CPU)


def _bytes(items):
    n = len(items)
    return export_model_bytes(items, np.zeros(n), np.zeros(n), 0.0)


def _publish(reg, items, ids):
    data = _bytes(items)
    version = reg.publish(data, {"item_ids": ids, "dim": items.shape[1]})
    return version, data


def _baseline(ids, dim):
    """The popularity baseline of a model without biases or priors: every item scores 0."""
    return lambda: _loader(_bytes(np.zeros((len(ids), dim), np.float32)), {"item_ids": ids, "dim": dim})


def _gate(reg, **kw):
    settings = dict(expected_dim=DIM, k=10, margin=0.02, min_events=100, max_events=2000)
    settings.update(kw)
    return HoldOutGate(reg, _loader, **settings)


def _submit(gate, reg, items, ids, users, cut, **kw):
    version, data = _publish(reg, items, ids)
    decision = gate.submit(version, data, reg.read_meta(version), users, cut,
                           baseline=_baseline(ids, items.shape[1]), **kw)
    return version, decision


def _feed(gate, events, partition=0, start=0):
    return sum(gate.observe(partition, start + n, u, i) for n, (u, i) in enumerate(events))


def test_a_worse_candidate_is_not_promoted_a_better_one_is(tmp_path):
    items, ids, users, events, seen = _world()
    reg = Registry(tmp_path)
    gate = _gate(reg)
    # first model: compared with its own popularity baseline, on held-out events only
    v1, d = _submit(gate, reg, items, ids, users, {0: 0})
    assert d.status == "pending" and reg.read_meta(v1)["status"] == "candidate" and reg.current() is None
    _feed(gate, events)
    first = gate.decide(seen)
    assert first.status == "promoted" and reg.current() == v1
    assert first.figures["compared_with"] == BASELINE and first.figures["current"] is None
    assert first.figures["candidate"] > 0.4 > first.figures["baseline"]
    assert f"baseline {first.figures['baseline']:.4f}" in first.reason

    # a worse candidate (item vectors shuffled between items) is rejected; CURRENT stays
    shuffled = items[np.random.default_rng(7).permutation(len(ids))]
    v2, _ = _submit(gate, reg, shuffled, ids, users, {0: len(events)})
    _feed(gate, events, start=len(events))
    worse = gate.decide(seen)
    assert worse.status == "rejected" and reg.current() == v1
    assert worse.figures["candidate"] < 0.2 < 0.4 < worse.figures["current"]
    assert worse.figures["current_version"] == v1 and worse.figures["compared_with"] == "current"
    meta = reg.read_meta(v2)
    assert meta["status"] == "rejected" and meta["quality"]["candidate"] == pytest.approx(worse.figures["candidate"])
    entry = reg.read_log()[-1]
    assert (entry["action"], entry["version"]) == ("reject", v2)
    assert entry["figures"]["candidate"] == pytest.approx(worse.figures["candidate"])  # logged with figures
    # shown worse (not a tie): the live model it is an export of is held back, CURRENT serves
    assert worse.figures["upper_bound"] < -0.02 and entry["hold_back_live"] is True
    assert reg.guard()["version"] == v2 and reg.guard()["current"] == v1
    assert reg.state().held_back == v2 and "held back" in worse.reason

    # a better one (the true vectors, less noise than CURRENT) is promoted over it
    noisy = items + np.random.default_rng(1).normal(scale=3.0, size=items.shape).astype(np.float32)
    reg.promote(_publish(reg, noisy, ids)[0], actor="test", reason="a noisy CURRENT")
    current = reg.current()
    v4, _ = _submit(gate, reg, items, ids, users, {0: 2 * len(events)})
    _feed(gate, events, start=2 * len(events))
    better = gate.decide(seen)
    assert better.status == "promoted" and reg.current() == v4
    assert reg.guard() is None and reg.state().held_back is None  # a promotion ends the guard
    assert better.figures["candidate"] > better.figures["current"] and better.figures["current_version"] == current
    # every held-out event counts: the ghost user's two (no vector at export) are scored as a cold
    # user is served, by the model's bias + popularity prior
    assert reg.read_log()[-1]["figures"]["evaluated"] == better.figures["evaluated"] == 3 * 120 + 2
    assert better.figures["cold_events"] == 2 and better.figures["lower_bound"] > -0.02


def test_a_candidate_is_never_scored_on_events_at_or_before_its_training_position(tmp_path):
    items, ids, users, events, seen = _world()
    reg = Registry(tmp_path)
    gate = _gate(reg)
    cut = {0: 100, 1: 40}  # next offsets to read: offsets 99 and 39 were consumed (trained on)
    version, _ = _submit(gate, reg, items, ids, users, cut)
    trained = [(u, "item-trained-on") for u, _ in events[:60]]  # unknown to the model: a miss if used
    assert _feed(gate, trained[:30], partition=0, start=70) == 0  # offsets 70..99
    assert _feed(gate, trained[30:], partition=1, start=10) == 0  # offsets 10..39
    held_p0, held_p1 = events[:200], events[200:360]
    assert _feed(gate, held_p0, partition=0, start=100) == 200  # from the cut on
    assert _feed(gate, held_p1, partition=1, start=40) == 160
    assert _feed(gate, [("user0", "item0")], partition=2, start=0) == 1  # a partition the cut lacks: all new
    decision = gate.decide(seen)
    f = decision.figures
    assert decision.version == version and f["evaluated"] == 361 and f["skipped_before_cut"] == 60
    assert f["candidate_detail"]["unknown_items"] == 0  # not one trained-on event was scored
    assert f["first_held_out_offsets"] == {"0": 100, "1": 40, "2": 0}
    assert f["events_cut"] == {"0": 100, "1": 40}


def test_fewer_than_min_events_means_no_decision_yet(tmp_path):
    items, ids, users, events, seen = _world()
    reg = Registry(tmp_path)
    gate = _gate(reg, min_events=50)
    version, _ = _submit(gate, reg, items, ids, users, {0: 0})
    _feed(gate, [("ghost-user", "item0")] * 20)  # a user without a vector at export counts (cold)
    _feed(gate, events[:29], start=20)
    assert not gate.ready and gate.decide(seen) is None
    assert reg.read_meta(version)["status"] == "candidate" and reg.current() is None
    assert [e["action"] for e in reg.read_log()] == ["publish"]  # nothing decided, nothing logged
    _feed(gate, events[29:30], start=49)
    decision = gate.decide(seen)
    assert decision.status == "promoted" and decision.figures["evaluated"] == 50
    assert decision.figures["cold_events"] == 20 and gate.pending is None


def test_the_user_vectors_are_those_of_the_export(tmp_path):
    """Vectors that moved after the export (trained on the held-out events) do not leak in."""
    items, ids, users, events, seen = _world()
    reg = Registry(tmp_path)
    gate = _gate(reg)
    live = dict(users)
    _submit(gate, reg, items, ids, live, {0: 0})
    for user in live:
        live[user] = -live[user]  # what later training would write; the gate must not see it
    _feed(gate, events)
    decision = gate.decide(seen)
    assert decision.figures["candidate"] > 0.4  # with the negated vectors it would be ~0


def _tampered(items, ids, vectors=None, offset=None):
    """A streamrec graph whose initializers were replaced after building (no checks)."""
    model = build_scoring_model(items, np.zeros(len(ids)), np.zeros(len(ids)), 0.0)
    for init in model.graph.initializer:
        if init.name == "item_vectors" and vectors is not None:
            init.CopyFrom(numpy_helper.from_array(vectors.astype(np.float32), "item_vectors"))
        if init.name == "item_offset" and offset is not None:
            init.CopyFrom(numpy_helper.from_array(offset.astype(np.float32), "item_offset"))
    return model.SerializeToString()


def test_nan_empty_and_dimension_changes_are_refused_before_any_evaluation(tmp_path):
    items, ids, users, events, seen = _world()
    reg = Registry(tmp_path)
    gate = _gate(reg)
    nan = items.copy()
    nan[3, 2] = np.nan
    inf_offset = np.zeros(len(ids))
    inf_offset[0] = np.inf
    cases = {
        "NaN": (_tampered(items, ids, vectors=nan), ids, DIM, "1 non-finite (NaN/Inf) weights in item_vectors"),
        "Inf": (_tampered(items, ids, offset=inf_offset), ids, DIM, "non-finite (NaN/Inf) weights in item_offset"),
        "empty": (_tampered(items, ids, vectors=np.zeros((0, DIM)), offset=np.zeros(0)), [], DIM,
                  "empty model: it has no items"),
        "dim": (_bytes(items[:, :8]), ids, 8, f"dimension 8 differs from learner.dim = {DIM}"),
    }
    for name, (data, item_ids, dim, why) in cases.items():
        version = reg.publish(data, {"item_ids": item_ids, "dim": dim})
        decision = gate.submit(version, data, reg.read_meta(version), users, {0: 0})
        assert decision.status == "rejected" and why in decision.reason, name
        assert decision.reason.startswith("refused before evaluation") and gate.pending is None
        meta = reg.read_meta(version)
        assert meta["status"] == "rejected" and why in meta["quality"]["refused"], name
        assert "candidate" not in meta["quality"]  # never evaluated
    assert check_candidate(b"\x00garbage", {}, DIM).startswith("not a readable ONNX model")

    # a dimension other than CURRENT's (learner.dim changed to 8): refused; --force may do it
    reg.promote(_publish(reg, items, ids)[0], actor="test", reason="CURRENT of dim 16")
    gate8 = _gate(reg, expected_dim=8)
    version, decision = _submit(gate8, reg, items[:, :8], ids, users, {0: 0})
    assert decision.status == "rejected" and f"differs from CURRENT {reg.current()}'s 16" in decision.reason
    version, decision = _submit(gate8, reg, items[:, :8], ids, users, {0: 0}, force=True)
    assert decision.status == "promoted" and decision.forced and reg.current() == version


def test_a_newer_candidate_or_a_newer_current_supersedes_a_pending_one(tmp_path):
    items, ids, users, events, seen = _world()
    reg = Registry(tmp_path)
    gate = _gate(reg)
    v1, _ = _submit(gate, reg, items, ids, users, {0: 0})
    _feed(gate, events[:30])
    v2, _ = _submit(gate, reg, items, ids, users, {0: 30})
    meta = reg.read_meta(v1)
    assert meta["status"] == "superseded" and gate.pending.version == v2
    assert meta["history"][-1]["reason"] == f"superseded by {v2} before its decision (30 of 100 held-out events)"
    # an operator promotes a newer version meanwhile: the pending one cannot be compared fairly
    reg.promote(_publish(reg, items, ids)[0], actor="alice", reason="manual")
    _feed(gate, events, start=30)
    decision = gate.decide(seen)
    assert decision.status == "superseded" and f"CURRENT {reg.current()} is newer" in decision.reason
    assert reg.read_meta(v2)["status"] == "superseded"
    assert [e["action"] for e in reg.read_log()].count("supersede") == 2


def test_candidates_an_earlier_exporter_left_undecided_are_superseded(tmp_path):
    items, ids, users, events, seen = _world()
    reg = Registry(tmp_path)
    left, _ = _submit(_gate(reg), reg, items, ids, users, {0: 0})  # that exporter then stopped
    held, _ = _publish(reg, items, ids)
    reg.hold(held, "held: pinned")  # a decision was recorded: not an orphan
    by_hand, _ = _publish(reg, items, ids)
    (reg.root / "CURRENT").write_text(by_hand)  # made CURRENT outside the registry's API
    fresh = _gate(reg)
    version, decision = _submit(fresh, reg, items, ids, users, {0: 0})
    assert decision.status == "pending"
    assert reg.read_meta(left)["status"] == "superseded"
    assert "left undecided by an earlier exporter" in reg.read_meta(left)["history"][-1]["reason"]
    assert reg.read_meta(held)["status"] == "candidate" and reg.read_meta(by_hand)["status"] == "candidate"
    assert reg.undecided() == [by_hand, version]


def test_a_pin_holds_the_decision_with_its_figures_and_force_promotes_at_once(tmp_path):
    items, ids, users, events, seen = _world()
    reg = Registry(tmp_path)
    gate = _gate(reg)
    v1, _ = _submit(gate, reg, items, ids, users, {0: 0}, force=True)
    assert reg.current() == v1 and reg.read_log()[-1]["actor"] == "cli/force"
    assert reg.read_meta(v1)["quality"]["forced"] is True and gate.pending is None
    v2, _ = _submit(gate, reg, items, ids, users, {0: 0})
    reg.rollback(to=v1, actor="alice", reason="hold still")  # pins CURRENT while v2 is pending
    _feed(gate, events)
    decision = gate.decide(seen)
    assert decision.status == "held" and reg.current() == v1
    assert "pinned to v000001 by alice" in decision.reason and "the gate would have promoted" in decision.reason
    assert reg.read_meta(v2)["status"] == "candidate" and reg.read_meta(v2)["quality"]["evaluated"] == 362
    v3, d3 = _submit(gate, reg, items, ids, users, {0: 0}, force=True)  # the pin beats --force
    assert d3.status == "held" and reg.current() == v1


def test_min_and_max_events_are_checked():
    with pytest.raises(ValueError, match="min_events <= max_events"):
        HoldOutGate(None, _loader, expected_dim=4, min_events=10, max_events=5)
