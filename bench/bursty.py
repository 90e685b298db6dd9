"""A third bench stream: bursty sessions, a long-tail catalogue, a few very heavy users, decades.

The shape of a public ratings stream that the pipeline found hard (issue 33): ~100k ratings,
~9k items in a long tail, ~670 users over 20 years of event time; very bursty (~83 % of events
within 60 s of the same user's previous event, ~8 distinct users per 256 consecutive events) and
the heaviest user with ~2.4 % of all events. :func:`shape` measures these figures of any stream;
``tests/bench/test_bursty.py`` checks the generator's defaults against them.

How it is generated (seeded, plain numpy; the same arguments give the same stream):

* **Users.** Each user's event count follows a log-normal curve (deterministic quantiles, so no
  sampling luck), at least ``min_user_events`` (20) each, its spread chosen by bisection so the
  heaviest user has ``heaviest_share`` of the events. Each user is active for a stretch of the
  ``years`` (log-uniform from ``min_stretch_days``, 1, to the whole span), starting anywhere in it.
* **Visits (the bursts).** A user's events come in visits of geometric length (mean
  ``visit_events``, 19), each starting at a uniform time of the user's active stretch. Within a
  visit the gap to the previous event is short (exponential, mean ``short_gap_s``, below 60 s)
  except with probability ``long_gap_p`` (2 to 30 minutes, log-uniform: a pause). A share
  ``rapid_visit_p`` of the visits are bulk ratings (gaps uniform in 0 to 2 s, ~60 a minute: under
  the ingest's ``bot_events_per_minute`` of 120 unless a visit is very long).
* **Items (the long tail, planted structure).** ``items`` items in ``clusters`` genres; an item's
  weight is Zipf (exponent ``zipf``) by its rank in its genre times a recency boost (x
  ``recency_boost`` at release, fading with a half-life of ``recency_half_life_years``); a share
  ``back_catalogue`` is released before the stream starts, the rest at uniform times through it:
  nothing is rated before its release.
* **Taste (drifting).** Every user has a first and a second genre; a visit picks its focus genre:
  the second with probability equal to how far through the user's events the visit is (taste
  drifts), else the first; with probability ``explore_p`` any genre. Each event takes an item of
  the focus genre with probability ``focus_p`` (by weight among the released items), else any
  released item by weight. No user rates an item twice (as in a ratings dataset).
* **Ratings.** 3 / 4 / 5 with probabilities .2 / .4 / .4 for an item of the focus genre, 1 to 5
  with .1 / .2 / .35 / .25 / .1 otherwise (so ``rating == 5`` keeps the planted signal).

Events have the shape of :func:`streamrec.replay.ml100k_events` (``event_type`` ``rating``,
``rating``, ``ts`` in milliseconds), in timestamp order, ids ``b<position>``.

    python -m streamrec.bench.bursty [EVENTS]        # the shape, then the in-process quality
"""

from __future__ import annotations

import math
import sys
from collections import Counter
from statistics import NormalDist

import numpy as np

DAY_MS = 86_400_000
YEAR_MS = 365 * DAY_MS
T0_MS = 820_454_400_000  # 1996-01-01 UTC


def _user_counts(events: int, users: int, min_events: int, heaviest_share: float) -> np.ndarray:
    """Per-user event counts, descending, summing to ``events``: ``min_events`` each plus a
    log-normal share whose spread makes the first ``heaviest_share`` of all events."""
    quantiles = np.array([NormalDist().inv_cdf(1.0 - (r + 0.5) / users) for r in range(users)])
    spare = events - min_events * users
    if spare < 0:
        raise ValueError(f"{events} events cannot give {users} users {min_events} each")

    def counts(sigma: float) -> np.ndarray:
        w = np.exp(sigma * quantiles)
        return min_events + spare * w / w.sum()

    lo, hi = 0.0, 6.0
    for _ in range(60):  # the top share grows with sigma
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if counts(mid)[0] / events < heaviest_share else (lo, mid)
    raw = counts((lo + hi) / 2)
    out = np.floor(raw).astype(np.int64)
    out[np.argsort(raw - out)[::-1][:events - out.sum()]] += 1  # largest remainders: exact total
    return out


def bursty_stream(events: int = 100_000, items: int = 10_000, users: int = 670, clusters: int = 80,
                  years: float = 20.0, seed: int = 33, min_user_events: int = 20,
                  heaviest_share: float = 0.024, visit_events: float = 19.0, short_gap_s: float = 12.0,
                  long_gap_p: float = 0.13, rapid_visit_p: float = 0.1, zipf: float = 1.0,
                  recency_boost: float = 1.0, recency_half_life_years: float = 1.0,
                  back_catalogue: float = 0.3, explore_p: float = 0.1, focus_p: float = 0.9,
                  min_stretch_days: float = 1.0) -> list[dict]:
    """The stream (module docstring: how). ~6-8 s for the default 100,000 events.

    >>> ev = bursty_stream(2_000, items=500, users=20, years=2.0)
    >>> len(ev), ev[0]["event_id"], sorted(ev[0])
    (2000, 'b0', ['event_id', 'event_type', 'item_id', 'rating', 'ts', 'user_id'])
    >>> all(a["ts"] <= b["ts"] for a, b in zip(ev, ev[1:]))
    True
    >>> ev == bursty_stream(2_000, items=500, users=20, years=2.0)
    True
    """
    rng = np.random.default_rng(seed)
    span_ms = years * YEAR_MS
    # -- items: genre, rank in the genre (Zipf weight), release time
    genre = rng.integers(clusters, size=items)
    base = np.empty(items)
    for g in range(clusters):
        members = np.flatnonzero(genre == g)
        base[rng.permutation(members)] = 1.0 / np.arange(1, len(members) + 1) ** zipf
    released = np.where(rng.random(items) < back_catalogue, -np.inf, rng.random(items) * span_ms)
    by_genre = [np.flatnonzero(genre == g) for g in range(clusters)]
    half_life_ms = recency_half_life_years * YEAR_MS

    def weights(pool: np.ndarray, t: float) -> np.ndarray:
        rel = released[pool]
        age = np.where(np.isfinite(rel), t - rel, np.inf)
        w = base[pool] * (1.0 + recency_boost * np.exp2(-np.maximum(age, 0.0) / half_life_ms))
        return np.where(age >= 0, w, 0.0)

    everything = np.arange(items)
    # -- users: counts, active stretch, tastes
    counts = rng.permutation(_user_counts(events, users, min_user_events, heaviest_share))
    first, second = rng.integers(clusters, size=users), rng.integers(clusters, size=users)
    out: list[tuple[int, int, int, float]] = []  # (ts, user, item, rating)
    for u in range(users):
        n = int(counts[u])
        stretch = math.exp(rng.uniform(math.log(min_stretch_days * DAY_MS), math.log(span_ms)))
        start = rng.uniform(0.0, span_ms - stretch)
        lengths = []
        while sum(lengths) < n:
            lengths.append(int(rng.geometric(1.0 / visit_events)))
        lengths[-1] -= sum(lengths) - n
        starts = np.sort(start + rng.random(len(lengths)) * stretch)
        had: set[int] = set()
        done = 0
        global_cache: dict[int, np.ndarray] = {}
        for length, t in zip(lengths, starts.tolist()):
            focus = second[u] if rng.random() < done / n else first[u]
            if rng.random() < explore_p:
                focus = int(rng.integers(clusters))
            rapid = rng.random() < rapid_visit_p
            pool = by_genre[focus]
            cdf_focus = np.cumsum(weights(pool, t))
            day = int(t // DAY_MS)
            if day not in global_cache:
                global_cache[day] = np.cumsum(weights(everything, t))
            cdf_all = global_cache[day]
            for e in range(length):
                if e:
                    if rapid:
                        t += rng.uniform(0.0, 2_000.0)
                    elif rng.random() < long_gap_p:
                        t += math.exp(rng.uniform(math.log(120_000.0), math.log(1_800_000.0)))
                    else:
                        t += min(rng.exponential(short_gap_s * 1000.0), 59_000.0)
                in_focus = rng.random() < focus_p and cdf_focus[-1] > 0
                cand_pool, cdf = (pool, cdf_focus) if in_focus else (everything, cdf_all)
                item = -1
                for _ in range(8):  # an item the user has not rated, by weight
                    at = int(np.searchsorted(cdf, rng.random() * cdf[-1], side="right"))
                    pick = int(cand_pool[min(at, len(cand_pool) - 1)])
                    if pick not in had:
                        item = pick
                        break
                if item < 0:  # a heavy user who had most of it: the heaviest unrated item anywhere
                    free = np.diff(cdf_all, prepend=0.0)
                    free[list(had)] = 0.0
                    item = int(np.argmax(free)) if free.max() > 0 else int(rng.integers(items))
                    if item in had:
                        continue
                had.add(item)
                if in_focus:
                    rating = float(rng.choice([3, 4, 5], p=[0.2, 0.4, 0.4]))
                else:
                    rating = float(rng.choice([1, 2, 3, 4, 5], p=[0.1, 0.2, 0.35, 0.25, 0.1]))
                out.append((int(T0_MS + t), u, item, rating))
                done += 1
    out.sort(key=lambda r: (r[0], r[1]))
    return [{"event_id": f"b{n}", "user_id": f"bu{u}", "item_id": f"bi{i}", "event_type": "rating",
             "rating": r, "ts": ts} for n, (ts, u, i, r) in enumerate(out)]


def shape(events: list[dict], window: int = 256, gap_s: float = 60.0) -> dict:
    """The figures the issue describes a stream by (``events`` in stream order, ``ts`` in ms):
    events, distinct items and users, years from the first to the last event, the share of events
    within ``gap_s`` of the same user's previous event (over all events: a user's first never
    is), the mean number of distinct users per ``window`` consecutive events (non-overlapping
    windows; a shorter last one left out), the heaviest user's share of the events, and the share
    of items with at most 2 events (the tail).

    >>> ev = [{"user_id": u, "item_id": i, "ts": t} for u, i, t in
    ...       [("a", "x", 0), ("a", "y", 30_000), ("b", "x", 40_000), ("a", "z", 200_000)]]
    >>> s = shape(ev, window=2)
    >>> s["within_gap_share"], s["distinct_users_per_window"], s["heaviest_user_share"]
    (0.25, 1.5, 0.75)
    >>> s["items"], s["users"], s["items_with_at_most_2_events"]
    (3, 2, 1.0)
    """
    last: dict[str, int] = {}
    within = 0
    for e in events:
        prev = last.get(e["user_id"])
        within += prev is not None and e["ts"] - prev <= gap_s * 1000
        last[e["user_id"]] = e["ts"]
    windows = [len({e["user_id"] for e in events[lo:lo + window]})
               for lo in range(0, len(events) - window + 1, window)]
    per_user = Counter(e["user_id"] for e in events)
    per_item = Counter(e["item_id"] for e in events)
    return {"events": len(events), "items": len(per_item), "users": len(per_user),
            "years": round((events[-1]["ts"] - events[0]["ts"]) / YEAR_MS, 2) if events else 0.0,
            "within_gap_share": round(within / len(events), 4) if events else None,
            "distinct_users_per_window": round(sum(windows) / len(windows), 2) if windows else None,
            "heaviest_user_share": round(max(per_user.values()) / len(events), 4) if events else None,
            "items_with_at_most_2_events": round(sum(c <= 2 for c in per_item.values()) / len(per_item), 4)
            if per_item else None}


def main(argv: list[str] | None = None) -> int:
    from streamrec.bench.synthetic import quality
    from streamrec.core.config import load_config

    argv = sys.argv[1:] if argv is None else argv
    events = bursty_stream(int(argv[0]) if argv else 100_000)
    for key, value in shape(events).items():
        print(f"{key}: {value}")
    cfg = load_config()
    weights = cfg.ingest.weights
    clean = [dict(e, weight=weights.rating_base + weights.rating_scale * e["rating"], src_partition=0,
                  src_offset=n) for n, e in enumerate(events)]
    for key, value in quality(cfg, clean).items():
        print(f"{key}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
