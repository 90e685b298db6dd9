"""The exporter sidecar: Kafka changelogs in, registry versions out (``streamrec exporter``).

A long-running process next to the Flink job (not part of it). It consumes, read_committed:

=====================  ===========  =============================================================
topic (config key)     key          value (JSON) and what the exporter keeps
=====================  ===========  =============================================================
``model_items``        item_id      ``{"item_id", "vector": [float], "bias", "updates", "ts"}``:
                                    the latest record per item (offset order; a null value, i.e.
                                    a tombstone, deletes the item)
``model_users``        user_id      ``{"user_id", "vector": [float], "events", "ts"}``: the latest
                                    user vectors (used by the quality gate only)
``features_item``      item_id      at least :data:`FEATURE_ITEM_ID` and
                                    :data:`FEATURE_POPULARITY`: the latest popularity per item
``clean``              user_id      cleaned events ``{"event_id", "user_id", "item_id", ...}``:
                                    a ring buffer of the last ``exporter.gate_events`` events and
                                    bounded per-user sets of seen items (for the gate)
=====================  ===========  =============================================================

The three changelogs are read from the beginning at start (so a restarted exporter rebuilds the
full item table); ``events.clean`` from :data:`EVENTS_LOOKBACK` x ``gate_events`` records before
the end of each partition. Offsets are never committed: the exporter's state is derived, not
owned. Records that do not parse, lack a field or carry a vector of the wrong dimension
(``learner.dim``) are counted and skipped (the first few per topic are logged).

**Export.** After catching up to the end offsets present at start, and then every
``exporter.interval_s`` seconds or ``exporter.every_n_changes`` item changes, whichever comes
first, and only if an item or a popularity changed since the last export:

1. arrays in **sorted item-id order** (row *i* = ``item_ids[i]``): vectors, biases, popularity
   (0 for items without features), prior = :func:`model.onnx_model.popularity_prior`;
2. :func:`model.onnx_model.export_model_bytes` with ``prior_weight = learner.popularity_prior``
   (the same alpha the learner scores with: one setting, so training and serving agree);
3. :meth:`Registry.publish` with meta ``dim``, ``item_ids``, ``training_position`` (see
   :meth:`Exporter.training_position`), ``exporter_config`` and the ``items.npz`` attachment
   (:mod:`model.item_table`);
4. the quality gate (:func:`model.gate.run_gate`, ``exporter.top_k``, ``exporter.gate_margin``)
   on the buffered events with the latest user vectors (protocol: docs/registry.md, "The
   exporter's gate inputs"); the first version is promoted. ``force`` promotes regardless, with
   actor ``cli/force`` in the registry log (the figures are still computed and recorded);
5. ``enforce_retention(exporter.retention)`` and ``clean_staging()``.

One log line per export. SIGTERM / SIGINT stop the loop after the current export (a second
signal interrupts). The gate runs on the CPU provider: it measures ranking quality, which does not
depend on the provider, and it must not compete with scoring for a GPU.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import signal
import threading
import time
import uuid
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import numpy as np

from model.gate import evaluate, gate_decision, run_gate
from model.item_table import ITEMS_ATTACHMENT, ItemTable
from model.onnx_model import export_model_bytes, popularity_prior
from model.registry import Registry
from model.scoring import CPU, ScoringModel

log = logging.getLogger(__name__)

#: Field names read from ``features.item`` records (the SQL stage's schema; change them here only).
FEATURE_ITEM_ID = "item_id"
FEATURE_POPULARITY = "popularity"

#: ``events.clean`` is read from this many times ``gate_events`` records before each partition's end.
EVENTS_LOOKBACK = 5
#: Bounds of the per-user seen-item sets (least recently active users / oldest items dropped).
SEEN_ITEMS_PER_USER = 500
SEEN_USERS_MAX = 200_000

#: Seconds before a failed export is retried (at most ``exporter.interval_s``).
RETRY_BACKOFF_S = 30.0

GATE_ACTOR = "gate"
FORCE_ACTOR = "cli/force"
GATE_PROVIDERS = [CPU]

#: Logical names of the four inputs -> TopicsConfig field.
INPUTS = {"items": "model_items", "users": "model_users", "features": "features_item", "events": "clean"}
_LOG_BAD_FIRST = 5


@dataclass
class ExportResult:
    """What one export did (also logged as one line)."""

    version: str
    items: int
    dim: int
    promoted: bool
    forced: bool
    reason: str
    metric: str
    candidate_recall: float
    current_recall: float | None
    current_version: str | None
    evaluated: int
    seconds: float
    deleted: list[str] = field(default_factory=list)
    held: bool = False  # not promoted because an operator's rollback pinned CURRENT

    def line(self) -> str:
        cur = "n/a" if self.current_recall is None else f"{self.current_recall:.4f}"
        vs = f" ({self.current_version})" if self.current_version else ""
        verdict = ("held (CURRENT is pinned)" if self.held else "promoted (forced)" if self.forced
                   else "promoted" if self.promoted else "rejected")
        return (f"export {self.version}: {self.items} items, dim {self.dim}, {self.metric} candidate "
                f"{self.candidate_recall:.4f} / current {cur}{vs} on {self.evaluated} events -> "
                f"{verdict} in {self.seconds:.2f} s")


def _vector(value: Any, dim: int) -> np.ndarray | None:
    if not isinstance(value, list) or len(value) != dim:
        return None
    try:
        vec = np.asarray(value, dtype=np.float32)
    except (TypeError, ValueError):
        return None
    return vec if np.isfinite(vec).all() else None


def _float(value: Any, default: float | None = None) -> float | None:
    if value is None:
        return default
    if isinstance(value, bool):
        return None
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


class ExporterState:
    """Everything the exporter keeps, fed one record at a time (no Kafka here: unit-testable).

    ``apply(kind, key, value)`` with ``kind`` one of :data:`INPUTS` and ``value`` the raw bytes
    (``None`` = tombstone) returns whether the record was used.
    """

    def __init__(self, dim: int, gate_events: int):
        self.dim = int(dim)
        self.items: dict[str, tuple[np.ndarray, float]] = {}
        self.users: dict[str, np.ndarray] = {}
        self.popularity: dict[str, float] = {}
        #: the learner's own popularity count per item (model.items ``popularity``)
        self.learned_popularity: dict[str, float] = {}
        self.events: deque[tuple[str, str]] = deque(maxlen=max(0, int(gate_events)))
        self.seen: OrderedDict[str, OrderedDict[str, None]] = OrderedDict()
        self.items_watermark: int | None = None
        self.events_watermark: int | None = None
        self.item_changes = 0      # since the last export
        self.feature_changes = 0   # since the last export
        self.records = {k: 0 for k in INPUTS}
        self.bad = {k: 0 for k in INPUTS}

    # ---------------------------------------------------------------- feeding
    def _bad(self, kind: str, why: str, raw: bytes | None) -> bool:
        self.bad[kind] += 1
        n = self.bad[kind]
        if n <= _LOG_BAD_FIRST or n % 1000 == 0:
            shown = raw[:200] if raw is not None else None
            log.warning("exporter: skipped %s record #%d (%s): %r", kind, n, why, shown)
        return False

    def apply(self, kind: str, key: bytes | None, value: bytes | None) -> bool:
        self.records[kind] += 1
        key_s = key.decode("utf-8", errors="replace") if key is not None else None
        if value is None:  # tombstone: the key is gone
            if key_s is None:
                return self._bad(kind, "tombstone without key", value)
            return self._tombstone(kind, key_s)
        try:
            rec = json.loads(value)
        except (ValueError, UnicodeDecodeError):
            return self._bad(kind, "not JSON", value)
        if not isinstance(rec, dict):
            return self._bad(kind, "not a JSON object", value)
        return getattr(self, f"_apply_{kind}")(rec, key_s, value)

    def _tombstone(self, kind: str, key: str) -> bool:
        if kind == "items":
            if self.items.pop(key, None) is not None:
                self.learned_popularity.pop(key, None)
                self.item_changes += 1
        elif kind == "users":
            self.users.pop(key, None)
        elif kind == "features":
            if self.popularity.pop(key, None) is not None:
                self.feature_changes += 1
        return True

    def _apply_items(self, rec: dict, key: str | None, raw: bytes) -> bool:
        item_id = rec.get("item_id", key)
        if not isinstance(item_id, str) or not item_id:
            return self._bad("items", "no item_id", raw)
        vec = _vector(rec.get("vector"), self.dim)
        if vec is None:
            return self._bad("items", f"vector is not {self.dim} finite numbers", raw)
        bias = _float(rec.get("bias"), 0.0)
        if bias is None:
            return self._bad("items", "bias is not a finite number", raw)
        self.items[item_id] = (vec, bias)
        learned = _float(rec.get("popularity"))
        if learned is not None:
            self.learned_popularity[item_id] = learned
        self.item_changes += 1
        ts = rec.get("ts")
        if isinstance(ts, int) and not isinstance(ts, bool):
            self.items_watermark = ts if self.items_watermark is None else max(self.items_watermark, ts)
        return True

    def _apply_users(self, rec: dict, key: str | None, raw: bytes) -> bool:
        user_id = rec.get("user_id", key)
        if not isinstance(user_id, str) or not user_id:
            return self._bad("users", "no user_id", raw)
        vec = _vector(rec.get("vector"), self.dim)
        if vec is None:
            return self._bad("users", f"vector is not {self.dim} finite numbers", raw)
        self.users[user_id] = vec
        return True

    def _apply_features(self, rec: dict, key: str | None, raw: bytes) -> bool:
        item_id = rec.get(FEATURE_ITEM_ID, key)
        if not isinstance(item_id, str) or not item_id:
            return self._bad("features", f"no {FEATURE_ITEM_ID}", raw)
        pop = _float(rec.get(FEATURE_POPULARITY))
        if pop is None:
            return self._bad("features", f"{FEATURE_POPULARITY} is not a finite number", raw)
        if self.popularity.get(item_id) != pop:
            self.popularity[item_id] = pop
            self.feature_changes += 1
        return True

    def _apply_events(self, rec: dict, key: str | None, raw: bytes) -> bool:
        user_id, item_id = rec.get("user_id"), rec.get("item_id")
        if not isinstance(user_id, str) or not user_id or not isinstance(item_id, str) or not item_id:
            return self._bad("events", "no user_id / item_id", raw)
        if self.events.maxlen:
            self.events.append((user_id, item_id))
        seen = self.seen.get(user_id)
        if seen is None:
            seen = self.seen[user_id] = OrderedDict()
            if len(self.seen) > SEEN_USERS_MAX:
                self.seen.popitem(last=False)
        else:
            self.seen.move_to_end(user_id)
        seen[item_id] = None
        seen.move_to_end(item_id)
        if len(seen) > SEEN_ITEMS_PER_USER:
            seen.popitem(last=False)
        ts = rec.get("ts")
        if isinstance(ts, int) and not isinstance(ts, bool):
            self.events_watermark = ts if self.events_watermark is None else max(self.events_watermark, ts)
        return True

    # ---------------------------------------------------------------- reading
    @property
    def changed(self) -> bool:
        return self.item_changes > 0 or self.feature_changes > 0

    def mark_exported(self) -> None:
        self.item_changes = 0
        self.feature_changes = 0

    def item_table(self) -> ItemTable:
        """The current items in sorted id order.

        Popularity is the learner's own count from ``model.items`` (the prior the factors were
        trained with, and what the shard learner samples negatives by), else the windowed popularity of
        ``features.item``, else 0."""
        ids = sorted(self.items)
        n = len(ids)
        vectors = np.zeros((n, self.dim), dtype=np.float32)
        bias = np.zeros(n, dtype=np.float32)
        for row, item_id in enumerate(ids):
            vectors[row], bias[row] = self.items[item_id]
        popularity = np.array([self.learned_popularity.get(i, self.popularity.get(i, 0.0)) for i in ids],
                              dtype=np.float32)
        return ItemTable(np.array(ids, dtype=str), vectors, bias, popularity)

    def gate_inputs(self) -> tuple[dict[str, np.ndarray], list[tuple[str, str]], dict[str, set[str]]]:
        """``(user_vectors, events, seen)`` for :func:`model.gate.run_gate`."""
        events = list(self.events)
        users = {u for u, _ in events}
        seen = {u: set(self.seen.get(u, ())) for u in users}
        return self.users, events, seen


class Exporter:
    """The sidecar. ``run()`` loops until stopped; ``export_once()`` catches up and exports once."""

    def __init__(
        self,
        cfg: Any,
        registry: Registry | None = None,
        force: bool = False,
        providers: Sequence[str] | None = None,
    ):
        self.cfg = cfg
        self.registry = registry if registry is not None else Registry(cfg.paths_resolved.registry_dir)
        self.force = force
        self.providers = list(providers) if providers is not None else list(GATE_PROVIDERS)
        topics = cfg.kafka.topics
        self.topics = {kind: getattr(topics, name) for kind, name in INPUTS.items()}
        if len(set(self.topics.values())) != len(self.topics):
            raise ValueError(f"the exporter's input topics must be distinct, got {self.topics}")
        self.kind_of = {topic: kind for kind, topic in self.topics.items()}
        self.state = ExporterState(cfg.learner.dim, cfg.exporter.gate_events)
        self.results: list[ExportResult] = []
        self.failures = 0
        self.positions: dict[tuple[str, int], int] = {}  # next offset to read, per topic/partition
        self._consumer = None
        self._stop = threading.Event()
        self._current: tuple[str | None, ScoringModel | None] = (None, None)
        self._last_export = float("-inf")
        self._retry_at = float("-inf")  # after a failed export: no new attempt before this

    # ---------------------------------------------------------------- Kafka
    def _connect(self) -> None:
        if self._consumer is not None:
            return
        from confluent_kafka import OFFSET_BEGINNING, TopicPartition

        from streamrec import kafka_io

        kafka_io.ensure_topics(self.cfg, list(self.topics.values()))
        cons = kafka_io.consumer(self.cfg, group=f"streamrec-exporter-{uuid.uuid4().hex[:8]}",
                                 from_beginning=True, read_committed=True,
                                 **{"enable.partition.eof": "true"})
        md = cons.list_topics(timeout=10).topics
        assignment = []
        lookback = EVENTS_LOOKBACK * self.cfg.exporter.gate_events
        for kind, topic in self.topics.items():
            if topic not in md or md[topic].error is not None:
                cons.close()
                raise kafka_io.KafkaSetupError(f"topic {topic} is not available")
            for p in sorted(md[topic].partitions):
                low, high = cons.get_watermark_offsets(TopicPartition(topic, p), timeout=10, cached=False)
                if kind == "events":
                    start = max(low, high - lookback)
                    assignment.append(TopicPartition(topic, p, start))
                else:
                    start = low
                    assignment.append(TopicPartition(topic, p, OFFSET_BEGINNING))
                self.positions[(topic, p)] = start
        cons.assign(assignment)
        self._consumer = cons
        log.info("exporter: reading %s", ", ".join(f"{k}={t}" for k, t in self.topics.items()))

    def close(self) -> None:
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None

    def _handle(self, msg) -> int:
        """Apply one message (or EOF event); returns 1 for a data record, 0 otherwise."""
        from confluent_kafka import KafkaError, KafkaException

        err = msg.error()
        if err is not None:
            if err.code() == KafkaError._PARTITION_EOF:
                tp = (msg.topic(), msg.partition())
                self.positions[tp] = max(self.positions.get(tp, 0), msg.offset())
                return 0
            if err.retriable() or not err.fatal():
                log.warning("exporter: consumer error: %s", err)
                return 0
            raise KafkaException(err)
        self.positions[(msg.topic(), msg.partition())] = msg.offset() + 1
        self.state.apply(self.kind_of[msg.topic()], msg.key(), msg.value())
        return 1

    def poll(self, timeout: float = 0.2, max_records: int = 1000) -> int:
        """Consume one batch; returns the number of data records applied."""
        self._connect()
        return sum(self._handle(m) for m in self._consumer.consume(max_records, timeout))

    def catch_up(self, timeout_s: float = 120.0) -> bool:
        """Consume until every partition reaches the end offset it has now (read_committed: the
        last stable offset). Returns False (and logs) if that takes longer than ``timeout_s``."""
        from confluent_kafka import TopicPartition

        self._connect()
        remaining = {}
        for (topic, p), pos in self.positions.items():
            _low, high = self._consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10,
                                                              cached=False)
            if high > pos:
                remaining[(topic, p)] = high
        deadline = time.monotonic() + timeout_s
        while remaining:
            if time.monotonic() > deadline:
                log.warning("exporter: not caught up after %.0f s (%d partitions behind)",
                            timeout_s, len(remaining))
                return False
            self.poll(0.2)
            for tp in [tp for tp, end in remaining.items() if self.positions.get(tp, 0) >= end]:
                del remaining[tp]
        return True

    def training_position(self) -> dict[str, Any]:
        """What the exported item table reflects: the next offset to read per partition of
        ``model.items`` (Kafka's committed-offset convention), the max event time ``ts`` of the
        item records consumed (``watermark``) and of the clean events (``events_watermark``)."""
        topic = self.topics["items"]
        offsets = {str(p): pos for (t, p), pos in sorted(self.positions.items()) if t == topic}
        return {"topic": topic, "offsets": offsets, "watermark": self.state.items_watermark,
                "events_watermark": self.state.events_watermark}

    # ---------------------------------------------------------------- export
    def _current_model(self) -> tuple[str | None, ScoringModel | None]:
        version = self.registry.current()
        if version is None:
            return None, None
        if self._current[0] == version:
            return self._current
        try:
            model = ScoringModel.from_registry(self.registry, version, providers=self.providers)
        except Exception as exc:  # corrupt / deleted: compare with nothing rather than stall
            log.error("exporter: CURRENT %s cannot be loaded (%s); gating the candidate without a "
                      "comparison model", version, exc)
            return version, None
        self._current = (version, model)
        return self._current

    def export(self) -> ExportResult | None:
        """Export the current state now (if there are items). See the module docstring."""
        t0 = time.monotonic()
        table = self.state.item_table()
        if len(table) == 0:
            log.info("exporter: no items yet, nothing to export")
            return None
        cfg = self.cfg.exporter
        model_bytes = export_model_bytes(table.vectors, table.bias, popularity_prior(table.popularity),
                                         self.cfg.learner.popularity_prior)
        user_vectors, events, seen = self.state.gate_inputs()
        meta = {
            "dim": table.dim,
            "item_ids": table.item_ids.tolist(),
            "training_position": self.training_position(),
            "exporter_config": {**cfg.model_dump(mode="json"),
                                "prior_weight": self.cfg.learner.popularity_prior},
            "extra": {
                "users_with_vectors": len(user_vectors),
                "items_with_features": int(sum(i in self.state.popularity for i in table.item_ids.tolist())),
                "gate_events": len(events),
                "skipped_records": dict(self.state.bad),
            },
        }
        version = self.registry.publish(model_bytes, meta, {ITEMS_ATTACHMENT: table.to_npz_bytes()})
        self.state.mark_exported()
        self._last_export = time.monotonic()
        candidate = ScoringModel.from_bytes(model_bytes, self.registry.read_meta(version), self.providers)
        current_version, current = self._current_model()
        k, margin = cfg.top_k, cfg.gate_margin
        pin = self.registry.pinned()
        if pin is not None:  # a rollback holds: keep exporting, promote nothing (not even --force)
            cand = evaluate(candidate, user_vectors, events, seen, k)
            cur = evaluate(current, user_vectors, events, seen, k) if current is not None else None
            reason = (f"held: CURRENT is pinned to {pin['version']} by {pin.get('actor')} "
                      f"({pin.get('reason')})")
            self.registry.hold(version, reason, figures={
                "metric": f"recall@{k}", "candidate": cand.recall,
                "current": cur.recall if cur else None, "current_version": current_version,
                "evaluated": cand.evaluated})
            promoted, cand_recall, cur_recall, evaluated = False, cand.recall, (cur.recall if cur else None), cand.evaluated
        elif self.force:
            cand = evaluate(candidate, user_vectors, events, seen, k)
            cur = evaluate(current, user_vectors, events, seen, k) if current is not None else None
            would, why = gate_decision(cand.recall, cur.recall if cur else None, margin)
            reason = f"forced (--force; the gate would have {'promoted' if would else 'rejected'}: {why})"
            figures = {"metric": f"recall@{k}", "candidate": cand.recall,
                       "current": cur.recall if cur else None, "current_version": current_version,
                       "margin": margin, "evaluated": cand.evaluated,
                       "skipped_no_vector": cand.skipped_no_vector, "candidate_detail": cand.as_dict(),
                       "current_detail": cur.as_dict() if cur else None, "forced": True}
            self.registry.promote(version, actor=FORCE_ACTOR, reason=reason, figures=figures)
            promoted, cand_recall, cur_recall, evaluated = True, cand.recall, figures["current"], cand.evaluated
        else:
            res = run_gate(self.registry, version, candidate, current, user_vectors, events, seen,
                           k=k, margin=margin, actor=GATE_ACTOR)
            promoted, reason = res.promote, res.reason
            cand_recall = res.candidate.recall
            cur_recall = res.current.recall if res.current else None
            evaluated = res.candidate.evaluated
        if promoted:
            self._current = (version, candidate)
        deleted = self.registry.enforce_retention(cfg.retention)
        self.registry.clean_staging()
        result = ExportResult(
            version=version, items=len(table), dim=table.dim, promoted=promoted, forced=self.force,
            reason=reason, metric=f"recall@{k}", candidate_recall=cand_recall,
            current_recall=cur_recall, current_version=current_version if current is not None else None,
            evaluated=evaluated, seconds=time.monotonic() - t0, deleted=deleted, held=pin is not None,
        )
        self.results.append(result)
        log.info("%s", result.line())
        return result

    def export_once(self, timeout_s: float = 120.0) -> ExportResult | None:
        """Catch up to the end offsets present now, then export if anything changed since the last
        export of this process (a fresh exporter always exports when it has items)."""
        self.catch_up(timeout_s)
        if not self.state.changed:
            log.info("exporter: nothing changed since the last export")
            return None
        return self.export()

    def _due(self, now: float) -> bool:
        if not self.state.changed or now < self._retry_at:
            return False
        return (self.state.item_changes >= self.cfg.exporter.every_n_changes
                or now - self._last_export >= self.cfg.exporter.interval_s)

    # ---------------------------------------------------------------- loop
    def stop(self) -> None:
        """Ask :meth:`run` to return after the current batch / export."""
        self._stop.set()

    def _on_signal(self, signum, _frame) -> None:
        if self._stop.is_set():
            raise KeyboardInterrupt
        log.info("exporter: %s received, stopping after the current export", signal.Signals(signum).name)
        self._stop.set()

    def run(self, stop_after_exports: int | None = None, idle_exit_s: float | None = None) -> list[ExportResult]:
        """Catch up, then export on the interval / change-count triggers until stopped (signal,
        :meth:`stop`), ``stop_after_exports`` exports happened, or no record arrived for
        ``idle_exit_s`` seconds (pending changes are exported before an idle exit). The first
        export happens right after catching up. Returns this call's exports."""
        previous = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                previous[sig] = signal.signal(sig, self._on_signal)
        start = len(self.results)

        def done() -> bool:
            return stop_after_exports is not None and len(self.results) - start >= stop_after_exports

        try:
            self.catch_up()
            last_record = time.monotonic()
            while not self._stop.is_set() and not done():
                if self.poll(0.2):
                    last_record = time.monotonic()
                now = time.monotonic()
                idle = idle_exit_s is not None and now - last_record >= idle_exit_s
                if self._due(now) or (idle and self.state.changed and self.failures == 0):
                    try:
                        self.export()
                    except Exception as exc:  # a sidecar keeps going: log, back off, retry
                        self.failures += 1
                        backoff = min(self.cfg.exporter.interval_s, RETRY_BACKOFF_S)
                        self._retry_at = time.monotonic() + backoff
                        log.exception("exporter: export failed (%d so far), retrying in %.0f s: %s",
                                      self.failures, backoff, exc)
                        if idle:
                            break
                elif idle:
                    log.info("exporter: no records for %.1f s, exiting", idle_exit_s)
                    break
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self.close()
        return self.results[start:]


def main(argv: Iterable[str] | None = None) -> int:
    """``python -m model.exporter [--once] [--force]`` (same as ``streamrec exporter``)."""
    from streamrec.cli import main as cli_main

    parser = argparse.ArgumentParser(prog="python -m model.exporter")
    parser.add_argument("--once", action="store_true")
    parser.add_argument("--force", action="store_true")
    args = parser.parse_args(list(argv) if argv is not None else None)
    return cli_main(["exporter"] + (["--once"] if args.once else []) + (["--force"] if args.force else []))


if __name__ == "__main__":
    raise SystemExit(main())
