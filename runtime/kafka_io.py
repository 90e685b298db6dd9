"""Kafka clients for the Python side (CLI, replay, exporter, tests).

We use confluent-kafka (librdkafka) rather than kafka-python: it is several times faster at
producing (~70k msg/s against the embedded broker here), supports idempotent producers,
transactions and ``isolation.level=read_committed`` consumers, and reports per-message delivery
results, which is what ``replay`` needs to exit non-zero on any lost record.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Iterator

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from streamrec.core.config import Config


class KafkaSetupError(RuntimeError):
    """A topic could not be created or the cluster could not be reached."""


def _base(cfg: Config) -> dict[str, str]:
    return {"bootstrap.servers": cfg.bootstrap_servers, **cfg.kafka.security.python_properties(),
            **cfg.kafka.client_properties}


def admin(cfg: Config) -> AdminClient:
    return AdminClient(_base(cfg))


def compacted_topics(cfg: Config) -> list[str]:
    """The topics whose records are the latest state per key: the learner's changelogs and the
    upsert feature tables."""
    t = cfg.kafka.topics
    return [t.model_items, t.model_users, t.features_user, t.features_item]


def topic_settings(cfg: Config, topic: str) -> dict[str, str]:
    """The topic-level configuration ``topic`` is created with."""
    if topic in compacted_topics(cfg):
        return {"cleanup.policy": "compact"}
    if topic == cfg.kafka.topics.item_deltas:  # read back by the job only: bounded by time
        return {"retention.ms": str(cfg.learner.exchange_retention_ms)}
    return {}


def ensure_topics(cfg: Config, topics: list[str] | None = None, timeout: float = 30.0,
                  partitions: int | None = None) -> dict[str, str]:
    """Create the configured topics that do not exist yet. Returns {topic: "created"|"exists"}.

    Every topic gets ``kafka.partitions`` partitions; producers key per-user streams by user_id
    and item streams by item_id, so one key always lands in one partition (and one Flink subtask).
    The changelogs (:func:`compacted_topics`: the latest record per key is the state) are created
    compacted, so they do not grow with the events and an expired key's tombstone removes it; the
    shards' item deltas are kept for ``learner.exchange_retention_ms`` (:func:`topic_settings`).
    Existing topics are left as they are.
    """
    client = admin(cfg)
    wanted = topics if topics is not None else cfg.kafka.topics.all()
    try:
        existing = set(client.list_topics(timeout=timeout).topics)
    except KafkaException as exc:
        raise KafkaSetupError(f"cannot reach Kafka at {cfg.bootstrap_servers}: {exc}") from None
    result = {t: "exists" for t in wanted if t in existing}
    missing = [t for t in wanted if t not in existing]
    if missing:
        futures = client.create_topics(
            [NewTopic(t, num_partitions=partitions or cfg.kafka.partitions,
                      replication_factor=cfg.kafka.replication_factor,
                      config=topic_settings(cfg, t)) for t in missing],
            operation_timeout=timeout,
        )
        for topic, fut in futures.items():
            try:
                fut.result(timeout=timeout)
                result[topic] = "created"
            except KafkaException as exc:
                if exc.args and exc.args[0].code() == KafkaError.TOPIC_ALREADY_EXISTS:
                    result[topic] = "exists"
                else:
                    raise KafkaSetupError(f"could not create topic {topic}: {exc}") from None
        _wait_for_metadata(client, missing, timeout)
    return result


def _wait_for_metadata(client: AdminClient, topics: list[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        md = client.list_topics(timeout=timeout).topics
        # Creation completes asynchronously on a real cluster: wait for every partition's leader.
        if all(t in md and md[t].partitions and all(p.leader >= 0 and p.error is None
                                                      for p in md[t].partitions.values())
               for t in topics):
            return
        time.sleep(0.1)
    raise KafkaSetupError(f"topics {topics} did not get a leader for every partition in time")


def topic_exists(cfg: Config, topic: str, timeout: float = 15.0) -> bool:
    """Whether the cluster has ``topic``: the listing of all topics, which (unlike a metadata
    request for one name) never auto-creates it on a broker that allows that."""
    try:
        return topic in admin(cfg).list_topics(timeout=timeout).topics
    except KafkaException as exc:
        raise KafkaSetupError(f"cannot list the topics at {cfg.bootstrap_servers}: {exc}") from None


def delete_topics(cfg: Config, topics: list[str], timeout: float = 30.0) -> None:
    """Delete ``topics`` (missing ones are fine) and return once the broker no longer lists any
    of them: a deletion it has accepted may still be under way (a broker just started, its
    controller busy), and a topic created again before it is gone counts as existing, then
    vanishes under the next producer (UNKNOWN_TOPIC_OR_PART for every record)."""
    client = admin(cfg)
    futures = client.delete_topics(topics, operation_timeout=timeout)
    for fut in futures.values():
        try:
            fut.result(timeout=timeout)
        except KafkaException:
            pass
    deadline = time.monotonic() + timeout
    while set(topics) & set(client.list_topics(timeout=10).topics):
        if time.monotonic() > deadline:
            raise KafkaSetupError(f"topics still listed {timeout:.0f} s after their deletion: "
                                  f"{sorted(set(topics) & set(client.list_topics(timeout=10).topics))}")
        time.sleep(0.2)


def producer(cfg: Config, **extra: str) -> Producer:
    conf = {
        **_base(cfg),
        "enable.idempotence": True,  # no duplicates or reordering on retries
        "acks": "all",
        "linger.ms": 5,
        "compression.type": "lz4",
        **extra,
    }
    return Producer(conf)


def consumer(cfg: Config, group: str | None = None, from_beginning: bool = True,
             read_committed: bool = True, **extra: str) -> Consumer:
    conf = {
        **_base(cfg),
        "group.id": group or f"streamrec-cli-{time.time_ns()}",
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest" if from_beginning else "latest",
        "isolation.level": "read_committed" if read_committed else "read_uncommitted",
        **extra,
    }
    return Consumer(conf)


@dataclass(frozen=True)
class Record:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp_ms: int

    def json(self):
        return json.loads(self.value) if self.value is not None else None


def end_offsets(cfg: Config, topic: str, read_committed: bool = True, retry_s: float = 30.0) -> dict[int, int]:
    """The current end offsets of every partition (the last stable offset when read_committed).
    A topic created a moment ago may have no leader yet: retriable errors are retried for
    ``retry_s`` seconds."""
    cons = consumer(cfg, read_committed=read_committed)
    deadline = time.monotonic() + retry_s
    try:
        while True:
            try:
                md = cons.list_topics(topic, timeout=10).topics[topic]
                if md.error is not None:
                    raise KafkaException(md.error)
                out = {}
                for p in md.partitions:
                    _low, high = cons.get_watermark_offsets(TopicPartition(topic, p), timeout=10, cached=False)
                    out[p] = high
                return out
            except KafkaException as exc:
                error = exc.args[0] if exc.args and isinstance(exc.args[0], KafkaError) else None
                if error is None or not error.retriable() and error.code() not in _NOT_READY \
                        or time.monotonic() > deadline:
                    raise KafkaSetupError(f"topic {topic}: {exc}") from exc
                time.sleep(0.5)
    finally:
        cons.close()


#: Errors of a topic that exists but is not served yet (its partitions' leaders are being elected).
_NOT_READY = {KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.LEADER_NOT_AVAILABLE,
              KafkaError.UNKNOWN_TOPIC_OR_PART}


def read_topic(cfg: Config, topic: str, limit: int | None = None, from_beginning: bool = True,
               read_committed: bool = True, idle_timeout: float = 5.0,
               follow: bool = False) -> Iterator[Record]:
    """Yield records of ``topic``. Without ``follow`` it stops at the end offsets present at start
    (or after ``idle_timeout`` seconds without records, if the end cannot be reached)."""
    bounded = from_beginning and not follow
    ends = end_offsets(cfg, topic, read_committed) if bounded else {}
    extra = {"enable.partition.eof": "true"} if bounded else {}
    cons = consumer(cfg, from_beginning=from_beginning, read_committed=read_committed, **extra)
    try:
        if bounded:
            cons.assign([TopicPartition(topic, p, 0) for p in ends])
            # A partition is done at EOF or at the end offset seen at start (transaction markers
            # occupy offsets too, so EOF is the reliable signal under read_committed).
            remaining = {p for p, end in ends.items() if end > 0}
        else:
            cons.subscribe([topic])
            remaining = None
        count = 0
        last_record = time.monotonic()
        while True:
            if remaining is not None and not remaining:
                return
            if limit is not None and count >= limit:
                return
            msg = cons.poll(0.5)
            if msg is None:
                if not follow and time.monotonic() - last_record > idle_timeout:
                    return
                continue
            if msg.error():
                if msg.error().code() == KafkaError._PARTITION_EOF:
                    if remaining is not None:
                        remaining.discard(msg.partition())
                    continue
                raise KafkaException(msg.error())
            last_record = time.monotonic()
            if remaining is not None:
                end = ends.get(msg.partition(), 0)
                if msg.offset() >= end:
                    remaining.discard(msg.partition())
                    continue
                if msg.offset() == end - 1:
                    remaining.discard(msg.partition())
            count += 1
            yield Record(msg.topic(), msg.partition(), msg.offset(), msg.key(), msg.value(),
                         msg.timestamp()[1])
    finally:
        cons.close()
