"""The pure helpers of the soak (bench/soak.py; no broker, no Flink): its streams, the registry
log's decisions and latencies, the memory slope, the series. The module's doctests run here too
(pytest's doctest collection leaves bench/ out)."""

from __future__ import annotations

import datetime
import doctest

import numpy as np
import pytest

from streamrec.bench import soak
from streamrec.bench.soak import (
    UserCounter,
    binned_percentiles,
    growing_synthetic,
    kinds_series,
    latency_summary,
    per_user_slope,
    renamed_rounds,
    rss_summary,
    version_decisions,
)


def test_doctests():
    failures, tried = doctest.testmod(soak, optionflags=doctest.ELLIPSIS)
    assert tried > 0 and failures == 0


def test_growing_synthetic_population_grows_each_round_and_is_deterministic():
    ev = list(growing_synthetic(3_000, round_events=1_000, round_users=200, items=500, clusters=10, rate=100.0))
    assert len(ev) == 3_000
    assert ev == list(growing_synthetic(3_000, round_events=1_000, round_users=200, items=500, clusters=10,
                                        rate=100.0))
    users_by_round = [{e["user_id"] for e in ev[r * 1000:(r + 1) * 1000]} for r in range(3)]
    assert not users_by_round[0] & users_by_round[1] and not users_by_round[1] & users_by_round[2]
    assert all(len(u) > 50 for u in users_by_round)
    # event time runs at the rate: 1,000 events at 100/s span about 10 s per round, rounds in order
    assert all(a["ts"] <= b["ts"] for a, b in zip(ev, ev[1:]))
    assert 9_000 <= ev[999]["ts"] - ev[0]["ts"] <= 10_000
    assert ev[1000]["ts"] - ev[0]["ts"] == 10_000
    assert len({e["event_id"] for e in ev}) == 3_000
    assert all(set(e) == {"event_id", "user_id", "item_id", "event_type", "ts"} for e in ev)


def test_growing_synthetic_short_last_round_and_laziness():
    gen = growing_synthetic(10 ** 9, round_events=100, round_users=10, items=50, clusters=5)
    first = [next(gen) for _ in range(150)]  # no list of 10^9 events is ever built
    assert first[149]["event_id"] == "s1.49"
    assert len(list(growing_synthetic(130, round_events=100, round_users=10, items=50, clusters=5))) == 130


def test_renamed_rounds_new_users_each_round():
    ev = [{"event_id": f"e{i}", "user_id": f"u{i % 3}", "ts": i * 10} for i in range(6)]
    out = list(renamed_rounds(ev, 14))
    assert len(out) == 14 and out[:6] == ev
    assert {e["user_id"] for e in out[6:12]} == {"u0-r1", "u1-r1", "u2-r1"}
    assert out[12]["user_id"] == "u0-r2" and out[12]["ts"] == 2 * 51
    assert len({e["event_id"] for e in out}) == 14
    assert all(a["ts"] < b["ts"] for a, b in zip(out, out[1:]))
    assert list(renamed_rounds([], 5)) == []


def test_user_counter_counts_distinct_users():
    c = UserCounter([{"user_id": "a"}, {"user_id": "b"}, {"user_id": "a"}])
    assert [e["user_id"] for e in c] == ["a", "b", "a"]
    assert c.count == 3 and len(c.users) == 2


def _log():
    def ts(seconds: float) -> str:
        return (datetime.datetime(2026, 12, 7, 5, tzinfo=datetime.timezone.utc)
                + datetime.timedelta(seconds=seconds)).isoformat(timespec="milliseconds")
    return [
        {"action": "publish", "version": "v000001", "ts": ts(0.0)},
        {"action": "promote", "version": "v000001", "ts": ts(0.5), "figures": {"waited_s": 0.4, "n": 500,
                                                                              "trigger": "look"}},
        {"action": "publish", "version": "v000002", "ts": ts(5.0)},
        {"action": "retention", "version": None, "ts": ts(5.1)},
        {"action": "reject", "version": "v000002", "ts": ts(7.0), "hold_back_live": True,
         "figures": {"n": 1000, "trigger": "look", "sample_users": 9000, "sample_fraction": 0.5}},
        {"action": "publish", "version": "v000003", "ts": ts(10.0)},
        {"action": "supersede", "version": "v000003", "ts": ts(75.0)},
        {"action": "publish", "version": "v000004", "ts": ts(75.0)},
        {"action": "reject", "version": "v000004", "ts": ts(76.0), "figures": {"n": 10, "trigger": "stop"}},
        {"action": "publish", "version": "v000005", "ts": ts(80.0)},
        {"action": "hold", "version": "v000005", "ts": ts(81.0), "figures": {"n": 600, "trigger": "look"}},
        {"action": "promote", "version": "v000005", "ts": ts(82.0)},  # a later action: not the decision
    ]


def test_version_decisions_pairs_publish_with_first_decision():
    t0 = soak._ts("2026-12-07T05:00:00+00:00")
    rows = {r["version"]: r for r in version_decisions(_log(), t0)}
    assert list(rows) == [f"v00000{i}" for i in range(1, 6)]
    assert rows["v000001"]["latency_s"] == 0.5 and rows["v000001"]["waited_s"] == 0.4
    assert rows["v000002"]["guard"] and rows["v000002"]["sample_users"] == 9000
    assert rows["v000003"]["decision"] == "supersede" and rows["v000003"]["latency_s"] == 65.0
    assert rows["v000005"]["decision"] == "hold" and rows["v000005"]["decided_s"] == 81.0
    assert version_decisions([]) == []


def test_latency_summary_counts_gate_decisions_on_the_stream_only():
    s = latency_summary(version_decisions(_log()))
    # v1 (0.5 s), v2 (2 s), v5 (1 s); not the supersession (v3) nor the decision at the stop (v4)
    assert s["decided"] == 3
    assert s["p50"] == pytest.approx(1.0) and s["max"] == pytest.approx(2.0)
    assert set(s["by_decision"]) == {"promote", "reject", "hold"}
    assert latency_summary([])["p50"] is None


def test_per_user_slope_and_rss_summary():
    pts = [(u, 50e6 + 300.0 * u) for u in range(0, 100_000, 5_000)]
    assert per_user_slope(pts) == pytest.approx(300.0)
    samples = [{"rss": int(r), "users_with_vectors": u, "users_fed": u + 10} for u, r in pts]
    s = rss_summary(samples)
    assert s["start"] == 50_000_000 and s["end"] == int(pts[-1][1]) and s["peak_sampled"] == s["end"]
    assert s["bytes_per_user"] == pytest.approx(300.0) and s["bytes_per_user_basis"] == "users_with_vectors"
    # no exporter counts yet: the users fed instead
    fallback = rss_summary([{"rss": 100, "users_fed": 0}, {"rss": 200, "users_fed": 10}])
    assert fallback["bytes_per_user_basis"] == "users_fed" and fallback["bytes_per_user"] == pytest.approx(10.0)
    assert rss_summary([])["start"] is None
    # past a cap: the slope of the later samples only (flat here after 50,000 users)
    capped = [{"rss": int(50e6 + 300.0 * min(u, 50_000)), "users_with_vectors": u} for u in range(0, 100_001, 5_000)]
    s = rss_summary(capped, from_users=50_000)
    assert s["bytes_per_user"] > 100 and s["bytes_per_user_from"] == pytest.approx(0.0, abs=1e-6)
    assert s["bytes_per_user_from_users"] == 50_000 and "bytes_per_user_from" not in rss_summary(capped)


def test_kinds_series_bins_by_kind_and_leaves_unknown_out():
    series = kinds_series([1_000, 2_000, 9_999, 10_000, 25_000], ["live", None, "live+v000002", "v000002", "v9"],
                          t0_ms=0, bin_s=10.0)
    assert series == [[0.0, 1, 1, 0], [10.0, 0, 0, 1], [20.0, 0, 0, 1]]
    assert kinds_series([], [], 0) == []
    # records before t0 (the warm-up's) get negative bins
    assert kinds_series([-5_000], ["live"], 0, bin_s=10.0) == [[-10.0, 1, 0, 0]]


def test_binned_percentiles():
    t = np.array([0.5, 1.5, 2.5, 10.0, 35.0])
    v = np.array([100.0, 200.0, 300.0, 50.0, 7.0])
    out = binned_percentiles(t, v, bin_s=10.0)
    assert [row[0] for row in out] == [0.0, 10.0, 30.0]
    assert out[0][1] == 200.0 and out[0][3] == 300.0
    assert binned_percentiles(np.array([]), np.array([])) == []
