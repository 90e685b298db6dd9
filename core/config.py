"""One typed configuration for every streamrec process.

Values come, in increasing priority, from the defaults below, a TOML file (``streamrec.toml`` in
the working directory, or the file named by ``STREAMREC_CONFIG``) and ``STREAMREC_*`` environment
variables, where a double underscore separates a section from its key::

    STREAMREC_KAFKA__BOOTSTRAP_SERVERS=broker-1:9092   # use a real Kafka, start nothing embedded
    STREAMREC_FLINK__PARALLELISM=2
    STREAMREC_LEARNER__DIM=32

>>> cfg = load_config(env={"STREAMREC_LEARNER__DIM": "16"}, config_file=None)
>>> cfg.learner.dim
16
>>> try:
...     load_config(env={"STREAMREC_FLINK__STATE_BACKEND": "memory"}, config_file=None)
... except ConfigError as exc:
...     print(exc)
invalid configuration:
  flink.state_backend = 'memory' (from STREAMREC_FLINK__STATE_BACKEND): must be one of 'rocksdb', 'hashmap'
"""

from __future__ import annotations

import math
import os
import re
import tomllib
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence, get_origin

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

ENV_PREFIX = "STREAMREC_"
CONFIG_FILE_ENV = "STREAMREC_CONFIG"
DEFAULT_CONFIG_FILE = "streamrec.toml"


class ConfigError(ValueError):
    """A configuration value is missing, unknown or out of range; the message names the key."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)


class TopicsConfig(_Section):
    """Kafka topic names. Per-user streams are keyed by user_id, item streams by item_id."""

    raw: str = "events.raw"
    dlq: str = "events.dlq"
    clean: str = "events.clean"
    features_user: str = "features.user"
    features_item: str = "features.item"
    model_items: str = "model.items"
    model_users: str = "model.users"
    #: The shards' item deltas to each other at parallelism > 1 (udfs/item_exchange.py).
    item_deltas: str = "model.item_deltas"
    recommendations: str = "recommendations"

    def all(self) -> list[str]:
        return list(self.model_dump().values())


class KafkaSecurityConfig(_Section):
    """How every client (the Python side's librdkafka and Flink's Java client) authenticates.
    The password is a secret: masked in `streamrec config` and in the job's start-up log, passed
    to child processes only through their environment."""

    protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = "PLAIN"
    sasl_username: str = ""
    sasl_password: str = ""
    #: PEM file of the CA that signed the brokers' certificates (SSL / SASL_SSL); empty = system CAs.
    ssl_ca_location: str = ""

    def python_properties(self) -> dict[str, str]:
        """librdkafka (confluent-kafka) properties."""
        out = {"security.protocol": self.protocol}
        if self.protocol.startswith("SASL"):
            out |= {"sasl.mechanism": self.sasl_mechanism, "sasl.username": self.sasl_username,
                    "sasl.password": self.sasl_password}
        if self.protocol.endswith("SSL") and self.ssl_ca_location:
            out["ssl.ca.location"] = self.ssl_ca_location
        return out

    def java_properties(self) -> dict[str, str]:
        """Kafka Java client properties (class names unshaded; the connector options shade them).

        >>> KafkaSecurityConfig(protocol="SASL_SSL", sasl_username="u", sasl_password="pw").java_properties()["sasl.jaas.config"]
        'org.apache.kafka.common.security.plain.PlainLoginModule required username="u" password="pw";'
        """
        out = {"security.protocol": self.protocol}
        if self.protocol.startswith("SASL"):
            module = ("org.apache.kafka.common.security.plain.PlainLoginModule"
                      if self.sasl_mechanism == "PLAIN"
                      else "org.apache.kafka.common.security.scram.ScramLoginModule")

            def quoted(value: str) -> str:  # a JAAS string: backslashes and quotes escaped
                return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'

            out |= {"sasl.mechanism": self.sasl_mechanism,
                    "sasl.jaas.config": f"{module} required username={quoted(self.sasl_username)} "
                                        f"password={quoted(self.sasl_password)};"}
        if self.protocol.endswith("SSL") and self.ssl_ca_location:
            out |= {"ssl.truststore.type": "PEM", "ssl.truststore.location": self.ssl_ca_location}
        return out


class KafkaConfig(_Section):
    #: Empty means "use the embedded broker" (started by ``streamrec up``). Set it to a real Kafka
    #: cluster (``host:port,host:port``) and nothing embedded starts.
    bootstrap_servers: str = ""
    partitions: int = Field(4, ge=1, le=1024, description="partitions of every topic created")
    replication_factor: int = Field(1, ge=1, le=16)
    #: Exactly-once sinks open transactions that live until the next checkpoint completes. Brokers
    #: refuse timeouts above their transaction.max.timeout.ms (15 min by default), so stay below.
    transaction_timeout_ms: int = Field(600_000, ge=10_000, le=900_000)
    topics: TopicsConfig = TopicsConfig()
    security: KafkaSecurityConfig = KafkaSecurityConfig()
    #: The Flink sinks' producer batches (Kafka's ``batch.size`` / ``linger.ms``, per partition).
    #: Bigger, fewer produce requests cost the broker and the producers' network threads less per
    #: record (BENCHMARKS.md, "Figures behind the defaults"). An exactly-once sink flushes at every
    #: checkpoint, so a read_committed reader waits no longer; only a read_uncommitted one sees
    #: records up to the linger later.
    sink_batch_bytes: int = Field(262_144, ge=1_024, le=16_777_216)
    sink_linger_ms: int = Field(20, ge=0, le=1_000)
    #: Extra client properties given to both the Python (librdkafka) and the Java client (they
    #: win over the settings above).
    client_properties: dict[str, str] = {}


class EmbeddedBrokerConfig(_Section):
    """The local Apache Kafka broker `streamrec up` starts (one KRaft node, broker + controller)."""

    host: str = "127.0.0.1"
    port: int = Field(19092, ge=1024, le=65535, description="the Kafka (PLAINTEXT) listener")
    controller_port: int = Field(19093, ge=1024, le=65535, description="the KRaft controller listener")
    #: JVM heap of the broker; log data lives in segment files and the page cache, not the heap.
    heap_mb: int = Field(512, ge=128, le=65_536)
    #: Partitions of __consumer_offsets / __transaction_state (Kafka's 50 are slow to create here).
    internal_topic_partitions: int = Field(4, ge=1, le=50)
    startup_timeout_s: float = Field(60.0, gt=0)
    #: SIGTERM starts Kafka's controlled shutdown; SIGKILL follows only after this long.
    shutdown_timeout_s: float = Field(30.0, gt=0)
    #: Extra server.properties entries, overriding streamrec's single-node settings.
    server_properties: dict[str, str] = {}


class PathsConfig(_Section):
    """Where streamrec keeps its files; relative paths are relative to ``state_dir``'s parent."""

    state_dir: Path = Path(".streamrec")
    #: Shared with the exporter and every TaskManager: put it on a shared filesystem in a cluster.
    registry_dir: Path | None = None
    checkpoint_dir: Path | None = None
    cache_dir: Path | None = None
    data_dir: Path | None = None

    def resolved(self, base: Path) -> "PathsConfig":
        state = self.state_dir if self.state_dir.is_absolute() else base / self.state_dir
        state = state.resolve()

        def pick(value: Path | None, default: str) -> Path:
            if value is None:
                return state / default
            return value if value.is_absolute() else (base / value).resolve()

        return PathsConfig(
            state_dir=state,
            registry_dir=pick(self.registry_dir, "registry"),
            checkpoint_dir=pick(self.checkpoint_dir, "checkpoints"),
            cache_dir=pick(self.cache_dir, "cache"),
            data_dir=pick(self.data_dir, "data"),
        )


#: Flink's Prometheus reporter (runtime/jvm/flink-metrics-prometheus.pom.xml).
PROMETHEUS_REPORTER_FACTORY = "org.apache.flink.metrics.prometheus.PrometheusReporterFactory"


class FlinkConfig(_Section):
    parallelism: int = Field(1, ge=1, le=512)
    checkpoint_interval_ms: int = Field(5_000, ge=200)
    #: Restarts after a failure (fixed delay) before the job gives up, and the delay between them.
    restart_attempts: int = Field(3, ge=0, le=1000)
    restart_delay_ms: int = Field(2_000, ge=0)
    #: Checkpoint failures in a row tolerated before the job fails over.
    tolerable_checkpoint_failures: int = Field(3, ge=0, le=1000)
    #: thread mode runs Python in the JVM: keyed state far cheaper than in process mode
    #: (BENCHMARKS.md, "Figures behind the defaults").
    execution_mode: Literal["thread", "process"] = "thread"
    state_backend: Literal["rocksdb", "hashmap"] = "rocksdb"
    incremental_checkpoints: bool = True
    #: Flink's changelog state backend over the state backend above: every state change is also
    #: appended to a log under the job's checkpoint directory, so a checkpoint persists that log's
    #: tail (tens of ms) instead of flushing RocksDB's memtables in the task threads, and RocksDB
    #: itself is snapshotted in the background every ``changelog_materialize_interval_ms``. The
    #: exactly-once sinks commit on checkpoint completion, so this is the read_committed latency,
    #: bought with JVM CPU and throughput (every state change is written twice; BENCHMARKS.md,
    #: "Figures behind the defaults"): where throughput matters more than a read_committed
    #: reader's latency, switch it off. Restores with it claim their snapshot (docs/reliability.md).
    state_changelog: bool = True
    #: How often the changelog state backend snapshots the state backend itself (the log since the
    #: last one is what a restore replays and what the checkpoint directory keeps on disk).
    changelog_materialize_interval_ms: int = Field(30_000, ge=1_000)
    #: Python operators' bundle: records / milliseconds buffered before a flush (latency vs overhead).
    python_bundle_size: int = Field(1000, ge=1)
    python_bundle_time_ms: int = Field(100, ge=1)
    #: Longest a network buffer waits to fill before it is sent downstream (Flink's
    #: execution.buffer-timeout.interval; Flink's default is 100 ms). Every exchange between
    #: operators (the job has 7) adds up to this much latency to a record that does not fill its
    #: buffer; 10 ms cut the emitted latency with the same throughput (BENCHMARKS.md, "Figures
    #: behind the defaults"). 0 sends every record on its own (costly).
    buffer_timeout_ms: int = Field(10, ge=0, le=60_000)
    #: Run the JVM's JIT compiler threads at a lower OS priority (nice +4: HotSpot's
    #: -XX:ThreadPriorityPolicy=1 -XX:CompilerThreadPriority=1), so where cores are few the task
    #: threads, the shard learner above all, get the CPU first and the JIT compiles in what is
    #: left: on 2 cores the learner thread waited for a core more than it ran (BENCHMARKS.md,
    #: "Figures behind the defaults"). Lowering a priority needs no privilege.
    low_priority_jit: bool = True
    #: Python interpreter on the TaskManagers; empty = the one running the driver (this venv).
    python_executable: str = ""
    #: Ship the Kafka connector and streamrec's UDF jar with each job (``pipeline.jars``). False
    #: where the cluster has them in lib/ (``streamrec cluster``, the docker-compose images): on
    #: both classpaths their classes load twice and the job fails with ClassCastException.
    ship_connector: bool = True
    #: A remote JobManager ``host:port`` for ``streamrec submit``; empty = the local standalone cluster.
    jobmanager_address: str = ""
    rest_port: int = Field(8081, ge=1024, le=65535)
    #: The interface the local mini-cluster's sockets listen on (REST API and web UI, blob server,
    #: task RPC). Loopback unless set: the REST API cancels jobs and triggers savepoints, without
    #: authentication. ``0.0.0.0`` exposes it to the network.
    bind_host: str = "127.0.0.1"
    taskmanagers: int = Field(2, ge=1, le=16)
    task_slots: int = Field(2, ge=1, le=64)
    #: Extra Flink configuration entries for every job streamrec starts (they win over the
    #: settings streamrec derives from this section), e.g. ``metrics.reporters``, memory sizes.
    settings: dict[str, str] = {}
    #: Flink's Prometheus reporter in every Flink JVM streamrec starts (the local mini-cluster's,
    #: `streamrec cluster`'s JobManager and TaskManagers), each serving ``/metrics`` on the first
    #: free port of ``prometheus_ports`` (docs/metrics.md). Off unless set: the reporter has no
    #: host setting and listens on every interface, not on ``bind_host``.
    prometheus_reporter: bool = False
    #: ``PORT`` or ``FIRST-LAST``: one port per JVM (on the mini-cluster one per job a process
    #: runs at a time; `streamrec cluster` needs 1 + ``taskmanagers``).
    prometheus_ports: str = Field("9249-9259", pattern=r"^[0-9]{4,5}(-[0-9]{4,5})?$")


    def jvm_options(self) -> list[str]:
        """Extra options for every Flink JVM streamrec starts (PyFlink's gateway with the local
        mini-cluster; ``streamrec cluster``'s JobManager and TaskManagers).

        >>> FlinkConfig().jvm_options()
        ['-XX:ThreadPriorityPolicy=1', '-XX:CompilerThreadPriority=1']
        >>> FlinkConfig(low_priority_jit=False).jvm_options()
        []
        """
        # Java priority 1 is nice +4 under ThreadPriorityPolicy=1; a thread asking for a higher
        # Java priority than normal gets it only as root (lowering needs no privilege)
        return ["-XX:ThreadPriorityPolicy=1", "-XX:CompilerThreadPriority=1"] if self.low_priority_jit else []

    @field_validator("prometheus_ports")
    @classmethod
    def _prometheus_port_range(cls, ports: str) -> str:
        first, _, last = ports.partition("-")
        if not 1024 <= int(first) <= int(last or first) <= 65535:
            raise ValueError("want PORT or FIRST-LAST with 1024 <= FIRST <= LAST <= 65535")
        return ports

    def prometheus_port_range(self) -> tuple[int, int]:
        """``prometheus_ports`` as (first, last).

        >>> FlinkConfig(prometheus_ports="9300").prometheus_port_range()
        (9300, 9300)
        """
        first, _, last = self.prometheus_ports.partition("-")
        return int(first), int(last or first)

    def metrics_reporter_settings(self) -> dict[str, str]:
        """Flink's options for the Prometheus reporter ``prom`` (none when it is off); its jar must
        be where the JVM finds it (docs/metrics.md).

        >>> FlinkConfig(prometheus_reporter=True).metrics_reporter_settings()["metrics.reporter.prom.port"]
        '9249-9259'
        >>> FlinkConfig().metrics_reporter_settings()
        {}
        """
        if not self.prometheus_reporter:
            return {}
        return {"metrics.reporter.prom.factory.class": PROMETHEUS_REPORTER_FACTORY,
                "metrics.reporter.prom.port": self.prometheus_ports}

#: The largest event weight accepted. The learner bounds each event's step (``learner.max_step``),
#: so beyond ~10 a heavier weight changes a step no more; weights are summed into the items'
#: popularity counts (float64), which a weight near the float range would overflow.
MAX_EVENT_WEIGHT = 1e6


class EventWeights(_Section):
    """Implicit-feedback weight of each event type; must rise view < click < cart < purchase.
    Every weight must be a finite number in (0, 1e6] (:data:`MAX_EVENT_WEIGHT`), a rating's
    too (checked with the rating range by :class:`IngestConfig`). Any such weight keeps the
    learner finite: its steps are bounded (``learner.max_step``; docs/learner.md, "Bounded
    steps")."""

    model_config = ConfigDict(**_Section.model_config, allow_inf_nan=False)

    view: float = Field(0.25, gt=0, le=MAX_EVENT_WEIGHT)
    click: float = Field(0.5, gt=0, le=MAX_EVENT_WEIGHT)
    cart: float = Field(1.0, gt=0, le=MAX_EVENT_WEIGHT)
    purchase: float = Field(2.0, gt=0, le=MAX_EVENT_WEIGHT)
    #: A rating r in [0.5, 5] maps to rating_base + rating_scale * r (0.55-1.0 by default; small
    #: weights slow learning: docs/ingestion.md, "Cleaning and weights").
    rating_base: float = 0.5
    rating_scale: float = Field(0.1, ge=0)

    def rating_weight(self, rating: float) -> float:
        """The weight of a rating event of ``rating``.

        >>> EventWeights().rating_weight(5.0)
        1.0
        """
        return self.rating_base + self.rating_scale * rating

    @model_validator(mode="after")
    def _ordered(self) -> "EventWeights":
        if not (self.view < self.click < self.cart < self.purchase):
            raise ValueError(
                "event weights must rise view < click < cart < purchase, got "
                f"{self.view}, {self.click}, {self.cart}, {self.purchase}"
            )
        return self


class IngestConfig(_Section):
    max_payload_bytes: int = Field(16_384, ge=256)
    #: The DLQ keeps the raw payload up to this many bytes (UTF-8, cut on a character boundary).
    dlq_payload_max_bytes: int = Field(4_096, ge=64)
    #: Events further than this in the future of wall-clock time are rejected; old (replayed)
    #: events stay valid.
    max_future_ms: int = Field(3_600_000, ge=0)
    min_ts_ms: int = Field(0, ge=0, description="events older than this epoch ms are rejected")
    #: Longest id (event_id, user_id, item_id) accepted, in code points after trimming; longer
    #: ones go to the DLQ as id_too_long. 128 holds UUIDs (36), ULIDs (26), hex SHA-256 (64) and
    #: prefixed composite keys, and bounds an id in a fixed-width numpy array (items.npz) at
    #: 512 bytes.
    max_id_chars: int = Field(128, ge=1, le=1_024)
    watermark_delay_ms: int = Field(5_000, ge=0)
    #: A partition with no record for this long stops holding the watermark back (0 = never).
    #: Off by default: under a backlog the source reader drains one partition's fetch at a time,
    #: so the others look idle, the watermark jumps past their queued events and the feature
    #: windows drop them silently (docs/ingestion.md, "Source idleness", has what it lost on
    #: ML-100k). Set it only where a partition can stay empty for
    #: long (a source parallelism above the partition count on a cluster), knowing that price.
    #: Bounded runs never use it: a partition that has reached its end offset no longer counts.
    source_idle_timeout_ms: int = Field(0, ge=0)
    #: The most bytes the raw source fetches from one partition per request (the Kafka client's
    #: ``max.partition.fetch.bytes``; its default is 1 MiB, ~7,000 events). Under a backlog the
    #: reader emits partition by partition, fetch by fetch, so this is the grain at which the
    #: partitions' events interleave: smaller chunks keep a replay or a catch-up nearer to event
    #: time order, which the online learner's recall depends on (docs/learner.md, "Read order").
    raw_partition_fetch_bytes: int = Field(65_536, ge=1_024, le=64 * 2**20)
    dedup_horizon_ms: int = Field(86_400_000, ge=1_000)
    rating_min: float = 0.5
    rating_max: float = 5.0
    weights: EventWeights = EventWeights()
    #: The short window is the last part of each long window (6 h of 24 h by default).
    short_window_ms: int = Field(21_600_000, ge=1_000)
    long_window_ms: int = Field(86_400_000, ge=1_000)
    #: Windows are built from slices of one slide: each event is aggregated once per (user,
    #: item, slice), and each pair slice lands in long_window_ms / window_slide_ms windows of the
    #: second level (4 with the defaults; a finer slide costs proportionally more there).
    window_slide_ms: int = Field(21_600_000, ge=1_000)
    bot_events_per_minute: float = Field(120.0, gt=0)
    exclude_bots_from_learning: bool = True
    #: The features job's checkpoint interval (its sinks commit then): its windows slide by
    #: hours, so seconds of commit delay cost nothing, while checkpoints as frequent as the
    #: pipeline's (whose interval sets the recommendations' latency) take CPU from it.
    features_checkpoint_interval_ms: int = Field(5_000, ge=200)

    @model_validator(mode="after")
    def _rating_weights(self) -> "IngestConfig":
        for rating in (self.rating_min, self.rating_max):
            weight = self.weights.rating_weight(rating)
            if not 0 < weight <= MAX_EVENT_WEIGHT:
                raise ValueError(
                    f"a rating of {rating:g} would weigh {weight:g} (weights.rating_base + weights.rating_scale * "
                    f"rating), but every rating from rating_min to rating_max must weigh more than 0 (at 0 it is not "
                    f"learned, below 0 the learner unlearns it and diverges) and at most {MAX_EVENT_WEIGHT:g}")
        return self

    @model_validator(mode="after")
    def _windows(self) -> "IngestConfig":
        if self.short_window_ms >= self.long_window_ms:
            raise ValueError("short_window_ms must be smaller than long_window_ms")
        if self.rating_min >= self.rating_max:
            raise ValueError("rating_min must be smaller than rating_max")
        # Sliding windows are aligned to the slide, reported in epoch ms (whole seconds), and the
        # short window is the last short_window_ms of each long window (docs/ingestion.md).
        if self.window_slide_ms % 1_000:
            raise ValueError("window_slide_ms must be a whole number of seconds")
        if self.long_window_ms % self.window_slide_ms or self.short_window_ms % self.window_slide_ms:
            raise ValueError("short_window_ms and long_window_ms must be multiples of window_slide_ms")
        return self


class LearnerConfig(_Section):
    """Hyper-parameters of the online matrix factorisation (udfs/). Defaults are the setting
    chosen on MovieLens-100k by bench/learner_choice.py (see docs/learner.md)."""

    dim: int = Field(32, ge=2, le=1024)
    learning_rate: float = Field(0.2, gt=0)
    regularization: float = Field(0.001, ge=0)
    init_scale: float = Field(0.1, gt=0)
    seed: int = 42
    negatives: int = Field(8, ge=0, le=256)
    #: Items the sequential reference (udfs/online_mf.py) remembers per user: excluded from the
    #: user's recommendations and from its negatives. The pipeline's learner excludes a user's
    #: whole history instead (``scoring.seen_filter_bits``).
    recent_items: int = Field(200, ge=1, le=10_000)
    state_ttl_ms: int = Field(30 * 86_400_000, ge=60_000)
    #: Processing time between two flushes of the changed items and users to the model.items /
    #: model.users changelogs (each changed id once per flush): the exporter's and the broker's
    #: load follows changed items per interval, not events. Under load nearly every item changes
    #: within a second, so a short interval re-encodes the whole table (BENCHMARKS.md, "Figures
    #: behind the defaults"); 5 s matches the exporter's own interval.
    changelog_interval_ms: int = Field(5_000, ge=0)
    #: At parallelism > 1 (unbounded runs), how often each shard sends the item steps it took to
    #: the other shards (udfs/item_exchange.py); 0: never, each shard learns its own item table.
    #: A shard's copy lacks at most the other shards' last interval, plus a checkpoint interval
    #: (the deltas travel through an exactly-once sink) and a micro-batch (docs/hot-path.md).
    exchange_interval_ms: int = Field(500, ge=0)
    #: Retention of the delta topic: a run restored from a checkpoint or savepoint older than this
    #: misses the other shards' steps between (its item copies then differ by them).
    exchange_retention_ms: int = Field(7 * 86_400_000, ge=3_600_000)
    #: Sampled softmax (with logQ correction) or pairwise BPR over the positive and its negatives.
    objective: Literal["softmax", "bpr"] = "softmax"
    #: Negatives drawn uniformly from the item snapshot or in proportion to its popularity counts.
    negative_sampling: Literal["popularity", "uniform"] = "popularity"
    #: alpha in score = u.v + b_i + alpha * log1p(popularity_i); applied when scoring only.
    popularity_prior: float = Field(0.5, ge=0)
    optimizer: Literal["sgd", "adagrad"] = "sgd"
    #: Bound of one event's SGD step: the first-order change it makes to the scores of its
    #: candidates (the positive and its negatives), ``learning_rate * sum_k |c_k| * (|u|^2 +
    #: |v_k|^2 + 1)``, is at most this; a larger step is scaled down to it (udfs/online_mf.py
    #: ``step_scale``). The coefficients ``c_k`` carry the event weight, so without it a weight
    #: above ~2 (or a learning rate of 0.5) overshoots and the vectors diverge to NaN. At the
    #: defaults it rarely binds (ML-100k recall unchanged); 10 at most: larger bounds let heavy
    #: events overshoot again (docs/learner.md, "Bounded steps"). AdaGrad does not use it.
    max_step: float = Field(4.0, gt=0, le=10)
    #: No user or item vector is longer than this: a step that would make one longer is scaled
    #: back to it. A guard that keeps every score finite (at most ``max_norm^2`` plus the bias);
    #: with ``max_step`` the vectors stay below ~5.5 on ML-100k, so it does not bind there.
    max_norm: float = Field(10.0, gt=0, le=1_000)

    @model_validator(mode="after")
    def _stable(self) -> "LearnerConfig":
        if self.learning_rate * self.regularization >= 1:
            raise ValueError(f"learning_rate * regularization ({self.learning_rate} * {self.regularization}) must "
                             "be below 1: each step would shrink a vector past zero and the learner diverges")
        if self.init_scale * math.sqrt(self.dim) > self.max_norm:
            raise ValueError(f"init_scale {self.init_scale} at dim {self.dim} makes initial vectors of norm "
                             f"~{self.init_scale * math.sqrt(self.dim):g}, longer than max_norm ({self.max_norm})")
        return self


class ExporterConfig(_Section):
    #: Export cadence: staleness of the item snapshot users learn against costs recall (docs/learner.md).
    interval_s: float = Field(5.0, gt=0)
    every_n_changes: int = Field(5_000, ge=1)
    top_k: int = Field(10, ge=1, le=1000)
    #: Retention keeps the newest `retention` versions, plus the newest non-rejected version of
    #: each of the last `retention_hourly_hours` UTC hours and `retention_daily_days` UTC days
    #: (0 disables a rule), so that rollback by time reaches back that far (docs/registry.md).
    retention: int = Field(10, ge=2)
    retention_hourly_hours: int = Field(24, ge=0, le=24 * 366)
    retention_daily_days: int = Field(7, ge=0, le=3660)
    gate_margin: float = Field(0.02, ge=0, le=1)
    #: A candidate is decided on clean events after its training position: at least
    #: `gate_min_events` (it stays pending until then; 0 decides at export, on no evidence) and
    #: at most `gate_events` of them.
    gate_events: int = Field(2_000, ge=0)
    gate_min_events: int = Field(500, ge=0)
    #: A pending candidate is decided at most this long after its export (the cap, like
    #: `gate_events`: a tie then goes to the serving model). 0: no time cap.
    gate_max_wait_s: float = Field(60.0, ge=0)
    #: The gate's paired comparison: one-sided confidence of its bounds, split over its looks
    #: (after gate_min_events, doubling up to gate_events; docs/registry.md, "Decision").
    gate_confidence: float = Field(0.95, ge=0.5, lt=1)
    #: The gate keeps user vectors and seen items of a hash-sampled set of at most this many
    #: users (its memory does not grow with the user count); 0: every user.
    gate_max_users: int = Field(20_000, ge=0)
    #: On SIGTERM / SIGINT, read to the end and decide a pending candidate at the cap instead of
    #: leaving it undecided (the demo sets it; a restarted exporter supersedes it otherwise).
    gate_decide_on_stop: bool = False
    #: Cadence: a version is exported only once the model can rank, i.e. at least
    #: `export_min_items` items have each been learned from `export_min_item_updates` events, and
    #: only after `export_min_events` clean events since the previous export (then on the
    #: interval / change-count triggers above). 0 disables a condition.
    export_min_items: int = Field(20, ge=0)
    export_min_item_updates: int = Field(5, ge=0)
    export_min_events: int = Field(1_000, ge=0)
    #: registry.log is rotated past this size (0: never), keeping `log_keep` rotated files.
    log_max_bytes: int = Field(16 * 2**20, ge=0)
    log_keep: int = Field(5, ge=1, le=1000)
    #: Prometheus metrics of the long-running `streamrec exporter` (exports, gate decisions and
    #: figures, CURRENT, export age; docs/metrics.md): ``GET /metrics`` on `metrics_host`:
    #: `metrics_port`. None (the default): no metrics server, no socket (the sidecar runs in the
    #: demo and beside every test's pipeline; a fixed port would collide there, and a sidecar must
    #: not fail to start over its metrics); 0: any free port. The URL is printed at start.
    #: Loopback unless set: the server has no authentication.
    metrics_host: str = Field("127.0.0.1", min_length=1)
    metrics_port: int | None = Field(None, ge=0, le=65535)

    @model_validator(mode="after")
    def _gate_bounds(self) -> "ExporterConfig":
        if self.gate_min_events > self.gate_events:
            raise ValueError(f"gate_min_events ({self.gate_min_events}) must not exceed gate_events "
                             f"({self.gate_events}), the most held-out events a decision uses")
        return self


class ScoringConfig(_Section):
    top_k: int = Field(10, ge=1, le=1000)
    #: The learner's micro-batch: a processing-time window per shard (latency vs per-call cost).
    batch_interval_ms: int = Field(100, ge=1, le=60_000)
    #: ``live`` scores each batch against the shard's own item table (fresh to the batch), except
    #: that an operator's pin (`model rollback`) or promotion (`model promote`) is served as it
    #: is; ``registry`` serves the registry's CURRENT version (gated, pinnable). Hot-swapped
    #: either way; every record's ``model_version`` names what scored it (docs/registry.md, "Serving").
    serve: Literal["live", "registry"] = "live"
    #: How often each learner subtask reads CURRENT and the pin (a swap follows within this
    #: plus one micro-batch).
    swap_check_interval_s: float = Field(2.0, gt=0)
    #: A user's list comes from the model once it has learned this many of the user's events
    #: (the current one included), from in-stream popularity before. 1: the model's list beat
    #: popularity from a user's first event on both bench streams (BENCHMARKS.md, "Figures behind
    #: the defaults"); its item biases and the popularity prior carry a new user's list.
    cold_start_min_events: int = Field(1, ge=0)
    #: The per-user filter of every item the user had (udfs/seen_filter.py): bits and hashes.
    seen_filter_bits: int = Field(32_768, ge=64, le=8_388_608, multiple_of=8)
    seen_filter_hashes: int = Field(4, ge=1, le=16)
    #: Below this many known items, events are learned and scored one at a time.
    warmup_items: int = Field(50, ge=0)
    #: A micro-batch is learned in chunks of at most this many events (items are read as of a
    #: chunk's start: bigger chunks are cheaper per event and staler).
    max_batch_events: int = Field(256, ge=1, le=65_536)
    provider: Literal["auto", "cuda", "cpu"] = "auto"
    #: onnxruntime intra-op threads per scorer subtask; 1 beat the default pool for batched
    #: scoring on 2 shared cores (BENCHMARKS.md, "Figures behind the defaults"); 0 = onnxruntime's
    #: default.
    ort_threads: int = Field(1, ge=0, le=256)


class ServingConfig(_Section):
    """`streamrec serve`: the HTTP service over the recommendations and model.users topics and the
    registry's CURRENT model (docs/serving.md). Ids are bounded by ``ingest.max_id_chars``."""

    #: Loopback unless set: the service has no authentication.
    host: str = "127.0.0.1"
    #: 0 = any free port (the URL it listens on is printed).
    port: int = Field(8000, ge=0, le=65535)
    #: The list length a request gets when it names no ``k``, and the most it may ask for.
    default_k: int = Field(10, ge=1, le=1000)
    max_k: int = Field(100, ge=1, le=1000)
    #: Most item ids a score request may list in ``exclude`` / ``candidates``.
    max_request_items: int = Field(10_000, ge=1, le=1_000_000)
    max_body_bytes: int = Field(1_048_576, ge=1_024, le=64 * 2**20)
    #: How often the store and its consumed offsets are written to ``snapshot_file`` (a restart
    #: resumes from there instead of rereading the topics); 0: only at shutdown.
    snapshot_interval_s: float = Field(60.0, ge=0)
    #: Relative to ``paths.state_dir``.
    snapshot_file: Path = Path("serving/snapshot.npz")
    #: How often the broker is probed for the topics' end offsets (lag, and /readyz: a broker that
    #: does not answer within ``broker_timeout_s`` makes the service unready).
    probe_interval_s: float = Field(5.0, gt=0, le=3_600)
    broker_timeout_s: float = Field(5.0, gt=0, le=600)

    @model_validator(mode="after")
    def _default_within_max(self) -> "ServingConfig":
        if self.default_k > self.max_k:
            raise ValueError(f"default_k ({self.default_k}) must not exceed max_k ({self.max_k})")
        return self


class Config(_Section):
    kafka: KafkaConfig = KafkaConfig()
    embedded: EmbeddedBrokerConfig = EmbeddedBrokerConfig()
    paths: PathsConfig = PathsConfig()
    flink: FlinkConfig = FlinkConfig()
    ingest: IngestConfig = IngestConfig()
    learner: LearnerConfig = LearnerConfig()
    exporter: ExporterConfig = ExporterConfig()
    scoring: ScoringConfig = ScoringConfig()
    serving: ServingConfig = ServingConfig()
    #: The directory relative paths are resolved against (the config file's, else the cwd).
    base_dir: Path = Path(".")

    @model_validator(mode="after")
    def _transactions_outlive_recovery(self) -> "Config":
        # A sink's transaction stays open from one checkpoint until the next one completes, and
        # across failed checkpoints and restarts; if the broker aborts it first, its records are lost.
        needed = max(transaction_time_needed_ms(self.flink), transaction_time_needed_ms(
            self.flink.model_copy(update={"checkpoint_interval_ms": self.ingest.features_checkpoint_interval_ms})))
        if self.kafka.transaction_timeout_ms < needed:
            raise ValueError(
                f"kafka.transaction_timeout_ms = {self.kafka.transaction_timeout_ms} is below the "
                f"{needed} ms that flink.checkpoint_interval_ms (or ingest.features_checkpoint_interval_ms), "
                "tolerable_checkpoint_failures, "
                "restart_attempts and restart_delay_ms need (the broker would abort transactions "
                "before Flink commits them): raise it or lower those")
        return self

    @property
    def uses_embedded_broker(self) -> bool:
        return not self.kafka.bootstrap_servers.strip()

    @property
    def bootstrap_servers(self) -> str:
        if self.uses_embedded_broker:
            return f"{self.embedded.host}:{self.embedded.port}"
        return self.kafka.bootstrap_servers.strip()

    @property
    def paths_resolved(self) -> PathsConfig:
        return self.paths.resolved(self.base_dir)


#: Time a restarted job needs before its first checkpoint can complete (start-up, restore).
RECOVERY_ALLOWANCE_MS = 60_000


def transaction_time_needed_ms(flink: FlinkConfig) -> int:
    """The longest a sink transaction can stay open before Flink commits it: every tolerated
    checkpoint failure plus one interval, plus every restart with its delay and a recovery.

    >>> transaction_time_needed_ms(FlinkConfig())
    136000
    """
    return ((flink.tolerable_checkpoint_failures + 2) * flink.checkpoint_interval_ms
            + flink.restart_attempts * (flink.restart_delay_ms + RECOVERY_ALLOWANCE_MS // 4)
            + RECOVERY_ALLOWANCE_MS)


def _set_path(tree: dict[str, Any], keys: list[str], value: Any) -> None:
    node = tree
    for key in keys[:-1]:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise ConfigError(f"invalid configuration: {'.'.join(keys)} is under a non-section key")
        node = child
    node[keys[-1]] = value


def _env_overrides(env: Mapping[str, str]) -> tuple[dict[str, Any], dict[str, str]]:
    """Turn STREAMREC_SECTION__KEY=value into a nested dict; remember where each came from."""
    tree: dict[str, Any] = {}
    origin: dict[str, str] = {}
    for name, value in env.items():
        if not name.startswith(ENV_PREFIX) or name == CONFIG_FILE_ENV:
            continue
        keys = [part.lower() for part in name[len(ENV_PREFIX):].split("__") if part]
        if not keys:
            continue
        # dict-valued keys take JSON-free "k=v,k=v"; everything else is validated by pydantic.
        parsed: Any = value
        if get_origin(_annotation(keys)) is dict:
            parsed = dict(kv.split("=", 1) for kv in value.split(",") if "=" in kv)
        _set_path(tree, keys, parsed)
        origin[".".join(keys)] = name
    return tree, origin


def _deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _section(path: Sequence[Any]) -> type[BaseModel] | None:
    """The config model at ``path`` (section names from the top), None past a non-section key."""
    model: type[BaseModel] | None = Config
    for part in path:
        field = model.model_fields.get(str(part)) if model else None
        ann = field.annotation if field else None
        model = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None
    return model


def _annotation(keys: Sequence[str]) -> Any:
    """The type annotation of the setting at ``keys`` (None for an unknown key)."""
    model = _section(keys[:-1])
    field = model.model_fields.get(keys[-1]) if model else None
    return field.annotation if field else None


def _allowed_keys(loc: tuple[Any, ...]) -> list[str]:
    model = _section(loc[:-1])
    return sorted(model.model_fields) if model else []


def _format_errors(exc: ValidationError, origin: dict[str, str], source: str) -> ConfigError:
    lines = []
    for err in exc.errors():
        loc = tuple(p for p in err["loc"] if not isinstance(p, int))
        key = ".".join(str(p) for p in loc)
        # a section's own check (a model validator): where its settings came from
        where = origin.get(key) or ", ".join(sorted({v for k, v in origin.items() if k.startswith(f"{key}.")})) or source
        if err["type"] == "extra_forbidden":
            allowed = ", ".join(_allowed_keys(loc))
            lines.append(f"  {key}: unknown key (from {where}); allowed here: {allowed}")
            continue
        msg = err["msg"]
        if err["type"] == "literal_error":
            expected = err.get("ctx", {}).get("expected", "")
            msg = f"must be one of {expected.replace(' or ', ', ')}"
        shown = f" = {err['input']!r}" if not isinstance(err.get("input"), dict) else ""
        lines.append(f"  {key or '(root)'}{shown} (from {where}): {msg}")
    return ConfigError("invalid configuration:\n" + "\n".join(lines))


def load_config(
    config_file: str | os.PathLike[str] | None | Literal["auto"] = "auto",
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Config:
    """Build the configuration: defaults < TOML file < STREAMREC_* environment < ``overrides``.

    ``overrides`` is a dotted-key mapping used by the CLI, e.g. ``{"flink.parallelism": 2}``.
    """
    env = os.environ if env is None else env
    tree: dict[str, Any] = {}
    source = "defaults"
    base_dir = Path.cwd()
    if config_file == "auto":
        config_file = env.get(CONFIG_FILE_ENV) or (
            DEFAULT_CONFIG_FILE if Path(DEFAULT_CONFIG_FILE).is_file() else None
        )
    if config_file is not None:
        path = Path(config_file)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        try:
            tree = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
        source = str(path)
        base_dir = path.resolve().parent
    env_tree, origin = _env_overrides(env)
    tree = _deep_merge(tree, env_tree)
    for dotted, value in (overrides or {}).items():
        _set_path(tree, dotted.split("."), value)
        origin[dotted] = "command line"
    tree.setdefault("base_dir", str(base_dir))
    try:
        return Config.model_validate(tree)
    except ValidationError as exc:
        raise _format_errors(exc, origin, source) from None


#: Client / server property names whose values are secrets (SASL/SSL): never printed. Matched
#: anywhere in a setting's whole dotted path, since a property name holds dots itself
#: (``kafka.client_properties.sasl.jaas.config``), and Kafka prefixes per-listener ones
#: (``listener.name.sasl_ssl.scram-sha-256.sasl.jaas.config``). PEM keys are given inline as
#: ``ssl.keystore.key``; ``ssl.key.password`` protects one.
SECRET_KEY = re.compile(r"password|secret|jaas|token|credential|private|"
                        r"(?:^|\.)ssl\.keystore\.key$|(?:^|\.)ssl\.key\.", re.I)
MASK = "****"


def is_secret(key: str) -> bool:
    """Whether the setting or property named ``key`` (a name or a whole dotted path) is a secret.

    >>> is_secret("sasl.jaas.config"), is_secret("ssl.keystore.password"), is_secret("security.protocol")
    (True, True, False)
    >>> is_secret("kafka.client_properties.sasl.jaas.config"), is_secret("embedded.server_properties.ssl.keystore.key")
    (True, True)
    >>> is_secret("ssl.keystore.location"), is_secret("ssl.keystore.type"), is_secret("ssl.key.password")
    (False, False, True)
    """
    return bool(SECRET_KEY.search(key))


def describe(cfg: Config) -> str:
    """Every setting as ``section.key = value`` lines (printed by jobs at start), secrets masked.

    >>> cfg = load_config(config_file=None, env={"STREAMREC_KAFKA__CLIENT_PROPERTIES":
    ...     "security.protocol=SASL_SSL,sasl.password=hunter2"})
    >>> [ln for ln in describe(cfg).splitlines() if "sasl.password" in ln]
    ['kafka.client_properties.sasl.password = ****']
    >>> cfg = load_config(config_file=None, env={"STREAMREC_KAFKA__CLIENT_PROPERTIES":
    ...     'sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required password="pw";'})
    >>> [ln for ln in describe(cfg).splitlines() if "jaas" in ln]
    ['kafka.client_properties.sasl.jaas.config = ****']
    """
    flat: list[str] = []

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, sub in value.items():
                walk(f"{prefix}.{key}" if prefix else key, sub)
        else:
            flat.append(f"{prefix} = {MASK if is_secret(prefix) and value else value}")

    walk("", cfg.model_dump(mode="json"))
    return "\n".join(flat)


def to_env(cfg: Config) -> dict[str, str]:
    """The configuration as STREAMREC_* variables, for child processes (e.g. a job under `flink run`).

    >>> env = to_env(load_config(config_file=None, env={"STREAMREC_LEARNER__DIM": "8"}))
    >>> env["STREAMREC_LEARNER__DIM"], load_config(config_file=None, env=env).learner.dim
    ('8', 8)
    """
    out: dict[str, str] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict) and not prefix.endswith("_PROPERTIES"):
            for key, sub in value.items():
                walk(f"{prefix}__{key.upper()}" if prefix else key.upper(), sub)
        elif isinstance(value, dict):
            out[ENV_PREFIX + prefix] = ",".join(f"{k}={v}" for k, v in value.items())
        elif value is not None:
            out[ENV_PREFIX + prefix] = str(value).lower() if isinstance(value, bool) else str(value)

    walk("", cfg.model_dump(mode="json"))
    return out
