"""One learning-and-scoring shard: a micro-batch of events in, one recommendation per event out.

The pipeline's hot path (docs/hot-path.md). A shard owns its users' vectors, a full item table
and the scoring; Flink hands it one micro-batch per call (a processing-time window of the cleaned
events, aggregated in the JVM), so Python runs once per batch instead of several times per event.

Per batch, in stream order, every event is learned exactly as :class:`udfs.online_mf.OnlineMF`
learns it (:func:`~udfs.online_mf.user_step` against the item snapshot, then
:func:`~udfs.online_mf.item_step` on the live item states); the snapshot is refreshed from the
item states once per batch (``OnlineMF(snapshot_every≈batch)``; docs/learner.md: up to ~500
events of staleness cost no recall). The events' recommendations are then scored together, in
one onnxruntime call (:class:`model.scoring.LiveScorer`), each with its user's vector *after* its
own event and the item snapshot of the batch's start, so no recommendation can see an item update
of a later event. Every item the user ever had is excluded (:class:`udfs.seen_filter.SeenFilter`,
fixed memory per user).

Strategies (the record's ``strategy``): ``model`` once the user has ``cold_start_min_events``
learned events; ``popularity`` before (items by their in-stream popularity count, from the same
snapshot). A model list shorter than K (a young catalogue) is filled up with popular items (their
``score`` is null). While the catalogue is smaller than ``warmup_items`` the batch is processed
one event at a time (fresh snapshot each), so the first events of a stream get lists too; an
event whose user has had every known item gets no record at all, never an empty list
(``BatchResult.unservable`` counts them).

State is plain bytes, so the Flink operator stores it as it is: a user record per user
(:func:`encode_user` / :func:`decode_user`) and an item record per item
(:func:`udfs.online_mf.item_state_to_bytes`).

>>> from udfs.online_mf import LearnerParams
>>> shard = ShardModel(LearnerParams.of(None, dim=8, seed=1), ShardSettings(top_k=3, cold_start_min_events=1))
>>> events = [Event(f"e{n}", f"u{n % 4}", f"i{n * 7 % 23}", 1.0, 1_000 + n, 0, n) for n in range(40)]
>>> out = shard.process(events[:20], {}, now_ms=5)
>>> len(out.recommendations) + out.unservable, sorted(out.item_records)[:3]
(20, ['i0', 'i1', 'i10'])
>>> out2 = shard.process(events[20:], out.user_records, now_ms=6)
>>> rec = out2.recommendations[-1]
>>> rec["user_id"], rec["strategy"], len(rec["items"]), rec["source_offset"]
('u3', 'model', 3, 39)
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping, NamedTuple, Sequence

import numpy as np

from udfs import online_mf
from udfs.embeddings import init_item_state, init_user_state
from udfs.recommend import MODEL, POPULARITY
from udfs.seen_filter import SeenFilter, item_positions

__all__ = ["Event", "ShardSettings", "BatchResult", "ShardModel", "encode_user", "decode_user", "shard_of"]


class Event(NamedTuple):
    """One cleaned event, as the micro-batch carries it (``events.clean`` has the full record)."""

    event_id: str
    user_id: str
    item_id: str
    weight: float
    ts: int
    src_partition: int
    src_offset: int


@dataclass(frozen=True)
class ShardSettings:
    top_k: int = 10
    cold_start_min_events: int = 3
    seen_filter_bits: int = 32_768
    seen_filter_hashes: int = 4
    #: Below this many known items a batch is learned and scored one event at a time.
    warmup_items: int = 50
    #: A user's events beyond this many per minute of event time are scored but not learned.
    bot_events_per_minute: float = 120.0
    exclude_bots: bool = True


@dataclass
class UserRecord:
    state: online_mf.UserState
    seen: SeenFilter
    minute: int = -1  #: event-time minute of the bot-rate counter
    in_minute: int = 0


def encode_user(rec: UserRecord) -> bytes:
    """The user's keyed-state value (versioned parts: the UserState and SeenFilter formats)."""
    return pickle.dumps((1, online_mf.user_state_to_bytes(rec.state), rec.seen.to_bytes(), rec.minute,
                         rec.in_minute), protocol=5)


def decode_user(data: bytes) -> UserRecord:
    version, state, seen, minute, in_minute = pickle.loads(data)
    if version != 1:
        raise ValueError(f"unknown user record version {version}")
    return UserRecord(online_mf.user_state_from_bytes(state), SeenFilter.from_bytes(seen), minute, in_minute)


def shard_of(user_id: str, shards: int) -> int:
    """The shard of a user: the same function as the SQL that groups events into batches
    (``MOD(MOD(HASH_CODE(user_id), n) + n, n)`` with Java's ``String.hashCode``).

    >>> shard_of("u1", 4), shard_of("", 4), [shard_of("polygenelubricants", n) for n in (3, 7)]
    (0, 0, [1, 5])
    """
    h = 0
    for unit in _utf16_units(user_id):
        h = (31 * h + unit) & 0xFFFFFFFF
    return (h - (1 << 32) if h >= 1 << 31 else h) % shards


def _utf16_units(text: str) -> Iterable[int]:
    raw = text.encode("utf-16-le", errors="surrogatepass")
    return (raw[n] | raw[n + 1] << 8 for n in range(0, len(raw), 2))


@dataclass
class BatchResult:
    recommendations: list[dict] = field(default_factory=list)
    user_records: dict[str, bytes] = field(default_factory=dict)  #: changed users' state values
    item_records: dict[str, bytes] = field(default_factory=dict)  #: changed items' state values
    changed_items: set[str] = field(default_factory=set)
    changed_users: set[str] = field(default_factory=set)
    learned: int = 0
    bot_events: int = 0
    unservable: int = 0  #: events whose user had every known item (no record is published)


@dataclass
class _Pending:
    event: Event
    vector: np.ndarray
    seen: SeenFilter
    events: int


class ShardModel:
    """The shard's learner and scorer; the Flink operator keeps its state, this object its cache."""

    def __init__(self, params: online_mf.LearnerParams, settings: ShardSettings = ShardSettings(),
                 scorer=None) -> None:
        self.params = params
        self.settings = settings
        self.items: dict[str, online_mf.ItemState] = {}
        self.snapshot = online_mf.ItemSnapshot.empty(params.dim)
        self._position_cache: dict[str, np.ndarray] = {}
        self.live = Catalogue("live", [], np.zeros((0, settings.seen_filter_hashes), dtype=np.int64),
                              np.zeros(0), lambda users, fetch: (np.zeros((len(users), 0)), np.zeros((len(users), 0), int)))
        #: A registry version to serve instead of the live table (``scoring.serve = registry``).
        self.serving: Catalogue | None = None
        if scorer is None:
            from model.scoring import LiveScorer

            scorer = LiveScorer(params.dim)
        self.scorer = scorer

    # state ----------------------------------------------------------------------------------
    def restore_items(self, records: Iterable[tuple[str, bytes]]) -> int:
        """Load the item table from keyed state (after a start or a restore)."""
        for item_id, raw in records:
            self.items[item_id] = online_mf.item_state_from_bytes(raw)
        self._refresh(self.items.keys())
        return len(self.items)

    def _user(self, user_id: str, records: Mapping[str, bytes | None], cache: dict[str, UserRecord]):
        rec = cache.get(user_id)
        if rec is None:
            raw = records.get(user_id)
            s = self.settings
            rec = decode_user(raw) if raw is not None else UserRecord(
                init_user_state(user_id, self.params), SeenFilter.empty(s.seen_filter_bits, s.seen_filter_hashes))
            cache[user_id] = rec
        return rec

    # the batch ------------------------------------------------------------------------------
    def process(self, events: Sequence[Event], user_records: Mapping[str, bytes | None],
                now_ms: int) -> BatchResult:
        """Learn ``events`` in order and return one recommendation per servable event, plus
        every changed user and item record (write them to keyed state before emitting)."""
        out = BatchResult()
        cache: dict[str, UserRecord] = {}
        start = 0
        while start < len(events) and len(self.snapshot) < self.settings.warmup_items:
            self._run(events[start:start + 1], user_records, cache, out, now_ms)  # a young catalogue
            start += 1
        if start < len(events):
            self._run(events[start:], user_records, cache, out, now_ms)
        for user_id in out.changed_users:
            out.user_records[user_id] = encode_user(cache[user_id])
        for item_id in out.changed_items:
            out.item_records[item_id] = online_mf.item_state_to_bytes(self.items[item_id])
        return out

    def _run(self, events: Sequence[Event], user_records, cache, out: BatchResult, now_ms: int) -> None:
        p, s = self.params, self.settings
        pending: list[_Pending] = []
        dirty: set[str] = set()
        for ev in events:
            rec = self._user(ev.user_id, user_records, cache)
            bucket = ev.ts // 60_000
            rec.in_minute = rec.in_minute + 1 if bucket == rec.minute else 1
            rec.minute = bucket
            if rec.in_minute > s.bot_events_per_minute and s.exclude_bots:
                out.bot_events += 1
            else:
                rec.state, updates = online_mf.user_step(rec.state, ev.item_id, ev.weight, ev.event_id,
                                                         self.snapshot, p)
                for upd in updates:
                    item = self.items.get(upd.item_id)
                    if item is None:
                        item = init_item_state(upd.item_id, p)
                    self.items[upd.item_id] = online_mf.item_step(item, upd, p)
                    dirty.add(upd.item_id)
                out.learned += 1
            rec.seen = rec.seen.add(ev.item_id)
            out.changed_users.add(ev.user_id)
            pending.append(_Pending(ev, rec.state.vector, rec.seen, rec.state.events))
        self._score(pending, out, now_ms)
        out.changed_items |= dirty
        self._refresh(dirty)

    def _refresh(self, items: Iterable[str]) -> None:
        """Copy changed item states into the snapshot and rebuild the live catalogue."""
        items = list(items)
        if not items:
            return
        self.snapshot._update_rows(items, self.items)
        snap = self.snapshot
        offsets = (snap.biases + np.float32(self.params.popularity_prior) * snap.log_pop).astype(np.float32)
        vectors = snap.vectors
        self.live = Catalogue("live", snap.ids, self._positions_of(snap.ids), snap.popularity,
                              lambda users, fetch: self.scorer.topk(users, vectors, offsets, fetch))

    def _positions_of(self, ids: list[str]) -> np.ndarray:
        s = self.settings
        missing = [i for i in ids if i not in self._position_cache]
        for item, pos in zip(missing, item_positions(missing, s.seen_filter_bits, s.seen_filter_hashes)):
            self._position_cache[item] = pos
        if not ids:
            return np.zeros((0, s.seen_filter_hashes), dtype=np.int64)
        return np.stack([self._position_cache[i] for i in ids])

    def registry_catalogue(self, model, popularity: np.ndarray) -> "Catalogue":
        """The catalogue of a registry version (a ``model.scoring.ScoringModel`` and its item
        table's popularity counts), for ``scoring.serve = registry``."""
        return Catalogue(model.version, list(model.item_ids), self._positions_of(list(model.item_ids)),
                         np.asarray(popularity, dtype=np.float64), model.raw_topk)

    def _score(self, pending: list[_Pending], out: BatchResult, now_ms: int) -> None:
        s = self.settings
        k = s.top_k
        if not pending:
            return
        serving = self.serving if self.serving is not None else self.live
        warm = [n for n, q in enumerate(pending) if q.events >= s.cold_start_min_events]
        lists: dict[int, list[dict]] = {}
        if warm and len(serving.ids):
            # Fetch enough candidates that K remain after dropping seen ones: grouped by the users'
            # history sizes, so one heavy user does not make the whole batch fetch thousands.
            groups: dict[int, list[int]] = {}
            for n in warm:
                groups.setdefault(min(len(serving.ids), k + _pow2(pending[n].seen.count)), []).append(n)
            for fetch, rows in groups.items():
                scores, indices = serving.topk(np.stack([pending[n].vector for n in rows]), fetch)
                for n, row_scores, row_idx in zip(rows, scores, indices):
                    keep = ~pending[n].seen.contains_positions(serving.positions[row_idx])
                    lists[n] = [{"item_id": serving.ids[i], "score": round(float(sc), 6)}
                                for i, sc in zip(row_idx[keep][:k].tolist(), row_scores[keep][:k].tolist())]
        for n, q in enumerate(pending):
            items = lists.get(n)
            strategy, version = (MODEL, serving.version) if items is not None else (POPULARITY, "live")
            if items is None or len(items) < k:
                items = (items or []) + self.live.popular(q.seen, k - len(items or []),
                                                          {it["item_id"] for it in items or []},
                                                          scored=items is None)
            if not items:
                out.unservable += 1
                continue
            ev = q.event
            out.recommendations.append({
                "user_id": ev.user_id, "items": items, "model_version": version, "strategy": strategy,
                "cold_start": strategy != MODEL, "user_events": q.events,
                "source_event_id": ev.event_id, "source_partition": ev.src_partition,
                "source_offset": ev.src_offset, "event_ts": ev.ts, "emitted_ts": now_ms,
                "batch_size": len(pending),
            })


@dataclass
class Catalogue:
    """What a batch is scored against: item ids by row, their seen-filter positions, popularity
    counts, and ``topk(users, fetch) -> (scores, rows)`` (onnxruntime)."""

    version: str
    ids: list[str]
    positions: np.ndarray
    popularity: np.ndarray
    topk: Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]]

    def __post_init__(self) -> None:
        self.order = np.lexsort((np.arange(len(self.ids)), -np.asarray(self.popularity, dtype=np.float64)))

    def popular(self, seen: SeenFilter, k: int, taken: set[str], scored: bool) -> list[dict]:
        """Up to ``k`` of the most popular items the user has not had; ``score`` is the popularity
        count for a popularity list, null when the items fill up a model list."""
        out: list[dict] = []
        if k <= 0:
            return out
        step = max(4 * k, 64)
        for lo in range(0, len(self.order), step):
            rows = self.order[lo:lo + step]
            for r in rows[~seen.contains_positions(self.positions[rows])].tolist():
                item = self.ids[r]
                if item in taken:
                    continue
                out.append({"item_id": item, "score": round(float(self.popularity[r]), 6) if scored else None})
                if len(out) == k:
                    return out
        return out


def _pow2(n: int) -> int:
    """The smallest power of two >= n (0 for 0): the over-fetch bucket of a history of n items."""
    return 0 if n <= 0 else 1 << (int(n) - 1).bit_length()
