"""The prequential evaluator on hand-made streams with known answers (records as core/records.py
declares them, checked by it)."""

import math

import pytest

from streamrec.core.records import CLEAN_EVENT, RECOMMENDATION
from streamrec.evaluate import evaluate, stream_order


def ev(user, item, offset, ts=None, partition=0):
    return CLEAN_EVENT.check({
        "event_id": f"{user}-{offset}", "user_id": user, "item_id": item, "event_type": "view", "rating": None,
        "weight": 1.0, "ts": ts if ts is not None else offset, "src_partition": partition, "src_offset": offset,
        "late": False, "ingest_watermark_ms": None})


def rec(user, offset, items, strategy="model", reason=None):
    """A recommendation record listing ``items`` (all of score 1.0: ties)."""
    return RECOMMENDATION.check({
        "user_id": user, "items": [{"item_id": i, "score": 1.0} for i in items],
        "model_version": "live", "strategy": strategy, "cold_start": strategy != "model", "user_events": 1,
        "source_event_id": f"{user}-{offset}", "source_partition": 0, "source_offset": offset, "event_ts": offset,
        "emitted_ts": offset, "batch_size": 1, "reason": reason})


def test_hits_misses_and_users_without_a_prior_list():
    events = [ev("a", "x", 0), ev("a", "y", 1), ev("a", "z", 2), ev("b", "x", 3), ev("b", "q", 4)]
    recs = [rec("a", 0, ["y", "w"]),      # before a@1: y is in it -> hit at rank 0
            rec("a", 1, ["w", "v"]),      # before a@2: z missing -> miss
            rec("b", 3, ["r", "s", "q"])]  # before b@4: q at rank 2 -> hit
    r = evaluate(events, recs, k=10, baselines=False)
    assert r.first_interactions == 5
    assert r.with_prior_list == 3                 # a@0 and b@3 had no earlier list
    assert (r.pipeline.evaluated, r.pipeline.hits) == (3, 2)
    assert r.pipeline.ranks == [0, -1, 2]
    assert math.isclose(r.pipeline.ndcg, (1 / math.log2(2) + 1 / math.log2(4)) / 3)
    assert math.isclose(r.coverage, 3 / 5)


def test_only_lists_from_strictly_earlier_offsets_count():
    # the list built from the event itself (source_offset == event offset) must not be used
    events = [ev("a", "x", 5), ev("a", "y", 9)]
    recs = [rec("a", 5, ["y"]), rec("a", 9, ["y"])]
    r = evaluate(events, recs, baselines=False)
    assert r.pipeline.ranks == [0]        # y@9 judged by the list of offset 5, not offset 9


def test_latest_earlier_list_wins_and_k_cuts_lists():
    events = [ev("a", "x", 0), ev("a", "y", 10)]
    recs = [rec("a", 0, ["y"]), rec("a", 3, [f"n{i}" for i in range(10)] + ["y"])]
    assert evaluate(events, recs, k=10, baselines=False).pipeline.ranks == [-1]   # y is 11th
    assert evaluate(events, recs, k=11, baselines=False).pipeline.ranks == [10]


def test_a_record_without_items_leaves_the_previous_list_and_the_figures_alone():
    # a `none` record (the user had every known item) is published for every such event: the
    # figures must be those of a stream where that event had no record at all
    events = [ev("a", "x", 0), ev("a", "y", 1), ev("a", "z", 2), ev("b", "z", 3), ev("b", "w", 4)]
    served = [rec("a", 0, ["z", "y"]), rec("b", 3, ["w"])]
    none = [rec("a", 1, [], strategy="none", reason="user_had_every_item"),
            rec("b", 2, [], strategy="none", reason="user_had_every_item")]
    with_none, without = (evaluate(events, recs, baselines=False) for recs in (served + none, served))
    assert with_none.pipeline.ranks == without.pipeline.ranks == [1, 0, 0]  # a@2 judged by a@0's list
    assert (with_none.with_prior_list, with_none.coverage) == (without.with_prior_list, without.coverage)
    # a user whose only records are empty has no prior list
    alone = evaluate([ev("c", "x", 0), ev("c", "y", 1)],
                     [rec("c", 0, [], strategy="none", reason="user_had_every_item")], baselines=False)
    assert alone.with_prior_list == 0 and alone.pipeline.evaluated == 0


def test_reconsumptions_are_not_evaluated():
    events = [ev("a", "x", 0), ev("a", "x", 1), ev("a", "y", 2)]
    recs = [rec("a", 0, ["x"]), rec("a", 1, ["y"])]
    r = evaluate(events, recs, baselines=False)
    assert r.first_interactions == 2 and r.pipeline.ranks == [0]


def test_stream_order_uses_event_time_then_partition_offset():
    events = [ev("a", "x", 7, ts=20), ev("b", "y", 3, ts=10, partition=1), ev("c", "z", 1, ts=10)]
    assert [e["item_id"] for e in stream_order(events)] == ["z", "y", "x"]


def test_ties_in_lists_keep_list_order():
    events = [ev("a", "x", 0), ev("a", "y", 1)]
    recs = [rec("a", 0, ["w", "y"])]
    assert evaluate(events, recs, baselines=False).pipeline.ranks == [1]


def test_baselines_run_on_exactly_the_same_events():
    events = [ev(u, i, n) for n, (u, i) in enumerate(
        [("a", "x"), ("b", "x"), ("c", "x"), ("a", "y"), ("b", "y"), ("c", "z"), ("d", "x")])]
    recs = [rec(u, n, ["x", "y", "z"]) for n, (u, _i) in enumerate(
        [("a", "x"), ("b", "x"), ("c", "x"), ("a", "y"), ("b", "y"), ("c", "z"), ("d", "x")])]
    r = evaluate(events, recs, k=2)
    assert r.popularity.evaluated == r.reference.evaluated == r.pipeline.evaluated == 3
    assert r.pipeline.ranks == [1, 1, -1]
    # popularity, seen items excluded: a@3 -> [] (only x known, seen), b@4 -> [y] hit, c@5 -> [y] miss
    assert r.popularity.ranks == [-1, 0, -1]


def test_empty_inputs():
    r = evaluate([], [], baselines=False)
    assert r.first_interactions == 0 and math.isnan(r.pipeline.recall) and math.isnan(r.coverage)
