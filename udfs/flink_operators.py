"""Thin Flink wrappers around the plain-Python learning and scoring logic.

- :class:`UserLearner` (keyed by user_id): one pickled ValueState per user holding the serialised
  :class:`udfs.online_mf.UserState` (vector, AdaGrad accumulator, recent items), plus a small
  ValueState for the bot-rate limiter and the refresh throttle. It learns against the item
  snapshot of the CURRENT registry version (re-read when CURRENT changes) and emits: scoring
  requests (main output), item updates and user-vector changes (side outputs).
- :class:`ItemLearner` (keyed by item_id): the item's :class:`ItemState`; applies item updates and
  emits the item to the ``model.items`` changelog at most once per ``item_emit_interval_ms`` of
  event time (an event-time timer flushes the last change, so the final state always goes out).
- :class:`Scorer` (keyed by a shard): buffers requests in ListState (so a checkpoint never loses
  a buffered request), scores up to ``batch_size`` at once with onnxruntime, flushing at the
  batch size, after ``batch_timeout_ms`` of processing time, or when the watermark passes the
  buffered events (which also flushes everything at the end of a bounded input). It hot-swaps
  the model between batches when CURRENT changes; a refused (corrupt) version keeps the old one.

Records between operators are tuples in ``Types.PICKLED_BYTE_ARRAY()`` (thread mode handles them;
numpy arrays travel as float32 bytes to keep them small).
"""

from __future__ import annotations

import json
import logging
import time
import zlib

import numpy as np
from pyflink.common import Types
from pyflink.common.time import Duration, Time
from pyflink.datastream import KeyedProcessFunction, OutputTag, RuntimeContext
from pyflink.datastream.state import ListStateDescriptor, StateTtlConfig, ValueStateDescriptor

from udfs import online_mf
from udfs.embeddings import init_item_state, init_user_state
from udfs.recommend import PopularityList, ScoringRequest, recommend_batch

log = logging.getLogger("streamrec.operators")

ITEM_UPDATES = OutputTag("item-updates", Types.PICKLED_BYTE_ARRAY())
USER_CHANGES = OutputTag("user-changes", Types.ROW_NAMED(["k", "v"], [Types.STRING(), Types.STRING()]))
KV_TYPE = Types.ROW_NAMED(["k", "v"], [Types.STRING(), Types.STRING()])

_REFRESH_CHECK_S = 1.0


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


def _pickled_state(ctx: RuntimeContext, name: str, ttl_ms: int):
    """A pickled ValueState that expires ``ttl_ms`` after its last write."""
    desc = ValueStateDescriptor(name, Types.PICKLED_BYTE_ARRAY())
    desc.enable_time_to_live(_ttl(ttl_ms))
    return ctx.get_state(desc)


class _RegistryView:
    """The CURRENT registry version's item table, re-read when CURRENT changes."""

    def __init__(self, registry_dir: str, dim: int):
        from model.registry import CurrentModelWatcher, Registry

        self.dim = dim
        self.registry = Registry(registry_dir)
        self.watcher = CurrentModelWatcher(self.registry, self._load, interval_s=_REFRESH_CHECK_S)

    def _load(self, model_bytes: bytes, meta: dict):
        from model.item_table import load_item_table

        table = load_item_table(self.registry, meta["version"], expected_dim=self.dim)
        return model_bytes, meta, table

    def current(self):
        self.watcher.maybe_check()
        return self.watcher.version, self.watcher.model


class UserLearner(KeyedProcessFunction):
    """Input rows: (event_id, user_id, item_id, event_type, rating, weight, ts, src_partition, src_offset)."""

    def __init__(self, learner: dict, registry_dir: str, state_ttl_ms: int, user_emit_interval_ms: int,
                 min_refresh_interval_ms: int, bot_events_per_minute: float, exclude_bots: bool):
        self.learner = learner
        self.registry_dir = registry_dir
        self.state_ttl_ms = state_ttl_ms
        self.user_emit_interval_ms = user_emit_interval_ms
        self.min_refresh_interval_ms = min_refresh_interval_ms
        self.bot_limit = bot_events_per_minute
        self.exclude_bots = exclude_bots

    def open(self, ctx: RuntimeContext):
        self.params = online_mf.LearnerParams.of(None, **self.learner)
        # One state per user (one RocksDB read + write per event): (serialised UserState, minute
        # bucket, events in it, last scored ts, last emitted-to-changelog ts).
        self.user_state = _pickled_state(ctx, "user", self.state_ttl_ms)
        self.view = _RegistryView(self.registry_dir, self.params.dim)
        self.snapshot_version = None
        self.snapshot = online_mf.ItemSnapshot.empty(self.params.dim)
        metrics = ctx.get_metrics_group()
        self.learned = metrics.counter("events_learned")
        self.bot_skipped = metrics.counter("bot_events_not_learned")
        self.throttled = metrics.counter("refresh_throttled")

    def _refresh_snapshot(self):
        version, loaded = self.view.current()
        if version is not None and version != self.snapshot_version:
            _bytes, _meta, table = loaded
            self.snapshot = online_mf.ItemSnapshot(list(table.item_ids), table.vectors, table.bias,
                                                   table.popularity, self.params.dim)
            self.snapshot_version = version

    def process_element(self, row, ctx):
        event_id, user_id, item_id, _etype, _rating, weight, ts, partition, offset = tuple(row)[:9]
        self._refresh_snapshot()
        raw, minute, in_minute, last_scored, last_emit = self.user_state.value() or (None, -1, 0, None, None)
        state = online_mf.user_state_from_bytes(raw) if raw is not None else init_user_state(user_id, self.params)
        bucket = ts // 60_000
        in_minute = in_minute + 1 if bucket == minute else 1
        is_bot = in_minute > self.bot_limit
        if is_bot and self.exclude_bots:
            self.bot_skipped.inc()
        else:
            state, updates = online_mf.user_step(state, item_id, weight, event_id, self.snapshot, self.params)
            raw = online_mf.user_state_to_bytes(state)
            self.learned.inc()
            sent = updates[0].user_vector.astype(np.float32).tobytes()  # one vector for all of them
            for upd in updates:
                yield ITEM_UPDATES, (upd.item_id, sent, upd.coef, upd.weight, upd.event_id, upd.positive, ts)
            if last_emit is None or ts - last_emit >= self.user_emit_interval_ms:
                last_emit = ts
                yield USER_CHANGES, _kv(user_id, {"user_id": user_id, "vector": _floats(state.vector),
                                                  "events": state.events, "ts": ts})
        # abs(): at parallelism > 1 a user's events can arrive out of event-time order (dedup is
        # keyed by event_id, so they reach this subtask over several channels); an older event
        # must not count as "too soon" (with the default interval 0 it was silently unscored).
        if last_scored is not None and abs(ts - last_scored) < self.min_refresh_interval_ms:
            self.throttled.inc()
        else:
            last_scored = ts if last_scored is None else max(last_scored, ts)
            yield (zlib.crc32(user_id.encode()),
                   (user_id, state.vector.astype(np.float32).tobytes(), list(state.recent), state.events,
                    event_id, partition, offset, ts))
        self.user_state.update((raw, bucket, in_minute, last_scored, last_emit))


class ItemLearner(KeyedProcessFunction):
    """Input: item updates from UserLearner; output: changelog rows (item_id, json)."""

    def __init__(self, learner: dict, state_ttl_ms: int, emit_interval_ms: int):
        self.learner = learner
        self.state_ttl_ms = state_ttl_ms
        self.emit_interval_ms = emit_interval_ms

    def open(self, ctx: RuntimeContext):
        self.params = online_mf.LearnerParams.of(None, **self.learner)
        # One state per item: (serialised ItemState, last emitted event ts, pending timer ts or
        # None, last update ts) -- one RocksDB read + write per update.
        self.item_state = _pickled_state(ctx, "item", self.state_ttl_ms)
        self.updates = ctx.get_metrics_group().counter("item_updates")
        self.emitted = ctx.get_metrics_group().counter("item_changes_emitted")

    def process_element(self, upd, ctx):
        item_id, vec_bytes, coef, weight, event_id, positive, ts = upd
        raw, last_emit, timer, _ = self.item_state.value() or (None, None, None, None)
        state = online_mf.item_state_from_bytes(raw) if raw is not None else init_item_state(item_id, self.params)
        update = online_mf.ItemUpdate(item_id, np.frombuffer(vec_bytes, dtype=np.float32), coef, weight,
                                      event_id, positive)
        state = online_mf.item_step(state, update, self.params)
        raw = online_mf.item_state_to_bytes(state)
        self.updates.inc()
        if last_emit is None or ts - last_emit >= self.emit_interval_ms:
            self.item_state.update((raw, ts, timer, ts))
            self.emitted.inc()
            yield _item_change(item_id, state, ts)
        else:
            if timer is None:
                timer = last_emit + self.emit_interval_ms
                ctx.timer_service().register_event_time_timer(timer)
            self.item_state.update((raw, last_emit, timer, ts))

    def on_timer(self, timestamp, ctx):
        raw, _last_emit, timer, last_update = self.item_state.value() or (None, None, None, None)
        if raw is None or timer is None:
            return
        self.item_state.update((raw, max(last_update, timestamp), None, last_update))
        self.emitted.inc()
        yield _item_change(ctx.get_current_key(), online_mf.item_state_from_bytes(raw), last_update)


class Scorer(KeyedProcessFunction):
    """Input: (shard, request tuple); output rows (user_id, recommendation json)."""

    def __init__(self, registry_dir: str, top_k: int, batch_size: int, batch_timeout_ms: int,
                 swap_check_interval_s: float, cold_start_min_events: int, provider: str,
                 ort_threads: int, dim: int):
        self.registry_dir = registry_dir
        self.dim = dim  # the learner's: a version of another dimension is refused, never served
        self.top_k = top_k
        self.batch_size = batch_size
        self.batch_timeout_ms = batch_timeout_ms
        self.swap_check_interval_s = swap_check_interval_s
        self.cold_start_min_events = cold_start_min_events
        self.provider = provider
        self.ort_threads = ort_threads

    def open(self, ctx: RuntimeContext):
        from model.registry import CurrentModelWatcher, Registry
        from model.scoring import choose_providers

        self.providers = choose_providers(self.provider)
        log.warning("scorer: onnxruntime providers %s", self.providers)
        self.registry = Registry(self.registry_dir)
        self.watcher = CurrentModelWatcher(self.registry, self._load, interval_s=self.swap_check_interval_s)
        self.buffer = ctx.get_list_state(ListStateDescriptor("scoring-buffer", Types.PICKLED_BYTE_ARRAY()))
        self.count = ctx.get_state(ValueStateDescriptor("scoring-count", Types.PICKLED_BYTE_ARRAY()))
        metrics = ctx.get_metrics_group()
        self.scored = metrics.counter("recommendations")
        self.batches = metrics.counter("scoring_batches")
        self.swaps = metrics.counter("model_swaps")
        self.current_version = None

    def _load(self, model_bytes: bytes, meta: dict):
        from model.item_table import load_item_table
        from model.scoring import ScoringModel

        import onnxruntime as ort

        options = ort.SessionOptions()
        if self.ort_threads:
            options.intra_op_num_threads = self.ort_threads
        table = load_item_table(self.registry, meta["version"], expected_dim=self.dim)
        scoring = ScoringModel.from_bytes(model_bytes, meta, providers=self.providers, session_options=options)
        return scoring, PopularityList.from_arrays(list(table.item_ids), table.popularity, meta["version"])

    def process_element(self, value, ctx):
        _shard, request = value
        self.buffer.add(request)
        pending = (self.count.value() or 0) + 1
        if pending >= self.batch_size:
            yield from self._flush()
            return
        self.count.update(pending)
        if pending == 1:
            timers = ctx.timer_service()
            timers.register_processing_time_timer(timers.current_processing_time() + self.batch_timeout_ms)
            # processing-time timers do not fire after a bounded input ends; the final watermark does
            timers.register_event_time_timer(request[7])

    def on_timer(self, timestamp, ctx):
        if self.count.value():
            yield from self._flush()

    def _flush(self):
        requests = [ScoringRequest(u, np.frombuffer(v, dtype=np.float32), recent, events, eid, part, off, ts)
                    for (u, v, recent, events, eid, part, off, ts) in self.buffer.get()]
        self.buffer.clear()
        self.count.clear()
        if not requests:
            return
        self.watcher.maybe_check()  # between batches: a swap never splits a batch
        version, loaded = self.watcher.version, self.watcher.model
        if version != self.current_version and version is not None:
            self.swaps.inc()
            log.warning("scorer: now serving model %s", version)
            self.current_version = version
        model, popular = loaded if loaded is not None else (None, None)
        now_ms = int(time.time() * 1000)
        for rec in recommend_batch(requests, model, popular, self.top_k, self.cold_start_min_events, now_ms):
            rec["batch_size"] = len(requests)
            yield _kv(rec["user_id"], rec)
        self.batches.inc()
        self.scored.inc(len(requests))


def _floats(vec: np.ndarray) -> list[float]:
    return [round(float(x), 7) for x in vec]


def _item_change(item_id: str, state: online_mf.ItemState, ts: int):
    return _kv(item_id, {"item_id": item_id, "vector": _floats(state.vector), "bias": float(state.bias),
                         "updates": state.updates, "popularity": float(state.popularity), "ts": ts})


def _kv(key: str, value: dict):
    from pyflink.common import Row

    return Row(k=key, v=json.dumps(value, separators=(",", ":")))
