"""Bounded event-time deduplication by ``event_id``: plain Python first, then the Flink operator.

Rule: the first occurrence of an ``event_id`` is kept and remembered until the watermark passes
``expiry = max(ts, watermark_at_arrival) + horizon``; every further occurrence that arrives while
it is remembered is a duplicate and is dropped. Because the expiry is measured in *event time*
(the watermark), the horizon holds however fast a replay runs; because every remembered id has an
event-time timer at its expiry that clears it, the state holds only the ids first seen within one
horizon of the watermark (bounded by ``rate x horizon``, not by the stream length).

>>> d = Deduplicator(horizon_ms=100)
>>> d.offer("a", ts=10), d.offer("a", ts=500), d.offer("b", ts=20)
(True, False, True)
>>> d.advance_watermark(109); sorted(d.state)
['a', 'b']
>>> d.advance_watermark(110); sorted(d.state)
['b']
>>> d.offer("a", ts=600)   # beyond the horizon: a new first occurrence
True
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

MIN_WATERMARK = -(2**63)


class Deduplicator:
    """Reference implementation of the dedup operator (one key space, one watermark)."""

    def __init__(self, horizon_ms: int) -> None:
        self.horizon_ms = horizon_ms
        self.watermark = MIN_WATERMARK
        self.state: dict[str, int] = {}  # event_id -> expiry (event time, ms)

    def expiry(self, ts: int) -> int:
        return max(ts, self.watermark) + self.horizon_ms

    def offer(self, event_id: str, ts: int) -> bool:
        """True when the event is kept (first occurrence), False for a duplicate."""
        if event_id in self.state:
            return False
        self.state[event_id] = self.expiry(ts)
        return True

    def advance_watermark(self, watermark: int) -> None:
        """Timers fire when the watermark reaches their time (Flink: timer <= watermark)."""
        self.watermark = max(self.watermark, watermark)
        for key in [k for k, exp in self.state.items() if exp <= self.watermark]:
            del self.state[key]


#: Columns of the operator's input and output rows (the cleaned event plus the ``late`` flag).
DEDUP_FIELDS = ("event_id", "user_id", "item_id", "event_type", "rating", "weight", "ts",
                "src_partition", "src_offset", "late")


def dedup_output_type():
    from pyflink.common import Types

    return Types.ROW_NAMED(list(DEDUP_FIELDS), [
        Types.STRING(), Types.STRING(), Types.STRING(), Types.STRING(), Types.DOUBLE(),
        Types.DOUBLE(), Types.LONG(), Types.INT(), Types.LONG(), Types.BOOLEAN()])


def make_dedup_function(horizon_ms: int, input_fields: list[str] | None = None,
                        counters_dir: str | None = None):
    """The Flink ``KeyedProcessFunction`` (key = event_id) implementing :class:`Deduplicator`.

    ``input_fields``: the names of the input row's fields (it must hold every DEDUP_FIELDS name);
    the output rows hold DEDUP_FIELDS in that order. An optional ``eager_wm`` input field is the
    watermark the source has already generated for this record's partition (sql/ingest.sql):
    the operator uses ``max(operator watermark, eager_wm)`` as "now", so its decisions do not
    depend on when periodic watermarks happen to reach it (an entry whose expiry has passed but
    whose timer has not fired yet counts as expired).

    Metrics (group ``streamrec_ingest``): ``kept``, ``duplicates``, ``late`` (kept events flagged
    late), ``dedup_state_entries`` (ids currently remembered by this subtask, a gauge-like
    counter: +1 per remembered id, -1 per expired one). With ``counters_dir`` each subtask also
    writes its final counts to ``<counters_dir>/dedup-<subtask>.json`` when it closes (used by
    the bounded job's summary line in local mode).
    """
    from pyflink.common import Row, Types
    from pyflink.datastream import KeyedProcessFunction
    from pyflink.datastream.state import ValueStateDescriptor

    names = list(input_fields or DEDUP_FIELDS)
    pick = [names.index(f) for f in DEDUP_FIELDS]  # input positions of the output columns
    ts_i, late_i = names.index("ts"), names.index("late")
    eager_i = names.index("eager_wm") if "eager_wm" in names else None

    class Dedup(KeyedProcessFunction):
        def open(self, runtime_context):
            self.seen = runtime_context.get_state(
                ValueStateDescriptor("first_seen_expiry", Types.PICKLED_BYTE_ARRAY()))
            try:
                self.subtask = str(runtime_context.get_index_of_this_subtask())
            except Exception:  # not exposed in thread mode: any name unique per subtask will do
                self.subtask = uuid.uuid4().hex[:12]
            # peak_entries: the most ids this subtask remembered at once (the state bound, tested)
            self.counts = {"kept": 0, "duplicates": 0, "late": 0, "expired": 0, "peak_entries": 0}
            self.metrics = {}
            try:
                group = runtime_context.get_metrics_group().add_group("streamrec_ingest")
                self.metrics = {name: group.counter(name) for name in ("kept", "duplicates", "late")}
                self.metrics["state"] = group.counter("dedup_state_entries")
            except Exception:  # metrics unavailable in this execution mode: counts still kept
                self.metrics = {}

        def _inc(self, name, by=1):
            if name in self.counts:
                self.counts[name] += by
            metric = self.metrics.get(name)
            if metric is not None:
                metric.inc(by)

        def process_element(self, value, ctx):
            watermark = ctx.timer_service().current_watermark()
            if eager_i is not None and value[eager_i] is not None:
                watermark = max(watermark, value[eager_i])
            expiry_seen = self.seen.value()
            if expiry_seen is not None and expiry_seen > watermark:
                self._inc("duplicates")
                return
            expiry = max(value[ts_i], watermark) + horizon_ms
            self.seen.update(expiry)
            ctx.timer_service().register_event_time_timer(expiry)
            self._inc("kept")
            self._inc("state")
            live = self.counts["kept"] - self.counts["expired"]
            if live > self.counts["peak_entries"]:
                self.counts["peak_entries"] = live
            if value[late_i]:
                self._inc("late")
            yield Row(*[value[i] for i in pick])

        def on_timer(self, timestamp, ctx):
            expiry = self.seen.value()
            if expiry is None or expiry > timestamp:
                return  # re-kept after expiry: a later timer clears the newer entry
            self.seen.clear()
            self._inc("expired")
            metric = self.metrics.get("state")
            if metric is not None:
                metric.dec()

        def close(self):
            if counters_dir:
                path = Path(counters_dir)
                path.mkdir(parents=True, exist_ok=True)
                tmp = path / f".dedup-{self.subtask}.json.tmp"
                tmp.write_text(json.dumps(self.counts))
                os.replace(tmp, path / f"dedup-{self.subtask}.json")

    return Dedup()
