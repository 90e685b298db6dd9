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
