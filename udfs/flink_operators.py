"""The thin Flink wrapper around the plain-Python shard (:class:`udfs.shard_model.ShardModel`).

:class:`ShardLearner` is keyed by shard and called once per micro-batch (a window of a shard's
cleaned events, aggregated in the JVM: sql/learner_batches.sql). Per call it reads the batch's
users from keyed MapState, lets the shard learn and score the batch, writes every changed user and
item back to MapState within the same call (PyFlink has no snapshot hook, so nothing lives only in
Python memory across a checkpoint), and emits one row per record: the batch's recommendations and,
at most every ``changelog_interval_ms``, the changed items and users for the ``model.items`` /
``model.users`` changelogs (and a tombstone for each item the state's TTL expired). Yielding rows
costs a few µs each, while unnesting one big string in SQL measured ~190 µs per event.

The item table is also cached in Python (the shard scores it every batch); it is rebuilt from
MapState when the operator opens, so a restore loses nothing. State: ``users`` (user id -> user
record), ``items`` (item id -> item record), both with the learner's TTL, ``changelog``
(items and users changed since the last changelog flush), ``reset-token`` (the last
``--from-version`` reset this shard applied: docs/registry.md) and ``exchanged`` (when the shard
last sent its item deltas): :func:`state_descriptors`. No state is pickled (restoring a
checkpoint must not run code): the records and the changelog are versioned bytes
(:mod:`udfs.state_codec`), the rest a STRING and a LONG.

One shard of several (``exchange_interval_ms`` > 0) also exchanges item deltas
(udfs/item_exchange.py): the micro-batch carries the other shards' delta records beside its
events, added before the events are learned; every ``exchange_interval_ms`` the shard emits its
own pending steps (kind ``item_delta``, keyed by its shard key) and writes the items back with
nothing pending, in the same call.
"""

from __future__ import annotations

import json
import logging
import time

import numpy as np
from pyflink.common import Row, Types
from pyflink.common.time import Duration, Time
from pyflink.datastream import KeyedProcessFunction, RuntimeContext
from pyflink.datastream.state import MapStateDescriptor, StateTtlConfig, ValueStateDescriptor

from streamrec.udfs import item_exchange, online_mf, state_codec
from streamrec.udfs.shard_model import Event, ShardModel, ShardSettings, decode_user

log = logging.getLogger("streamrec.operators")

#: The operator's output: one row per record, ``kind`` names the sink (SQL routes by it).
BATCH_OUTPUT = Types.ROW_NAMED(["kind", "k", "v"], [Types.STRING(), Types.STRING(), Types.STRING()])
RECOMMENDATION, ITEM, USER, ITEM_DELTA = "recommendation", "item", "user", "item_delta"
#: Fires at the final watermark of a bounded input only: flushes the last changelog records.
_END_OF_INPUT = 2**63 - 2
#: One encoder (json.dumps with options builds a new one per call).
_JSON = json.JSONEncoder(separators=(",", ":"))


def _ttl(ms: int) -> StateTtlConfig:
    # PyFlink 2.3 builds Duration.of_days(30) (the RocksDB periodic-compaction default) through
    # get_gateway() whenever "cleanup in background" is on or no periodic_compaction_time is
    # given. A gateway exists in a driver process and on the local mini-cluster (its JVM is the
    # driver's), but on a TaskManager of a real cluster get_gateway() tries to launch a JVM and the
    # operator's first state access fails (FileNotFoundError). So: background cleanup off, and its
    # two default strategies set explicitly (same Java TTL config as before); the Duration is a
    # placeholder because PyFlink never passes it on (neither to Java nor to the proto).
    return (StateTtlConfig.new_builder(Time.milliseconds(ms))
            .set_update_type(StateTtlConfig.UpdateType.OnCreateAndWrite)
            .set_state_visibility(StateTtlConfig.StateVisibility.NeverReturnExpired)
            .disable_cleanup_in_background()
            .cleanup_incrementally(5, False)
            .cleanup_in_rocksdb_compact_filter(1000, periodic_compaction_time=Duration(None))
            .build())


class ShardLearner(KeyedProcessFunction):
    """Input: one micro-batch of a shard per record (sql/learner_batches.sql), the events' JSON
    arrays ``[event_id, user_id, item_id, weight, ts, src_partition, src_offset]``
    (:class:`udfs.shard_model.Event`) joined by commas, in arrival order."""

    def __init__(self, learner: dict, settings: dict, state_ttl_ms: int, changelog_interval_ms: int,
                 serve: str, registry_dir: str, swap_check_interval_s: float, provider: str,
                 ort_threads: int, reset_to: dict | None = None, exchange_interval_ms: int = 0):
        #: ``{"version", "token"}``: put that registry version's vectors back once per shard
        #: (``streamrec run --from-version``); the token, kept in state, makes it once per run
        self.reset_to = reset_to
        self.learner = learner
        self.settings = settings
        self.state_ttl_ms = state_ttl_ms
        self.changelog_interval_ms = changelog_interval_ms
        self.serve = serve
        self.registry_dir = registry_dir
        self.swap_check_interval_s = swap_check_interval_s
        self.provider = provider
        self.ort_threads = ort_threads
        #: > 0: one shard of several, sending its item deltas this often (udfs/item_exchange.py)
        self.exchange_interval_ms = exchange_interval_ms

    def open(self, ctx: RuntimeContext):
        from streamrec.model.scoring import LiveScorer, choose_providers

        self.params = online_mf.LearnerParams.of(None, **self.learner)
        self.providers = choose_providers(self.provider)
        self.scorer = LiveScorer(self.params.dim, self.providers, self.ort_threads)
        log.warning("shard learner: onnxruntime providers %s, serving %s", self.providers, self.serve)
        states = state_descriptors(self.state_ttl_ms)
        self.users = _bytes_state(ctx.get_map_state(states["users"]))
        self.items = _bytes_state(ctx.get_map_state(states["items"]))
        self.changelog = _bytes_state(ctx.get_state(states["changelog"]))
        self.timed_keys: set[int] = set()  # keys whose end-of-input timer is registered since open()
        self.shards: dict[int, ShardModel] = {}  # per shard key (a subtask may own several)
        self.reset_applied = ctx.get_state(states["reset-token"])
        self.exchanged = ctx.get_state(states["exchanged"])
        self.reset_tables = None
        self.reset_keys: set[int] = set()  # keys known reset: the state is read once per key, not per batch
        if self.reset_to:
            from streamrec.model.item_table import load_item_table
            from streamrec.model.registry import Registry
            from streamrec.model.user_table import load_user_table

            registry, version = Registry(self.registry_dir), self.reset_to["version"]
            self.reset_tables = (load_item_table(registry, version, expected_dim=self.params.dim),
                                 load_user_table(registry, version, expected_dim=self.params.dim).as_dict())
        self.watcher = None
        if self.serve == "registry":
            from streamrec.model.registry import CurrentModelWatcher, Registry

            self.registry = Registry(self.registry_dir)
            self.watcher = CurrentModelWatcher(self.registry, self._load_version,
                                               interval_s=self.swap_check_interval_s)
        metrics = ctx.get_metrics_group()
        self.learned = metrics.counter("events_learned")
        self.bot_skipped = metrics.counter("bot_events_not_learned")
        self.scored = metrics.counter("recommendations")
        self.unservable = metrics.counter("events_without_recommendation")
        self.batches = metrics.counter("batches")
        self.swaps = metrics.counter("model_swaps")
        # the item exchange: delta records sent and applied, and how old the newest and the oldest
        # step of the deltas applied by the last batch were (processing time; 0 before any)
        self.deltas_sent = metrics.counter("item_deltas_sent")
        self.deltas_applied = metrics.counter("item_deltas_applied")
        # (counters moved to a value, not gauges: Flink's metric thread calls a Python gauge
        # without the interpreter's lock in thread mode, and a TaskManager died of it: SIGSEGV)
        self.exchange_lag = {name: _ValueCounter(metrics.counter(metric)) for name, metric in (
            ("lag", "item_exchange_lag_ms"), ("staleness", "item_staleness_ms"),
            ("staleness_max", "item_staleness_max_ms"))}
        # where a batch's time goes (thread CPU µs, summed): read keyed state, learn and score,
        # write keyed state, encode and emit records
        self.phases = {name: metrics.counter(f"{name}_us") for name in ("state_read", "learn_score",
                                                                        "state_write", "emit")}
        self.phase_totals = dict.fromkeys(self.phases, 0)

    def _load_version(self, model_bytes: bytes, meta: dict):
        from streamrec.model.item_table import load_item_table
        from streamrec.model.scoring import ScoringModel

        import onnxruntime as ort

        options = ort.SessionOptions()
        if self.ort_threads:
            options.intra_op_num_threads = self.ort_threads
        table = load_item_table(self.registry, meta["version"], expected_dim=self.params.dim)
        return ScoringModel.from_bytes(model_bytes, meta, providers=self.providers, session_options=options), table

    def _shard(self, key: int) -> ShardModel:
        shard = self.shards.get(key)
        if shard is None:
            # the changelog first: state of older code (pickled) fails here with its sentence
            self._pending()
            shard = ShardModel(self.params, ShardSettings(**self.settings), self.scorer)
            n = shard.restore_items(self.items.items())
            log.warning("shard %s: %d items restored from keyed state", key, n)
            self.shards[key] = shard
        if self.watcher is not None:
            self.watcher.maybe_check()  # between batches: a swap never splits a batch
            version = self.watcher.version
            if version is not None and (shard.serving is None or shard.serving.version != version):
                scoring, table = self.watcher.model
                shard.serving = shard.registry_catalogue(scoring, table.popularity)
                self.swaps.inc()
                log.warning("shard %s: now serving model %s", key, version)
        return shard

    def process_element(self, events_line, ctx):
        key = ctx.get_current_key()
        if key not in self.timed_keys:
            # processing-time timers do not fire after a bounded input ends; the final watermark
            # does: it flushes the changelog's last records (once per key and open())
            ctx.timer_service().register_event_time_timer(_END_OF_INPUT)
            self.timed_keys.add(key)
        entries = json.loads("[" + events_line + "]")
        events = [Event(*e) for e in entries if isinstance(e, list)]
        deltas = [item_exchange.decode(e, self.params.dim) for e in entries if isinstance(e, dict)]
        if not events and not deltas:
            return
        shard = self._shard(key)
        # before learning: a --from-version reset, and an expired item starts afresh
        rows = self._reset(key, shard) + self._expire(shard)
        now_ms = int(time.time() * 1000)
        received = {}
        if deltas:  # the other shards' steps first: the batch learns against them
            received = shard.apply_deltas(deltas, now_ms)
            self._received(deltas, now_ms)
        if events:  # (an item both received and learned is written once, as learned)
            rows += self._learn(ctx, shard, events, now_ms, received)
        elif received:
            self.items.put_all(received)
        if self.exchange_interval_ms:
            rows += self._send_deltas(ctx, key, shard, now_ms, timer=False)
        yield from rows

    def _learn(self, ctx, shard: ShardModel, events: list, now_ms: int, received: dict) -> list:
        t0 = time.thread_time_ns()
        records = {u: self.users.get(u) for u in {e.user_id for e in events}}
        t1 = time.thread_time_ns()
        out = shard.process(events, records, now_ms)
        t2 = time.thread_time_ns()
        self.users.put_all(out.user_records)
        self.items.put_all({**received, **out.item_records})
        t3 = time.thread_time_ns()
        self._spent("state_read", t1 - t0)
        self._spent("learn_score", t2 - t1)
        self._spent("state_write", t3 - t2)
        items, users, last_flush = self._pending()
        items |= out.changed_items
        users |= out.changed_users
        self.learned.inc(out.learned)
        self.bot_skipped.inc(out.bot_events)
        self.unservable.inc(out.unservable)
        self.scored.inc(len(out.recommendations))
        self.batches.inc()
        t4 = time.thread_time_ns()
        rows = [Row(RECOMMENDATION, rec["user_id"], _JSON.encode(rec)) for rec in out.recommendations]
        if now_ms - last_flush >= self.changelog_interval_ms:
            self.changelog.update(state_codec.encode_changelog(set(), set(), now_ms))
            rows += self._changelog(shard, items, users, max(e.ts for e in events))
        else:
            self.changelog.update(state_codec.encode_changelog(items, users, last_flush))
            ctx.timer_service().register_processing_time_timer(last_flush + self.changelog_interval_ms)
        self._spent("emit", time.thread_time_ns() - t4)
        return rows

    def _pending(self) -> tuple[set, set, int]:
        """The changelog state: the item and user ids changed since the last flush, and its time."""
        raw = self.changelog.value()
        return (set(), set(), 0) if raw is None else state_codec.decode_changelog(raw)

    def _send_deltas(self, ctx, key: int, shard: ShardModel, now_ms: int, timer: bool) -> list:
        """The shard's pending item steps as delta records, once per exchange interval (a timer
        sends what the last batches left); the items are written back with nothing pending."""
        last = self.exchanged.value() or 0
        if now_ms - last < self.exchange_interval_ms:
            if not timer:
                ctx.timer_service().register_processing_time_timer(last + self.exchange_interval_ms)
            return []
        deltas, records = shard.take_deltas(key, last, now_ms)
        if deltas is None:
            return []
        self.items.put_all(records)
        self.exchanged.update(now_ms)
        lines = item_exchange.encode(deltas)
        self.deltas_sent.inc(len(lines))
        return [Row(ITEM_DELTA, str(key), line) for line in lines]

    def _received(self, deltas: list, now_ms: int) -> None:
        self.deltas_applied.inc(len(deltas))
        lag = max(now_ms - d.emitted_ms for d in deltas)
        # the oldest step a delta can hold was taken just after its sender's previous send
        staleness = max([now_ms - d.since_ms for d in deltas if d.since_ms], default=lag)
        metric = self.exchange_lag
        metric["lag"].set(lag)
        metric["staleness"].set(staleness)
        metric["staleness_max"].set(max(metric["staleness_max"].value, staleness))

    def _spent(self, phase: str, ns: int) -> None:
        self.phases[phase].inc(ns // 1000)
        self.phase_totals[phase] += ns // 1000

    def close(self):
        total = sum(self.phase_totals.values())
        if total:
            log.warning("shard learner CPU: %s", ", ".join(
                f"{k} {v / 1e6:.1f} s ({100 * v / total:.0f} %)" for k, v in self.phase_totals.items()))

    def on_timer(self, timestamp, ctx):
        key = ctx.get_current_key()
        items, users, last_flush = self._pending()
        changelog = changelog_due(timestamp, last_flush, self.changelog_interval_ms, bool(items or users),
                                  end_of_input=timestamp == _END_OF_INPUT)
        if not (changelog or self.exchange_interval_ms):
            return
        shard = self._shard(key)
        yield from self._reset(key, shard)  # a restored timer may fire before any batch
        now_ms = int(time.time() * 1000)
        if self.exchange_interval_ms:
            yield from self._send_deltas(ctx, key, shard, now_ms, timer=True)
        if changelog:
            self.changelog.update(state_codec.encode_changelog(set(), set(), now_ms))
            yield from self._changelog(shard, items, users, None)

    def _reset(self, key: int, shard: ShardModel) -> list:
        """Once per shard and run of ``--from-version``: the version's item and user vectors
        replace the shard's (state too), and every item and user goes to the changelogs, so the
        exporter's table becomes the version's; the items it lacks are tombstoned."""
        if self.reset_tables is None or key in self.reset_keys:
            return []
        if self.reset_applied.value() == self.reset_to["token"]:  # applied before a restore
            self.reset_keys.add(key)
            return []
        items, users = self.reset_tables
        dropped = shard.reset_vectors(items.item_ids.tolist(), items.vectors, items.bias)
        for item_id in dropped:
            self.items.remove(item_id)
        self.items.put_all(shard.items.encode(range(len(shard.items)), int(time.time() * 1000)))
        restored = {u: shard.reset_user(u, raw, users.get(u)) for u, raw in self.users.items()}
        self.users.put_all(restored)
        self.reset_applied.update(self.reset_to["token"])
        self.reset_keys.add(key)
        log.warning("shard: vectors of %s restored (%d items, %d of its %d users in it; %d items "
                    "it lacks dropped)", self.reset_to["version"], len(shard.items),
                    sum(u in users for u in restored), len(restored), len(dropped))
        return ([Row(ITEM, item_id, None) for item_id in dropped]
                + self._changelog(shard, set(shard.items.ids), set(restored), None))

    def _expire(self, shard: ShardModel) -> list:
        """Items keyed state's TTL expired (not written for ``state_ttl_ms``) leave the shard's
        table and the state; their tombstones go to the compacted model.items, so the next
        exported model drops them too."""
        out = []
        for item_id in shard.expire_items(int(time.time() * 1000)):
            self.items.remove(item_id)
            out.append(Row(ITEM, item_id, None))
        return out

    def _changelog(self, shard: ShardModel, items: set, users: set, ts: int | None) -> list:
        # vectorised: one rounding and one tolist() per flush, not a Python round() per float
        # (per record that cost ~90 µs; every item changes within a second at ~1,000 events/s)
        out = []
        table = shard.items
        ids = [i for i in sorted(items) if i in table.index]
        if ids:
            rows = np.fromiter((table.index[i] for i in ids), np.int64, len(ids))
            vectors = _rounded(table.vectors[rows])
            bias, popularity = _rounded(table.bias[rows]), _rounded(table.popularity[rows])
            updates = table.updates[rows].tolist()
            for n, item_id in enumerate(ids):
                out.append(Row(ITEM, item_id, _JSON.encode({
                    "item_id": item_id, "vector": vectors[n], "bias": bias[n], "updates": updates[n],
                    "popularity": popularity[n], "ts": ts})))
        records = [(u, decode_user(raw)) for u in sorted(users) if (raw := self.users.get(u)) is not None]
        if records:
            vectors = _rounded(np.stack([user.vector for _, user in records]))
            for (user_id, user), vector in zip(records, vectors):
                out.append(Row(USER, user_id, _JSON.encode({"user_id": user_id, "vector": vector,
                                                            "events": user.events, "ts": ts})))
        return out


class _ValueCounter:
    """A counter used as a gauge: :meth:`set` moves it to a value by the difference."""

    def __init__(self, counter) -> None:
        self.counter, self.value = counter, 0

    def set(self, value: int) -> None:
        value = int(value)
        if value > self.value:
            self.counter.inc(value - self.value)
        elif value < self.value:
            self.counter.dec(self.value - value)
        self.value = value


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


#: A state value of plain bytes: Java's ``byte[]``. PICKLED_BYTE_ARRAY had the same Java serializer,
#: so Flink restores older (pickled) state without complaint: the decoders refuse it (docs/reliability.md).
_BYTES = Types.PRIMITIVE_ARRAY(Types.BYTE())


def state_descriptors(ttl_ms: int) -> dict[str, MapStateDescriptor | ValueStateDescriptor]:
    """Every keyed state of :class:`ShardLearner`, by name; the two maps expire by ``ttl_ms``.
    None is pickled: the bytes of the maps and of ``changelog`` are versioned records."""
    return {"users": _map_state("users", ttl_ms), "items": _map_state("items", ttl_ms),
            "changelog": ValueStateDescriptor("changelog", _BYTES),
            "reset-token": ValueStateDescriptor("reset-token", Types.STRING()),
            "exchanged": ValueStateDescriptor("exchanged", Types.LONG())}


def _map_state(name: str, ttl_ms: int) -> MapStateDescriptor:
    """A map of id -> bytes whose entries expire ``ttl_ms`` after their last write."""
    desc = MapStateDescriptor(name, Types.STRING(), _BYTES)
    desc.enable_time_to_live(_ttl(ttl_ms))
    return desc


def _bytes_state(state):
    """``state`` (a value or a map of :data:`_BYTES`) passing Python ``bytes`` as they are.

    PyFlink 2.3's thread mode converts a primitive array element by element: ``bytes`` become a
    tuple of ints, which Java refuses (``ClassCastException: [Ljava.lang.Object; cannot be cast
    to [B``), while pemja itself maps ``bytes`` to ``byte[]`` and back; so the value converters
    become the identity. Process mode's coder for ``byte[]`` (``BinaryCoder``) needs nothing."""
    if type(state).__module__ != "pyflink.fn_execution.datastream.embedded.state_impl":
        return state
    # imported here: the module looks up Java classes at import, so it loads inside the JVM only
    from pyflink.fn_execution.embedded.converters import IdentityDataConverter

    identity = IdentityDataConverter()
    if hasattr(state, "_v_converter"):  # a map: get/put convert the value, put_all the whole dict
        if type(state._k_converter) is not IdentityDataConverter:
            raise TypeError(f"a map of bytes needs keys PyFlink passes as they are, not {state._k_converter}")
        state._v_converter = identity
    if not hasattr(state, "_value_converter"):
        raise TypeError(f"PyFlink's thread-mode state {type(state).__name__} has no value converter "
                        "to replace: check _bytes_state against this PyFlink version")
    state._value_converter = identity
    return state


def _rounded(values: np.ndarray) -> list:
    """float32 values as Python floats rounded to 7 decimals (compact JSON, float32 precision)."""
    return np.round(values.astype(np.float64), 7).tolist()
