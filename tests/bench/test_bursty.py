"""bench/bursty.py: the third bench stream has the shape issue 33 describes (within tolerances),
is deterministic, and has something to learn; the stream options of the bench."""

from __future__ import annotations

import pytest

from streamrec.bench.bursty import bursty_stream, shape
from streamrec.bench.phases import stream_events
from streamrec.bench.run_bench import DEFAULT_STREAMS, STREAMS, parse_streams


@pytest.fixture(scope="module")
def stream():
    return bursty_stream()


def test_the_default_stream_has_the_issues_shape(stream):
    s = shape(stream)
    assert s["events"] == 100_000
    assert 8_000 <= s["items"] <= 10_000              # ~9k items
    assert s["users"] == 670
    assert 19.0 <= s["years"] <= 20.0                 # 20 years of event time
    assert 0.80 <= s["within_gap_share"] <= 0.86      # ~83 % within 60 s of the user's previous event
    assert 7.0 <= s["distinct_users_per_window"] <= 9.0  # ~8 distinct users per 256 events
    assert 0.022 <= s["heaviest_user_share"] <= 0.026  # the heaviest user ~2.4 %
    assert s["items_with_at_most_2_events"] >= 0.15   # a long tail (0.18)


def test_events_look_like_ml100k_ones_and_never_repeat_a_pair(stream):
    assert [e["event_id"] for e in stream[:3]] == ["b0", "b1", "b2"]
    assert all(a["ts"] <= b["ts"] for a, b in zip(stream, stream[1:]))
    assert {e["event_type"] for e in stream} == {"rating"}
    assert {e["rating"] for e in stream} <= {1.0, 2.0, 3.0, 4.0, 5.0}
    assert len({(e["user_id"], e["item_id"]) for e in stream}) == len(stream)


def test_seeded_and_the_seed_matters():
    a = bursty_stream(3_000, items=800, users=30, years=2.0)
    assert a == bursty_stream(3_000, items=800, users=30, years=2.0)
    assert a != bursty_stream(3_000, items=800, users=30, years=2.0, seed=34)


def test_the_planted_structure_is_learnable():
    # a user's items concentrate on few genres: the reference beats windowed popularity clearly
    from streamrec.core.config import load_config
    from streamrec.evaluate import evaluate

    events = [dict(e, weight=1.0, src_partition=0, src_offset=n)
              for n, e in enumerate(bursty_stream(8_000, items=1_500, users=60, years=3.0))]
    # the reference's own lists, given as the pipeline's, are not needed: compare the baselines
    r = evaluate(events, [dict(user_id=e["user_id"], source_offset=e["src_offset"],
                               items=[{"item_id": "none"}]) for e in events],
                 k=10, learner_cfg=load_config(config_file=None, env={}).learner)
    assert r.reference.recall > 1.5 * r.popularity.recall


def test_stream_options():
    assert parse_streams(",".join(STREAMS)) == STREAMS
    assert set(DEFAULT_STREAMS) <= set(STREAMS)
    with pytest.raises(ValueError, match="unknown stream"):
        parse_streams("ml1m")
    ml = [{"event_id": str(n), "rating": float(n % 5 + 1)} for n in range(10)]
    five, evaluate_from = stream_events("ml100k-5star", ml)
    assert [e["event_id"] for e in five] == ["4", "9"] and evaluate_from == 0.3
    with pytest.raises(ValueError, match="no stream"):
        stream_events("second", ml)
