"""The service's materialised view: every user's newest recommendation list and latest vector,
in a few flat numpy arrays (plain Python: no Kafka, no HTTP; docs/serving.md, "The store").

A user is a row (its *uid*, interned once): ``dict[str, int]`` maps the id to the row, and each
field is one column array over all rows, grown by half when full. Item ids, model versions and
strategies are interned too, so a list is ``width`` int32 item codes plus ``width`` float64 scores
(the topic's scores are doubles rounded to 6 decimals: float64 gives them back exactly, NaN stands
for a null score) and a fixed header. Nothing per user is a Python object but its id and its row.

>>> store = ServingStore(width=3, dim=2)
>>> store.apply_recommendation({"user_id": "u1", "items": [{"item_id": "a", "score": 0.5},
...     {"item_id": "b", "score": None}], "model_version": "live", "strategy": "model",
...     "cold_start": False, "user_events": 4, "event_ts": 10, "emitted_ts": 20})
True
>>> store.lookup("u1", 1)["items"]
[{'item_id': 'a', 'score': 0.5}]
>>> store.apply_recommendation({"user_id": "u1", "items": [], "model_version": "live",
...     "strategy": "none", "cold_start": True, "user_events": 5, "event_ts": 11, "emitted_ts": 21})
False
>>> store.lookup("u1", 10)["user_events"], store.popular_by_recommendations(5)
(4, ['a', 'b'])
"""

from __future__ import annotations

import math
import threading
from typing import Any, Iterable, Sequence

import numpy as np

#: A record with this strategy has no items: it never replaces a user's list.
NO_ITEMS = "none"
#: ``vector_ts`` of a user whose changelog record had a null ``ts``.
NO_TS = np.iinfo(np.int64).min


class Interner:
    """Strings <-> dense int codes, in first-seen order.

    >>> names = Interner(["a"])
    >>> names.code("b"), names.code("a"), names.get("c"), names.names
    (1, 0, None, ['a', 'b'])
    """

    def __init__(self, names: Iterable[str] = ()) -> None:
        self.names: list[str] = []
        self.codes: dict[str, int] = {}
        for name in names:
            self.code(name)

    def code(self, name: str) -> int:
        code = self.codes.get(name)
        if code is None:
            code = self.codes[name] = len(self.names)
            self.names.append(name)
        return code

    def get(self, name: str) -> int | None:
        return self.codes.get(name)

    def __len__(self) -> int:
        return len(self.names)


#: The per-user columns: name -> (dtype, per-row shape as a function of (width, dim)).
COLUMNS: dict[str, tuple[Any, Any]] = {
    "list_len": (np.uint16, lambda w, d: ()),        # 0: no list yet
    "list_items": (np.int32, lambda w, d: (w,)),     # item codes
    "list_scores": (np.float64, lambda w, d: (w,)),  # NaN: null score
    "list_version": (np.uint32, lambda w, d: ()),    # model version code
    "list_strategy": (np.uint8, lambda w, d: ()),    # strategy code
    "cold_start": (np.bool_, lambda w, d: ()),
    "user_events": (np.int64, lambda w, d: ()),
    "event_ts": (np.int64, lambda w, d: ()),
    "emitted_ts": (np.int64, lambda w, d: ()),
    "has_vector": (np.bool_, lambda w, d: ()),
    "vector": (np.float32, lambda w, d: (d,)),
    "vector_ts": (np.int64, lambda w, d: ()),
}


class ServingStore:
    """Users' newest non-``none`` recommendation lists and latest vectors, and the topic offsets
    they reflect (``offsets[topic][partition]`` = the next offset to read). ``lock`` guards every
    read and write; a writer may hold it around a whole batch."""

    def __init__(self, width: int, dim: int, capacity: int = 1024) -> None:
        if width < 1 or dim < 1:
            raise ValueError("width and dim must be >= 1")
        self.width, self.dim = int(width), int(dim)
        self.lock = threading.RLock()
        self._reset(capacity)

    def clear(self) -> None:
        """Forget every user and offset (the topics are then read again from the beginning)."""
        with self.lock:
            self._reset(1024)

    def _reset(self, capacity: int) -> None:
        self.users = Interner()
        self.items = Interner()
        self.versions = Interner()
        self.strategies = Interner()
        self.columns: dict[str, np.ndarray] = {}
        self.capacity = 0
        self._allocate(max(16, int(capacity)))
        #: How many current lists hold each item (the stream's own popularity).
        self.item_counts = np.zeros(64, np.int64)
        self.offsets: dict[str, dict[int, int]] = {}
        self.lists = 0
        self.vectors = 0

    # -- rows ----------------------------------------------------------------------------------
    def _allocate(self, capacity: int) -> None:
        grown = {}
        for name, (dtype, shape) in COLUMNS.items():
            column = np.zeros((capacity, *shape(self.width, self.dim)), dtype)
            old = self.columns.get(name)
            if old is not None:
                column[: len(old)] = old
            grown[name] = column
        self.columns = grown
        self.capacity = capacity

    def _row(self, user_id: str) -> int:
        uid = self.users.code(user_id)
        if uid >= self.capacity:
            self._allocate(self.capacity + self.capacity // 2)
        return uid

    def _widen(self, width: int) -> None:
        """Lists longer than the store's width (a larger ``scoring.top_k``): widen every list."""
        for name, fill in (("list_items", 0), ("list_scores", np.nan)):
            old = self.columns[name]
            wide = np.full((self.capacity, width), fill, old.dtype)
            wide[:, : self.width] = old
            self.columns[name] = wide
        self.width = width

    def _count_items(self, codes: np.ndarray, step: int) -> None:
        if len(codes) and codes.max() >= len(self.item_counts):
            counts = np.zeros(max(int(codes.max()) + 1, 2 * len(self.item_counts)), np.int64)
            counts[: len(self.item_counts)] = self.item_counts
            self.item_counts = counts
        np.add.at(self.item_counts, codes, step)

    # -- writes --------------------------------------------------------------------------------
    def advance(self, topic: str, partition: int, next_offset: int) -> None:
        """Record that ``topic``'s ``partition`` has been read up to ``next_offset`` (exclusive)."""
        with self.lock:
            self.offsets.setdefault(topic, {})[partition] = next_offset

    def apply_recommendation(self, rec: dict) -> bool:
        """Make ``rec`` (a decoded ``core.records.RECOMMENDATION``) its user's list, unless it has
        no items (``none``); returns whether it did."""
        entries = rec["items"]
        if rec["strategy"] == NO_ITEMS or not entries:
            return False
        n = len(entries)
        with self.lock:
            if n > self.width:
                self._widen(n)
            row = self._row(rec["user_id"])
            c = self.columns
            had = int(c["list_len"][row])
            if had:
                self._count_items(c["list_items"][row, :had], -1)
            else:
                self.lists += 1
            codes = np.fromiter((self.items.code(e["item_id"]) for e in entries), np.int32, n)
            c["list_items"][row, :n] = codes
            c["list_scores"][row, :n] = [math.nan if e["score"] is None else e["score"] for e in entries]
            c["list_len"][row] = n
            c["list_version"][row] = self.versions.code(rec["model_version"])
            c["list_strategy"][row] = self.strategies.code(rec["strategy"])
            c["cold_start"][row] = rec["cold_start"]
            c["user_events"][row] = rec["user_events"]
            c["event_ts"][row] = rec["event_ts"]
            c["emitted_ts"][row] = rec["emitted_ts"]
            self._count_items(codes, 1)
        return True

    def apply_user_vector(self, user_id: str, vector: Sequence[float] | None, ts: int | None = None) -> bool:
        """The user's latest vector (``None``: a tombstone deletes it); a vector of another
        dimension is refused (False)."""
        with self.lock:
            if vector is None:
                uid = self.users.get(user_id)
                if uid is not None and self.columns["has_vector"][uid]:
                    self.columns["has_vector"][uid] = False
                    self.vectors -= 1
                return True
            if len(vector) != self.dim:
                return False
            row = self._row(user_id)
            c = self.columns
            c["vector"][row] = vector
            c["vector_ts"][row] = NO_TS if ts is None else ts
            if not c["has_vector"][row]:
                c["has_vector"][row] = True
                self.vectors += 1
        return True

    # -- reads ---------------------------------------------------------------------------------
    def lookup(self, user_id: str, k: int) -> dict | None:
        """The user's newest list (at most ``k`` items) and its header, or None for a user
        without one."""
        with self.lock:
            uid = self.users.get(user_id)
            if uid is None:
                return None
            c = self.columns
            n = min(int(c["list_len"][uid]), k)
            if not c["list_len"][uid]:
                return None
            codes = c["list_items"][uid, :n].tolist()
            scores = c["list_scores"][uid, :n].tolist()
            names = self.items.names
            return {
                "user_id": user_id,
                "items": [{"item_id": names[i], "score": None if s != s else s} for i, s in zip(codes, scores)],
                "model_version": self.versions.names[int(c["list_version"][uid])],
                "strategy": self.strategies.names[int(c["list_strategy"][uid])],
                "cold_start": bool(c["cold_start"][uid]),
                "user_events": int(c["user_events"][uid]),
                "event_ts": int(c["event_ts"][uid]),
                "emitted_ts": int(c["emitted_ts"][uid]),
            }

    def vector(self, user_id: str) -> np.ndarray | None:
        """A copy of the user's latest vector, or None."""
        with self.lock:
            uid = self.users.get(user_id)
            if uid is None or not self.columns["has_vector"][uid]:
                return None
            return self.columns["vector"][uid].copy()

    def popular_by_recommendations(self, k: int) -> list[str]:
        """The ``k`` items in the most current lists (ties: first seen first)."""
        with self.lock:
            counts = self.item_counts[: len(self.items)]
            order = np.argsort(-counts, kind="stable")[:k]
            return [self.items.names[i] for i in order.tolist() if counts[i] > 0]

    def nbytes(self) -> int:
        """The arrays' bytes for the rows in use (the interned ids and their dict come on top)."""
        rows = len(self.users)
        return sum(column[:rows].nbytes for column in self.columns.values())
