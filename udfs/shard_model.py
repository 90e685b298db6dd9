"""One learning-and-scoring shard: a micro-batch of events in, one recommendation per event out.

The pipeline's hot path (docs/hot-path.md). A shard owns its users' vectors, a full item table
and the scoring; Flink hands it one micro-batch per call (a processing-time window of the cleaned
events, aggregated in the JVM), so Python runs once per batch instead of several times per event.

A batch is learned in one vectorised step (:func:`udfs.minibatch_mf.batch_step`: the model of
:class:`udfs.online_mf.OnlineMF`, gradients taken at the batch's start). The events'
recommendations are then scored together, in one onnxruntime call
(:class:`model.scoring.LiveScorer`), each with its user's vector *after* its own event and the
item table of the batch's start, so no recommendation can see an item update of a later event.
Every item the user ever had is excluded (:class:`udfs.seen_filter.SeenFilter`, fixed memory per
user, plus the exact items of the user's earlier events in the same batch).

Every event gets exactly one record, so a reader can account for each event by its
``source_partition`` / ``source_offset``. Strategies (the record's ``strategy``): ``model`` once
the user has ``cold_start_min_events`` learned events; ``popularity`` before (items by their
in-stream popularity count, from the same snapshot). A model list shorter than K (a young
catalogue) is filled up with popular items (their ``score`` is null). Every record's
``model_version`` names what served its batch: a registry version the learner chose to serve
(:attr:`ShardModel.serving`; its popularity counts then make the popularity lists, and the live
table fills up what it cannot), or the live table (:attr:`ShardModel.live_name`, e.g.
``live+v000012``; udfs/learner_core.py ``serving_decision``). While the catalogue is
smaller than ``warmup_items`` the batch is processed one event at a time (fresh snapshot each),
so the first events of a stream get lists too. An event whose user has had every known item (as
its seen filter says) gets a record with ``strategy`` ``none``, empty ``items`` and ``reason``
``user_had_every_item`` (``BatchResult.unservable`` counts them); ``reason`` is null on every
other record.

State is plain bytes, so the Flink operator stores it as it is: a user record per user
(:func:`encode_user` / :func:`decode_user`) and an item record per item
(:data:`udfs.minibatch_mf.ITEM_FORMAT`).

>>> from udfs.online_mf import LearnerParams
>>> shard = ShardModel(LearnerParams.of(None, dim=8, seed=1), ShardSettings(top_k=3, cold_start_min_events=1))
>>> events = [Event(f"e{n}", f"u{n % 4}", f"i{n * 7 % 23}", 1.0, 1_000 + n, 0, n) for n in range(40)]
>>> out = shard.process(events[:20], {}, now_ms=5)
>>> len(out.recommendations), sorted(out.item_records)[:3]
(20, ['i0', 'i1', 'i10'])
>>> first = out.recommendations[0]  # the stream's first event: no other item is known yet
>>> first["strategy"], first["items"], first["reason"], out.unservable
('none', [], 'user_had_every_item', 1)
>>> out2 = shard.process(events[20:], out.user_records, now_ms=6)
>>> rec = out2.recommendations[-1]
>>> rec["user_id"], rec["strategy"], len(rec["items"]), rec["source_offset"], rec["reason"]
('u3', 'model', 3, 39, None)
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from streamrec.udfs import online_mf
from streamrec.udfs.base import Event, Recommender
from streamrec.udfs.item_exchange import HALF_PRECISION, ItemDeltas
from streamrec.udfs.embeddings import init_vector, user_key
from streamrec.udfs.minibatch_mf import ItemTable, batch_step
from streamrec.udfs.online_mf import clip_norms, finite_rows
from streamrec.udfs.seen_filter import SeenFilter, item_positions

#: ``strategy`` values of a recommendation record: ``none`` has no items, and its ``reason`` says why.
MODEL, POPULARITY, NONE = "model", "popularity", "none"
#: ``reason`` of a ``none`` record: the user had every item the shard knew.
USER_HAD_EVERY_ITEM = "user_had_every_item"
#: ``model_version`` of the live table before the registry has a CURRENT.
LIVE = "live"

__all__ = ["Event", "LIVE", "ShardSettings", "BatchResult", "ShardModel", "encode_user", "decode_user", "shard_of"]


@dataclass(frozen=True)
class ShardSettings:
    top_k: int = 10
    cold_start_min_events: int = 1
    seen_filter_bits: int = 32_768
    seen_filter_hashes: int = 4
    #: Below this many known items a batch is learned and scored one event at a time.
    warmup_items: int = 50
    #: A batch is learned in chunks of at most this many events.
    max_batch_events: int = 256
    #: A user's events beyond this many per minute of event time are scored but not learned.
    bot_events_per_minute: float = 120.0
    exclude_bots: bool = True
    #: Items not written for this long (processing time) leave the table, as keyed state's TTL
    #: expires them (0: never).
    item_ttl_ms: int = 0
    #: One shard of several: keep this shard's own item steps pending for the others
    #: (:meth:`ShardModel.take_deltas`, udfs/item_exchange.py).
    exchange_items: bool = False

    @classmethod
    def from_config(cls, cfg: Any, exchange_items: bool = False) -> "ShardSettings":
        """The settings of a ``streamrec.core.config.Config``: scoring's, ingestion's bot limit,
        and the learner's state TTL as the items' (the one mapping: the job and the benchmarks
        build a shard alike). ``exchange_items``: one shard of several exchanging item deltas.

        >>> from streamrec.core.config import load_config
        >>> ShardSettings.from_config(load_config(config_file=None, env={})).max_batch_events
        256
        """
        sc = cfg.scoring
        return cls(top_k=sc.top_k, cold_start_min_events=sc.cold_start_min_events,
                   seen_filter_bits=sc.seen_filter_bits, seen_filter_hashes=sc.seen_filter_hashes,
                   warmup_items=sc.warmup_items, max_batch_events=sc.max_batch_events,
                   bot_events_per_minute=cfg.ingest.bot_events_per_minute,
                   exclude_bots=cfg.ingest.exclude_bots_from_learning, item_ttl_ms=cfg.learner.state_ttl_ms,
                   exchange_items=exchange_items)


_USER_HEAD = struct.Struct("<BHQqI")  # format, dim, events, bot-counter minute, events in it
_USER_FORMAT = 2  # 1 was (UserState with its recent-items list, SeenFilter), pickled


@dataclass
class UserRecord:
    vector: np.ndarray
    accum: np.ndarray
    seen: SeenFilter
    events: int = 0  #: events learned
    minute: int = -1  #: event-time minute of the bot-rate counter
    in_minute: int = 0


def encode_user(rec: UserRecord) -> bytes:
    """The user's keyed-state value: head, vector, AdaGrad sums, seen filter.

    >>> r = UserRecord(np.ones(2, np.float32), np.zeros(2, np.float32), SeenFilter.empty(64, 2).add("x"), 3)
    >>> back = decode_user(encode_user(r))
    >>> back.events, back.vector.tolist(), "x" in back.seen, len(encode_user(r))
    (3, [1.0, 1.0], True, 57)
    """
    dim = len(rec.vector)
    return b"".join([_USER_HEAD.pack(_USER_FORMAT, dim, rec.events, rec.minute, rec.in_minute),
                     np.asarray(rec.vector, "<f4").tobytes(), np.asarray(rec.accum, "<f4").tobytes(),
                     rec.seen.to_bytes()])


def decode_user(data: bytes) -> UserRecord:
    if not data or data[0] != _USER_FORMAT:
        raise ValueError(f"unknown user record format {data[:1]!r} (this code reads {_USER_FORMAT})")
    _, dim, events, minute, in_minute = _USER_HEAD.unpack_from(data, 0)
    off = _USER_HEAD.size
    vec = np.frombuffer(data, "<f4", dim, off).astype(np.float32)
    acc = np.frombuffer(data, "<f4", dim, off + 4 * dim).astype(np.float32)
    return UserRecord(vec, acc, SeenFilter.from_bytes(data[off + 8 * dim:]), events, minute, in_minute)


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
    unservable: int = 0  #: events whose user had every known item (their records are ``none``)
    #: users and items of the batch put back to their initial state: their vectors were not finite
    rows_reset: int = 0


class ShardModel(Recommender):
    """The shard's learner and scorer; the Flink operator keeps its state, this object its cache.

    As a :class:`udfs.base.Recommender` (in process: benchmarks, udfs/checks.py) it keeps its
    users' records itself (:attr:`user_records`); :meth:`learn_many` learns one micro-batch.
    """

    def __init__(self, params: online_mf.LearnerParams, settings: ShardSettings = ShardSettings(),
                 scorer=None) -> None:
        self.params = params
        self.settings = settings
        self.items = ItemTable(params, track_pending=settings.exchange_items)
        self._position_cache: dict[str, np.ndarray] = {}
        self._positions = np.zeros((0, settings.seen_filter_hashes), np.int64)
        self.live = self._catalogue()
        #: A registry version to serve instead of the live table (udfs/learner_core.py decides:
        #: ``serving_decision``); None: the live table, whose records say :attr:`live_name`.
        self.serving: Catalogue | None = None
        #: The live table's ``model_version``: ``live+<CURRENT>`` once the registry has a CURRENT
        #: (the version the table was last checked against), ``live`` before.
        self.live_name = LIVE
        if scorer is None:
            from streamrec.model.scoring import LiveScorer

            scorer = LiveScorer(params.dim)
        self.scorer = scorer
        #: The users' records when the shard runs in process (the Recommender interface); in the
        #: job they live in keyed state and :meth:`process` gets and returns them.
        self.user_records: dict[str, bytes] = {}
        self._in_process_events = 0
        self._rows_reset = 0  # since the last take_rows_reset()

    def take_rows_reset(self) -> int:
        """How many user and item rows were put back to their initial state since the last call
        because a vector, bias or AdaGrad sum was not finite (in a batch, in restored state or in
        another shard's deltas). The bounded steps (``learner.max_step``, ``max_norm``) keep every
        row finite; this guard keeps one that is not from reaching the records, whose strict JSON
        refuses NaN (the job would fail, restart from its checkpoint and fail again)."""
        n, self._rows_reset = self._rows_reset, 0
        return n

    # state ----------------------------------------------------------------------------------
    def restore_items(self, records: Iterable[tuple[str, bytes]]) -> int:
        """Load the item table from keyed state (after a start or a restore)."""
        n = self.items.restore(records)
        self._rows_reset += len(self.items.reset_nonfinite())
        k = len(self.items)  # state of a learner without the bound may hold longer vectors
        self.items.vectors[:k] = clip_norms(self.items.vectors[:k], self.params.max_norm)
        self.live = self._catalogue()
        return n

    def expire_items(self, now_ms: int) -> list[str]:
        """Drop the items keyed state has expired (not written for ``item_ttl_ms``); returns their
        ids, for the caller to delete from state and tombstone in the changelog."""
        ttl = self.settings.item_ttl_ms
        expired = self.items.expire(now_ms - ttl) if ttl > 0 else []
        if expired:  # rows were renumbered: the seen-filter positions follow them
            self._positions = np.zeros((0, self.settings.seen_filter_hashes), np.int64)
            self.live = self._catalogue()
        return expired

    def take_deltas(self, origin: int, since_ms: int, now_ms: int) -> tuple[ItemDeltas | None, dict[str, bytes]]:
        """This shard's item steps since the last call, for the other shards, and the records
        of those items (their pending steps cleared) to write back to state in the same call."""
        rows, steps = self.items.take_pending(half_precision=HALF_PRECISION)
        if not len(rows):
            return None, {}
        ids = [self.items.ids[r] for r in rows.tolist()]
        return ItemDeltas(origin, since_ms, now_ms, ids, steps), self.items.encode(rows, now_ms)

    def apply_deltas(self, deltas: Sequence[ItemDeltas], now_ms: int) -> dict[str, bytes]:
        """Add other shards' item steps (before the batch they came with); returns the changed
        items' records to write to state. An item new here starts from its deterministic initial
        vector, as it did where it was learned.

        >>> from udfs.online_mf import LearnerParams
        >>> params, settings = LearnerParams.of(None, dim=4, seed=1), ShardSettings(exchange_items=True)
        >>> a, b = ShardModel(params, settings), ShardModel(params, settings)
        >>> _ = a.process([Event("e1", "u1", "i1", 1.0, 0, 0, 0)], {}, now_ms=1)
        >>> delta, _ = a.take_deltas(origin=0, since_ms=0, now_ms=2)
        >>> sorted(b.apply_deltas([delta], now_ms=3))
        ['i1']
        >>> # b has a's steps but for their float16 rounding, which a keeps pending for next time
        >>> bool(np.allclose(a.item_vector("i1") - a.items.pending_vectors[0], b.item_vector("i1"), rtol=0, atol=1e-7))
        True
        """
        rows = [self.items.apply_deltas(d.item_ids, d.steps) for d in deltas]
        if not rows:
            return {}
        rows = np.unique(np.concatenate(rows))
        self._rows_reset += len(self.items.reset_nonfinite(rows))
        self.live = self._catalogue()
        return self.items.encode(rows, now_ms)

    def reset_vectors(self, item_ids: Sequence[str], vectors: np.ndarray, bias: np.ndarray) -> list[str]:
        """Put an exported version's item vectors and biases back (``streamrec run --from-version``):
        items the version lacks leave the table (returned, for the caller to delete from state and
        tombstone), items only it has come back. Update counts, popularity and AdaGrad sums stay:
        they are history, which the version does not record. Write every row back to state after.

        >>> from udfs.online_mf import LearnerParams
        >>> shard = ShardModel(LearnerParams.of(None, dim=2, seed=1))
        >>> _ = shard.items.rows(["a", "b"])
        >>> shard.reset_vectors(["b", "c"], np.ones((2, 2), np.float32), np.zeros(2, np.float32))
        ['a']
        >>> shard.items.ids, shard.item_vector("c").tolist()
        (['b', 'c'], [1.0, 1.0])
        """
        dropped = self.items.drop_all_but(set(item_ids))
        rows = self.items.rows(item_ids)
        self.items.vectors[rows] = clip_norms(np.asarray(vectors, np.float32), self.params.max_norm)
        self.items.bias[rows] = np.asarray(bias, np.float32)
        self.items.take_pending()  # steps taken before the reset are not the version's: never sent
        self._positions = np.zeros((0, self.settings.seen_filter_hashes), np.int64)
        self.live = self._catalogue()
        return dropped

    def reset_user(self, user_id: str, raw: bytes, vector: np.ndarray | None) -> bytes:
        """A user's state record with its vector set to ``vector`` (an exported version's), or to
        its deterministic initial vector if the version had none for it (a user it never saw);
        its seen items, event count and AdaGrad sums stay."""
        rec = decode_user(raw)
        p = self.params
        rec.vector = (np.asarray(vector, np.float32).copy() if vector is not None
                      else init_vector(user_key(user_id), p.dim, p.seed, p.init_scale))
        return encode_user(rec)

    # the Recommender interface (in process) ------------------------------------------------
    def learn_one(self, user: str, item: str, weight: float = 1.0, event_id: str | None = None) -> None:
        n = self._in_process_events
        # an interaction without a time: one a second (so the bot-rate limit never applies)
        self.learn_many([Event(f"{user}|{item}|{n}" if event_id is None else event_id, user, item, weight,
                               1_000 * n, 0, n)])

    def learn_many(self, events: Sequence[Event]) -> BatchResult:
        """Learn ``events`` as one micro-batch (:meth:`process`), the users' records kept here."""
        out = self.process(events, self.user_records, now_ms=0)
        self.user_records.update(out.user_records)
        self._in_process_events += len(events)
        return out

    def recommend(self, user: str, k: int = 10, exclude_seen: bool = True,
                  exclude: Iterable[str] | None = None) -> list[str]:
        """What :meth:`process` would list for ``user`` now (without learning anything): the
        model's top-``k`` once the user has ``cold_start_min_events`` learned events, filled up
        with popular items; ``exclude_seen``: none the user's seen filter holds."""
        s = self.settings
        raw = self.user_records.get(user)
        rec = decode_user(raw) if raw is not None else self._new_user(user)
        seen = rec.seen if exclude_seen else SeenFilter.empty(s.seen_filter_bits, s.seen_filter_hashes)
        taken = set(exclude or ())
        serving = self.serving if self.serving is not None else self.live
        items: list[str] = []
        if k > 0 and rec.events >= s.cold_start_min_events and len(serving.ids):
            fetch = min(len(serving.ids), k + len(taken) + seen.count)
            _, rows = serving.topk(rec.vector[None, :], fetch)
            rows = rows[0]
            for r in rows[~seen.contains_positions(serving.positions[rows])].tolist():
                if serving.ids[r] not in taken and len(items) < k:
                    items.append(serving.ids[r])
        fill = self._fill(serving, seen, [{"item_id": i} for i in items], k, taken, scored=False)
        return [it["item_id"] for it in fill]

    def item_vector(self, item_id: str) -> np.ndarray:
        return self.items.vectors[self.items.index[item_id]].copy()

    def _new_user(self, user_id: str) -> UserRecord:
        p, s = self.params, self.settings
        return UserRecord(init_vector(user_key(user_id), p.dim, p.seed, p.init_scale), np.zeros(p.dim, np.float32),
                          SeenFilter.empty(s.seen_filter_bits, s.seen_filter_hashes))

    # the batch ------------------------------------------------------------------------------
    def process(self, events: Sequence[Event], user_records: Mapping[str, bytes | None],
                now_ms: int) -> BatchResult:
        """Learn ``events`` in order and return one recommendation record per event, plus
        every changed user and item record (write them to keyed state before emitting)."""
        out = BatchResult()
        cache: dict[str, UserRecord] = {}
        for user_id in {e.user_id for e in events}:
            raw = user_records.get(user_id)
            cache[user_id] = decode_user(raw) if raw is not None else self._new_user(user_id)
        changed: set[int] = set()
        start, step = 0, self.settings.max_batch_events
        while start < len(events) and len(self.items) < self.settings.warmup_items:
            changed |= self._run(events[start:start + 1], cache, out, now_ms)  # a young catalogue
            start += 1
        # a backlog can make one window hold thousands of events: items are read as of a chunk's
        # start, so chunks keep that staleness small (recall 0.102 at 1,024 vs 0.118 at 64-256)
        for lo in range(start, len(events), step):
            changed |= self._run(events[lo:lo + step], cache, out, now_ms)
        out.changed_users = set(cache)
        out.user_records = {u: encode_user(rec) for u, rec in cache.items()}
        out.item_records = self.items.encode(sorted(changed), now_ms)
        out.changed_items = set(out.item_records)
        return out

    def _run(self, events: Sequence[Event], cache: dict[str, UserRecord], out: BatchResult,
             now_ms: int) -> set[int]:
        s = self.settings
        slots: dict[str, int] = {}
        slot = np.fromiter((slots.setdefault(e.user_id, len(slots)) for e in events), np.int64, len(events))
        users = [cache[u] for u in slots]
        learn = np.ones(len(events), bool)
        for n, ev in enumerate(events):  # the bot-rate limiter, in event order
            rec = cache[ev.user_id]
            bucket = ev.ts // 60_000
            rec.in_minute = rec.in_minute + 1 if bucket == rec.minute else 1
            rec.minute = bucket
            if rec.in_minute > s.bot_events_per_minute and s.exclude_bots:
                learn[n] = False
        out.bot_events += int((~learn).sum())
        out.learned += int(learn.sum())
        positives = self.items.rows(e.item_id for e in events)
        known = self._row_positions()
        filters = np.stack([np.frombuffer(u.seen.words, np.uint8) for u in users])
        ids = list(slots)
        vectors, accums = np.stack([u.vector for u in users]), np.stack([u.accum for u in users])
        reset = self._reset_users(ids, vectors, accums)  # (restored state)

        def avoid(user_slot: np.ndarray, rows: np.ndarray) -> np.ndarray:
            bits = filters[user_slot[:, None, None], known[rows] >> 3]
            return ((bits >> (known[rows] & 7).astype(np.uint8)) & 1).all(-1)

        step = batch_step(self.items, vectors, accums,
                          slot, positives, np.fromiter((e.weight for e in events), np.float64, len(events)),
                          [e.event_id for e in events], avoid, learn)
        after = self._reset_users(ids, step.user_vectors, step.user_accum)
        if after:  # their events are scored with the reset vector
            bad = ~finite_rows(step.event_vectors)
            step.event_vectors[bad] = step.user_vectors[slot[bad]]
        reset += after + len(self.items.reset_nonfinite(step.changed_items))
        out.rows_reset += reset
        self._rows_reset += reset
        changed = set(positives.tolist()) | set(step.changed_items.tolist())
        # each event's user as of its own event (vector, learned-event count, items of its batch)
        counts = np.zeros(len(users), np.int64)
        events_after = np.empty(len(events), np.int64)
        earlier: list[set[str]] = []
        in_batch: dict[int, set[str]] = {}
        for n, ev in enumerate(events):
            counts[slot[n]] += learn[n]
            events_after[n] = users[slot[n]].events + counts[slot[n]]
            items = in_batch.setdefault(int(slot[n]), set())
            items.add(ev.item_id)
            earlier.append(set(items))
        self._score(events, step.event_vectors, events_after, slot, users, earlier, out, now_ms)
        for k, rec in enumerate(users):
            rec.vector, rec.accum = step.user_vectors[k], step.user_accum[k]
            rec.events += int(counts[k])
            for item in in_batch[k]:
                rec.seen = rec.seen.add_positions(known[self.items.index[item]])
        self.live = self._catalogue()
        return changed

    def _reset_users(self, ids: list[str], vectors: np.ndarray, accums: np.ndarray) -> int:
        """Rows of ``vectors`` / ``accums`` (users ``ids``) that are not finite, put back to the
        user's initial vector and zero sums in place; returns how many."""
        bad = np.flatnonzero(~finite_rows(vectors, accums))
        p = self.params
        for k in bad.tolist():
            vectors[k] = init_vector(user_key(ids[k]), p.dim, p.seed, p.init_scale)
            accums[k] = 0
        return len(bad)

    def _catalogue(self) -> "Catalogue":
        t = self.items
        n = len(t)
        vectors = t.vectors[:n].copy()
        offsets = (t.bias[:n] + np.float32(self.params.popularity_prior)
                   * np.log1p(np.maximum(t.popularity[:n], 0.0))).astype(np.float32)
        return Catalogue("live", list(t.ids), self._row_positions(), t.popularity[:n].copy(),
                         lambda users, fetch: self.scorer.topk(users, vectors, offsets, fetch))

    def _row_positions(self) -> np.ndarray:
        """Seen-filter positions of every item row (rows only grow: extended, never rebuilt)."""
        n, have = len(self.items), len(self._positions)
        if have < n:
            s = self.settings
            new = item_positions(self.items.ids[have:n], s.seen_filter_bits, s.seen_filter_hashes)
            self._positions = np.concatenate([self._positions, new]) if have else new
        return self._positions

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

    def _score(self, events, vectors, events_after, slot, users, earlier, out: BatchResult, now_ms: int) -> None:
        s = self.settings
        k = s.top_k
        serving = self.serving if self.serving is not None else self.live  # the batch's start
        warm = [n for n in range(len(events)) if events_after[n] >= s.cold_start_min_events]
        lists: dict[int, list[dict]] = {}
        if warm and len(serving.ids):
            # Fetch enough candidates that K remain after dropping seen ones. First K + a few for
            # every event in one call (onnxruntime's TopK costs grow with the fetch: 170 users
            # x 1,682 items took 1.0 ms at 16, 3.1 at 64, 10 at 512); only the events left
            # short then fetch by their history's size, grouped so one heavy user does not make
            # the whole batch fetch thousands. TopK's order does not depend on the fetch, so a
            # list found in the first call is the one the bigger fetch would give.
            filters = np.stack([np.frombuffer(u.seen.words, np.uint8) for u in users])
            first = min(len(serving.ids), k + _FIRST_FETCH_MARGIN)
            short = self._rank(serving, vectors, slot, filters, earlier, warm, first, lists)
            groups: dict[int, list[int]] = {}
            for n in short:
                had = users[slot[n]].seen.count + len(earlier[n])
                groups.setdefault(min(len(serving.ids), k + _pow2(had)), []).append(n)
            for fetch, rows in groups.items():
                self._rank(serving, vectors, slot, filters, earlier, rows, max(fetch, first), lists, final=True)
        # every record of the batch names what served it: the registry version, or the live table
        version = serving.version if self.serving is not None else self.live_name
        for n, ev in enumerate(events):
            items = lists.get(n)
            strategy = MODEL if items is not None else POPULARITY
            if items is None or len(items) < k:
                items = self._fill(serving, users[slot[n]].seen, items or [], k, earlier[n],
                                   scored=strategy == POPULARITY)
            reason = None
            if not items:  # nothing the user lacks: published too, so it is accounted for
                out.unservable += 1
                strategy, reason = NONE, USER_HAD_EVERY_ITEM
            out.recommendations.append({
                "user_id": ev.user_id, "items": items, "model_version": version, "strategy": strategy,
                "cold_start": strategy != MODEL, "user_events": int(events_after[n]),
                "source_event_id": ev.event_id, "source_partition": ev.src_partition,
                "source_offset": ev.src_offset, "event_ts": ev.ts, "emitted_ts": now_ms,
                "batch_size": len(events), "reason": reason,
            })

    def _fill(self, serving: "Catalogue", seen: SeenFilter, items: list[dict], k: int, taken: set[str],
              scored: bool) -> list[dict]:
        """``items`` filled up to ``k`` with the served catalogue's popular items the user lacks (a
        popularity list, or a model list short of K); a registry version that has too few, the
        live table's after them."""
        sources = (serving,) if serving is self.live else (serving, self.live)
        for source in sources:
            if len(items) >= k:
                break
            have = {it["item_id"] for it in items} | taken
            items = items + source.popular(seen, k - len(items), have, scored)
        return items

    def _rank(self, serving, vectors, slot, filters, earlier, rows: list[int], fetch: int,
              lists: dict[int, list[dict]], final: bool = False) -> list[int]:
        """The top-``fetch`` candidates of ``rows`` less the items each user had: a row with K
        left gets its list in ``lists``, and so does every row when ``final`` or when ``fetch``
        is the whole catalogue (a short list: popular items fill it up); the rows left short
        are returned."""
        k = self.settings.top_k
        scores, indices = serving.topk(vectors[rows], fetch)
        scores = np.round(scores.astype(np.float64), 6)  # once per call, not per item
        pos = serving.positions[indices]  # [R, F, H]
        bits = filters[slot[rows][:, None, None], pos >> 3]
        keep = ~((bits >> (pos & 7).astype(np.uint8)) & 1).all(-1)
        ids, whole = serving.ids, fetch >= len(serving.ids)
        short = []
        for n, row_scores, row_idx, row_keep in zip(rows, scores, indices, keep):
            batch_items, ranked = earlier[n], []
            for i, sc in zip(row_idx[row_keep][:k + len(batch_items)].tolist(),
                             row_scores[row_keep][:k + len(batch_items)].tolist()):
                if ids[i] not in batch_items:
                    ranked.append({"item_id": ids[i], "score": sc})
                    if len(ranked) == k:
                        break
            if len(ranked) == k or whole or final:
                lists[n] = ranked
            else:
                short.append(n)
        return short


#: Candidates fetched beyond K for every event of a batch before any per-history fetch.
_FIRST_FETCH_MARGIN = 16


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
