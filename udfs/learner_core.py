"""What the shard learner does with a micro-batch or a timer, without Flink.

:class:`ShardLearner` (udfs/flink_operators.py) is a thin wrapper: it hands each call to one
:class:`LearnerCore` with the key, that key's state (:class:`ShardState`) and the processing time,
and emits what comes back (:class:`StepOutput`): the records, the processing-time timers to
register and the metrics' increments. Everything else is here, as plain Python a test drives
with dict-backed state (:meth:`ShardState.in_memory`):

* a ``--from-version`` reset, once per shard and run (docs/registry.md, "Learner rollback");
* the items keyed state's TTL expired: they leave the table, a tombstone goes to ``model.items``;
* the other shards' item deltas added before the batch, the batch learned and scored
  (:class:`udfs.shard_model.ShardModel`), every changed user and item written back within the same
  call (PyFlink has no snapshot hook, so nothing lives only in Python memory across a checkpoint);
* the ``model.items`` / ``model.users`` changelogs, at most every ``changelog_interval_ms``;
* this shard's own item deltas, every ``exchange_interval_ms`` (udfs/item_exchange.py);
* the thread CPU of each phase, as metrics.

Every record's fields are declared once, in core/records.py; its JSON text comes from there.
The item table is cached in Python (the shard scores it every batch) and rebuilt from the
``items`` state the first time a key is seen, so a restore loses nothing.

>>> settings = LearnerSettings(LearnerParams.of(None, dim=4, seed=1), ShardSettings(top_k=2),
...                            state_ttl_ms=86_400_000, changelog_interval_ms=0, provider="cpu")
>>> core, state = LearnerCore(settings), ShardState.in_memory()
>>> out = core.on_batch(0, state, '["e1","u1","i1",1.0,5,0,0],["e2","u2","i2",1.0,6,0,1]', now_ms=1_000)
>>> [(kind, key) for kind, key, _ in out.records]
[('recommendation', 'u1'), ('recommendation', 'u2'), ('item', 'i1'), ('item', 'i2'), ('user', 'u1'), ('user', 'u2')]
>>> sorted(state.users), sorted(state.items), out.counts["events_learned"]
(['u1', 'u2'], ['i1', 'i2'], 2)
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Protocol

import numpy as np
import orjson

from streamrec.core.records import ITEM_RECORD, RECOMMENDATION, USER_RECORD
from streamrec.model.registry import RegistryState
from streamrec.udfs import item_exchange, state_codec
from streamrec.udfs.online_mf import LearnerParams
from streamrec.udfs.shard_model import LIVE, POPULARITY, Event, ShardModel, ShardSettings, decode_user

__all__ = ["LearnerSettings", "ShardState", "DictMapState", "DictValueState", "StepOutput", "LearnerCore",
           "Serving", "serving_decision", "changelog_due", "COUNTERS", "GAUGES", "KINDS"]

log = logging.getLogger("streamrec.learner")

#: The ``kind`` of each emitted record: it names the sink (sql/pipeline_sinks.sql routes by it).
RECOMMENDATION_KIND, ITEM_KIND, USER_KIND, ITEM_DELTA_KIND = "recommendation", "item", "user", "item_delta"
KINDS = (RECOMMENDATION_KIND, ITEM_KIND, USER_KIND, ITEM_DELTA_KIND)
#: Where a batch's time goes (thread CPU µs, summed): read keyed state, learn and score, write
#: keyed state, build and encode the records.
PHASES = ("state_read", "learn_score", "state_write", "emit")
#: The counters a :class:`StepOutput` increments (the operator registers them all at open).
#: ``nonfinite_rows_reset``: user and item rows put back to their initial state because a vector
#: was not finite (``ShardModel.take_rows_reset``); the bounded steps keep it at 0.
COUNTERS = ("events_learned", "bot_events_not_learned", "recommendations", "popularity_recommendations",
            "events_without_recommendation", "nonfinite_rows_reset",
            "batches", "batches_live_held_back", "model_swaps", "item_deltas_sent", "item_deltas_applied",
            *(f"{phase}_us" for phase in PHASES))
#: The item exchange's gauges: how old the newest and the oldest step of the deltas applied by
#: the last batch were, and the oldest ever (processing time; 0 before any).
GAUGES = ("item_exchange_lag_ms", "item_staleness_ms", "item_staleness_max_ms")


@dataclass(frozen=True)
class LearnerSettings:
    """Everything the shard learner is configured with, built from the Config in one place
    (:meth:`from_config`); frozen, so the operator ships it to its workers as it is."""

    params: LearnerParams
    shard: ShardSettings
    #: Items and users not written for this long leave keyed state (and the items the table).
    state_ttl_ms: int
    #: Processing time between two flushes of the changed items and users to the changelogs.
    changelog_interval_ms: int
    #: ``live``: the shard's own item table, unless an operator's pin or promotion says which
    #: registry version to serve; ``registry``: the registry's CURRENT (:func:`serving_decision`).
    serve: str = "live"
    #: The registry followed every ``swap_check_interval_s`` ('': none; records then say ``live``).
    registry_dir: str = ""
    swap_check_interval_s: float = 2.0
    provider: str = "auto"
    ort_threads: int = 1
    #: > 0: one shard of several, sending its item deltas this often (udfs/item_exchange.py).
    exchange_interval_ms: int = 0
    #: ``streamrec run --from-version``: put this registry version's vectors back once per shard;
    #: the token (kept in state) makes it once per run, across restores.
    reset_version: str | None = None
    reset_token: str | None = None

    @classmethod
    def from_config(cls, cfg: Any, exchange: bool = False, reset_version: str | None = None,
                    reset_token: str | None = None) -> "LearnerSettings":
        """The settings of a ``streamrec.core.config.Config``; ``exchange``: the shards exchange
        item deltas (``flink_jobs.pipeline.exchanges_items`` decides).

        >>> from streamrec.core.config import load_config
        >>> s = LearnerSettings.from_config(load_config(config_file=None, env={}))
        >>> s.params.dim, s.shard.top_k, s.shard.item_ttl_ms == s.state_ttl_ms, s.exchange_interval_ms
        (32, 10, True, 0)
        """
        lc, sc = cfg.learner, cfg.scoring
        return cls(LearnerParams.of(lc), ShardSettings.from_config(cfg, exchange_items=exchange),
                   state_ttl_ms=lc.state_ttl_ms, changelog_interval_ms=lc.changelog_interval_ms,
                   serve=sc.serve, registry_dir=str(cfg.paths_resolved.registry_dir),
                   swap_check_interval_s=sc.swap_check_interval_s, provider=sc.provider,
                   ort_threads=sc.ort_threads, exchange_interval_ms=lc.exchange_interval_ms if exchange else 0,
                   reset_version=reset_version, reset_token=reset_token)


# -- what serves ------------------------------------------------------------------------------

#: ``scoring.serve``: the default, and CURRENT whoever promoted it.
SERVE_MODES = ("live", "registry")


@dataclass(frozen=True)
class Serving:
    """What the shards serve: ``version``, a registry version (None: the live table), and
    ``live_name``, the live table's ``model_version`` (``live+<CURRENT>``; ``live`` before any)."""

    version: str | None
    live_name: str = LIVE
    #: the export of the live model the gate showed worse than CURRENT, when that is why the
    #: registry version serves (the guard); None otherwise
    held_back: str | None = None

    @property
    def name(self) -> str:
        """The ``model_version`` of the records it scores."""
        return self.version or self.live_name


def serving_decision(serve: str, registry: RegistryState | None) -> Serving:
    """What serves, given ``scoring.serve`` and the registry as the last swap check read it
    (None: no registry is followed). docs/registry.md, "Serving".

    Default (``live``): the shard's live item table, fresh to the batch, named after the CURRENT
    it was checked against; the gate's promotions move only that name. An operator's choice is
    served as it is: a pin (`model rollback`, `--before`, `run --from-version`) until `unpin`, an
    operator's `model promote V` until the next promotion.

    >>> serving_decision("live", None) == serving_decision("live", RegistryState(None)) == Serving(None)
    True
    >>> serving_decision("live", RegistryState("v000012")).name  # the gate promoted v000012
    'live+v000012'
    >>> serving_decision("live", RegistryState("v000002", pinned="v000002")).name  # a rollback pinned it
    'v000002'
    >>> serving_decision("live", RegistryState("v000013", by_operator=True)).name  # `model promote`
    'v000013'

    The guard: when the gate showed an export of the live model worse than CURRENT, CURRENT
    serves (its ``model_version``, e.g. ``v000012``, instead of ``live+v000012``) until a later
    export is promoted.

    >>> serving_decision("live", RegistryState("v000012", held_back="v000015"))
    Serving(version='v000012', live_name='live+v000012', held_back='v000015')

    ``registry``: CURRENT whoever promoted it (a pin is CURRENT too); the live table before any.

    >>> [serving_decision("registry", RegistryState(current)).name for current in ("v000012", None)]
    ['v000012', 'live']
    """
    if serve not in SERVE_MODES:
        raise ValueError(f"scoring.serve must be 'live' or 'registry', got {serve!r}")
    if registry is None:
        return Serving(None)
    live_name = f"{LIVE}+{registry.current}" if registry.current else LIVE
    if registry.pinned is not None:
        return Serving(registry.pinned, live_name)
    if registry.current is not None and (serve == "registry" or registry.by_operator):
        return Serving(registry.current, live_name)
    if registry.current is not None and registry.held_back is not None:
        return Serving(registry.current, live_name, held_back=registry.held_back)
    return Serving(None, live_name)


# -- state ------------------------------------------------------------------------------------

class MapState(Protocol):
    """The part of PyFlink's ``MapState`` the core uses."""

    def get(self, key: str) -> Any: ...
    def put_all(self, values: dict) -> None: ...
    def remove(self, key: str) -> None: ...
    def items(self) -> Iterable[tuple[str, Any]]: ...


class ValueState(Protocol):
    """The part of PyFlink's ``ValueState`` the core uses."""

    def value(self) -> Any: ...
    def update(self, value: Any) -> None: ...


@dataclass
class ShardState:
    """One key's keyed state (flink_operators.state_descriptors declares it): ``users`` (user id
    -> user record bytes), ``items`` (item id -> item record bytes), ``changelog`` (the ids
    changed since the last changelog flush: udfs/state_codec.py), ``reset_token`` (the last
    ``--from-version`` reset applied) and ``exchanged`` (when the shard last sent its deltas).

    In Flink the same objects serve every key (the runtime scopes them to the current key)."""

    users: MapState
    items: MapState
    changelog: ValueState
    reset_token: ValueState
    exchanged: ValueState

    @classmethod
    def in_memory(cls) -> "ShardState":
        """One key's state in dicts: the core without Flink (tests, benchmarks)."""
        return cls(DictMapState(), DictMapState(), DictValueState(), DictValueState(), DictValueState())


class DictMapState(dict):
    """:class:`MapState` over a dict."""

    def put_all(self, values: dict) -> None:
        self.update(values)

    def remove(self, key: str) -> None:
        self.pop(key, None)


class DictValueState:
    """:class:`ValueState` in memory."""

    def __init__(self, value: Any = None) -> None:
        self._value = value

    def value(self) -> Any:
        return self._value

    def update(self, value: Any) -> None:
        self._value = value


# -- output -----------------------------------------------------------------------------------

@dataclass
class StepOutput:
    """What one call produced: the records to emit, in order, as ``(kind, key, JSON text)`` (a
    tombstone's text is None); the processing-time timers to register; counter increments and
    gauge values by metric name (:data:`COUNTERS`, :data:`GAUGES`)."""

    records: list[tuple[str, str, str | None]] = field(default_factory=list)
    timers: list[int] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    gauges: dict[str, int] = field(default_factory=dict)

    def count(self, name: str, n: int) -> None:
        self.counts[name] = self.counts.get(name, 0) + n


# -- the core ---------------------------------------------------------------------------------

class LearnerCore:
    """The shard learner's logic for every key of one subtask (a subtask may own several shards:
    one :class:`ShardModel` per key, sharing the scorer)."""

    def __init__(self, settings: LearnerSettings, scorer=None) -> None:
        from streamrec.model.scoring import LiveScorer, choose_providers

        self.settings = settings
        self.providers = choose_providers(settings.provider)
        self.scorer = scorer if scorer is not None else LiveScorer(settings.params.dim, self.providers,
                                                                   settings.ort_threads)
        log.warning("shard learner: onnxruntime providers %s, serving %s", self.providers, settings.serve)
        self.shards: dict[int, ShardModel] = {}
        self.reset_keys: set[int] = set()  # keys known reset: the state is read once per key, not per batch
        self.reset_tables = self._reset_tables() if settings.reset_version else None
        self.cpu_us = dict.fromkeys(PHASES, 0)  # totals since the start, for close()
        self.staleness_max = 0
        #: What serves (:func:`serving_decision`), as of the last registry check.
        self.serving = serving_decision(settings.serve, None)
        self.registry = self.watcher = None
        self._checked_at = float("-inf")
        if settings.registry_dir:
            from streamrec.model.registry import CurrentModelWatcher, Registry

            self.registry = Registry(settings.registry_dir)
            # loads what the decision names (a pin, an operator's promotion, or CURRENT when
            # serve = registry), nothing while the live table serves
            self.watcher = CurrentModelWatcher(self.registry, self._load_version,
                                               interval_s=settings.swap_check_interval_s,
                                               target=lambda: self.serving.version)
            self._follow_registry()  # at open: a restarted job serves a pin from its first batch

    # the two calls -------------------------------------------------------------------------
    def on_batch(self, key: int, state: ShardState, batch: str, now_ms: int) -> StepOutput:
        """One micro-batch of shard ``key`` (sql/learner_batches.sql): its entries' JSON joined by
        commas, events as arrays (:class:`Event`) and the other shards' item deltas as objects."""
        out = StepOutput()
        entries = orjson.loads("[" + batch + "]")
        events = [Event(*e) for e in entries if isinstance(e, list)]
        deltas = [item_exchange.decode(e, self.settings.params.dim) for e in entries if isinstance(e, dict)]
        if not events and not deltas:
            return out
        shard = self._shard(key, state, out)
        # before learning: a --from-version reset, and an expired item starts afresh
        self._reset(key, shard, state, now_ms, out)
        self._expire(shard, state, now_ms, out)
        received = {}
        if deltas:  # the other shards' steps first: the batch learns against them
            received = shard.apply_deltas(deltas, now_ms)
            self._received(deltas, now_ms, out)
        if events:  # (an item both received and learned is written once, as learned)
            self._learn(shard, state, events, now_ms, received, out)
        elif received:
            state.items.put_all(received)
        if self.settings.exchange_interval_ms:
            self._send_deltas(key, shard, state, now_ms, out, timer=False)
        self._count_resets(key, shard, out)
        return out

    def on_timer(self, key: int, state: ShardState, timer_ms: int, now_ms: int,
                 end_of_input: bool = False) -> StepOutput:
        """A timer of shard ``key``: the changelog's flush, the item exchange's send, or (with
        ``end_of_input``) the final watermark of a bounded input."""
        out = StepOutput()
        items, users, last_flush = self._pending(state)
        flush = changelog_due(timer_ms, last_flush, self.settings.changelog_interval_ms, bool(items or users),
                              end_of_input=end_of_input)
        if not (flush or self.settings.exchange_interval_ms):
            return out
        shard = self._shard(key, state, out)
        self._reset(key, shard, state, now_ms, out)  # a restored timer may fire before any batch
        if self.settings.exchange_interval_ms:
            self._send_deltas(key, shard, state, now_ms, out, timer=True)
        if flush:
            state.changelog.update(state_codec.encode_changelog(set(), set(), now_ms))
            self._changelog(shard, state, items, users, None, out)
        self._count_resets(key, shard, out)
        return out

    @staticmethod
    def _count_resets(key: int, shard: ShardModel, out: StepOutput) -> None:
        """Rows the shard put back to their initial state because they were not finite: counted
        and logged, never emitted as NaN (strict JSON would fail the job, and its restarts)."""
        n = shard.take_rows_reset()
        if n:
            out.count("nonfinite_rows_reset", n)
            log.warning("shard %s: %d user / item rows were not finite and were put back to their initial "
                        "vectors (metric nonfinite_rows_reset)", key, n)

    def cpu_summary(self) -> str:
        """Where the learner's thread CPU went since the start, by phase ('' before any batch)."""
        total = sum(self.cpu_us.values())
        return ", ".join(f"{k} {v / 1e6:.1f} s ({100 * v / total:.0f} %)" for k, v in self.cpu_us.items()) if total else ""

    # the shard -----------------------------------------------------------------------------
    def _shard(self, key: int, state: ShardState, out: StepOutput) -> ShardModel:
        shard = self.shards.get(key)
        if shard is None:
            # the changelog first: state of older code (pickled) fails here with its sentence
            self._pending(state)
            shard = ShardModel(self.settings.params, self.settings.shard, self.scorer)
            n = shard.restore_items(state.items.items())
            log.warning("shard %s: %d items restored from keyed state", key, n)
            self.shards[key] = shard
        if self.registry is not None:
            self._follow_registry()  # between batches: a swap never splits a batch
            self._serve(key, shard, out)
        return shard

    # what serves ---------------------------------------------------------------------------
    def _follow_registry(self) -> None:
        """At most every ``swap_check_interval_s``: read CURRENT and the pin (two tiny files),
        decide what serves, and have the watcher load a registry version the decision names."""
        now = time.monotonic()
        if now - self._checked_at < self.settings.swap_check_interval_s:
            return
        self._checked_at = now
        try:
            state = self.registry.state()
        except (OSError, ValueError) as exc:  # keep serving what serves; retried at the next check
            log.warning("model registry %s: cannot read CURRENT: %s", self.registry.root, exc)
            return
        decision = serving_decision(self.settings.serve, state)
        if decision != self.serving:
            log.warning("serving %s (registry: CURRENT %s%s%s%s)", decision.name, state.current,
                        " set by an operator" if state.by_operator else "",
                        f", pinned to {state.pinned}" if state.pinned else "",
                        f"; the live model is held back: the gate showed its export {decision.held_back} "
                        "worse than CURRENT, which serves until an export is promoted"
                        if decision.held_back else "")
        self.serving = decision
        if decision.version is not None:
            self.watcher.check()

    def _serve(self, key: int, shard: ShardModel, out: StepOutput) -> None:
        """The shard serves what was decided; a version that could not be loaded is not served:
        what served before goes on (the watcher logged the refusal once)."""
        decision = self.serving
        shard.live_name = decision.live_name
        if decision.held_back is not None:
            out.count("batches_live_held_back", 1)
        if decision.version is None:
            if shard.serving is not None:
                shard.serving = None
                out.count("model_swaps", 1)
                log.warning("shard %s: now serving the live table (%s)", key, decision.live_name)
        elif self.watcher.version == decision.version and (shard.serving is None
                                                           or shard.serving.version != decision.version):
            scoring, table = self.watcher.model
            shard.serving = shard.registry_catalogue(scoring, table.popularity)
            out.count("model_swaps", 1)
            log.warning("shard %s: now serving model %s", key, decision.version)

    def _load_version(self, model_bytes: bytes, meta: dict):
        import onnxruntime as ort

        from streamrec.model.item_table import load_item_table
        from streamrec.model.scoring import ScoringModel

        options = ort.SessionOptions()
        if self.settings.ort_threads:
            options.intra_op_num_threads = self.settings.ort_threads
        table = load_item_table(self.registry, meta["version"], expected_dim=self.settings.params.dim)
        return ScoringModel.from_bytes(model_bytes, meta, providers=self.providers, session_options=options), table

    # the batch -----------------------------------------------------------------------------
    def _learn(self, shard: ShardModel, state: ShardState, events: list[Event], now_ms: int,
               received: dict, out: StepOutput) -> None:
        t0 = time.thread_time_ns()
        records = {u: state.users.get(u) for u in {e.user_id for e in events}}
        t1 = time.thread_time_ns()
        batch = shard.process(events, records, now_ms)
        t2 = time.thread_time_ns()
        state.users.put_all(batch.user_records)
        state.items.put_all({**received, **batch.item_records})
        t3 = time.thread_time_ns()
        items, users, last_flush = self._pending(state)
        items |= batch.changed_items
        users |= batch.changed_users
        out.count("events_learned", batch.learned)
        out.count("bot_events_not_learned", batch.bot_events)
        out.count("events_without_recommendation", batch.unservable)
        out.count("recommendations", len(batch.recommendations))
        out.count("popularity_recommendations", sum(rec["strategy"] == POPULARITY for rec in batch.recommendations))
        out.count("batches", 1)
        encode = RECOMMENDATION.encode
        out.records += [(RECOMMENDATION_KIND, rec["user_id"], encode(rec)) for rec in batch.recommendations]
        interval = self.settings.changelog_interval_ms
        if now_ms - last_flush >= interval:
            state.changelog.update(state_codec.encode_changelog(set(), set(), now_ms))
            self._changelog(shard, state, items, users, max(e.ts for e in events), out)
        else:
            state.changelog.update(state_codec.encode_changelog(items, users, last_flush))
            out.timers.append(last_flush + interval)
        t4 = time.thread_time_ns()
        for phase, ns in zip(PHASES, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
            out.count(f"{phase}_us", ns // 1000)
            self.cpu_us[phase] += ns // 1000

    @staticmethod
    def _pending(state: ShardState) -> tuple[set, set, int]:
        """The changelog state: the item and user ids changed since the last flush, and its time."""
        raw = state.changelog.value()
        return (set(), set(), 0) if raw is None else state_codec.decode_changelog(raw)

    def _changelog(self, shard: ShardModel, state: ShardState, items: set, users: set, ts: int | None,
                   out: StepOutput) -> None:
        """The changelog records of ``items`` and ``users`` (as the shard and the state hold them)."""
        # vectorised: one rounding and one tolist() per flush, not a Python round() per float
        # (every item changes within a second at ~1,000 events/s)
        table = shard.items
        ids = [i for i in sorted(items) if i in table.index]
        if ids:
            rows = np.fromiter((table.index[i] for i in ids), np.int64, len(ids))
            vectors = _rounded(table.vectors[rows])
            bias, popularity = _rounded(table.bias[rows]), _rounded(table.popularity[rows])
            updates = table.updates[rows].tolist()
            encode = ITEM_RECORD.encode
            out.records += [(ITEM_KIND, item_id, encode(item_id=item_id, vector=vectors[n], bias=bias[n],
                                                        updates=updates[n], popularity=popularity[n], ts=ts))
                            for n, item_id in enumerate(ids)]
        found = [(u, decode_user(raw)) for u in sorted(users) if (raw := state.users.get(u)) is not None]
        if found:
            vectors = _rounded(np.stack([user.vector for _, user in found]))
            encode = USER_RECORD.encode
            out.records += [(USER_KIND, user_id, encode(user_id=user_id, vector=vector, events=user.events, ts=ts))
                            for (user_id, user), vector in zip(found, vectors)]

    # --from-version ------------------------------------------------------------------------
    def _reset_tables(self):
        from streamrec.model.item_table import load_item_table
        from streamrec.model.registry import Registry
        from streamrec.model.user_table import load_user_table

        registry, version, dim = Registry(self.settings.registry_dir), self.settings.reset_version, self.settings.params.dim
        return (load_item_table(registry, version, expected_dim=dim),
                load_user_table(registry, version, expected_dim=dim).as_dict())

    def _reset(self, key: int, shard: ShardModel, state: ShardState, now_ms: int, out: StepOutput) -> None:
        """Once per shard and run of ``--from-version``: the version's item and user vectors
        replace the shard's (state too), and every item and user goes to the changelogs, so the
        exporter's table becomes the version's; the items it lacks are tombstoned."""
        if self.reset_tables is None or key in self.reset_keys:
            return
        token = self.settings.reset_token
        if state.reset_token.value() == token:  # applied before a restore
            self.reset_keys.add(key)
            return
        items, users = self.reset_tables
        dropped = shard.reset_vectors(items.item_ids.tolist(), items.vectors, items.bias)
        for item_id in dropped:
            state.items.remove(item_id)
        state.items.put_all(shard.items.encode(range(len(shard.items)), now_ms))
        restored = {u: shard.reset_user(u, raw, users.get(u)) for u, raw in state.users.items()}
        state.users.put_all(restored)
        state.reset_token.update(token)
        self.reset_keys.add(key)
        log.warning("shard: vectors of %s restored (%d items, %d of its %d users in it; %d items "
                    "it lacks dropped)", self.settings.reset_version, len(shard.items),
                    sum(u in users for u in restored), len(restored), len(dropped))
        out.records += [(ITEM_KIND, item_id, None) for item_id in dropped]
        self._changelog(shard, state, set(shard.items.ids), set(restored), None, out)

    def _expire(self, shard: ShardModel, state: ShardState, now_ms: int, out: StepOutput) -> None:
        """Items keyed state's TTL expired (not written for ``state_ttl_ms``) leave the shard's
        table and the state; their tombstones go to the compacted model.items, so the next
        exported model drops them too."""
        for item_id in shard.expire_items(now_ms):
            state.items.remove(item_id)
            out.records.append((ITEM_KIND, item_id, None))

    # the item exchange ---------------------------------------------------------------------
    def _send_deltas(self, key: int, shard: ShardModel, state: ShardState, now_ms: int, out: StepOutput,
                     timer: bool) -> None:
        """The shard's pending item steps as delta records, once per exchange interval (a timer
        sends what the last batches left); the items are written back with nothing pending."""
        interval = self.settings.exchange_interval_ms
        last = state.exchanged.value() or 0
        if now_ms - last < interval:
            if not timer:
                out.timers.append(last + interval)
            return
        deltas, records = shard.take_deltas(key, last, now_ms)
        if deltas is None:
            return
        state.items.put_all(records)
        state.exchanged.update(now_ms)
        lines = item_exchange.encode(deltas)
        out.count("item_deltas_sent", len(lines))
        out.records += [(ITEM_DELTA_KIND, str(key), line) for line in lines]

    def _received(self, deltas: list, now_ms: int, out: StepOutput) -> None:
        out.count("item_deltas_applied", len(deltas))
        lag = max(now_ms - d.emitted_ms for d in deltas)
        # the oldest step a delta can hold was taken just after its sender's previous send
        staleness = max([now_ms - d.since_ms for d in deltas if d.since_ms], default=lag)
        self.staleness_max = max(self.staleness_max, staleness)
        out.gauges.update({"item_exchange_lag_ms": lag, "item_staleness_ms": staleness,
                           "item_staleness_max_ms": self.staleness_max})


def changelog_due(timer_ms: int, last_flush_ms: int, interval_ms: int, pending: bool,
                  end_of_input: bool = False) -> bool:
    """Whether a timer firing at ``timer_ms`` flushes the changelog: its own timer (due an interval
    after the last flush) or the end of input does; an earlier timer (one restored from before a
    flush) does not. (Flushing on every batch made ~2.5 changelog records per event on ML-100k,
    the items touched by every batch, instead of one per changed id per interval.)

    >>> changelog_due(10_100, 10_000, 5_000, pending=True)  # registered before the last flush
    False
    >>> changelog_due(15_000, 10_000, 5_000, pending=True), changelog_due(15_000, 10_000, 5_000, pending=False)
    (True, False)
    >>> changelog_due(10_100, 10_000, 5_000, pending=True, end_of_input=True)
    True
    """
    return pending and (end_of_input or timer_ms >= last_flush_ms + interval_ms)


def _rounded(values: np.ndarray) -> list:
    """float32 values as Python floats rounded to 7 decimals (compact JSON, float32 precision)."""
    return np.round(values.astype(np.float64), 7).tolist()
