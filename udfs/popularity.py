"""Popularity baseline with the estimator verbs of :class:`udfs.online_mf.OnlineMF`.

Three flavours, chosen by the constructor:

* all-time counts (default),
* ``window=N``: counts over the last ``N`` events only,
* ``half_life=H``: exponentially decayed counts, an event's weight halving every ``H`` events.

Ties are broken by item id, so the ranking is deterministic.

>>> pop = Popularity()
>>> for user, item in [("a", "x"), ("b", "x"), ("b", "y"), ("c", "z"), ("c", "y"), ("d", "y")]:
...     pop.learn_one(user, item)
>>> pop.recommend("new-user", k=2)
['y', 'x']
>>> pop.recommend("b", k=2)
['z']
>>> win = Popularity(window=2)
>>> for user, item in [("a", "x"), ("b", "x"), ("b", "y"), ("c", "z")]:
...     win.learn_one(user, item)
>>> win.recommend("new", k=3)
['y', 'z']
"""

from __future__ import annotations

from collections import deque
from typing import Iterable, Sequence

import numpy as np

from streamrec.udfs.base import Recommender

_RESCALE_AT = 1e200


class Popularity(Recommender):
    """Most-popular recommender (all-time, sliding window, or exponentially decayed counts)."""

    personalised = False  # the same list for everybody, less what the user had

    def __init__(self, window: int | None = None, half_life: float | None = None) -> None:
        if window is not None and half_life is not None:
            raise ValueError("give window or half_life, not both")
        if window is not None and window < 1:
            raise ValueError("window must be >= 1")
        if half_life is not None and half_life <= 0:
            raise ValueError("half_life must be > 0")
        self.window = window
        self.half_life = half_life
        self._growth = 1.0 if half_life is None else 2.0 ** (1.0 / half_life)
        self._unit = 1.0  # weight of an event learned now (grows instead of decaying the past)
        self._index: dict[str, int] = {}
        self._ids: list[str] = []
        self._counts = np.zeros(0, dtype=np.float64)
        self._recent: deque[tuple[int, float]] = deque()
        self.seen: dict[str, set[str]] = {}
        self.n_events = 0

    def _row(self, item: str) -> int:
        row = self._index.get(item)
        if row is None:
            row = len(self._ids)
            self._index[item] = row
            self._ids.append(item)
            if row >= len(self._counts):
                grown = np.zeros(max(16, 2 * len(self._counts)), dtype=np.float64)
                grown[: len(self._counts)] = self._counts
                self._counts = grown
        return row

    def learn_one(
        self, user: str, item: str, weight: float = 1.0, event_id: str | None = None
    ) -> None:
        user, item = str(user), str(item)
        row = self._row(item)
        w = float(weight) * self._unit
        self._counts[row] += w
        if self.window is not None:
            self._recent.append((row, w))
            if len(self._recent) > self.window:
                old_row, old_w = self._recent.popleft()
                self._counts[old_row] -= old_w
        if self.half_life is not None:
            self._unit *= self._growth
            if self._unit > _RESCALE_AT:
                self._counts /= self._unit
                self._unit = 1.0
        self.seen.setdefault(user, set()).add(item)
        self.n_events += 1

    def score(self, user: str, item_ids: Sequence[str]) -> np.ndarray:
        """Current (decayed / windowed) counts of ``item_ids``, relative to the newest event."""
        out = np.zeros(len(item_ids), dtype=np.float64)
        for n, item in enumerate(item_ids):
            row = self._index.get(str(item))
            if row is not None:
                out[n] = self._counts[row] / self._unit
        return out

    def recommend(
        self,
        user: str,
        k: int = 10,
        exclude_seen: bool = True,
        exclude: Iterable[str] | None = None,
    ) -> list[str]:
        n = len(self._ids)
        if n == 0 or k <= 0:
            return []
        scores = self._counts[:n].copy()
        banned = set()
        if exclude_seen:
            banned |= self.seen.get(str(user), set())
        if exclude is not None:
            banned |= set(exclude)
        rows = [self._index[i] for i in banned if i in self._index]
        scores[rows] = -np.inf
        # items that fell out of the window (zero up to float residue) are not recommended
        scores[scores <= 1e-9 * self._unit] = -np.inf
        k = min(k, int(np.isfinite(scores).sum()))
        if k <= 0:
            return []
        top = np.argpartition(-scores, k - 1)[:k] if k < n else np.arange(n)
        ids = self._ids
        top_list = sorted(top.tolist(), key=lambda r: (-scores[r], ids[r]))
        return [ids[r] for r in top_list]
