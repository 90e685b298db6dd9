"""The Flink operator of the shard learner: a thin wrapper around :class:`udfs.learner_core.LearnerCore`.

:class:`ShardLearner` is keyed by shard and called once per micro-batch (a window of a shard's
cleaned events, aggregated in the JVM: sql/learner_batches.sql). As PyFlink's own
``state_access.py`` example: :meth:`ShardLearner.open` builds the state descriptors
(:func:`state_descriptors`) and the core; each call hands the key, its state and the time to the
core and emits what it returns, one row per record (``kind`` names the sink: SQL routes by it),
registering its timers and counting its metrics. Yielding rows costs a few µs each, while
unnesting one big string in SQL measured ~190 µs per event.

State: ``users`` (user id -> user record), ``items`` (item id -> item record), both with the
learner's TTL, ``changelog`` (items and users changed since the last changelog flush),
``reset-token`` (the last ``--from-version`` reset this shard applied: docs/registry.md) and
``exchanged`` (when the shard last sent its item deltas). No state is pickled (restoring a
checkpoint must not run code): the records and the changelog are versioned bytes
(:mod:`udfs.state_codec`), the rest a STRING and a LONG.
"""

from __future__ import annotations

import logging
import time

from pyflink.common import Row, Types
from pyflink.common.time import Duration, Time
from pyflink.datastream import KeyedProcessFunction, RuntimeContext
from pyflink.datastream.state import MapStateDescriptor, StateTtlConfig, ValueStateDescriptor

from streamrec.udfs.learner_core import COUNTERS, GAUGES, LearnerCore, LearnerSettings, ShardState, StepOutput

log = logging.getLogger("streamrec.operators")

#: The operator's output: one row per record, ``kind`` names the sink (SQL routes by it).
BATCH_OUTPUT = Types.ROW_NAMED(["kind", "k", "v"], [Types.STRING(), Types.STRING(), Types.STRING()])
#: Fires at the final watermark of a bounded input only: flushes the last changelog records.
_END_OF_INPUT = 2**63 - 2


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
    (:class:`udfs.base.Event`) and the other shards' item deltas (JSON objects) joined by
    commas, in arrival order. Output: :data:`BATCH_OUTPUT` rows."""

    def __init__(self, settings: LearnerSettings):
        self.settings = settings

    def open(self, ctx: RuntimeContext):
        states = state_descriptors(self.settings.state_ttl_ms)
        # the same state objects serve every key: Flink scopes them to the current one
        self.state = ShardState(users=_bytes_state(ctx.get_map_state(states["users"])),
                                items=_bytes_state(ctx.get_map_state(states["items"])),
                                changelog=_bytes_state(ctx.get_state(states["changelog"])),
                                reset_token=ctx.get_state(states["reset-token"]),
                                exchanged=ctx.get_state(states["exchanged"]))
        self.core = LearnerCore(self.settings)
        metrics = ctx.get_metrics_group()
        self.counters = {name: metrics.counter(name) for name in COUNTERS}
        # (counters moved to a value, not gauges: Flink's metric thread calls a Python gauge
        # without the interpreter's lock in thread mode, and a TaskManager died of it: SIGSEGV)
        self.gauges = {name: _ValueCounter(metrics.counter(name)) for name in GAUGES}
        self.timed_keys: set[int] = set()  # keys whose end-of-input timer is registered since open()

    def process_element(self, batch: str, ctx: KeyedProcessFunction.Context):
        key = ctx.get_current_key()
        if key not in self.timed_keys:
            # processing-time timers do not fire after a bounded input ends; the final watermark
            # does: it flushes the changelog's last records (once per key and open())
            ctx.timer_service().register_event_time_timer(_END_OF_INPUT)
            self.timed_keys.add(key)
        yield from self._emit(ctx, self.core.on_batch(key, self.state, batch, _now_ms()))

    def on_timer(self, timestamp: int, ctx: KeyedProcessFunction.OnTimerContext):
        yield from self._emit(ctx, self.core.on_timer(ctx.get_current_key(), self.state, timestamp, _now_ms(),
                                                      end_of_input=timestamp == _END_OF_INPUT))

    def _emit(self, ctx, out: StepOutput) -> list[Row]:
        timers = ctx.timer_service()
        for at in out.timers:
            timers.register_processing_time_timer(at)
        for name, n in out.counts.items():
            self.counters[name].inc(n)
        for name, value in out.gauges.items():
            self.gauges[name].set(value)
        return [Row(kind, key, value) for kind, key, value in out.records]

    def close(self):
        summary = self.core.cpu_summary() if hasattr(self, "core") else ""  # (open() may have failed)
        if summary:
            log.warning("shard learner CPU: %s", summary)


def _now_ms() -> int:
    return int(time.time() * 1000)


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
