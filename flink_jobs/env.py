"""The one place that builds Flink environments: every streamrec job gets the same runtime.

- Python runs in ``thread`` mode (embedded in the JVM): keyed state access is ~20x faster than
  in process mode. Never change the mode across a restore: state comes back empty, silently.
- RocksDB state backend (behind Flink's changelog state backend, ``flink.state_changelog``),
  incremental checkpoints under ``paths.checkpoint_dir/<job>``, retained on
  cancellation (restore with ``execution.state-recovery.path``).
- The Kafka connector jar and streamrec's UDF jar go on ``pipeline.jars`` (unless the cluster has
  them in lib/).
- Kafka sinks are exactly-once: transactions commit when a checkpoint completes, with a
  transaction timeout the broker accepts (brokers cap it at 15 min by default).
- ``flink.prometheus_reporter``: Flink's Prometheus reporter in the gateway JVM, its jar on that
  JVM's classpath (the mini-cluster reads no plugins dir; docs/metrics.md).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import sys
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from string import Template
from importlib.resources import files

import pyflink
from pyflink.common import Configuration
from pyflink.datastream import StreamExecutionEnvironment
from pyflink.table import EnvironmentSettings, Schema, StreamTableEnvironment, Table

from streamrec.runtime.assets import installed_as_one_tree, job_jars, package_archive, prometheus_reporter_jar
from streamrec.core.config import Config
from streamrec.core.records import (CLEAN_EVENT, DLQ_RECORD, FEATURES_ITEM, FEATURES_USER, LEARNER_EVENT,
                                    RECOMMENDATION)

SQL_DIR = Path(str(files("streamrec.sql")))

#: Placeholders every sql/*.sql may use, from the records' one declaration (core/records.py):
#: ``${<record>_columns}``, its column declarations, and ``${<record>_names}``, its fields as a
#: projection, both in the record's order.
RECORD_PLACEHOLDERS: dict[str, str] = {
    f"{key}_{kind}": text
    for key, record in {"clean_event": CLEAN_EVENT, "dlq_record": DLQ_RECORD,
                        "features_user": FEATURES_USER, "features_item": FEATURES_ITEM,
                        "learner_event": LEARNER_EVENT, "recommendation": RECOMMENDATION}.items()
    for kind, text in (("columns", record.columns()), ("names", record.column_names()))
}


@dataclass
class FlinkRuntime:
    env: StreamExecutionEnvironment
    t_env: StreamTableEnvironment
    job_name: str
    checkpoint_dir: Path
    #: Names this run's Kafka transactions (kept across restarts and resumes of one lineage, unique
    #: between jobs: two jobs sharing a prefix fence each other's producers).
    run_id: str

    #: The local mini-cluster's web UI and REST API (None when the job is submitted to a cluster).
    web_ui: str | None = None

    @property
    def transaction_prefix(self) -> str:
        return f"{self.job_name}-{self.run_id}"


def python_path(cfg: Config) -> str:
    """The Python workers' path: thread mode embeds libpython, which does not know it runs inside
    a venv (so: the venv's site-packages) and loads no import hooks (so, from a checkout's
    editable install: the package as one archive)."""
    import site

    entries = []
    for site_dir in site.getsitepackages():
        entries.append(site_dir)
        # what the site dir's .pth files add (an embedded interpreter reads none of them);
        # their `import` lines (import hooks) cannot be carried over
        for pth in sorted(Path(site_dir).glob("*.pth")):
            for line in pth.read_text(errors="replace").splitlines():
                line = line.strip()
                if line and not line.startswith(("#", "import ", "import\t")):
                    extra = Path(site_dir, line).resolve()
                    if extra.is_dir():
                        entries.append(str(extra))
    if not installed_as_one_tree():
        entries.insert(0, str(package_archive(cfg)))
    return ":".join(dict.fromkeys(entries))


def flink_settings(cfg: Config, job_name: str, restore_from: str | None = None) -> dict[str, str]:
    """Every Flink option a streamrec job sets, as Flink's key -> value strings."""
    paths = cfg.paths_resolved
    checkpoint_dir = paths.checkpoint_dir / job_name
    settings = {
        "pipeline.name": job_name,
        "parallelism.default": str(cfg.flink.parallelism),
        "python.execution-mode": cfg.flink.execution_mode,
        # the interpreter running this driver (its venv has pemja and our packages), unless the
        # TaskManagers need another path (a remote cluster)
        "python.executable": cfg.flink.python_executable or sys.executable,
        "python.client.executable": sys.executable,
        "python.pythonpath": python_path(cfg),
        "state.backend.type": cfg.flink.state_backend,
        # RocksDB's own memory per column family (16 MiB write buffers, x2, and an 8 MiB block
        # cache each), not Flink's managed budget: with the managed budget shared by every state
        # of the slot, the window aggregates' point reads made the ingestion of ML-100k 4x slower
        # (250 s against 62 s for the job alone, as fast as the heap backend; docs/ingestion.md).
        "state.backend.rocksdb.memory.managed": "false",
        "state.backend.rocksdb.writebuffer.size": "16mb",
        "execution.checkpointing.incremental": str(cfg.flink.incremental_checkpoints).lower(),
        "execution.checkpointing.dir": checkpoint_dir.as_uri(),
        "execution.checkpointing.savepoint-dir": (paths.state_dir / "savepoints").as_uri(),
        "execution.checkpointing.interval": f"{cfg.flink.checkpoint_interval_ms} ms",
        "execution.checkpointing.mode": "EXACTLY_ONCE",
        # Under backpressure (the Python learners are the bottleneck) aligned barriers queue behind
        # buffered records: checkpoints took 13-89 s. Unaligned ones overtake them (still exactly once).
        "execution.checkpointing.unaligned.enabled": "true",
        "execution.checkpointing.externalized-checkpoint-retention": "RETAIN_ON_CANCELLATION",
        "execution.checkpointing.num-retained": "3",
        # A finished bounded job still takes its final checkpoint, committing the last transaction.
        "execution.checkpointing.checkpoints-after-tasks-finish": "true",
        "restart-strategy.type": "fixed-delay",
        "restart-strategy.fixed-delay.attempts": str(cfg.flink.restart_attempts),
        "restart-strategy.fixed-delay.delay": f"{cfg.flink.restart_delay_ms} ms",
        "execution.checkpointing.tolerable-failed-checkpoints": str(cfg.flink.tolerable_checkpoint_failures),
        # Python operators process records in bundles; the default (100k records) lets them swallow
        # a whole replay, so backpressure never reaches the source and a bounded job's data sits
        # in bundles while checkpoints are declined. Small bundles keep latency and flow control.
        "python.fn-execution.bundle.size": str(cfg.flink.python_bundle_size),
        "python.fn-execution.bundle.time": f"{cfg.flink.python_bundle_time_ms}",
        "execution.buffer-timeout.interval": f"{cfg.flink.buffer_timeout_ms} ms",
        "taskmanager.memory.process.size": "1600m",
        # Flink binds every interface by default; on the mini-cluster nothing but this host talks
        # to these sockets. Server-side keys only: a client submitting to a cluster ignores them.
        "rest.bind-address": cfg.flink.bind_host,
        "jobmanager.bind-host": cfg.flink.bind_host,
        "taskmanager.bind-host": cfg.flink.bind_host,
    }
    if cfg.flink.state_changelog:
        settings.update({
            "state.changelog.enabled": "true",
            "state.changelog.storage": "filesystem",
            # beside the checkpoints (shared storage on a cluster); --fresh discards it with them
            "state.changelog.dstl.dfs.base-path": (checkpoint_dir / "changelog").as_uri(),
            "state.changelog.periodic-materialize.interval":
                f"{cfg.flink.changelog_materialize_interval_ms} ms",
        })
    settings.update(cfg.flink.metrics_reporter_settings())
    if cfg.flink.ship_connector:
        settings["pipeline.jars"] = ";".join(p.resolve().as_uri() for p in job_jars(cfg))
    if restore_from:
        settings["execution.state-recovery.path"] = restore_from
        if cfg.flink.state_changelog:
            # the changelog backend cannot take the full first checkpoint NO_CLAIM needs; the
            # lineage restores only snapshots it may own (flink_jobs.lineage._claimable)
            settings["execution.state-recovery.claim-mode"] = "CLAIM"
    settings.update(cfg.flink.settings)
    return settings


def flink_configuration(cfg: Config, job_name: str, restore_from: str | None = None) -> Configuration:
    (cfg.paths_resolved.checkpoint_dir / job_name).mkdir(parents=True, exist_ok=True)
    _no_loopback_worker_server()
    conf = Configuration()
    for key, value in flink_settings(cfg, job_name, restore_from).items():
        conf.set_string(key, value)
    return conf


def _no_loopback_worker_server() -> None:
    """Keep PyFlink from starting its "loopback" Beam worker pool in this process. On a local
    deployment it otherwise opens a gRPC server on every interface (``[::]:0``) whose StartWorker
    call runs a Python worker for whoever asks; thread mode never uses it, and process mode then
    launches its workers the way a cluster does. PyFlink reads this variable when a job is
    submitted; a value the user set is kept."""
    os.environ.setdefault("_python_worker_execution_mode", "process")


def _gateway_jvm_options(cfg: Config) -> None:
    """Put ``flink.jvm_options()`` into ``JVM_ARGS`` before PyFlink launches its gateway JVM (the
    local mini-cluster runs in it; once launched, a process's later jobs share it). An option the
    user's JVM_ARGS already sets, to any value, is left as the user set it."""
    current = os.environ.get("JVM_ARGS", "").split()
    named = {opt.split("=")[0] for opt in current}
    missing = [opt for opt in cfg.flink.jvm_options() if opt.split("=")[0] not in named]
    if missing:
        os.environ["JVM_ARGS"] = " ".join([*current, *missing])


def _gateway_reporter_classpath(cfg: Config) -> None:
    """With ``flink.prometheus_reporter``, put the reporter's jar on the classpath of PyFlink's
    gateway JVM before it is launched. The local mini-cluster creates its metric reporters without
    a plugin manager, so they are found on that JVM's classpath only (a FLINK_PLUGINS_DIR is never
    read there: "could not be found ... Available factories: []"); PyFlink builds the classpath
    from FLINK_LIB_DIR's jars, which becomes a dir of our own: Flink's lib/ linked, plus the
    reporter. PyFlink keeps FLINK_LIB_DIR only where FLINK_HOME is set (else it points both at
    the wheel), so FLINK_HOME is set too. A user's FLINK_LIB_DIR is kept and must hold the jar."""
    if not cfg.flink.prometheus_reporter:
        return
    from pyflink import java_gateway

    jar = prometheus_reporter_jar(cfg)
    # PyFlink keeps its launched gateway in this module global (no public "is it running?")
    if java_gateway._gateway is not None:  # launched earlier in this process: its classpath is fixed
        classpath = java_gateway._gateway.jvm.System.getProperty("java.class.path")
        if jar.name not in classpath:
            raise RuntimeError(
                "flink.prometheus_reporter is on, but this process launched its Flink JVM before, "
                f"without {jar.name} on its classpath: start the job in a new process")
        return
    flink_home = Path(os.environ.get("FLINK_HOME") or Path(pyflink.__file__).parent).resolve()
    user_lib = os.environ.get("FLINK_LIB_DIR")
    if user_lib and Path(user_lib).resolve() != flink_home / "lib":
        if not any(Path(user_lib).glob("flink-metrics-prometheus-*.jar")):
            raise RuntimeError(f"flink.prometheus_reporter is on and FLINK_LIB_DIR={user_lib} is set: "
                               f"put {jar} into it, or unset FLINK_LIB_DIR")
        return
    os.environ["FLINK_HOME"] = str(flink_home)
    os.environ["FLINK_LIB_DIR"] = str(gateway_lib_dir(cfg, flink_home / "lib", jar))


def gateway_lib_dir(cfg: Config, flink_lib: Path, reporter_jar: Path) -> Path:
    """``<cache_dir>/flink-gateway-lib/<digest>/``: ``flink_lib``'s jars and ``reporter_jar`` as
    links, named by what they point at (so concurrent processes share it and never see it half
    written)."""
    jars = sorted(flink_lib.glob("*.jar")) + [reporter_jar.resolve()]
    digest = hashlib.sha256("\n".join(map(str, jars)).encode()).hexdigest()[:16]
    target = cfg.paths_resolved.cache_dir / "flink-gateway-lib" / digest
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=".staging-"))
    staging.chmod(0o755)
    for jar in jars:
        (staging / jar.name).symlink_to(jar)
    try:
        staging.rename(target)
    except OSError:  # another process made it first
        shutil.rmtree(staging)
    return target


def _this_python_first_on_path() -> None:
    """Put this interpreter's bin dir first on PATH before the gateway JVM starts: the local
    mini-cluster's embedded (thread-mode) interpreter locates its home from the first ``python``
    on the JVM's PATH, and without an activated venv that may be another Python (no stdlib match,
    no pemja)."""
    bin_dir = str(Path(sys.executable).parent)
    parts = os.environ.get("PATH", "").split(os.pathsep)
    if parts[:1] != [bin_dir]:
        os.environ["PATH"] = os.pathsep.join([bin_dir, *parts])


def build_runtime(cfg: Config, job_name: str, restore_from: str | None = None,
                  run_id: str | None = None) -> FlinkRuntime:
    """A StreamExecutionEnvironment and a StreamTableEnvironment on it, configured for streamrec.
    Without ``run_id`` (a job with no lineage) the run gets a new one."""
    _this_python_first_on_path()
    _gateway_jvm_options(cfg)
    _gateway_reporter_classpath(cfg)
    conf = flink_configuration(cfg, job_name, restore_from)
    # The mini-cluster's REST port: a free one, chosen here so it can be printed (and never a
    # standalone cluster's flink.rest_port); a client submitting to a cluster ignores it.
    rest_port = free_port(cfg.flink.bind_host)
    conf.set_string("rest.bind-port", str(rest_port))
    env = StreamExecutionEnvironment.get_execution_environment(conf)
    env.set_parallelism(cfg.flink.parallelism)
    t_env = StreamTableEnvironment.create(
        env, environment_settings=EnvironmentSettings.new_instance().in_streaming_mode().build()
    )
    t_env.get_config().set("pipeline.name", job_name)
    # The table config has its own python.executable (default: `python` on PATH, which lacks
    # pemja and our packages when the venv is not activated): set it on both.
    python = cfg.flink.python_executable or sys.executable
    env.set_python_executable(python)
    t_env.get_config().set("python.executable", python)
    t_env.get_config().set("python.pythonpath", python_path(cfg))
    return FlinkRuntime(env, t_env, job_name, cfg.paths_resolved.checkpoint_dir / job_name,
                        run_id or uuid.uuid4().hex[:10], web_ui=f"http://{cfg.flink.bind_host}:{rest_port}")


def free_port(host: str) -> int:
    """A TCP port free on ``host`` now (the OS's choice)."""
    import socket

    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def kafka_source_options(cfg: Config, topic: str, group: str, bounded: bool,
                         topic_pattern: str | None = None, start_ms: int | None = None,
                         partition_fetch_bytes: int | None = None) -> str:
    """WITH-clause options of a Kafka SQL source (read_committed, earliest or from the records
    of ``start_ms`` on, optionally bounded at the end offsets present at start); ``topic_pattern``
    subscribes by pattern instead; ``partition_fetch_bytes``: the client's
    ``max.partition.fetch.bytes`` (``kafka.client_properties`` still override it). A restored
    source goes on from its checkpointed offsets."""
    opts = {
        "connector": "kafka",
        **({"topic-pattern": topic_pattern} if topic_pattern else {"topic": topic}),
        "properties.bootstrap.servers": cfg.bootstrap_servers,
        "properties.group.id": group,
        "properties.isolation.level": "read_committed",
        **({"scan.startup.mode": "timestamp", "scan.startup.timestamp-millis": str(start_ms)}
           if start_ms is not None else {"scan.startup.mode": "earliest-offset"}),
        **({"properties.max.partition.fetch.bytes": str(partition_fetch_bytes)} if partition_fetch_bytes else {}),
        **java_client_properties(cfg),
    }
    if bounded:
        opts["scan.bounded.mode"] = "latest-offset"
    return _with(opts)


def kafka_sink_options(cfg: Config, topic: str, transaction_prefix: str) -> str:
    """WITH-clause options of an exactly-once Kafka SQL sink (``FlinkRuntime.transaction_prefix``).

    >>> from streamrec.core.config import load_config
    >>> cfg = load_config(config_file=None, env={"STREAMREC_KAFKA__CLIENT_PROPERTIES": "linger.ms=0"})
    >>> options = kafka_sink_options(cfg, "recommendations", "run-1")
    >>> "'properties.batch.size' = '262144'" in options, "'properties.linger.ms' = '0'" in options
    (True, True)
    """
    opts = {
        "connector": "kafka",
        "topic": topic,
        "properties.bootstrap.servers": cfg.bootstrap_servers,
        "sink.delivery-guarantee": "exactly-once",
        "sink.transactional-id-prefix": f"{transaction_prefix}-{topic}",
        "properties.transaction.timeout.ms": str(cfg.kafka.transaction_timeout_ms),
        "properties.batch.size": str(cfg.kafka.sink_batch_bytes),
        "properties.linger.ms": str(cfg.kafka.sink_linger_ms),
        **java_client_properties(cfg),
    }
    return _with(opts)


#: The SQL connector jar shades the Kafka client: class names in client properties (a SASL
#: login module in sasl.jaas.config, callback handlers) must name the shaded classes.
SHADED_KAFKA = "org.apache.flink.kafka.shaded.org.apache.kafka."


def java_client_properties(cfg: Config) -> dict[str, str]:
    """``kafka.security`` and ``kafka.client_properties`` as connector options for the (shaded)
    Java client.

    >>> from streamrec.core.config import load_config
    >>> cfg = load_config(config_file=None, env={"STREAMREC_KAFKA__CLIENT_PROPERTIES":
    ...     "sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required;"})
    >>> java_client_properties(cfg)["properties.sasl.jaas.config"]
    'org.apache.flink.kafka.shaded.org.apache.kafka.common.security.plain.PlainLoginModule required;'
    """
    def shaded(value: str) -> str:
        return re.sub(r"(?<![\w.])org\.apache\.kafka\.", SHADED_KAFKA, value)

    props = {**cfg.kafka.security.java_properties(), **cfg.kafka.client_properties}
    return {f"properties.{k}": shaded(v) for k, v in props.items()}


def sql_string(value: object) -> str:
    """A SQL string literal: quotes doubled, so no value can end the literal early.

    >>> sql_string("it's")
    "'it''s'"
    """
    return "'" + str(value).replace("'", "''") + "'"


def _with(opts: dict[str, str]) -> str:
    return ",\n  ".join(f"{sql_string(k)} = {sql_string(v)}" for k, v in opts.items())


def with_time_attributes(t_env, table: Table, columns: list[tuple[str, str]],
                         watermark: tuple[str, str]) -> Table:
    """``table`` through a DataStream (JVM only) with computed ``columns`` (name, SQL expression)
    appended in order, one of them a rowtime with ``watermark`` (column, SQL expression). The
    round trip is how a view gets time attributes; the watermark must be declared (with
    ``SOURCE_WATERMARK()`` to keep the stream's own), or the table drops the stream's
    watermarks."""
    schema = Schema.new_builder().from_row_data_type(table.get_schema().to_row_data_type())
    for name, expression in columns:
        schema = schema.column_by_expression(name, expression)
    return t_env.from_data_stream(t_env.to_data_stream(table), schema.watermark(*watermark).build())


def sql_interval(ms: int) -> str:
    """A Flink SQL day-time interval literal of ``ms`` milliseconds.

    >>> sql_interval(90_061_001)
    "INTERVAL '1 01:01:01.001' DAY TO SECOND(3)"
    """
    days, rest = divmod(int(ms), 86_400_000)
    hours, rest = divmod(rest, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    seconds, millis = divmod(rest, 1_000)
    return f"INTERVAL '{days} {hours:02d}:{minutes:02d}:{seconds:02d}.{millis:03d}' DAY TO SECOND(3)"


def sql_double(x: float) -> str:
    """A DOUBLE literal.

    >>> sql_double(0.25)
    'CAST(0.25 AS DOUBLE)'
    """
    return f"CAST({float(x)!r} AS DOUBLE)"


def apply_sql(t_env, statements, name: str, **params: object) -> None:
    """Run ``sql/<name>.sql`` (:func:`render_sql`): its INSERTs join ``statements`` (executed with
    the job), every other statement (tables, views) runs now."""
    for stmt in render_sql(name, **params):
        if stmt.lstrip().upper().startswith("INSERT"):
            statements.add_insert_sql(stmt)
        else:
            t_env.execute_sql(stmt)


def render_sql(name: str, **params: object) -> list[str]:
    """Load ``sql/<name>.sql``, fill ``${param}`` placeholders (``params`` and
    :data:`RECORD_PLACEHOLDERS`), split into statements.

    Statements are separated by a line holding only ``;`` or a ``;`` at the end of a line.
    """
    clash = RECORD_PLACEHOLDERS.keys() & params.keys()
    if clash:
        raise ValueError(f"render_sql({name!r}): {', '.join(sorted(clash))} is a record's placeholder")
    text = Template((SQL_DIR / f"{name}.sql").read_text()).substitute(
        {**RECORD_PLACEHOLDERS, **{k: str(v) for k, v in params.items()}}
    )
    lines = [ln for ln in text.splitlines() if not ln.strip().startswith("--")]
    statements, current = [], []
    for line in lines:
        current.append(line)
        if line.rstrip().endswith(";"):
            stmt = "\n".join(current).strip().rstrip(";").strip()
            if stmt:
                statements.append(stmt)
            current = []
    tail = "\n".join(current).strip()
    if tail:
        statements.append(tail)
    return statements
