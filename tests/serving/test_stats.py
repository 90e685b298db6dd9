"""serving/stats.py: the dashboard's statistics, exact on small hand-made sequences and against a
straightforward reference on a random one (any arrival order of records and events)."""

from __future__ import annotations

import math
import random

import pytest

from streamrec.serving.stats import DecayedPopularity, ServeStats, percentile


def rec(n: int, user: str, items: list[str], emitted_ts: int = 1_000, version: str = "live+v000001") -> dict:
    return {"user_id": user, "items": [{"item_id": i, "score": None} for i in items], "model_version": version,
            "strategy": "model" if items else "none", "source_event_id": f"e{n}", "emitted_ts": emitted_ts}


def test_five_events_two_hits_is_a_recall_of_0_4():
    s = ServeStats(k=2, half_life=math.inf, exclude_recent=0)
    # (user, item of the event, the list served after it)
    sequence = [("u", "a", ["b", "c"]), ("u", "b", ["c", "d"]), ("u", "x", ["c", "a"]),
                ("u", "a", ["a", "d"]), ("u", "c", ["d", "b"]), ("u", "e", [])]
    for n, (user, item, items) in enumerate(sequence):
        s.event(f"e{n}", user, item)
        s.offer([rec(n, user, items)], visible_ms=1_000 + 10 * n)
    s.tick(now_s=100.0)
    t = s.totals()
    # event 0 has no previous list; b (event 1) and a (event 3) were in the list before them
    assert (t["evaluated"], t["hits_served"], t["without_list"]) == (5, 2, 1)
    # popularity (plain counts, top 2, ties: the earlier item first): before event 3 a, b lead: a hit
    assert t["hits_popularity"] == 1
    assert s.rolling_recall() == (0.4, 0.2)
    doc = s.to_json()
    assert doc["series"]["recall_served"] == [0.4] and doc["series"]["recall_popularity"] == [0.2]
    assert t["by_strategy"] == {"model": 5, "popularity": 0, "none": 1}
    # latencies 0, 10, ..., 50 ms: nearest rank p50 = 20, p99 = 50
    assert doc["series"]["latency_p50_ms"] == [20] and doc["series"]["latency_p99_ms"] == [50]
    assert doc["series"]["version_stream"] == [1]


def test_records_before_their_events_join_the_same():
    s = ServeStats(k=2, half_life=math.inf, exclude_recent=0)
    s.offer([rec(0, "u", ["a", "b"]), rec(1, "u", ["c"]), rec(2, "v", ["a"])], visible_ms=5)
    s.drain()
    assert s.totals()["pending"] == 3
    s.events([("e1", "u", "b"), ("e0", "u", "z"), ("e2", "v", "a")])
    t = s.totals()
    # e1: b in [a, b]: a hit; e0 and e2: no list before them
    assert (t["evaluated"], t["hits_served"], t["without_list"], t["pending"]) == (1, 1, 2, 0)


def test_rolling_window_and_buckets():
    s = ServeStats(k=1, half_life=math.inf, exclude_recent=0, recall_window=2)
    s.offer([rec(0, "u", ["a"])], visible_ms=1_000)
    s.event("e0", "u", "q")
    for n, item in enumerate(["a", "x", "x"], start=1):  # hit, miss, miss
        s.offer([rec(n, "u", ["x" if n == 1 else "a"])], visible_ms=1_000)
        s.event(f"e{n}", "u", item)
    s.tick(now_s=10.0)
    assert s.totals()["hits_served"] == 2  # a in [a]; x in [x] (event 2); not event 3
    assert s.rolling_recall()[0] == 0.5  # the last two: hit, miss
    s.tick(now_s=11.0)  # an empty second: rates 0, no latency, the rolling recall kept
    doc = s.to_json()
    assert doc["t"] == [10_000, 11_000]
    assert doc["series"]["events_per_s"][1] == 0 and doc["series"]["latency_p50_ms"] == [0, None]
    assert doc["series"]["recall_served"] == [0.5, 0.5]


def test_popularity_excludes_the_users_recent_items():
    s = ServeStats(k=1, half_life=math.inf, exclude_recent=1)
    for n, (user, item) in enumerate([("u", "a"), ("v", "a"), ("u", "b"), ("w", "b"), ("u", "a")]):
        s.offer([rec(n, user, ["zz"])], visible_ms=0)
        s.event(f"e{n}", user, item)
    s.drain()
    # evaluated: u's e2 and e4 (the others have no list before them). Before e2 only a was seen,
    # and a is u's last item: nothing to show, a miss. Before e4 a and b have 2 each (a first: it
    # got there first); u's last item is b: the list is [a]: a hit
    assert (s.totals()["evaluated"], s.totals()["hits_popularity"]) == (2, 1)


def test_decayed_counts_rank_like_a_recount():
    rng = random.Random(3)
    p = DecayedPopularity(m=5, half_life=7.0)
    seen = []
    for _ in range(3000):
        item = f"i{int(rng.paretovariate(1.2)) % 40}"
        p.learn(item)
        seen.append(item)
        weights: dict[str, float] = {}
        for age, it in enumerate(reversed(seen[-400:])):
            weights[it] = weights.get(it, 0.0) + 2.0 ** (-age / 7.0)
        best = sorted(weights.values(), reverse=True)[:5]
        assert [weights[i] for i in p.top] == pytest.approx(best, rel=1e-9)


def reference(events: list[tuple[str, str, str]], lists: dict[str, list[str]], k: int, exclude_recent: int):
    """Straightforward: recount the popularity before every event, the previous list by scanning."""
    served = popular = evaluated = 0
    history: list[str] = []
    last_list: dict[str, list[str]] = {}
    recent: dict[str, list[str]] = {}
    for event_id, user, item in events:
        previous = last_list.get(user)
        counts: dict[str, int] = {}
        for it in history:
            counts[it] = counts.get(it, 0) + 1
        last = {it: i for i, it in enumerate(history)}
        order = sorted(counts, key=lambda it: (-counts[it], last[it]))  # ties: the first to reach the count
        mine = recent.get(user, [])
        shown = [it for it in order if it not in mine][:k]
        if previous is not None:
            evaluated += 1
            served += item in previous
            popular += item in shown
        history.append(item)
        mine = [it for it in recent.get(user, []) if it != item] + [item]  # the last distinct items
        recent[user] = mine[-exclude_recent:]
        if lists[event_id]:
            last_list[user] = lists[event_id][:k]
    return evaluated, served, popular


def test_random_stream_any_arrival_order_matches_the_reference():
    rng = random.Random(11)
    events, lists = [], {}
    for n in range(600):
        user, item = f"u{rng.randrange(12)}", f"i{min(rng.randrange(30), rng.randrange(30))}"
        events.append((f"e{n}", user, item))
        lists[f"e{n}"] = [] if rng.random() < 0.1 else rng.sample([f"i{j}" for j in range(30)], 4)
    # plain counts (every event weighs the same): ties rank the item that reached the count first
    s = ServeStats(k=3, half_life=math.inf, exclude_recent=5, recall_window=10_000)
    # records arrive in event order, the events in chunks, interleaved differently
    records = [rec(n, user, lists[eid]) for n, (eid, user, _) in enumerate(events)]
    r = e = 0
    while r < len(records) or e < len(events):
        take = rng.randrange(1, 40)
        if rng.random() < 0.5 and r < len(records):
            s.offer(records[r:r + take], visible_ms=0)
            r += take
        elif e < len(events):
            s.drain()
            s.events(events[e:e + take])
            e += take
    s.drain()
    t = s.totals()
    assert (t["evaluated"], t["hits_served"], t["hits_popularity"]) == reference(events, lists, 3, 5)
    assert t["pending"] == 0 and t["unmatched"] == 0


def test_bounded_state():
    s = ServeStats(k=2, max_users=10, max_pending=50, history_s=30)
    s.offer([rec(n, f"u{n}", ["a"]) for n in range(1000)], visible_ms=0)
    for second in range(100):
        s.tick(now_s=float(second))
    t = s.totals()
    assert t["users_tracked"] == 10 and t["pending"] == 50 and t["unmatched"] == 950
    assert len(s.to_json()["t"]) == 30


def test_percentile_is_the_nearest_rank():
    assert percentile(list(range(1, 101)), 0.99) == 99 and percentile(list(range(1, 101)), 0.5) == 50


def test_the_events_inlined_popularity_is_decayed_popularity():
    """ServeStats.events writes DecayedPopularity.learn out: the same top, across rescales."""
    rng = random.Random(5)
    items = [f"i{int(rng.paretovariate(1.1)) % 60}" for _ in range(5000)]
    s, p = ServeStats(k=5, half_life=20.0, exclude_recent=3), DecayedPopularity(m=8, half_life=20.0)
    for n, item in enumerate(items):  # 5000 events of half-life 20: rescaled 3 times
        s.events([(f"e{n}", f"u{n % 7}", item)])
        p.learn(item)
        assert s.popularity.top == p.top
    assert s.popularity.counts == pytest.approx(p.counts)


def test_records_dropped_unaccounted_forget_the_previous_lists():
    s = ServeStats(k=2, half_life=math.inf, exclude_recent=0, max_queued_batches=2)
    s.offer([rec(0, "u", ["a"])], visible_ms=1_000)
    s.drain()
    for n in (1, 2, 3):  # the dashboard's thread does not keep up: the batch of e1 is dropped
        s.offer([rec(n, "u", ["b"] if n == 1 else ["c"])], visible_ms=1_000)
    s.events([("e1", "u", "a"), ("e2", "u", "b"), ("e3", "u", "c")])
    s.drain()
    t = s.totals()
    # e2 would be a hit (b was served after e1), but e1's record was never seen: nothing is known
    # of u's list before e2, so e2 is not evaluated rather than wrongly; e3 is, against e2's list
    assert t["dropped_batches"] == 1 and (t["evaluated"], t["hits_served"]) == (1, 1), t
