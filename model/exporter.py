"""The exporter sidecar: Kafka changelogs in, registry versions out (``streamrec exporter``).

A long-running process next to the Flink job (not part of it). It consumes, read_committed:

=====================  ===========  =============================================================
topic (config key)     key          value (core/records.py) and what the exporter keeps
=====================  ===========  =============================================================
``model_items``        item_id      ``ITEM_RECORD``: the latest vector and bias per item (offset
                                    order; a null value, i.e. a tombstone, deletes the item)
``model_users``        user_id      ``USER_RECORD``: the latest user vectors (used by the quality
                                    gate and the users.npz snapshot)
``features_item``      item_id      ``FEATURES_ITEM``: the latest popularity per item
``clean``              user_id      ``CLEAN_EVENT``: bounded per-user sets of seen items, and the
                                    held-out events of the pending candidate (see "Gate")
=====================  ===========  =============================================================

The three changelogs are read from the beginning at start (so a restarted exporter rebuilds the
full item table); ``events.clean`` from :data:`EVENTS_LOOKBACK` x ``gate_events`` records before
the end of each partition (the seen sets). Offsets are never committed: the exporter's state is
derived, not owned. Records that are not their topic's record (decoded strictly: a missing,
unknown or mistyped field), or carry a vector of the wrong dimension (``learner.dim``) or a
non-finite number, are counted and skipped (the first few per topic are logged).

**Export** (the cadence rule, docs/registry.md "When it exports"): only once the model can
rank (``exporter.export_min_items`` items each learned from ``export_min_item_updates`` events)
and has learned ``export_min_events`` clean events since the previous export; then every
``exporter.interval_s`` seconds or ``exporter.every_n_changes`` item changes, whichever comes
first, only if an item or a popularity changed, and only while no candidate is pending (a newer
one would restart the wait for held-out events) or the pending one has waited
``exporter.gate_max_wait_s`` (the gate decides at that cap; one still pending then had no
held-out event at all, and the next export supersedes it):

1. arrays in **sorted item-id order** (row *i* = ``item_ids[i]``): vectors, biases, popularity
   (:meth:`ExporterState.item_table`), prior = :func:`model.onnx_model.popularity_prior`;
2. :func:`model.onnx_model.export_model_bytes` with ``prior_weight = learner.popularity_prior``
   (the same alpha the learner scores with: one setting, so training and serving agree);
3. the **cut**: the user vectors are snapshotted and the training position recorded: the
   ``model.items`` offsets consumed, and the ``events.clean`` last stable offsets queried *after*
   the item table was frozen (the job commits both topics with the same checkpoints, so every
   event past that cut is one the exported items have not been trained on);
4. :meth:`Registry.publish` with the metadata of :meth:`Exporter.metadata` and the ``items.npz``
   and ``users.npz`` attachments (:mod:`model.item_table`, :mod:`model.user_table`: the cut's
   user vectors, which ``streamrec run --from-version`` puts back into the learner);
5. :meth:`model.gate.HoldOutGate.submit`: refusals, a pin (``hold``) and ``force`` are settled at
   once; otherwise the candidate is pending and :meth:`~model.gate.HoldOutGate.decide` compares
   it with CURRENT (or, with none, its popularity baseline) on the held-out events of the gate's
   user sample, paired, at looks after ``exporter.gate_min_events`` events doubling up to the
   cap (docs/registry.md, "Quality gate");
6. ``enforce_retention`` (last ``exporter.retention``, hourly, daily; the pending candidate is
   protected) and ``clean_staging()``, after every export and every decision.

One log line per export and per decision. SIGTERM / SIGINT stop the loop after the current
export (a second signal interrupts); a pending candidate is then left undecided, and the next
exporter's first export records it as superseded, unless ``exporter.gate_decide_on_stop``: then
it is decided at the cap first. :attr:`Exporter.metrics` counts exports and decisions for
Prometheus (:mod:`model.metrics`; `streamrec exporter` serves them when ``exporter.metrics_port``
is set). The gate runs on the CPU provider: it measures ranking quality, which does not depend on
the provider, and it must not compete with scoring for a GPU.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import signal
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Iterable, Sequence

import numpy as np

# lineage imports streamrec.core.config only (no pyflink): no cycle, nothing heavy
from streamrec.runtime.lineage import code_version, job_dir, retained_checkpoints
from streamrec.model.gate import FORCE_ACTOR, GATE_ACTOR, GateDecision, HoldOutGate, UserSample
from streamrec.model.item_table import ITEMS_ATTACHMENT, ItemTable
from streamrec.model.metrics import ExporterMetrics
from streamrec.model.user_table import USERS_ATTACHMENT, UserTable
from streamrec.model.onnx_model import export_model_bytes, popularity_prior
from streamrec.model.registry import Registry
from streamrec.model.scoring import CPU, ScoringModel
from streamrec.core.config import is_secret
from streamrec.core.records import CLEAN_EVENT, FEATURES_ITEM, ITEM_RECORD, USER_RECORD

log = logging.getLogger(__name__)

#: ``events.clean`` is read from this many times ``gate_events`` records before each partition's end.
EVENTS_LOOKBACK = 5
#: Bounds of the per-user seen-item sets (least recently active users / oldest items dropped).
SEEN_ITEMS_PER_USER = 500
SEEN_USERS_MAX = 200_000

#: Seconds before a failed export is retried (at most ``exporter.interval_s``).
RETRY_BACKOFF_S = 30.0
#: Storage failures of the registry dir: a full disk or quota, a read-only mount, permissions.
STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM})

GATE_PROVIDERS = [CPU]
#: The pipeline job's name (flink_jobs/pipeline.py JOB_NAME; importing that module would pull in
#: pyflink): its checkpoint directory is where :func:`latest_checkpoint` looks.
PIPELINE_JOB = "streamrec-pipeline"

#: Logical names of the four inputs -> TopicsConfig field.
INPUTS = {"items": "model_items", "users": "model_users", "features": "features_item", "events": "clean"}
#: Each input's record: its values are decoded strictly by it.
INPUT_RECORDS = {"items": ITEM_RECORD, "users": USER_RECORD, "features": FEATURES_ITEM, "events": CLEAN_EVENT}
_LOG_BAD_FIRST = 5


@dataclass
class ExportResult:
    """What one export did (also logged as one line). ``decision`` is the gate's verdict: it
    starts ``pending`` and is replaced when the gate decides (:attr:`Exporter.results`)."""

    version: str
    items: int
    dim: int
    forced: bool
    seconds: float
    decision: GateDecision
    deleted: list[str] = field(default_factory=list)

    @property
    def status(self) -> str:
        return self.decision.status

    @property
    def promoted(self) -> bool:
        return self.decision.status == "promoted"

    @property
    def held(self) -> bool:  # not promoted because an operator's rollback pinned CURRENT
        return self.decision.status == "held"

    @property
    def pending(self) -> bool:
        return self.decision.status == "pending"

    @property
    def reason(self) -> str:
        return self.decision.reason

    @property
    def metric(self) -> str:
        return str(self.decision.figures.get("metric", "recall"))

    @property
    def candidate_recall(self) -> float | None:
        return self.decision.figures.get("candidate")

    @property
    def current_recall(self) -> float | None:
        return self.decision.figures.get("current")

    @property
    def current_version(self) -> str | None:
        return self.decision.figures.get("current_version")

    @property
    def evaluated(self) -> int:
        return int(self.decision.figures.get("evaluated") or 0)

    def line(self) -> str:
        head = f"export {self.version}: {self.items} items, dim {self.dim}"
        d = self.decision
        if d.status == "pending":
            return f"{head} -> pending ({d.reason}) in {self.seconds:.2f} s"
        if self.candidate_recall is None:  # refused, held or forced: nothing was evaluated
            verdict = ("held (CURRENT is pinned)" if self.held else "promoted (forced)" if d.forced
                       else d.status)
            return f"{head} -> {verdict}: {d.reason} in {self.seconds:.2f} s"
        baseline = d.figures.get("baseline")
        ref = (f"current {self.current_recall:.4f} ({self.current_version})" if self.current_recall is not None
               else f"baseline {baseline:.4f}" if baseline is not None else "no comparison")
        verdict = "held (CURRENT is pinned)" if self.held else d.status
        paired = ""
        if d.figures.get("difference") is not None:
            paired = (f", difference {d.figures['difference']:+.4f} in [{d.figures['lower_bound']:+.4f}, "
                      f"{d.figures['upper_bound']:+.4f}] vs -margin {-d.figures['margin']:.4f}")
        return (f"{head}, {self.metric} candidate {self.candidate_recall:.4f} / {ref} on "
                f"{self.evaluated} held-out events{paired} -> {verdict} in {self.seconds:.2f} s")


def redacted_config(cfg: Any) -> dict[str, Any]:
    """The whole configuration as JSON-able data without any secret (the keys
    :func:`streamrec.core.config.is_secret` names are removed, not masked: a hash of a masked value
    would still reveal whether it changed)."""
    def walk(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: walk(v) for k, v in value.items() if not is_secret(str(k))}
        if isinstance(value, list):
            return [walk(v) for v in value]
        return value

    return walk(cfg.model_dump(mode="json"))


def config_sha256(cfg: Any) -> str:
    """sha256 of the canonical JSON (sorted keys, no spaces) of :func:`redacted_config`."""
    text = json.dumps(redacted_config(cfg), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def latest_checkpoint(cfg: Any, job_name: str = PIPELINE_JOB) -> dict[str, Any] | None:
    """The newest completed checkpoint of ``job_name``'s state directory, as Flink names it
    (``{"id", "name", "job_id", "path", "completed_at"}``), or None; never raises (an export
    must not fail over it)."""
    try:
        found = retained_checkpoints(job_dir(cfg, job_name))
        if not found:
            return None
        chk = found[0]
        mtime = (chk / "_metadata").stat().st_mtime
        return {"id": int(chk.name[4:]), "name": chk.name, "job_id": chk.parent.name,
                "path": f"file:{chk.absolute()}",  # Flink's own spelling of a local checkpoint
                "completed_at": datetime.fromtimestamp(mtime, timezone.utc).isoformat(timespec="milliseconds")}
    except Exception as exc:  # noqa: BLE001 - metadata only
        log.warning("exporter: cannot read the %s checkpoints (%s); meta.json checkpoint = null",
                    job_name, exc)
        return None


def _vector(value: list, dim: int) -> np.ndarray | None:
    """A decoded ARRAY<DOUBLE> as float32, or None if not ``dim`` long or not finite as float32."""
    if len(value) != dim:
        return None
    with np.errstate(over="ignore"):  # a DOUBLE beyond float32's range becomes inf: refused below
        vec = np.asarray(value, dtype=np.float32)
    return vec if np.isfinite(vec).all() else None


class ExporterState:
    """Everything the exporter keeps, fed one record at a time (no Kafka here: unit-testable).

    ``apply(kind, key, value, partition, offset)`` with ``kind`` one of :data:`INPUTS` and
    ``value`` the raw bytes (``None`` = tombstone) returns whether the record was used. A clean
    event with its ``partition`` and ``offset`` is also offered to ``gate``
    (:meth:`model.gate.HoldOutGate.observe`), which keeps it if it lies past the pending
    candidate's cut.
    """

    def __init__(self, dim: int, gate: HoldOutGate | None = None, min_item_updates: int = 0):
        self.dim = int(dim)
        self.gate = gate
        #: the gate's user sample: seen items are kept for its users only (bounded memory)
        self.sample = gate.sample if gate is not None else UserSample(0)
        self.min_item_updates = int(min_item_updates)
        self.items: dict[str, tuple[np.ndarray, float]] = {}
        #: the learner's update count per item, and how many items reached ``min_item_updates``
        self.updates: dict[str, int] = {}
        self.trained_items = 0
        self.events_since_export = 0  # clean events consumed since the last export
        self.users: dict[str, np.ndarray] = {}
        self.popularity: dict[str, float] = {}
        #: the learner's own popularity count per item (model.items ``popularity``)
        self.learned_popularity: dict[str, float] = {}
        self.held_out = 0  # clean events the gate took as held-out
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

    def apply(self, kind: str, key: bytes | None, value: bytes | None,
              partition: int | None = None, offset: int | None = None) -> bool:
        self.records[kind] += 1
        key_s = key.decode("utf-8", errors="replace") if key is not None else None
        if value is None:  # tombstone: the key is gone
            if key_s is None:
                return self._bad(kind, "tombstone without key", value)
            return self._tombstone(kind, key_s)
        try:
            rec = INPUT_RECORDS[kind].decode(value)
        except ValueError as exc:
            return self._bad(kind, str(exc), value)
        if kind == "events":
            return self._apply_events(rec, key_s, value, partition, offset)
        return getattr(self, f"_apply_{kind}")(rec, key_s, value)

    def _tombstone(self, kind: str, key: str) -> bool:
        if kind == "items":
            if self.items.pop(key, None) is not None:
                self.learned_popularity.pop(key, None)
                self.trained_items -= self.updates.pop(key, 0) >= self.min_item_updates
                self.item_changes += 1
        elif kind == "users":
            self.users.pop(key, None)
        elif kind == "features":
            if self.popularity.pop(key, None) is not None:
                self.feature_changes += 1
        return True

    def _apply_items(self, rec: dict, key: str | None, raw: bytes) -> bool:
        item_id = rec["item_id"]
        vec = _vector(rec["vector"], self.dim)
        if vec is None:
            return self._bad("items", f"vector is not {self.dim} finite numbers", raw)
        before = self.updates.get(item_id) if item_id in self.items else None
        self.items[item_id] = (vec, float(rec["bias"]))
        self.updates[item_id] = updates = int(rec["updates"])
        self.trained_items += ((updates >= self.min_item_updates)
                               - (before is not None and before >= self.min_item_updates))
        self.learned_popularity[item_id] = float(rec["popularity"])
        self.item_changes += 1
        ts = rec["ts"]
        if ts is not None:
            self.items_watermark = ts if self.items_watermark is None else max(self.items_watermark, ts)
        return True

    def _apply_users(self, rec: dict, key: str | None, raw: bytes) -> bool:
        vec = _vector(rec["vector"], self.dim)
        if vec is None:
            return self._bad("users", f"vector is not {self.dim} finite numbers", raw)
        self.users[rec["user_id"]] = vec
        return True

    def _apply_features(self, rec: dict, key: str | None, raw: bytes) -> bool:
        item_id, pop = rec["item_id"], float(rec["popularity"])
        if self.popularity.get(item_id) != pop:
            self.popularity[item_id] = pop
            self.feature_changes += 1
        return True

    def _apply_events(self, rec: dict, key: str | None, raw: bytes,
                      partition: int | None = None, offset: int | None = None) -> bool:
        user_id, item_id = rec["user_id"], rec["item_id"]
        self.events_since_export += 1
        ts = rec["ts"]
        self.events_watermark = ts if self.events_watermark is None else max(self.events_watermark, ts)
        sampled, evicted = self.sample.admit(user_id)
        for gone in evicted:
            self.seen.pop(gone, None)
        if self.gate is not None and partition is not None and offset is not None:
            self.held_out += self.gate.observe(partition, offset, user_id, item_id)
        if not sampled:  # the gate never scores this user: its seen items are not needed
            return True
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
        return True

    # ---------------------------------------------------------------- reading
    @property
    def changed(self) -> bool:
        return self.item_changes > 0 or self.feature_changes > 0

    def mark_exported(self) -> None:
        self.item_changes = 0
        self.feature_changes = 0
        self.events_since_export = 0

    def cadence_wait(self, min_items: int, min_events: int) -> str | None:
        """Why the model is not worth a new version yet (None: it is): fewer than ``min_items``
        items learned from ``min_item_updates`` events each, or fewer than ``min_events`` clean
        events since the last export (0 disables either)."""
        if self.trained_items < min_items:
            return (f"{self.trained_items} of {min_items} items learned from at least "
                    f"{self.min_item_updates} events")
        if self.events_since_export < min_events:
            return f"{self.events_since_export} of {min_events} clean events since the last export"
        return None

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

    def user_snapshot(self) -> dict[str, np.ndarray]:
        """The user vectors now (a new dict; every update replaces its array, so it stays put)."""
        return dict(self.users)


class Exporter:
    """The sidecar. ``run()`` loops until stopped; ``export_once()`` catches up and exports once.
    :attr:`results` holds every export (its ``decision`` is updated when the gate decides),
    :attr:`decisions` every decision of a pending candidate."""

    def __init__(
        self,
        cfg: Any,
        registry: Registry | None = None,
        force: bool = False,
        providers: Sequence[str] | None = None,
    ):
        self.cfg = cfg
        self.registry = registry if registry is not None else Registry(
            cfg.paths_resolved.registry_dir, log_max_bytes=cfg.exporter.log_max_bytes,
            log_keep=cfg.exporter.log_keep)
        self.force = force
        self.providers = list(providers) if providers is not None else list(GATE_PROVIDERS)
        topics = cfg.kafka.topics
        self.topics = {kind: getattr(topics, name) for kind, name in INPUTS.items()}
        if len(set(self.topics.values())) != len(self.topics):
            raise ValueError(f"the exporter's input topics must be distinct, got {self.topics}")
        self.kind_of = {topic: kind for kind, topic in self.topics.items()}
        ex = cfg.exporter
        self.gate = HoldOutGate(
            self.registry, lambda data, meta: ScoringModel.from_bytes(data, meta, self.providers),
            expected_dim=cfg.learner.dim, k=ex.top_k, margin=ex.gate_margin,
            min_events=ex.gate_min_events, max_events=ex.gate_events,
            actor=GATE_ACTOR, force_actor=FORCE_ACTOR, confidence=ex.gate_confidence,
            max_wait_s=ex.gate_max_wait_s, max_users=ex.gate_max_users)
        self.state = ExporterState(cfg.learner.dim, self.gate, min_item_updates=ex.export_min_item_updates)
        self.results: list[ExportResult] = []
        self.decisions: list[GateDecision] = []
        self.failures = 0
        self.positions: dict[tuple[str, int], int] = {}  # next offset to read, per topic/partition
        self._consumer = None
        self._stop = threading.Event()
        self._last_export = float("-inf")
        self._retry_at = float("-inf")  # after a failed export: no new attempt before this
        #: Prometheus metrics (model/metrics.py): fed here, served by the CLI when configured
        self.metrics = ExporterMetrics(current=self._current_and_pin)
        self._seed_export_age()

    # ---------------------------------------------------------------- metrics
    def _current_and_pin(self) -> tuple[str | None, bool]:
        """CURRENT and whether a rollback pins it, read at every scrape."""
        return self.registry.current(), self.registry.pinned() is not None

    def _seed_export_age(self) -> None:
        """The export age counts from the registry's newest version until this exporter publishes."""
        try:
            versions = self.registry.list_versions()
            created = self.registry.read_meta(versions[-1]).get("created_at") if versions else None
            if created:
                self.metrics.seen_export(datetime.fromisoformat(created).timestamp())
        except Exception as exc:  # noqa: BLE001 - a metric's starting point, never a reason to fail
            log.warning("exporter: cannot read the newest version's publication time (%s)", exc)

    def _count_decision(self, decision: GateDecision, at_export: bool = False) -> None:
        if decision.decided_here:  # not what an operator or another exporter decided
            self.metrics.decided(decision.version, decision.status, decision.figures, at_export=at_export)

    # ---------------------------------------------------------------- Kafka
    def _connect(self) -> None:
        if self._consumer is not None:
            return
        from confluent_kafka import OFFSET_BEGINNING, TopicPartition

        from streamrec.runtime import kafka_io

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
        self.state.apply(self.kind_of[msg.topic()], msg.key(), msg.value(), msg.partition(), msg.offset())
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

    def events_cut(self) -> dict[int, int]:
        """Per ``events.clean`` partition, the first offset an export now has not trained on: the
        last stable offset queried now (the item table is frozen while this runs: nothing is
        consumed in between), at least the next offset this exporter reads. Without a consumer
        (tests), the positions alone."""
        topic = self.topics["events"]
        cut = {p: pos for (t, p), pos in sorted(self.positions.items()) if t == topic}
        if self._consumer is not None:
            from confluent_kafka import KafkaException, TopicPartition

            for p in cut:
                try:
                    _low, high = self._consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10,
                                                                      cached=False)
                    cut[p] = max(cut[p], high)
                except KafkaException as exc:  # the consumed position is then the cut
                    log.warning("exporter: no end offset for %s[%d] (%s): cut at the position read", topic, p, exc)
        return cut

    def training_position(self, events_cut: dict[int, int] | None = None) -> dict[str, Any]:
        """What the exported item table reflects: the next offset to read per partition of
        ``model.items`` (Kafka's committed-offset convention), the max event time ``ts`` of the
        item records consumed (``watermark``) and of the clean events (``events_watermark``), and
        the ``events.clean`` cut (``events_offsets``, see :meth:`events_cut`)."""
        topic = self.topics["items"]
        offsets = {str(p): pos for (t, p), pos in sorted(self.positions.items()) if t == topic}
        cut = self.events_cut() if events_cut is None else events_cut
        return {"topic": topic, "offsets": offsets, "watermark": self.state.items_watermark,
                "events_watermark": self.state.events_watermark,
                "events_topic": self.topics["events"],
                "events_offsets": {str(p): o for p, o in sorted(cut.items())}}

    def metadata(self, table: ItemTable, users: dict[str, np.ndarray], cut: dict[int, int]) -> dict[str, Any]:
        """meta.json of an export, minus what :meth:`Registry.publish` fills in (docs/registry.md)."""
        cfg = self.cfg
        return {
            "dim": table.dim,
            "item_ids": table.item_ids.tolist(),
            "training_position": self.training_position(cut),
            "exporter_config": {**cfg.exporter.model_dump(mode="json"),
                                "prior_weight": cfg.learner.popularity_prior},
            "learner": cfg.learner.model_dump(mode="json"),
            "config_sha256": config_sha256(cfg),
            "code_version": code_version(),
            "checkpoint": latest_checkpoint(cfg),
            "counts": {
                "items": len(table),
                "users_with_vectors": len(users),
                "items_with_features": int(sum(i in self.state.popularity for i in table.item_ids.tolist())),
            },
            "extra": {"skipped_records": dict(self.state.bad)},
        }

    # ---------------------------------------------------------------- export
    def _baseline(self, version: str, table: ItemTable):
        """The candidate's popularity ranking (item vectors zeroed), the first model's reference."""
        data = export_model_bytes(np.zeros_like(table.vectors), table.bias, popularity_prior(table.popularity),
                                  self.cfg.learner.popularity_prior)
        meta = {"version": f"{version}-baseline", "item_ids": table.item_ids.tolist(), "dim": table.dim}
        return ScoringModel.from_bytes(data, meta, self.providers)

    def _retention(self) -> list[str]:
        ex = self.cfg.exporter
        pending = [self.gate.pending.version] if self.gate.pending is not None else []
        deleted = self.registry.enforce_retention(ex.retention, ex.retention_hourly_hours,
                                                  ex.retention_daily_days, protect=pending)
        self.registry.clean_staging()
        return deleted

    def export(self) -> ExportResult | None:
        """Export the current state now (if there are items). See the module docstring."""
        try:
            return self._export()
        except Exception:
            self.metrics.failed()
            raise

    def _export(self) -> ExportResult | None:
        t0 = time.monotonic()
        table = self.state.item_table()
        if len(table) == 0:  # no graph of zero items exists; the gate refuses one from elsewhere
            log.info("exporter: no items, nothing to export")
            return None
        model_bytes = export_model_bytes(table.vectors, table.bias, popularity_prior(table.popularity),
                                         self.cfg.learner.popularity_prior)
        users = self.state.user_snapshot()
        cut = self.events_cut()
        meta = self.metadata(table, users, cut)
        version = self.registry.publish(model_bytes, meta, {
            ITEMS_ATTACHMENT: table.to_npz_bytes(),
            USERS_ATTACHMENT: UserTable.of(users, table.dim).to_npz_bytes(),  # for run --from-version
        })
        self.state.mark_exported()
        self._last_export = time.monotonic()
        self.metrics.published(version)
        before = self.gate.pending
        decision = self.gate.submit(version, model_bytes, self.registry.read_meta(version), users, cut,
                                    force=self.force, baseline=lambda: self._baseline(version, table))
        if before is not None and before.version != version:  # submit superseded it
            self.metrics.decided(before.version, "superseded")
        if decision.status != "pending":  # settled at export: forced, refused, held by a pin
            self._count_decision(decision, at_export=True)
        result = ExportResult(version=version, items=len(table), dim=table.dim, forced=self.force,
                              seconds=0.0, decision=decision)
        self.results.append(result)
        if decision.status == "pending":
            self.check_gate(log_result=False)  # with gate_min_events = 0 it decides at once
        result.deleted = self._retention()
        result.seconds = time.monotonic() - t0
        log.info("%s", result.line())
        return result

    def check_gate(self, log_result: bool = True) -> GateDecision | None:
        """Let the gate decide the pending candidate if enough held-out events arrived."""
        decision = self.gate.decide(self.state.seen)
        if decision is None:
            return None
        self._record(decision)
        if log_result:
            deleted = self._retention()
            log.info("%s%s", decision.line(), f" (retention deleted {', '.join(deleted)})" if deleted else "")
        return decision

    def _record(self, decision: GateDecision) -> None:
        self.decisions.append(decision)
        self._count_decision(decision)
        for result in reversed(self.results):
            if result.version == decision.version:
                result.decision = decision
                break

    def export_once(self, timeout_s: float = 120.0, wait_s: float = 0.0) -> ExportResult | None:
        """Catch up to the end offsets present now, let the gate decide a pending candidate, then
        export if anything changed and nothing is pending (a fresh exporter always exports when
        it has items). With ``wait_s`` > 0, keep reading events up to that long for the gate's
        decision on the new candidate."""
        self.catch_up(timeout_s)
        self.check_gate()
        if self.gate.pending is not None:
            p = self.gate.pending
            log.info("exporter: %s is pending (%d of %d held-out events): no new export yet",
                     p.version, len(p.events), self.gate.min_events)
            return None
        if not self.state.changed:
            log.info("exporter: nothing changed since the last export")
            return None
        # --force is the operator's call: it exports whatever the model knows
        unripe = None if self.force else self.state.cadence_wait(self.cfg.exporter.export_min_items, 0)
        if unripe is not None:
            log.info("exporter: the model cannot rank yet (%s): no export", unripe)
            return None
        result = self.export()
        deadline = time.monotonic() + wait_s
        while result is not None and result.pending and time.monotonic() < deadline:
            self.poll(0.2)
            self.check_gate()
        return result

    def _due(self, now: float) -> bool:
        ex = self.cfg.exporter
        if not self.state.changed or now < self._retry_at:
            return False
        if self.gate.pending is not None and (ex.gate_max_wait_s <= 0 or now - self._last_export < ex.gate_max_wait_s):
            return False  # the pending candidate is still collecting held-out events
        if self.state.cadence_wait(ex.export_min_items, ex.export_min_events) is not None:
            return False  # not learned enough since the last version to be worth one
        return (self.state.item_changes >= ex.every_n_changes
                or now - self._last_export >= ex.interval_s)

    def _decide_on_stop(self) -> None:
        """``gate_decide_on_stop``: read what the stream has, then decide the pending candidate
        at the cap (a tie goes to the serving model), so no version is left undecided."""
        try:
            self.catch_up(timeout_s=30.0)
            decision = self.check_gate(log_result=False) or self.gate.decide(self.state.seen, final=True)
            if decision is not None and decision not in self.decisions:
                self._record(decision)
            if decision is not None:
                self._retention()
                log.info("%s (decided on stop)", decision.line())
        except Exception:  # noqa: BLE001 - stopping must not fail over it
            log.exception("exporter: could not decide %s on stop", self.gate.pending and self.gate.pending.version)

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
        ``idle_exit_s`` seconds (pending changes are exported before an idle exit unless a
        candidate is pending). The first export happens right after catching up; the gate
        decides a pending candidate after every consumed batch. Returns this call's exports."""
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
                try:
                    self.check_gate()
                    if self._due(now) or (idle and self.state.changed and self.failures == 0
                                          and self.gate.pending is None and self.state.cadence_wait(
                                              self.cfg.exporter.export_min_items, 0) is None):
                        self.export()
                    elif idle:
                        log.info("exporter: no records for %.1f s, exiting", idle_exit_s)
                        break
                except Exception as exc:  # a sidecar keeps going: log, back off, retry
                    self.failures += 1
                    backoff = min(self.cfg.exporter.interval_s, RETRY_BACKOFF_S)
                    self._retry_at = time.monotonic() + backoff
                    if isinstance(exc, OSError) and exc.errno in STORAGE_ERRNOS:
                        # the operator's to fix (space, a mount): one line, not a traceback a minute
                        log.error("exporter: the registry %s cannot be written (%s: %s): nothing "
                                  "was published; retrying in %.0f s (%d failures so far)",
                                  self.cfg.paths_resolved.registry_dir, errno.errorcode[exc.errno],
                                  exc.strerror, backoff, self.failures)
                    else:
                        log.exception("exporter: export failed (%d so far), retrying in %.0f s: %s",
                                      self.failures, backoff, exc)
                    if idle:
                        break
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            if self.cfg.exporter.gate_decide_on_stop and self.gate.pending is not None:
                self._decide_on_stop()
            self.close()
            if self.gate.pending is not None:
                p = self.gate.pending
                log.warning("exporter: %s left pending with %d of %d held-out events; the next "
                            "exporter's first export records it as superseded",
                            p.version, len(p.events), self.gate.min_events)
        return self.results[start:]
