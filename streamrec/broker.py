"""The embedded Kafka-protocol broker (noida-db) used when no real Kafka is configured.

``up`` starts the broker binary in its own process group (killing only a wrapper would leave the
real binary running), with its data dir, pid file and log under ``<state_dir>/broker/``, and waits
until it answers the Kafka protocol. ``down`` stops exactly the process group ``up`` recorded.
With ``kafka.bootstrap_servers`` set, both are no-ops: a real cluster is never started or stopped.

noida-db is a single-node dev/test broker; production deployments point at a real Kafka cluster.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

from streamrec.config import Config


class BrokerError(RuntimeError):
    """The embedded broker could not be started, reached or stopped."""


@dataclass(frozen=True)
class BrokerStatus:
    bootstrap: str
    embedded: bool
    pid: int | None
    started: bool  # True when this call started it, False when reused / external


def _broker_dir(cfg: Config) -> Path:
    return cfg.paths_resolved.state_dir / "broker"


def _pid_file(cfg: Config) -> Path:
    return _broker_dir(cfg) / "broker.pid"


def _binary() -> Path:
    path = Path(str(files("noida_db").joinpath("noida-db")))
    if not path.is_file():
        raise BrokerError(f"the noida-db binary is missing from its package ({path}); reinstall noida-db")
    if not os.access(path, os.X_OK):
        path.chmod(0o755)
    return path


def _port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def kafka_answers(bootstrap: str, timeout: float = 2.0) -> bool:
    """True when a Kafka metadata request to ``bootstrap`` succeeds."""
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap, "socket.timeout.ms": int(timeout * 1000)})
    try:
        admin.list_topics(timeout=timeout)
        return True
    except Exception:
        return False


def _is_our_broker(pid: int) -> bool:
    """The pid is alive and is a noida-db process (guards against a recycled pid)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"noida-db" in cmdline


def _read_pid(cfg: Config) -> int | None:
    try:
        return int(json.loads(_pid_file(cfg).read_text())["pid"])
    except (OSError, ValueError, KeyError):
        return None


def up(cfg: Config, log=print) -> BrokerStatus:
    """Start (or reuse) the embedded broker and return its bootstrap address."""
    if not cfg.uses_embedded_broker:
        return BrokerStatus(cfg.bootstrap_servers, embedded=False, pid=None, started=False)
    host, port = cfg.embedded.host, cfg.embedded.port
    bootstrap = cfg.bootstrap_servers
    pid = _read_pid(cfg)
    if pid is not None and _is_our_broker(pid):
        if _wait_ready(bootstrap, host, port, deadline=time.monotonic() + cfg.embedded.startup_timeout_s):
            return BrokerStatus(bootstrap, embedded=True, pid=pid, started=False)
        raise BrokerError(
            f"the embedded broker (pid {pid}) is running but does not answer on {bootstrap}; "
            "run `streamrec down` and try again"
        )
    if _port_open(host, port):
        raise BrokerError(
            f"port {port} on {host} is in use by a process streamrec did not start; free it or set "
            "embedded.port (STREAMREC_EMBEDDED__PORT) to another port"
        )
    bdir = _broker_dir(cfg)
    (bdir / "data").mkdir(parents=True, exist_ok=True)
    logfile = open(bdir / "broker.log", "ab")
    cmd = [str(_binary()), "start", "--only", "kafka", "--host", host,
           "--kafka-port", str(port), "--data-dir", str(bdir / "data")]
    # Own session = own process group: `down` kills the whole group and nothing else.
    proc = subprocess.Popen(cmd, stdout=logfile, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True, cwd=bdir)
    logfile.close()
    _pid_file(cfg).write_text(json.dumps({"pid": proc.pid, "pgid": proc.pid, "host": host,
                                           "port": port, "started_at": time.time()}))
    deadline = time.monotonic() + cfg.embedded.startup_timeout_s
    if not _wait_ready(bootstrap, host, port, deadline, proc):
        _stop_group(proc.pid)
        _pid_file(cfg).unlink(missing_ok=True)
        tail = (bdir / "broker.log").read_text(errors="replace")[-800:]
        raise BrokerError(f"the embedded broker did not answer on {bootstrap} in time; log tail:\n{tail}")
    log(f"embedded Kafka broker up at {bootstrap} (pid {proc.pid}, data {bdir / 'data'})")
    return BrokerStatus(bootstrap, embedded=True, pid=proc.pid, started=True)


def _wait_ready(bootstrap: str, host: str, port: int, deadline: float,
                proc: subprocess.Popen | None = None) -> bool:
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            return False
        if _port_open(host, port) and kafka_answers(bootstrap, timeout=2.0):
            return True
        time.sleep(0.2)
    return False


def _stop_group(pgid: int, timeout: float = 10.0) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            try:
                os.killpg(pgid, 0)
            except ProcessLookupError:
                return
            try:  # reap it if it is our child
                os.waitpid(pgid, os.WNOHANG)
            except ChildProcessError:
                pass
            time.sleep(0.1)


def down(cfg: Config, log=print) -> bool:
    """Stop the broker ``up`` started. Returns False when there was none."""
    if not cfg.uses_embedded_broker:
        log("kafka.bootstrap_servers points at an external Kafka; nothing embedded to stop")
        return False
    pid_file = _pid_file(cfg)
    pid = _read_pid(cfg)
    if pid is None:
        log("no embedded broker is running")
        return False
    if _is_our_broker(pid):
        _stop_group(pid)
        log(f"embedded Kafka broker (pid {pid}) stopped")
    else:
        log(f"embedded broker pid {pid} is no longer running; removing its pid file")
    pid_file.unlink(missing_ok=True)
    return True


def status(cfg: Config) -> BrokerStatus | None:
    if not cfg.uses_embedded_broker:
        return BrokerStatus(cfg.bootstrap_servers, embedded=False, pid=None, started=False)
    pid = _read_pid(cfg)
    if pid is not None and _is_our_broker(pid):
        return BrokerStatus(cfg.bootstrap_servers, embedded=True, pid=pid, started=False)
    return None
