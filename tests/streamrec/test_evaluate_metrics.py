"""The evaluator's list metrics beside recall (issue 33 item 5): precision@K, catalogue coverage,
novelty, the share of cold-start lists, and ``evaluate_from``; the one-pass figures of
:class:`streamrec.evaluate.Metrics` equal the plain functions' on the same lists."""

from __future__ import annotations

import math

import pytest

from streamrec.core.config import load_config
from streamrec.evaluate import (catalogue_coverage, cold_start_share, evaluate, novelty, precision_at_k,
                                self_information)


def ev(user, item, offset):
    return {"event_id": f"{user}-{offset}", "user_id": user, "item_id": item, "weight": 1.0, "ts": offset,
            "src_partition": 0, "src_offset": offset}


def rec(user, offset, items, cold=False):
    return {"user_id": user, "source_offset": offset, "items": [{"item_id": i, "score": 1.0} for i in items],
            "cold_start": cold, "strategy": "popularity" if cold else "model"}


EVENTS = [ev("a", "x", 0), ev("b", "x", 1), ev("a", "y", 2), ev("b", "z", 3), ev("a", "z", 4), ev("c", "w", 5)]
RECS = [rec("a", 0, ["y", "w"], cold=True), rec("b", 1, ["y", "x", "q"]), rec("a", 2, ["w", "z"])]


def test_pipeline_figures_by_hand():
    r = evaluate(EVENTS, RECS, k=2, baselines=False)
    m = r.pipeline
    # a@2 judged by a@0's list [y, w] (hit, cold), b@3 by [y, x] (miss), a@4 by [w, z] (hit)
    assert m.ranks == [0, -1, 1]
    assert m.precision == pytest.approx(2 / 6)
    assert m.catalogue_coverage == 1.0      # y, w, x, z: all 4 items (q is past k)
    assert m.cold_start_share == pytest.approx(1 / 3)
    # popularity before a@2 (2 events: x twice), b@3 (3: x2 y1), a@4 (4: x2 y1 z1)
    bits = [self_information(0, 2), self_information(0, 2),     # y, w
            self_information(1, 3), self_information(2, 3),     # y, x
            self_information(0, 4), self_information(1, 4)]     # w, z
    assert m.novelty == pytest.approx(sum(bits) / 6)
    assert m.novelty == pytest.approx((1 + 1 + math.log2(3) + math.log2(1.5) + 2 + 2) / 6)


def test_metrics_equal_the_plain_functions():
    r = evaluate(EVENTS, RECS, k=2, baselines=False)
    lists = [["y", "w"], ["y", "x"], ["w", "z"]]
    counts = [{"x": 2}, {"x": 2, "y": 1}, {"x": 2, "y": 1, "z": 1}]
    assert r.pipeline.precision == pytest.approx(precision_at_k(lists, ["y", "z", "z"], k=2))
    assert r.pipeline.catalogue_coverage == pytest.approx(catalogue_coverage(lists, 4, k=2))
    assert r.pipeline.novelty == pytest.approx(novelty(lists, counts, [2, 3, 4], k=2))
    assert r.pipeline.cold_start_share == pytest.approx(cold_start_share([True, False, False]))


def test_baselines_report_every_metric_but_cold_start():
    r = evaluate(EVENTS, RECS, k=2, learner_cfg=load_config(config_file=None, env={}).learner)
    for m in (r.popularity, r.reference):
        assert m.evaluated == r.pipeline.evaluated
        assert 0 < m.catalogue_coverage <= 1 and m.novelty >= 0 and 0 <= m.precision <= 1
        assert m.cold_start_share is None
    d = r.to_dict()
    assert d["popularity"]["cold_start_share"] is None and d["catalogue"] == 4
    assert set(d["pipeline"]) >= {"recall", "ndcg", "precision", "catalogue_coverage", "novelty_bits",
                                  "cold_start_share"}
    table = r.table()
    for heading in ("recall@2", "NDCG@2", "P@2", "catalog", "novelty", "cold"):
        assert heading in table.splitlines()[0]


def test_evaluate_from_leaves_the_head_out_but_learns_it():
    full = evaluate(EVENTS, RECS, k=2, baselines=False)
    tail = evaluate(EVENTS, RECS, k=2, baselines=False, evaluate_from=0.5)   # events 3, 4, 5 evaluated
    assert tail.pipeline.ranks == full.pipeline.ranks[1:]
    assert tail.first_interactions == 3 and tail.evaluate_from == 0.5
    with pytest.raises(ValueError):
        evaluate(EVENTS, RECS, evaluate_from=1.0)


def test_empty_inputs_are_nan_not_errors():
    assert math.isnan(precision_at_k([], [], k=3))
    assert math.isnan(catalogue_coverage([], 0))
    assert math.isnan(novelty([], [], []))
    assert math.isnan(cold_start_share([]))
    r = evaluate([], [], baselines=False)
    assert math.isnan(r.pipeline.precision) and math.isnan(r.pipeline.novelty)
