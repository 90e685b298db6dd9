"""Keeps the store up to date with the ``recommendations`` and ``model.users`` topics.

Two daemon threads, each with its own read_committed consumer (``runtime.kafka_io.consumer``:
the configured bootstrap servers and security):

- the reader assigns every partition of both topics at the store's offsets (a snapshot's, or the
  beginning), applies what it reads, and snapshots the store every ``serving.snapshot_interval_s``;
  it is *caught up* once every partition reached the end offset it had when the reader started;
- the prober asks the broker for the end offsets every ``serving.probe_interval_s`` (the lag), and
  a broker that does not answer within ``serving.broker_timeout_s`` makes the service unready.

Neither thread ever ends the process: a broker that is slow, absent or without the topics yet
only shows in :meth:`Materializer.readiness`.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from operator import itemgetter
from typing import Any, Callable

import orjson
from confluent_kafka import OFFSET_BEGINNING, KafkaError, KafkaException, TopicPartition

from streamrec.core.config import Config
from streamrec.core.records import RECOMMENDATION, USER_RECORD
from streamrec.runtime.kafka_io import consumer
from streamrec.serving.snapshot import write_snapshot
from streamrec.serving.stats import Freshness
from streamrec.serving.store import ServingStore

log = logging.getLogger(__name__)
#: Records applied under one hold of the store's lock (readers wait at most that long).
BATCH = 500


_EMITTED = itemgetter("emitted_ts")


def _client_errors() -> dict[str, Any]:
    """Client settings that route librdkafka's errors into this log, each distinct one at most
    once a minute (unreachable brokers otherwise print a line every few ms to stderr)."""
    last: dict[str, float] = {}

    def report(err) -> None:
        text, now = str(err), time.monotonic()
        if now - last.get(text, float("-inf")) >= 60:
            last[text] = now
            log.warning("kafka client: %s", text)

    return {"error_cb": report, "log_level": "0"}


class TopicUnavailable(RuntimeError):
    """The broker answered, but a topic is missing or has no leader yet."""


def end_offsets(cons, topic: str, timeout: float) -> dict[int, int]:
    """Every partition's end offset of ``topic`` (read_committed: the last stable offset)."""
    # all topics listed: asking for one by name may create it on a broker that auto-creates
    md = cons.list_topics(timeout=timeout).topics.get(topic)
    if md is None or md.error is not None or not md.partitions:
        raise TopicUnavailable(f"topic {topic} does not exist yet" if md is None or not md.partitions
                               else f"topic {topic}: {md.error}")
    return {p: cons.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout, cached=False)[1]
            for p in md.partitions}


def source_of(cfg: Config) -> dict[str, Any]:
    """What the store is read from: a snapshot of anything else is not resumed from."""
    t = cfg.kafka.topics
    return {"bootstrap_servers": cfg.bootstrap_servers, "recommendations": t.recommendations,
            "model_users": t.model_users, "dim": cfg.learner.dim}


class Materializer:
    def __init__(self, cfg: Config, store: ServingStore, snapshot_path: Path,
                 on_skip: Callable[[str], None] | None = None) -> None:
        self.cfg = cfg
        self.store = store
        self.snapshot_path = snapshot_path
        self.recommendations = cfg.kafka.topics.recommendations
        self.model_users = cfg.kafka.topics.model_users
        self.topics = (self.recommendations, self.model_users)
        self.timeout = cfg.serving.broker_timeout_s
        self.on_skip = on_skip
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        # what /readyz and /metrics show
        self.start_ends: dict[tuple[str, int], int] | None = None
        self.caught_up: set[tuple[str, int]] = set()
        self.ready_since: float | None = None
        self.broker_problem: str | None = "not connected to Kafka yet"
        self.ends: dict[tuple[str, int], int] = {}
        self.applied = dict.fromkeys(self.topics, 0)
        self.skipped = dict.fromkeys(self.topics, 0)
        self.snapshots = 0
        self.freshness = Freshness()
        self._changed = False
        #: Given every batch of recommendation records applied (serving/dashboard.py sets it)
        self.on_records: Callable[[list], None] | None = None

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self) -> None:
        for name, target in (("serving-reader", self._read_loop), ("serving-prober", self._probe_loop)):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        """Stop both threads and write a last snapshot."""
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=self.timeout + 5)
        self.snapshot()

    def snapshot(self) -> None:
        if not self._changed:
            return
        self._changed = False
        try:
            started = time.monotonic()
            write_snapshot(self.snapshot_path, self.store, source_of(self.cfg))
            self.snapshots += 1
            log.info("snapshot of %d users written to %s in %.2f s", len(self.store.users),
                     self.snapshot_path, time.monotonic() - started)
        except OSError as exc:  # a full disk costs the fast restart, never the service
            self._changed = True
            log.error("cannot write the snapshot %s: %s", self.snapshot_path, exc)

    # -- what it knows ---------------------------------------------------------------------------
    def readiness(self) -> tuple[bool, str]:
        """(ready, why not / what): caught up with the end offsets at start, broker answering."""
        with self._lock:
            if self.broker_problem:
                return False, self.broker_problem
            if self.start_ends is None:
                return False, "starting: reading the topics' end offsets"
            if self.ready_since is None:
                behind = [tp for tp in self.start_ends if tp not in self.caught_up]
                return False, (f"catching up: {len(behind)} of {len(self.start_ends)} partitions not yet at "
                               f"their end offsets of start ({self.lag()} records behind)")
            return True, "caught up"

    def lag(self) -> int:
        """Records between what the store reflects and the newest end offsets known (transaction
        markers included: read_committed topics show up to one per partition)."""
        offsets = self.store.offsets
        return sum(max(0, end - offsets.get(topic, {}).get(p, 0)) for (topic, p), end in self.ends.items())

    # -- the reader ------------------------------------------------------------------------------
    def _set_problem(self, problem: str | None) -> None:
        with self._lock:
            if problem and problem != self.broker_problem:
                log.warning("not ready: %s", problem)
            self.broker_problem = problem

    def _kafka_error(self, exc: Exception) -> str:
        return f"Kafka at {self.cfg.bootstrap_servers} did not answer within {self.timeout:g} s: {exc}"

    def _read_loop(self) -> None:
        cons = consumer(self.cfg, group="streamrec-serve", read_committed=True,
                        **{"enable.partition.eof": "true"}, **_client_errors())
        try:
            while not self._stop.is_set():
                try:
                    ends = {(t, p): end for t in self.topics for p, end in end_offsets(cons, t, self.timeout).items()}
                    break
                except (KafkaException, TopicUnavailable) as exc:
                    self._set_problem(str(exc) if isinstance(exc, TopicUnavailable) else self._kafka_error(exc))
                    self._stop.wait(min(self.cfg.serving.probe_interval_s, 2.0))
            else:
                return
            self._set_problem(None)
            self._assign(cons, ends)
            last_snapshot = time.monotonic()
            interval = self.cfg.serving.snapshot_interval_s
            while not self._stop.is_set():
                try:
                    messages = cons.consume(BATCH, timeout=0.2)
                except KafkaException as exc:
                    log.warning("kafka: %s", exc)
                    self._stop.wait(0.5)
                    continue
                if messages:
                    self._apply(messages)
                if interval and time.monotonic() - last_snapshot >= interval:
                    self.snapshot()
                    last_snapshot = time.monotonic()
        except Exception:  # noqa: BLE001 - the service outlives its reader; /readyz says so
            log.exception("the topic reader stopped")
            self._set_problem("the topic reader stopped on an error (see the log); restart the service")
        finally:
            cons.close()

    def _assign(self, cons, ends: dict[tuple[str, int], int]) -> None:
        offsets = self.store.offsets
        beyond = [(t, p, offsets[t][p], end) for (t, p), end in ends.items()
                  if offsets.get(t, {}).get(p, 0) > end]
        if beyond:  # the topic was recreated, or the snapshot is of another cluster: reread all
            log.warning("the snapshot's offsets are past the topics' ends (%s): rereading the topics "
                        "from the beginning", ", ".join(f"{t}[{p}] {o} > {e}" for t, p, o, e in beyond[:4]))
            self.store.clear()
            offsets = self.store.offsets
        with self._lock:
            self.start_ends = dict(ends)
            self.ends = dict(ends)
            self.caught_up = {tp for tp, end in ends.items() if offsets.get(tp[0], {}).get(tp[1], 0) >= end}
            self._check_ready()
        cons.assign([TopicPartition(t, p, offsets.get(t, {}).get(p, OFFSET_BEGINNING)) for (t, p) in ends])
        resumed = sum(len(parts) for parts in offsets.values())
        log.info("reading %s from %s", ", ".join(self.topics),
                 f"the snapshot's offsets ({resumed} partitions)" if resumed else "the beginning")

    def _check_ready(self) -> None:
        if self.ready_since is None and self.start_ends is not None and self.caught_up >= set(self.start_ends):
            self.ready_since = time.monotonic()
            log.info("caught up: %d users with a list, %d with a vector", self.store.lists, self.store.vectors)

    def _apply(self, messages: list) -> None:
        store, reached, records = self.store, [], []
        with store.lock:
            for msg in messages:
                error = msg.error()
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF:
                        reached.append((msg.topic(), msg.partition()))
                    else:
                        log.warning("kafka: %s", error)
                    continue
                topic = msg.topic()
                try:
                    if topic == self.recommendations:
                        rec = RECOMMENDATION.check(orjson.loads(msg.value()))
                        store.apply_recommendation(rec)
                        records.append(rec)
                    elif msg.value() is None:  # a tombstone: the user's vector is gone
                        store.apply_user_vector(msg.key().decode("utf-8"), None)
                    else:
                        user = USER_RECORD.check(orjson.loads(msg.value()))
                        if not store.apply_user_vector(user["user_id"], user["vector"], user["ts"]):
                            raise ValueError(f"vector of {len(user['vector'])} values, the learner's dim is {store.dim}")
                    self.applied[topic] += 1
                except (ValueError, TypeError, AttributeError) as exc:
                    self.skipped[topic] += 1
                    if self.skipped[topic] <= 5:
                        log.warning("skipped %s[%d]@%d: %s", topic, msg.partition(), msg.offset(), exc)
                    if self.on_skip:
                        self.on_skip(topic)
                store.advance(topic, msg.partition(), msg.offset() + 1)
                self._changed = True
        with self._lock:
            for topic, p in {(m.topic(), m.partition()) for m in messages if m.error() is None}:
                if self.start_ends and store.offsets[topic][p] >= self.start_ends.get((topic, p), 0):
                    self.caught_up.add((topic, p))
            self.caught_up.update(reached)
            self._check_ready()
        if records:
            self.freshness.observe(int(time.time() * 1000), map(_EMITTED, records))
            if self.on_records is not None:
                self.on_records(records)

    # -- the prober ------------------------------------------------------------------------------
    def _probe_loop(self) -> None:
        cons = consumer(self.cfg, group="streamrec-serve-probe", read_committed=True, **_client_errors())
        try:
            while not self._stop.wait(self.cfg.serving.probe_interval_s):
                if self.start_ends is None:
                    continue  # the reader says why it has not started
                try:
                    ends = {(t, p): end for t in self.topics for p, end in end_offsets(cons, t, self.timeout).items()}
                except (KafkaException, TopicUnavailable) as exc:
                    self._set_problem(str(exc) if isinstance(exc, TopicUnavailable) else self._kafka_error(exc))
                    continue
                with self._lock:
                    self.ends = ends
                self._set_problem(None)
        finally:
            cons.close()
