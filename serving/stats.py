"""The dashboard's rolling statistics of `streamrec serve`, computed from what the service reads;
plain Python, no Kafka (serving/dashboard.py feeds it and serves :meth:`ServeStats.to_json`).

Fed with:

- every batch of ``recommendations`` records the reader applied (:meth:`ServeStats.offer`: one
  deque append per batch on the reader's thread; the rest runs on the dashboard's own thread,
  :meth:`ServeStats.drain`);
- every clean event (:meth:`ServeStats.event`: ``events.clean``'s ``event_id``, ``user_id``,
  ``item_id``), which the recommendation records do not carry;
- once a second, :meth:`ServeStats.tick` closes a time bucket (the lags and versions sampled then).

Per bucket (1 s, the last ``history_s`` kept): recommendation records applied per second (one per
event), clean events read per second, the read_committed latency of the records applied in it
(the batch's apply time minus the record's ``emitted_ts``: p50 and p99, nearest rank, exact), the
records by ``strategy``, the version the stream's newest record names and the version this process
scores with, the lags, and the rolling recall below.

**Prequential recall@K**, on exactly the same events for both sides: event n of user u (item i) is
a *hit* of the served lists if i is in the first K items of u's previous record with items (the
list the service was answering with for u just before event n); it is a hit of the **popularity
baseline** if i is in the top K of the items' exponentially decayed counts over the clean events
before it (half-life ``half_life`` events), less the user's last ``exclude_recent`` distinct
items (the served lists exclude the learner's recent items likewise). An event is evaluated when
u had a previous list; a record and its clean event are joined on ``source_event_id`` =
``event_id``, in whichever order they arrive. The rolling recall is over the last
``recall_window`` evaluated events. ``user_share`` < 1 evaluates a hash sample of the users only
(the popularity counts still see every event).

Memory is bounded: per-user state (previous list, recent items) for at most ``max_users`` users
(least recently active evicted first: their next event is not evaluated), at most ``max_pending``
unjoined records or events each (oldest dropped, counted in ``unmatched``), the popularity counts
pruned of items decayed below 2^-40 of a new event's weight, at most ``max_queued_batches``
batches offered and not yet drained (beyond, the oldest is dropped and the previous lists are
forgotten: no event is evaluated against a list that may be stale).

>>> s = ServeStats(k=2, half_life=math.inf, exclude_recent=0)  # plain counts
>>> def rec(n, user, items, strategy="model"):
...     return {"user_id": user, "items": [{"item_id": i, "score": 1.0} for i in items],
...             "model_version": "live+v000001", "strategy": strategy, "source_event_id": f"e{n}",
...             "emitted_ts": 1_000}
>>> events = [("u", "a", ["b", "c"]), ("u", "b", ["c", "d"]), ("u", "x", ["c", "a"]),
...           ("u", "a", ["a", "d"]), ("u", "c", ["d", "b"]), ("u", "e", [])]
>>> for n, (user, item, items) in enumerate(events):
...     s.event(f"e{n}", user, item)
...     s.offer([rec(n, user, items, "model" if items else "none")], visible_ms=1_050)
>>> s.drain()
>>> s.tick(now_s=10.0)
>>> t = s.totals()
>>> (t["evaluated"], t["hits_served"], t["hits_popularity"])
(5, 2, 1)
>>> s.rolling_recall()
(0.4, 0.2)
>>> t["by_strategy"], s.to_json()["series"]["latency_p99_ms"]
({'model': 5, 'popularity': 0, 'none': 1}, [50])
"""

from __future__ import annotations

import math
import threading
import time
from collections import Counter, OrderedDict, deque
from operator import itemgetter
from typing import Any, Iterable

import numpy as np

from streamrec.model.registry import version_number
from streamrec.udfs.shard_model import MODEL, NONE, POPULARITY

#: The strategies a recommendation record names (anything else is counted as "other").
STRATEGIES = (MODEL, POPULARITY, NONE)
#: A rescale of the popularity counts every 64 half-lives (unit 2^64), pruning items below 2^-40.
_RESCALE_AT = 2.0 ** 64
_PRUNE_BELOW = 2.0 ** -40


def plotted_version(name: str | None) -> int | None:
    """A ``model_version``'s number on the versions chart: the registry version it names
    (``live`` alone: 0; None: None).

    >>> plotted_version("v000012"), plotted_version("live+v000003"), plotted_version("live"), plotted_version(None)
    (12, 3, 0, None)
    """
    if name is None:
        return None
    version = name.rpartition("+")[2]
    if version == "live":
        return 0
    try:
        return version_number(version)
    except ValueError:  # not a version name: nothing to plot
        return None


def percentile(ordered: list, q: float):
    """Nearest-rank percentile of a sorted, non-empty list.

    >>> percentile([10, 20, 30, 40], 0.5), percentile([10, 20, 30, 40], 0.99), percentile([7], 0.99)
    (20, 40, 7)
    """
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


class DecayedPopularity:
    """The top ``m`` items by exponentially decayed counts, kept exact incrementally: an event's
    weight grows by 2^(1/half_life) per event instead of every count decaying, so an event changes
    only its own item's rank.

    >>> p = DecayedPopularity(m=2, half_life=1.0)
    >>> for item in "aab":
    ...     p.learn(item)
    >>> p.top  # a: 1 + 2 = 3, b: 4
    ['b', 'a']
    >>> p.learn("c"); p.top  # c: 8
    ['c', 'b']
    """

    def __init__(self, m: int, half_life: float) -> None:
        self.m = m
        self.growth = 2.0 ** (1.0 / half_life)
        self.unit = 1.0
        self.counts: dict[str, float] = {}
        self.top: list[str] = []
        self._in_top: set[str] = set()

    def learn(self, item: str) -> None:
        counts, top = self.counts, self.top
        count = counts.get(item, 0.0) + self.unit
        counts[item] = count
        self.unit *= self.growth
        if item in self._in_top:
            i = top.index(item)
        elif len(top) < self.m:
            top.append(item)
            self._in_top.add(item)
            i = len(top) - 1
        elif count > counts[top[-1]]:
            self._in_top.discard(top[-1])
            top[-1] = item
            self._in_top.add(item)
            i = len(top) - 1
        else:
            i = 0
        while i > 0 and counts[top[i - 1]] < count:  # ties keep the earlier item first
            top[i - 1], top[i] = item, top[i - 1]
            i -= 1
        if self.unit > _RESCALE_AT:
            self._rescale()

    def _rescale(self) -> None:
        scale, floor = 1.0 / self.unit, _PRUNE_BELOW
        self.counts = {i: c * scale for i, c in self.counts.items() if c * scale >= floor or i in self._in_top}
        self.unit = 1.0


class Freshness:
    """How long each recommendation took from the learner's emit (``emitted_ts``) to being
    answerable here (applied to the store, after the read_committed wait for its checkpoint):
    counts per bucket of :data:`BOUNDS_MS`, every record counted (the reader's thread calls
    :meth:`observe` once per batch; a scrape reads :meth:`cumulative`).

    >>> f = Freshness()
    >>> f.observe(10_000, [9_990, 9_700, 9_000, 3_000])
    >>> f.total, f.sum_ms
    (4, 8310)
    >>> [(bound, n) for bound, n in f.cumulative() if bound in (0.05, 0.3, 1.0, 7.5, math.inf)]
    [(0.05, 1), (0.3, 2), (1.0, 3), (7.5, 4), (inf, 4)]
    >>> f.quantile_ms(0.5, f.counts)  # rank 2 of 4: the top of (250, 300], the second record's bucket
    300.0
    >>> f.quantile_ms(0.99, f.counts) > 5_000, Freshness.quantile_ms(0.5, [0] * 26)
    (True, None)
    """

    #: Bucket upper bounds in ms (the last bucket is everything above the last bound).
    BOUNDS_MS = (50, 100, 150, 200, 250, 300, 400, 500, 600, 700, 800, 900, 1_000, 1_250, 1_500, 1_750,
                 2_000, 2_500, 3_000, 4_000, 5_000, 7_500, 10_000, 30_000, 60_000)

    def __init__(self) -> None:
        self._bounds = np.asarray(self.BOUNDS_MS, dtype=np.int64)
        self.counts = np.zeros(len(self.BOUNDS_MS) + 1, dtype=np.int64)
        self.sum_ms = 0
        self.total = 0

    def observe(self, visible_ms: int, emitted_ms: Iterable[int]) -> None:
        age = visible_ms - np.fromiter(emitted_ms, dtype=np.int64)
        if not len(age):
            return
        # one array add: a scrape reading mid-update sees counts a batch behind, never torn ones
        self.counts += np.bincount(np.searchsorted(self._bounds, age, side="left"), minlength=len(self.counts))
        self.sum_ms += int(age.sum())
        self.total += len(age)

    def cumulative(self) -> list[tuple[float, int]]:
        """(upper bound in seconds, records at or below it), ``inf`` last: Prometheus' buckets."""
        running = np.cumsum(self.counts)
        return [(b / 1000, int(n)) for b, n in zip(self.BOUNDS_MS, running)] + [(math.inf, int(running[-1]))]

    @classmethod
    def quantile_ms(cls, q: float, counts) -> float | None:
        """The ``q`` quantile of bucket ``counts`` (e.g. the difference of two snapshots of
        :attr:`counts`), interpolated linearly inside its bucket (as PromQL's histogram_quantile);
        None without records; the last bound if it lies above it."""
        counts = np.asarray(counts)
        total = int(counts.sum())
        if total == 0:
            return None
        rank, running = q * total, np.cumsum(counts)
        i = int(np.searchsorted(running, rank, side="left"))
        if i >= len(cls.BOUNDS_MS):
            return float(cls.BOUNDS_MS[-1])
        lower = 0 if i == 0 else cls.BOUNDS_MS[i - 1]
        below = 0 if i == 0 else int(running[i - 1])
        return float(lower + (cls.BOUNDS_MS[i] - lower) * (rank - below) / max(int(counts[i]), 1))


class ServeStats:
    def __init__(self, k: int = 10, history_s: int = 900, recall_window: int = 2000,
                 half_life: float = 5000.0, exclude_recent: int = 50, max_users: int = 20_000,
                 max_pending: int = 100_000, max_queued_batches: int = 64,
                 user_share: float = 1.0, clock=time.time) -> None:
        self.k, self.history_s, self.recall_window = k, history_s, recall_window
        self.exclude_recent, self.max_users, self.max_pending = exclude_recent, max_users, max_pending
        self.clock = clock
        #: The users whose events the recall evaluates: ``hash(user_id) % 1024`` below this (all
        #: by default; Python's string hash, the same for both sides within the process).
        self.user_share = user_share
        self._threshold = round(user_share * 1024)
        self.popularity = DecayedPopularity(k + exclude_recent, half_life)
        self.half_life = half_life
        # the reader's side: (apply time in ms, records), appended by the reader's thread
        self._queue: deque = deque(maxlen=max_queued_batches)
        self.dropped_batches = 0
        self._overflowed = False
        # per-user state (dashboard thread only)
        self._lists: OrderedDict[str, list[str]] = OrderedDict()
        self._recent: OrderedDict[str, dict[str, None]] = OrderedDict()
        # the join: event_id -> the served side (previous list or None) / the event side (popularity hit)
        self._served_side: OrderedDict[str, list[str] | None] = OrderedDict()
        self._event_side: OrderedDict[str, tuple[str, bool]] = OrderedDict()
        self._window: deque = deque()
        self._window_served = self._window_popularity = 0
        # running totals
        self.records = 0
        self.clean_events = 0
        self.by_strategy = dict.fromkeys(STRATEGIES, 0)
        self.by_strategy_other = 0
        self.evaluated = self.hits_served = self.hits_popularity = 0
        self.without_list = 0  # events joined whose user had no previous list (not evaluated)
        self.unmatched = 0
        self.stream_version: str | None = None
        # the open bucket
        self._bucket = self._new_bucket()
        self._bucket_started = None
        # closed buckets: one deque per series, same length
        self._lock = threading.Lock()
        self.series: dict[str, deque] = {name: deque(maxlen=history_s) for name in SERIES}

    # -- fed by the reader's thread ------------------------------------------------------------------
    def offer(self, records: list[dict], visible_ms: int | None = None) -> None:
        """A batch of decoded recommendation records the reader just applied (visible from now)."""
        if len(self._queue) == self._queue.maxlen:  # the dashboard's thread is not keeping up
            self.dropped_batches += 1
            self._overflowed = True
        self._queue.append((int(self.clock() * 1000) if visible_ms is None else visible_ms, records))

    # -- the dashboard's thread ------------------------------------------------------------------------
    @staticmethod
    def _new_bucket() -> dict[str, Any]:
        return {"records": 0, "clean": 0, "latency": [], "strategy": Counter()}

    def drain(self) -> None:
        """Account every batch offered so far."""
        queue, k, threshold = self._queue, self.k, self._threshold
        bucket = self._bucket
        latency, strategy = bucket["latency"], bucket["strategy"]
        lists, served_side, event_side = self._lists, self._served_side, self._event_side
        max_users, max_pending, evaluate = self.max_users, self.max_pending, self._evaluate
        if self._overflowed:  # records were dropped: the previous lists known may be stale
            self._overflowed = False
            lists.clear()
            served_side.clear()
        while queue:
            visible_ms, records = queue.popleft()
            bucket["records"] += len(records)
            self.records += len(records)
            # per batch, in C: the emitted times (latency at tick) and the strategies counted
            latency.append((visible_ms, list(map(_EMITTED, records))))
            strategy.update(map(_STRATEGY, records))
            for rec in records:
                user = rec["user_id"]
                if threshold < 1024 and hash(user) & 1023 >= threshold:  # not in the users sampled
                    continue
                previous = lists.pop(user, None)
                items = rec["items"]
                if items:
                    lists[user] = list(map(_ITEM_ID, items if len(items) <= k else items[:k]))
                elif previous is not None:  # a record without items keeps the previous list
                    lists[user] = previous
                if previous is None and len(lists) > max_users:
                    lists.popitem(last=False)
                event_id = rec["source_event_id"]
                joined = event_side.pop(event_id, None)
                if joined is None:
                    served_side[event_id] = previous
                    if len(served_side) > max_pending:
                        served_side.popitem(last=False)
                        self.unmatched += 1
                else:
                    evaluate(previous, joined[0], joined[1])
            if records:
                self.stream_version = records[-1]["model_version"]

    def event(self, event_id: str, user: str, item: str) -> None:
        """One clean event (see :meth:`events`)."""
        self.events(((event_id, user, item),))

    def events(self, triples: Iterable[tuple[str, str, str]]) -> None:
        """Clean events ``(event_id, user_id, item_id)`` in the order they were read: each scored
        against the popularity counts before it (less the user's recent items), then learned, and
        joined with its record. (The popularity model's steps are written out here: this runs
        once per event.)"""
        pop = self.popularity
        counts, top, in_top, growth, m = pop.counts, pop.top, pop._in_top, pop.growth, pop.m
        k, exclude_recent, threshold = self.k, self.exclude_recent, self._threshold
        recent_of, served_side, event_side = self._recent, self._served_side, self._event_side
        max_users, max_pending, evaluate = self.max_users, self.max_pending, self._evaluate
        n, unit = 0, pop.unit
        for event_id, user, item in triples:
            n += 1
            sampled = hash(user) & 1023 < threshold
            if sampled:  # the popularity list's hit, before the event is learned
                recent = recent_of.get(user)
                if recent is None:
                    recent = recent_of[user] = {}
                    if len(recent_of) > max_users:
                        recent_of.popitem(last=False)
                else:
                    recent_of.move_to_end(user)
                hit = False  # in the top k less the recent items: in the top m, k ahead at most
                if item in in_top and item not in recent:
                    rank = top.index(item)
                    if rank >= k:
                        for candidate in top[:rank]:
                            if candidate in recent:
                                rank -= 1
                    hit = rank < k
            # learned (DecayedPopularity.learn)
            count = counts.get(item, 0.0) + unit
            counts[item] = count
            unit *= growth
            if item in in_top:
                i = top.index(item)
            elif len(top) < m:
                top.append(item)
                in_top.add(item)
                i = len(top) - 1
            elif count > counts[top[-1]]:
                in_top.discard(top[-1])
                top[-1] = item
                in_top.add(item)
                i = len(top) - 1
            else:
                i = 0
            while i > 0 and counts[top[i - 1]] < count:
                top[i - 1], top[i] = item, top[i - 1]
                i -= 1
            if unit > _RESCALE_AT:
                pop.unit = unit
                pop._rescale()
                counts, unit = pop.counts, pop.unit
            if not sampled:
                continue
            if exclude_recent:
                recent.pop(item, None)
                recent[item] = None
                if len(recent) > exclude_recent:
                    del recent[next(iter(recent))]
            served = served_side.pop(event_id, _MISSING)
            if served is _MISSING:
                event_side[event_id] = (item, hit)
                if len(event_side) > max_pending:
                    event_side.popitem(last=False)
                    self.unmatched += 1
            else:
                evaluate(served, item, hit)
        pop.unit = unit
        self.clean_events += n
        self._bucket["clean"] += n

    def _evaluate(self, previous: list[str] | None, item: str, popularity_hit: bool) -> None:
        """One event joined with its record: evaluated if the user had a previous list."""
        if previous is None:
            self.without_list += 1
            return
        served_hit = item in previous
        self.evaluated += 1
        self.hits_served += served_hit
        self.hits_popularity += popularity_hit
        window = self._window
        window.append((served_hit, popularity_hit))
        self._window_served += served_hit
        self._window_popularity += popularity_hit
        if len(window) > self.recall_window:
            old_served, old_popular = window.popleft()
            self._window_served -= old_served
            self._window_popularity -= old_popular

    def tick(self, now_s: float | None = None, lag_serve: int | None = None, lag_pipeline: int | None = None,
             serving_version: str | None = None) -> None:
        """Close the open bucket at ``now_s`` (seconds since the epoch) with the values sampled now."""
        self.drain()
        now_s = self.clock() if now_s is None else now_s
        bucket, self._bucket = self._bucket, self._new_bucket()
        elapsed = 1.0 if self._bucket_started is None else max(1e-3, now_s - self._bucket_started)
        self._bucket_started = now_s
        batches = [visible_ms - np.asarray(emitted, dtype=np.int64) for visible_ms, emitted in bucket["latency"]]
        latency = np.sort(np.concatenate(batches)) if batches else ()
        counted = bucket["strategy"]
        per_strategy = {name: counted.pop(name, 0) for name in STRATEGIES}
        for name in STRATEGIES:
            self.by_strategy[name] += per_strategy[name]
        self.by_strategy_other += sum(counted.values())
        served, popular = self.rolling_recall()
        row = {
            "t": int(now_s * 1000),
            "events_per_s": round(bucket["records"] / elapsed, 1),
            "clean_events_per_s": round(bucket["clean"] / elapsed, 1),
            "latency_p50_ms": int(percentile(latency, 0.5)) if len(latency) else None,
            "latency_p99_ms": int(percentile(latency, 0.99)) if len(latency) else None,
            **{f"strategy_{name}": round(per_strategy[name] / elapsed, 1) for name in STRATEGIES},
            "recall_served": None if served is None else round(served, 4),
            "recall_popularity": None if popular is None else round(popular, 4),
            "evaluated": self.evaluated,
            "lag_serve": lag_serve,
            "lag_pipeline": lag_pipeline,
            "version_serving": plotted_version(serving_version),
            "version_stream": plotted_version(self.stream_version),
        }
        with self._lock:
            for name, value in row.items():
                self.series[name].append(value)

    # -- what it knows -----------------------------------------------------------------------------------
    def rolling_recall(self) -> tuple[float | None, float | None]:
        """(served, popularity) recall over the last ``recall_window`` evaluated events."""
        n = len(self._window)
        if not n:
            return None, None
        return self._window_served / n, self._window_popularity / n

    def totals(self) -> dict[str, Any]:
        return {"records": self.records, "clean_events": self.clean_events,
                "by_strategy": dict(self.by_strategy), "other_strategy": self.by_strategy_other,
                "evaluated": self.evaluated, "hits_served": self.hits_served,
                "hits_popularity": self.hits_popularity, "without_list": self.without_list,
                "unmatched": self.unmatched, "pending": len(self._served_side) + len(self._event_side),
                "dropped_batches": self.dropped_batches, "users_tracked": len(self._lists)}

    def to_json(self) -> dict[str, Any]:
        with self._lock:
            series = {name: list(values) for name, values in self.series.items()}
        served, popular = self.rolling_recall()
        return {"k": self.k, "resolution_s": 1, "history_s": self.history_s,
                "recall_window": self.recall_window, "half_life_events": self.half_life,
                "exclude_recent": self.exclude_recent, "t": series.pop("t"), "series": series,
                "totals": self.totals(), "recall": {"served": served, "popularity": popular},
                "stream_version": self.stream_version}


_MISSING = object()
_EMITTED, _STRATEGY, _ITEM_ID = itemgetter("emitted_ts"), itemgetter("strategy"), itemgetter("item_id")
#: The series of a bucket, in the order /v1/stats lists them ("t": the bucket's end, epoch ms).
SERIES = ("t", "events_per_s", "clean_events_per_s", "latency_p50_ms", "latency_p99_ms",
          *(f"strategy_{name}" for name in STRATEGIES), "recall_served", "recall_popularity", "evaluated",
          "lag_serve", "lag_pipeline", "version_serving", "version_stream")
