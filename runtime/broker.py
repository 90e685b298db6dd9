"""The embedded broker: a real Apache Kafka 4.x, one KRaft node that is broker and controller.

Used when ``kafka.bootstrap_servers`` is empty (the local default). ``up`` resolves the broker's
classpath with Maven (``jvm/kafka-broker.pom.xml``, sha256-locked), writes ``server.properties``
for a single node (every replication factor 1, transaction log min ISR 1, few internal
partitions), formats the storage once, starts ``java kafka.Kafka`` in its own process group with
a bounded heap and waits until it answers; ``down`` stops exactly the process ``up`` recorded
(SIGTERM: Kafka's controlled shutdown), so data and transaction state survive ``down``/``up``.
With ``kafka.bootstrap_servers`` set, both are no-ops: a real cluster is never started or stopped.

Files, all under ``<state_dir>/kafka/``: ``server.properties``, ``log4j2.properties``,
``data/`` (log dirs and KRaft metadata), ``logs/`` (rotated broker logs), ``broker.pid``,
``stdout.log`` (JVM output before logging starts, e.g. a crash).
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from streamrec.core.config import Config

#: The main class must be in the command line of the process we stop (guards against pid reuse).
MAIN_CLASS = "kafka.Kafka"


class BrokerError(RuntimeError):
    """The embedded broker could not be started, reached or stopped."""


@dataclass(frozen=True)
class BrokerStatus:
    bootstrap: str
    embedded: bool
    pid: int | None
    started: bool  # True when this call started it, False when reused / external


def broker_dir(cfg: Config) -> Path:
    return cfg.paths_resolved.state_dir / "kafka"


def _pid_file(cfg: Config) -> Path:
    return broker_dir(cfg) / "broker.pid"


def server_properties(cfg: Config) -> dict[str, str]:
    """The broker's settings for one node; ``embedded.server_properties`` overrides any of them."""
    emb = cfg.embedded
    internal = str(emb.internal_topic_partitions)
    props = {
        "process.roles": "broker,controller",
        "node.id": "1",
        "controller.quorum.voters": f"1@{emb.host}:{emb.controller_port}",
        "listeners": f"PLAINTEXT://{emb.host}:{emb.port},CONTROLLER://{emb.host}:{emb.controller_port}",
        "advertised.listeners": f"PLAINTEXT://{emb.host}:{emb.port}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
        "log.dirs": str(broker_dir(cfg) / "data"),
        "num.partitions": str(cfg.kafka.partitions),
        # One node: every replication factor 1, or internal topics are never created and
        # transactional producers hang in InitProducerId (COORDINATOR_NOT_AVAILABLE).
        "default.replication.factor": "1",
        "min.insync.replicas": "1",
        "offsets.topic.replication.factor": "1",
        "offsets.topic.num.partitions": internal,
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "transaction.state.log.num.partitions": internal,
        "share.coordinator.state.topic.replication.factor": "1",
        "share.coordinator.state.topic.min.isr": "1",
        "transaction.max.timeout.ms": "900000",
        "group.initial.rebalance.delay.ms": "0",
        "num.network.threads": "2",
        "num.io.threads": "2",
        "log.segment.bytes": str(64 << 20),
        # Replayed datasets carry old event-time timestamps: never delete by time on a dev broker.
        "log.retention.ms": "-1",
        "auto.create.topics.enable": "false",
    }
    props.update(emb.server_properties)
    return props


_LOG4J2 = """\
# Written by streamrec: the broker's log, rotated (10 MB x 5), WARN for the chatty request loggers.
status = warn
appender.file.type = RollingFile
appender.file.name = file
appender.file.fileName = {logs}/server.log
appender.file.filePattern = {logs}/server.log.%i
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
appender.file.policies.type = Policies
appender.file.policies.size.type = SizeBasedTriggeringPolicy
appender.file.policies.size.size = 10MB
appender.file.strategy.type = DefaultRolloverStrategy
appender.file.strategy.max = 5
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = file
logger.request.name = kafka.request.logger
logger.request.level = WARN
logger.network.name = kafka.network.RequestChannel$
logger.network.level = WARN
"""


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` readable by its owner only: server.properties holds the listeners' JAAS lines
    (passwords) and inline PEM keys. An existing file (from an older, world-readable write) is
    narrowed too, before the new text goes in."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, text.encode("utf-8"))
    finally:
        os.close(fd)


def _write_config(cfg: Config) -> tuple[Path, Path]:
    bdir = broker_dir(cfg)
    (bdir / "logs").mkdir(parents=True, exist_ok=True)
    props = bdir / "server.properties"
    _write_private(props, "# Written by streamrec at every `up` from its configuration.\n" + "".join(
        f"{k}={v}\n" for k, v in server_properties(cfg).items()))
    log4j = bdir / "log4j2.properties"
    log4j.write_text(_LOG4J2.format(logs=bdir / "logs"))
    return props, log4j


def _java_cmd(cfg: Config, main: list[str], heap_mb: int) -> list[str]:
    from streamrec.runtime.assets import check_java, kafka_broker_jars

    check_java(min_major=17)
    bdir = broker_dir(cfg)
    # The directory holds exactly the locked jars (checked by kafka_broker_jars): a wildcard will do.
    classpath = str(kafka_broker_jars(cfg)[0].parent / "*")
    return [
        shutil.which("java"), f"-Xms{min(heap_mb, 256)}m", f"-Xmx{heap_mb}m",
        # Kafka's own defaults (bin/kafka-run-class.sh): G1 with short pauses.
        "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20", "-XX:InitiatingHeapOccupancyPercent=35",
        "-XX:+ExplicitGCInvokesConcurrent", "-Djava.awt.headless=true",
        f"-Dkafka.logs.dir={bdir / 'logs'}",
        f"-Dlog4j2.configurationFile={bdir / 'log4j2.properties'}",
        "-cp", classpath, *main,
    ]


def _format_storage(cfg: Config, props: Path) -> None:
    """Format the KRaft storage on first start only (a formatted dir keeps its cluster id)."""
    data = broker_dir(cfg) / "data"
    if (data / "meta.properties").is_file():
        return
    cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
    # StorageTool ends with System.exit: run it as its own short JVM.
    # `--cluster-id=ID`, not `--cluster-id ID`: a base64url id may start with '-' (1 in 32), which
    # argparse would take for an option.
    cmd = _java_cmd(cfg, ["kafka.tools.StorageTool", "format", "--ignore-formatted",
                          f"--cluster-id={cluster_id}", "--config", str(props)], heap_mb=256)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise BrokerError("formatting the embedded broker's storage failed: "
                          + (proc.stderr or proc.stdout).strip()[-800:])


def _port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _port_bindable(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
            return True
        except OSError:
            return False


def kafka_answers(bootstrap: str, timeout: float = 2.0, client: dict[str, str] | None = None) -> bool:
    """True when a Kafka metadata request to ``bootstrap`` succeeds and names a broker;
    ``client``: the clients' security properties (a SASL listener answers only to them)."""
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap, "socket.timeout.ms": int(timeout * 1000),
                         "log_level": 0, **(client or {})})  # not up yet is not an error here
    try:
        return bool(admin.list_topics(timeout=timeout).brokers)
    except Exception:
        return False


def _is_our_broker(pid: int, cfg: Config) -> bool:
    """The pid is alive and is the Kafka of this state dir (guards against a recycled pid)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return MAIN_CLASS.encode() in cmdline and str(broker_dir(cfg) / "server.properties").encode() in cmdline


def _read_pid(cfg: Config) -> int | None:
    try:
        return int(json.loads(_pid_file(cfg).read_text())["pid"])
    except (OSError, ValueError, KeyError):
        return None


def _check_ports(cfg: Config) -> None:
    emb = cfg.embedded
    if emb.port == emb.controller_port:
        raise BrokerError(f"embedded.port and embedded.controller_port are both {emb.port}; "
                          "the broker needs two different ports")
    for key, port in (("port", emb.port), ("controller_port", emb.controller_port)):
        if _port_open(emb.host, port) or not _port_bindable(emb.host, port):
            raise BrokerError(
                f"port {port} on {emb.host} is in use by a process streamrec did not start; free it "
                f"or set embedded.{key} (STREAMREC_EMBEDDED__{key.upper()}) to another port"
            )


def up(cfg: Config, log=print) -> BrokerStatus:
    """Start (or reuse) the embedded broker and return its bootstrap address."""
    if not cfg.uses_embedded_broker:
        return BrokerStatus(cfg.bootstrap_servers, embedded=False, pid=None, started=False)
    bootstrap = cfg.bootstrap_servers
    client = cfg.kafka.security.python_properties()  # SASL via embedded.server_properties too
    pid = _read_pid(cfg)
    if pid is not None and _is_our_broker(pid, cfg):
        if _wait_ready(bootstrap, time.monotonic() + cfg.embedded.startup_timeout_s, client=client):
            return BrokerStatus(bootstrap, embedded=True, pid=pid, started=False)
        raise BrokerError(f"the embedded broker (pid {pid}) is running but does not answer on "
                          f"{bootstrap}; run `streamrec down` and try again")
    _check_ports(cfg)
    bdir = broker_dir(cfg)
    props, _ = _write_config(cfg)
    _format_storage(cfg, props)
    cmd = _java_cmd(cfg, [MAIN_CLASS, str(props)], heap_mb=cfg.embedded.heap_mb)
    started = time.monotonic()
    with open(bdir / "stdout.log", "ab") as out:
        # Own session = own process group: `down` signals exactly this JVM and nothing else.
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, cwd=bdir)
    _pid_file(cfg).write_text(json.dumps({"pid": proc.pid, "bootstrap": bootstrap,
                                           "started_at": time.time()}))
    if not _wait_ready(bootstrap, started + cfg.embedded.startup_timeout_s, proc, client=client):
        _stop(proc.pid, timeout=10.0)
        _pid_file(cfg).unlink(missing_ok=True)
        raise BrokerError(f"the embedded Kafka broker did not answer on {bootstrap} within "
                          f"{cfg.embedded.startup_timeout_s:.0f} s; log tail:\n{_log_tail(cfg)}")
    log(f"embedded Kafka broker up at {bootstrap} in {time.monotonic() - started:.1f} s "
        f"(pid {proc.pid}, data {bdir / 'data'})")
    return BrokerStatus(bootstrap, embedded=True, pid=proc.pid, started=True)


def _log_tail(cfg: Config, chars: int = 1500) -> str:
    parts = []
    for name in ("stdout.log", "logs/server.log"):
        path = broker_dir(cfg) / name
        if path.is_file():
            parts.append(path.read_text(errors="replace")[-chars:])
    return "\n".join(parts)


def _wait_ready(bootstrap: str, deadline: float, proc: subprocess.Popen | None = None,
                client: dict[str, str] | None = None) -> bool:
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            return False
        host, _, port = bootstrap.rpartition(":")
        if _port_open(host, int(port)) and kafka_answers(bootstrap, timeout=1.0, client=client):
            return True
        time.sleep(0.2)
    return False


def _stop(pid: int, timeout: float) -> bool:
    """SIGTERM (controlled shutdown), then SIGKILL after ``timeout``. True if it had to kill."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return sig == signal.SIGKILL
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            try:  # reap it if it is our child
                if os.waitpid(pid, os.WNOHANG)[0] == pid:
                    return sig == signal.SIGKILL
            except ChildProcessError:
                pass
            try:
                os.killpg(pid, 0)
            except ProcessLookupError:
                return sig == signal.SIGKILL
            time.sleep(0.1)
    return True


def down(cfg: Config, log=print) -> bool:
    """Stop the broker ``up`` started. Returns False when there was none."""
    if not cfg.uses_embedded_broker:
        log("kafka.bootstrap_servers points at an external Kafka; nothing embedded to stop")
        return False
    pid = _read_pid(cfg)
    if pid is None:
        log("no embedded broker is running")
        return False
    if _is_our_broker(pid, cfg):
        killed = _stop(pid, timeout=cfg.embedded.shutdown_timeout_s)
        how = f"killed after {cfg.embedded.shutdown_timeout_s:.0f} s" if killed else "stopped cleanly"
        log(f"embedded Kafka broker (pid {pid}) {how}")
    else:
        log(f"embedded broker pid {pid} is no longer running; removing its pid file")
    _pid_file(cfg).unlink(missing_ok=True)
    return True


def status(cfg: Config) -> BrokerStatus | None:
    if not cfg.uses_embedded_broker:
        return BrokerStatus(cfg.bootstrap_servers, embedded=False, pid=None, started=False)
    pid = _read_pid(cfg)
    if pid is not None and _is_our_broker(pid, cfg):
        return BrokerStatus(cfg.bootstrap_servers, embedded=True, pid=pid, started=False)
    return None
