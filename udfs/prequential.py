"""Prequential ("test-then-train") evaluation of streaming recommenders.

For every event, in stream order: ask the model for the user's top-``k`` (items the user has
already interacted with excluded), record whether and where the event's item appears, then let
the model learn the event. With one relevant item per event:

* recall@k of an event = 1 if the item is in the top-k else 0 (equals hit rate);
* NDCG@k of an event   = 1 / log2(rank + 2) for a hit at 0-based ``rank``, else 0.

Re-consumptions (the user already had the item) cannot be hits when seen items are excluded;
they are learned but not evaluated.

Any model with ``recommend(user, k, exclude_seen=..., exclude=...)`` and
``learn_one(user, item, weight, event_id)`` works (:class:`udfs.online_mf.OnlineMF`,
:class:`udfs.popularity.Popularity`). The pipeline's evaluator can use :class:`PrequentialMetrics`
with :func:`hit_rank` directly.

>>> from udfs.popularity import Popularity
>>> stream = [("a", "x"), ("b", "x"), ("c", "x"), ("c", "y"), ("d", "y")]
>>> res = prequential(Popularity(), stream, k=1)
>>> res.ranks.tolist()
[-1, 0, 0, -1, -1]
>>> res.events, res.hits, round(res.recall, 2)
(5, 2, 0.4)
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import numpy as np


def hit_rank(recommended: Sequence[str], item: str) -> int:
    """0-based position of ``item`` in ``recommended``, -1 if absent.

    >>> hit_rank(["a", "b", "c"], "c"), hit_rank(["a"], "z")
    (2, -1)
    """
    for n, rec in enumerate(recommended):
        if rec == item:
            return n
    return -1


def ndcg_of_rank(rank: int) -> float:
    """NDCG of a single relevant item found at 0-based ``rank`` (-1 = missed).

    >>> ndcg_of_rank(0), round(ndcg_of_rank(1), 4), ndcg_of_rank(-1)
    (1.0, 0.6309, 0.0)
    """
    return 0.0 if rank < 0 else 1.0 / math.log2(rank + 2)


@dataclass
class PrequentialMetrics:
    """Running recall@k / NDCG@k over evaluated events (also used by the pipeline evaluator).

    >>> m = PrequentialMetrics(k=10)
    >>> for r in (0, -1, 1, -1):
    ...     m.add(r)
    >>> m.events, m.hits, m.recall, round(m.ndcg, 4)
    (4, 2, 0.5, 0.4077)
    """

    k: int
    ranks: list[int] = field(default_factory=list)

    def add(self, rank: int) -> None:
        if rank >= self.k:
            rank = -1
        self.ranks.append(int(rank))

    @property
    def events(self) -> int:
        return len(self.ranks)

    @property
    def hits(self) -> int:
        return sum(1 for r in self.ranks if r >= 0)

    @property
    def recall(self) -> float:
        return self.hits / self.events if self.ranks else 0.0

    @property
    def ndcg(self) -> float:
        return sum(ndcg_of_rank(r) for r in self.ranks) / self.events if self.ranks else 0.0


@dataclass
class PrequentialResult:
    """Outcome of :func:`prequential`: one rank per evaluated event (-1 = miss)."""

    k: int
    ranks: np.ndarray
    seconds: float = 0.0
    learned: int = 0  #: events learned (evaluated ones plus re-consumptions)

    @property
    def events(self) -> int:
        return int(len(self.ranks))

    @property
    def hits(self) -> int:
        return int((self.ranks >= 0).sum())

    @property
    def recall(self) -> float:
        return self.hits / self.events if self.events else 0.0

    @property
    def ndcg(self) -> float:
        if not self.events:
            return 0.0
        hit = self.ranks[self.ranks >= 0]
        return float((1.0 / np.log2(hit + 2.0)).sum() / self.events)

    def tail(self, n: int) -> "PrequentialResult":
        """The same metrics over the last ``n`` evaluated events."""
        return PrequentialResult(self.k, self.ranks[max(0, self.events - n) :], self.seconds)


def _unpack(event: Any) -> tuple[str, str, float, str | None]:
    user, item = str(event[0]), str(event[1])
    weight = float(event[2]) if len(event) > 2 else 1.0
    event_id = str(event[3]) if len(event) > 3 else None
    return user, item, weight, event_id


def prequential(
    model: Any,
    stream: Iterable[Sequence[Any]],
    k: int = 10,
    exclude_seen: bool = True,
) -> PrequentialResult:
    """Test-then-train over ``stream`` of ``(user, item[, weight[, event_id]])`` tuples.

    Seen items are tracked here (complete history, not the model's bounded recent list) and
    passed to the model as ``exclude``, so every model is judged on the same candidate set.
    """
    seen: dict[str, set[str]] = {}
    ranks: list[int] = []
    learned = 0
    start = time.perf_counter()
    for event in stream:
        user, item, weight, event_id = _unpack(event)
        history = seen.setdefault(user, set())
        if not (exclude_seen and item in history):
            recs = model.recommend(
                user, k, exclude_seen=False, exclude=history if exclude_seen else None
            )
            rank = hit_rank(recs[:k], item)
            ranks.append(rank)
        model.learn_one(user, item, weight, event_id)
        history.add(item)
        learned += 1
    return PrequentialResult(
        k, np.asarray(ranks, dtype=np.int64), time.perf_counter() - start, learned
    )
