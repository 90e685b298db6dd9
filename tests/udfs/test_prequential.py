"""Prequential evaluation helpers and the popularity baseline, on hand-made streams."""

from __future__ import annotations

import math

import numpy as np
import pytest

from streamrec.udfs.popularity import Popularity
from streamrec.udfs.prequential import PrequentialMetrics, hit_rank, ndcg_of_rank, prequential


class ScriptedModel:
    """Recommends a fixed list per user; records what it was asked and taught."""

    def __init__(self, lists: dict[str, list[str]]) -> None:
        self.lists = lists
        self.asked: list[tuple[str, int, frozenset[str]]] = []
        self.learned: list[tuple[str, str, float, str | None]] = []

    def recommend(self, user, k, exclude_seen=True, exclude=None):
        banned = frozenset(exclude or ())
        self.asked.append((user, k, banned))
        return [i for i in self.lists.get(user, []) if i not in banned][:k]

    def learn_one(self, user, item, weight=1.0, event_id=None):
        self.learned.append((user, item, weight, event_id))


def test_known_hits_misses_and_ndcg():
    model = ScriptedModel({"a": ["x", "y", "z"], "b": ["q", "r"]})
    stream = [
        ("a", "y", 2.0, "e1"),  # rank 1
        ("a", "x"),  # rank 0
        ("b", "z"),  # miss
        ("a", "y"),  # re-consumption: learned, not evaluated
        ("a", "z"),  # x, y excluded -> z moves to rank 0
        ("b", "r"),  # rank 1
    ]
    res = prequential(model, stream, k=2)
    assert res.ranks.tolist() == [1, 0, -1, 0, 1]
    assert res.events == 5 and res.hits == 4 and res.learned == 6
    assert res.recall == pytest.approx(4 / 5)
    expected_ndcg = (1 / math.log2(3) + 1 + 0 + 1 + 1 / math.log2(3)) / 5
    assert res.ndcg == pytest.approx(expected_ndcg)
    # test-then-train: the model learned every event, in order, with weight and id passed on
    assert [e[:2] for e in model.learned] == [e[:2] for e in stream]
    assert model.learned[0] == ("a", "y", 2.0, "e1") and model.learned[1][2:] == (1.0, None)
    # the 5th evaluation (a -> z) excluded everything a had seen before
    assert model.asked[-2] == ("a", 2, frozenset({"x", "y"}))
    assert res.tail(2).ranks.tolist() == [0, 1]


def test_rank_beyond_k_is_a_miss_and_empty_results():
    model = ScriptedModel({"a": ["p", "q", "r", "s"]})
    res = prequential(model, [("a", "s")], k=3)
    assert res.ranks.tolist() == [-1] and res.recall == 0.0 and res.ndcg == 0.0
    assert prequential(model, [], k=3).recall == 0.0
    m = PrequentialMetrics(k=3)
    for r in (0, 3, 2, -1):
        m.add(r)
    assert m.ranks == [0, -1, 2, -1] and m.hits == 2
    assert m.ndcg == pytest.approx((1 + 0.5) / 4)
    assert hit_rank([], "x") == -1 and ndcg_of_rank(-1) == 0.0


def test_no_exclusion_evaluates_reconsumptions():
    model = ScriptedModel({"a": ["x"]})
    res = prequential(model, [("a", "x"), ("a", "x")], k=1, exclude_seen=False)
    assert res.ranks.tolist() == [0, 0]


def test_popularity_flavours():
    stream = [("u1", "x")] * 1 + [("u2", "x"), ("u3", "y"), ("u4", "y"), ("u5", "y"), ("u6", "z")]
    allt = Popularity()
    win = Popularity(window=2)
    dec = Popularity(half_life=0.5)
    for user, item in stream:
        for m in (allt, win, dec):
            m.learn_one(user, item)
    assert allt.recommend("new", k=3) == ["y", "x", "z"]
    assert win.recommend("new", k=3) == ["y", "z"]  # x fell out of the window
    assert dec.recommend("new", k=3)[0] == "z"  # the newest event dominates a short half-life
    assert allt.recommend("u3", k=3) == ["x", "z"]  # seen items excluded by default
    assert allt.recommend("u3", k=3, exclude_seen=False, exclude=["x"]) == ["y", "z"]
    np.testing.assert_allclose(allt.score("new", ["x", "y", "nope"]), [2, 3, 0])
    with pytest.raises(ValueError):
        Popularity(window=3, half_life=2)


def test_decayed_counts_survive_rescaling():
    dec = Popularity(half_life=1.0)
    for n in range(3000):  # 2**3000 overflows without the periodic rescale
        dec.learn_one(f"u{n}", "b" if n % 3 == 2 else "a")
    assert np.isfinite(dec.score("x", ["a", "b"])).all()
    assert dec.recommend("x", k=1) == ["b"]  # the last event (n=2999) was b
