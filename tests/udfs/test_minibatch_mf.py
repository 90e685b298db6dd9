import pytest
import numpy as np

from streamrec.udfs.online_mf import init_item_state, init_user_state
from streamrec.udfs.minibatch_mf import ItemTable, batch_step
from streamrec.udfs.online_mf import ItemSnapshot, LearnerParams, item_step, user_step


def _params(**kw):
    return LearnerParams.of(None, dim=8, seed=3, **kw)


def test_one_event_without_negatives_is_exactly_the_sequential_step():
    p = _params(negatives=0)
    table = ItemTable(p)
    rows = table.rows(["i1"])
    user = init_user_state("u1", p)
    step = batch_step(table, user.vector[None, :], user.accum[None, :], np.array([0]), rows, np.array([1.0]),
                      ["e1"], None)
    seq_user, updates = user_step(user, "i1", 1.0, "e1", ItemSnapshot.empty(p.dim), p)
    seq_item = item_step(init_item_state("i1", p), updates[0], p)
    np.testing.assert_allclose(step.user_vectors[0], seq_user.vector, rtol=1e-6)
    np.testing.assert_allclose(table.vectors[0], seq_item.vector, rtol=1e-6)
    assert table.updates[0] == 1 and table.popularity[0] == 1.0


def test_a_users_events_in_one_batch_step_one_after_the_other():
    p = _params(negatives=0)
    table = ItemTable(p)
    rows = table.rows(["i1", "i2"])
    user = init_user_state("u1", p)
    step = batch_step(table, user.vector[None, :], user.accum[None, :], np.array([0, 0]), rows,
                      np.ones(2), ["e1", "e2"], None)
    # the same two events one batch each: the user's steps are identical (items i1, i2 differ, so
    # batching the item updates changes nothing the user reads)
    table2 = ItemTable(p)
    rows2 = table2.rows(["i1", "i2"])
    first = batch_step(table2, user.vector[None, :], user.accum[None, :], np.array([0]), rows2[:1], np.ones(1),
                       ["e1"], None)
    second = batch_step(table2, first.user_vectors, first.user_accum, np.array([0]), rows2[1:], np.ones(1),
                        ["e2"], None)
    np.testing.assert_allclose(step.event_vectors[0], first.event_vectors[0], rtol=1e-6)
    np.testing.assert_allclose(step.event_vectors[1], second.event_vectors[0], rtol=1e-6)
    np.testing.assert_allclose(table.vectors[:2], table2.vectors[:2], rtol=1e-6)


def test_negatives_are_drawn_the_same_for_the_same_batch_and_skip_avoided_items():
    p = _params(negatives=6)
    ids = [f"i{n}" for n in range(30)]

    def run(avoid):
        table = ItemTable(p)
        table.rows(ids)
        table.popularity[:30] = np.arange(1, 31)
        users = np.stack([init_user_state(u, p).vector for u in ("a", "b")])
        batch_step(table, users, np.zeros_like(users), np.array([0, 1, 0]), table.rows(["i1", "i2", "i3"]),
                   np.ones(3), ["e1", "e2", "e3"], avoid)
        return table

    a, b = run(None), run(None)
    np.testing.assert_array_equal(a.vectors, b.vectors)  # deterministic
    touched = set(np.flatnonzero(a.updates).tolist())
    assert len(touched) > 3  # negatives were updated too
    never = run(lambda slots, rows: np.ones(rows.shape, bool))  # every negative avoided
    assert set(np.flatnonzero(never.updates).tolist()) == {1, 2, 3}


def test_item_records_restore_with_their_write_time():
    p = _params()
    table = ItemTable(p)
    rows = table.rows(["x", "y"])
    table.vectors[rows] += 1.5
    table.popularity[rows] = [2.0, 3.0]
    table.updates[rows] = [4, 5]
    records = table.encode(rows, now_ms=1_234)
    back = ItemTable(p)
    assert back.restore(records.items()) == 2
    np.testing.assert_array_equal(back.vectors[:2], table.vectors[:2])
    assert back.ids == ["x", "y"] and back.updates[:2].tolist() == [4, 5]
    assert back.popularity[:2].tolist() == [2.0, 3.0] and back.written_ms[:2].tolist() == [1_234, 1_234]
    with pytest.raises(ValueError, match="format"):
        back.restore([("z", b"\x01" + records["x"][1:])])


def test_expire_drops_items_not_written_since_and_renumbers_the_rest():
    table = ItemTable(_params())
    table.encode(table.rows(["a", "b", "c", "d"]), now_ms=100)
    table.vectors[table.rows(["b", "d"])] = 7.0
    table.encode(table.rows(["b", "d"]), now_ms=500)
    assert table.expire(written_before_ms=100) == []
    assert table.expire(written_before_ms=300) == ["a", "c"]
    assert table.ids == ["b", "d"] and table.index == {"b": 0, "d": 1} and len(table) == 2
    assert (table.vectors[:2] == 7.0).all() and table.written_ms[:2].tolist() == [500, 500]
    assert table.rows(["a"]).tolist() == [2]  # an expired item comes back as a new one
    assert table.sorted_rows().tolist() == [2, 0, 1]


def test_a_heavy_events_bounded_step_is_the_sequential_one():
    """The step bound (learner.max_step) scales a heavy event's coefficients alike in both
    learners: a user's two events of weight 50 in one batch step as the sequential reference does."""
    p = _params(negatives=0)
    user = init_user_state("u1", p)
    table = ItemTable(p)
    rows = table.rows(["i1", "i2"])
    step = batch_step(table, user.vector[None, :], user.accum[None, :], np.array([0, 0]), rows,
                      np.full(2, 50.0), ["e1", "e2"], None)
    snap = ItemSnapshot.empty(p.dim)
    first, (up1,) = user_step(user, "i1", 50.0, "e1", snap, p)
    second, (up2,) = user_step(first, "i2", 50.0, "e2", snap, p)
    np.testing.assert_allclose(step.event_vectors, [first.vector, second.vector], rtol=1e-5)
    np.testing.assert_allclose(table.vectors[0], item_step(init_item_state("i1", p), up1, p).vector, rtol=1e-5)
    np.testing.assert_allclose(table.vectors[1], item_step(init_item_state("i2", p), up2, p).vector, rtol=1e-5)
    v = init_item_state("i1", p).vector
    change = p.learning_rate * up1.coef * (user.vector @ user.vector + v @ v + 1)
    assert change == pytest.approx(p.max_step, rel=1e-5)  # bound: unbounded it was ~30x that


@pytest.mark.parametrize("weight", [2.5, 4.0, 1e6])
def test_heavy_weights_keep_the_batch_learner_finite_and_bounded(weight):
    """Weights of 2.5 grew the vectors to ~1e5, 4.0 to NaN (then the records' strict JSON
    failed the job). Batches of 64 over a stream of 30 users and 60 items, with negatives."""
    p = LearnerParams.of(None, dim=16, seed=2)
    rng = np.random.default_rng(5)
    table = ItemTable(p)
    table.rows([f"i{n}" for n in range(60)])
    users = np.stack([init_user_state(f"u{n}", p).vector for n in range(30)])
    accum = np.zeros_like(users)
    for b in range(50):
        slot = rng.integers(30, size=64)
        items = (slot % 3) * 20 + rng.integers(20, size=64)  # each user's group of items
        step = batch_step(table, users[np.unique(slot)], accum[np.unique(slot)], np.unique(slot, return_inverse=True)[1],
                          items, np.full(64, weight), [f"e{b}-{n}" for n in range(64)], None)
        users[np.unique(slot)] = step.user_vectors
    norms = np.r_[np.linalg.norm(users, axis=1), np.linalg.norm(table.vectors[:60], axis=1)]
    assert np.isfinite(norms).all() and norms.max() < 5, norms.max()
    assert np.isfinite(table.bias[:60]).all()
    # and it learned the groups: a user scores its own group's items above the others
    scores = users @ table.vectors[:60].T + table.bias[:60]
    own = scores.reshape(30, 3, 20).mean(2)[np.arange(30), np.arange(30) % 3]
    assert (own > scores.mean(1)).mean() > 0.9


def test_max_norm_caps_users_and_items_in_the_batch_learner_too():
    p = _params(max_norm=0.5, learning_rate=0.5, negatives=4)
    table = ItemTable(p)
    table.rows([f"i{n}" for n in range(10)])
    users = np.stack([init_user_state(f"u{n}", p).vector for n in range(5)])
    for b in range(40):
        slot = np.arange(20) % 5
        step = batch_step(table, users, np.zeros_like(users), slot, (slot * 2 + b) % 10, np.ones(20),
                          [f"e{b}-{n}" for n in range(20)], None)
        users = step.user_vectors
        norms = np.r_[np.linalg.norm(step.event_vectors, axis=1), np.linalg.norm(table.vectors[:10], axis=1)]
        assert norms.max() <= 0.5 + 1e-6
    assert norms.max() > 0.49


def test_reset_nonfinite_puts_a_row_back_with_nothing_pending():
    p = _params()
    table = ItemTable(p, track_pending=True)
    rows = table.rows(["a", "b"])
    table.add(rows, vectors=np.ones((2, p.dim), np.float32), updates=np.array([1, 1]))
    table.vectors[1, 3], table.bias_accum[0] = np.nan, np.inf
    assert table.reset_nonfinite(rows).tolist() == [0, 1]
    np.testing.assert_array_equal(table.vectors[1], init_item_state("b", p).vector)
    assert not table.pending_vectors[:2].any() and table.updates[:2].tolist() == [1, 1]
    assert table.reset_nonfinite().tolist() == []
