"""A standalone Flink cluster on this machine, started from the installed PyFlink distribution.

``up`` writes a configuration directory of our own under ``<state_dir>/cluster/`` and starts one
JobManager and ``flink.taskmanagers`` TaskManagers with Flink's own daemon scripts, pointing them
at our conf, lib, log and pid directories through FLINK_CONF_DIR / FLINK_LIB_DIR / FLINK_LOG_DIR /
FLINK_PID_DIR, so the installed package is never modified. Our lib dir links Flink's jars plus
``opt/flink-python`` (thread mode on a cluster needs it on the system classpath; without it the
second Python job on a TaskManager fails with NoSuchFieldException loadedLibraryNames). Our plugins
dir (FLINK_PLUGINS_DIR) links Flink's own plugins; with ``flink.prometheus_reporter`` its
``metrics-prometheus/`` holds the Maven-locked reporter jar and every daemon serves its metrics on
a port of ``flink.prometheus_ports`` (docs/metrics.md).
``down`` kills exactly the PIDs in our pid files.

``submit`` runs ``flink run -pym streamrec.flink_jobs.pipeline`` (the package shipped as one zip) against the local cluster or a remote
JobManager (``flink.jobmanager_address``); ``stop_with_savepoint`` uses the CLI because PyFlink
2.3's ``JobClient.stop_with_savepoint`` is broken.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pyflink

from streamrec.runtime.assets import job_jars, package_archive, prometheus_reporter_jar
from streamrec.core.config import Config, to_env

FLINK_HOME = Path(pyflink.__file__).resolve().parent
#: ``pekko.framesize`` of our standalone cluster: 10x Flink's default (see ``_prepare``).
CLUSTER_RPC_FRAME_BYTES = 100 * 1024 * 1024


class ClusterError(RuntimeError):
    """The standalone cluster could not be started, reached or used."""


@dataclass(frozen=True)
class ClusterInfo:
    rest_url: str
    taskmanagers: int
    slots_total: int
    slots_available: int
    jobs_running: int


def _dir(cfg: Config) -> Path:
    return cfg.paths_resolved.state_dir / "cluster"


def rest_url(cfg: Config) -> str:
    addr = cfg.flink.jobmanager_address.strip() or f"localhost:{cfg.flink.rest_port}"
    return addr if addr.startswith("http") else f"http://{addr}"


def _rest(cfg: Config, path: str, timeout: float = 10.0) -> dict:
    # generous: on a loaded machine the JobManager's REST answers take seconds
    with urllib.request.urlopen(rest_url(cfg) + path, timeout=timeout) as resp:
        return json.loads(resp.read())


def info(cfg: Config) -> ClusterInfo | None:
    try:
        ov = _rest(cfg, "/overview")
    except (urllib.error.URLError, OSError, ValueError):
        return None
    return ClusterInfo(rest_url(cfg), ov["taskmanagers"], ov["slots-total"], ov["slots-available"],
                       ov["jobs-running"])


def _java_opts() -> str:
    text = (FLINK_HOME / "conf" / "config.yaml").read_text()
    match = re.search(r"^\s*all:\s*(--add-.*)$", text, re.M)
    return match.group(1).strip() if match else ""


def _prepare(cfg: Config) -> dict[str, str]:
    """Write conf/ and lib/ for our cluster; return the environment for Flink's scripts."""
    base = _dir(cfg)
    conf, lib, logs, pids = base / "conf", base / "lib", base / "log", base / "pids"
    for d in (conf, lib, logs, pids):
        d.mkdir(parents=True, exist_ok=True)
    paths = cfg.paths_resolved
    settings = {
        "env.java.opts.all": " ".join([_java_opts(), *cfg.flink.jvm_options()]).strip(),
        "jobmanager.rpc.address": "localhost",
        "jobmanager.bind-host": "localhost",
        "jobmanager.memory.process.size": "1024m",
        "taskmanager.bind-host": "localhost",
        "taskmanager.host": "localhost",
        "taskmanager.numberOfTaskSlots": str(cfg.flink.task_slots),
        # spread a job's slots over the TaskManagers (default: fill the first one up)
        "taskmanager.load-balance.mode": "SLOTS",
        "taskmanager.memory.process.size": "1600m",
        "rest.address": "localhost",
        "rest.bind-address": "localhost",
        "rest.port": str(cfg.flink.rest_port),
        "parallelism.default": str(cfg.flink.parallelism),
        "python.execution-mode": cfg.flink.execution_mode,
        "python.executable": sys.executable,
        "python.client.executable": sys.executable,
        "state.backend.type": cfg.flink.state_backend,
        "execution.checkpointing.dir": (paths.checkpoint_dir / "cluster").as_uri(),
        "execution.checkpointing.savepoint-dir": (paths.state_dir / "savepoints").as_uri(),
        # The RPC frame limit between TaskManagers and the JobManager (Flink's default: 10 MiB),
        # raised as a margin: a task's checkpoint acknowledgement carries its state handles, and
        # an acknowledgement over the limit is discarded (OversizedPayloadException in the
        # TaskManager's log), that checkpoint never completes, no later one starts, and the
        # exactly-once sinks stop committing, silently (tests/runtime/test_cluster.py found it:
        # 10.6 MB acknowledgements while the changelog lived in memory, below). The local
        # mini-cluster's RPCs are in-process: no such limit there.
        "pekko.framesize": f"{CLUSTER_RPC_FRAME_BYTES}b",
        # A TaskManager makes its changelog storage from its own configuration, not the job's: a
        # job's state.changelog.storage=filesystem (flink_jobs/env.py) is not enough on a cluster,
        # where Flink's default (memory) then keeps every state change inside the checkpoints'
        # metadata until the next materialization (15 MB per checkpoint in the test above).
        **({"state.changelog.storage": "filesystem",
            "state.changelog.dstl.dfs.base-path": (paths.checkpoint_dir / "cluster" / "changelog").as_uri()}
           if cfg.flink.state_changelog else {}),
        "web.tmpdir": str(base / "web"),
        "io.tmp.dirs": str(base / "tmp"),
        # the JobManager and each TaskManager take the next free port of flink.prometheus_ports
        **cfg.flink.metrics_reporter_settings(),
    }
    (conf / "config.yaml").write_text("".join(f"{k}: {json.dumps(v)}\n" for k, v in settings.items()))
    for name in ("log4j.properties", "log4j-cli.properties", "log4j-console.properties",
                 "log4j-session.properties", "logback.xml"):
        src = FLINK_HOME / "conf" / name
        if src.is_file():
            (conf / name).write_text(src.read_text())
    jars = list((FLINK_HOME / "lib").glob("*.jar")) + list((FLINK_HOME / "opt").glob("flink-python-*.jar"))
    # The Kafka connector and streamrec's UDF jar live in the cluster's lib/, as on any Flink
    # cluster; jobs submitted here do not ship them again (flink.ship_connector=false in submit()):
    # twice fails with ClassCastException.
    jars += job_jars(cfg)
    for old in lib.iterdir():
        old.unlink()
    for jar in jars:
        (lib / jar.name).symlink_to(jar)
    plugins = _plugins_dir(cfg, base / "plugins")
    env = dict(os.environ)
    env.update({
        "FLINK_HOME": str(FLINK_HOME), "FLINK_CONF_DIR": str(conf), "FLINK_LIB_DIR": str(lib),
        "FLINK_PLUGINS_DIR": str(plugins),
        "FLINK_LOG_DIR": str(logs), "FLINK_PID_DIR": str(pids), "FLINK_IDENT_STRING": "streamrec",
    })
    return env


def _plugins_dir(cfg: Config, plugins: Path) -> Path:
    """(Re)write our plugins dir: Flink's own plugins linked; with the Prometheus reporter on,
    ``metrics-prometheus/`` holds the jar locked in runtime/jvm (a reporter is loaded from a
    plugin folder of its own on a cluster, in a class loader of its own)."""
    if cfg.flink.prometheus_reporter:
        first, last = cfg.flink.prometheus_port_range()
        if last - first + 1 < 1 + cfg.flink.taskmanagers:
            raise ClusterError(
                f"flink.prometheus_ports {cfg.flink.prometheus_ports} has {last - first + 1} ports; the "
                f"JobManager and {cfg.flink.taskmanagers} TaskManagers need one each: widen the range")
    if plugins.exists():
        shutil.rmtree(plugins)  # links only, and our own metrics-prometheus/ (rmtree unlinks links)
    plugins.mkdir(parents=True)
    for plugin in sorted((FLINK_HOME / "plugins").iterdir()):
        if plugin.is_dir():
            (plugins / plugin.name).symlink_to(plugin, target_is_directory=True)
    if cfg.flink.prometheus_reporter:
        jar = prometheus_reporter_jar(cfg)
        reporter = plugins / "metrics-prometheus"
        if reporter.is_symlink():
            reporter.unlink()
        reporter.mkdir()
        (reporter / jar.name).symlink_to(jar)
    return plugins


def _pids(cfg: Config) -> list[int]:
    out = []
    for pid_file in (_dir(cfg) / "pids").glob("*.pid"):
        out += [int(line) for line in pid_file.read_text().split() if line.strip().isdigit()]
    return out


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    cmdline = Path(f"/proc/{pid}/cmdline")
    return cmdline.exists() and b"flink" in cmdline.read_bytes()


def up(cfg: Config, timeout: float = 90.0, log=print) -> ClusterInfo:
    if cfg.flink.jobmanager_address.strip():
        raise ClusterError("flink.jobmanager_address points at a remote cluster; `cluster up` only "
                           "starts a local one")
    running = [p for p in _pids(cfg) if _alive(p)]
    current = info(cfg)
    if running and current is not None:
        log(f"standalone cluster already running at {current.rest_url}")
        return current
    if current is not None:
        raise ClusterError(f"port {cfg.flink.rest_port} already serves a Flink REST API that streamrec "
                           "did not start; stop it or set flink.rest_port")
    env = _prepare(cfg)
    for pid_file in (_dir(cfg) / "pids").glob("*.pid"):
        pid_file.unlink()
    bin_dir = FLINK_HOME / "bin"
    # The daemons' working directory lands on the Python workers' path ahead of the shipped
    # package (submit's -pyfs): started from a checkout, `streamrec` would resolve to the bare
    # streamrec/ folder, which lacks the subpackages that live in the repository's other folders.
    run_dir = _dir(cfg)
    subprocess.run(["bash", str(bin_dir / "jobmanager.sh"), "start"], env=env, check=True,
                   capture_output=True, cwd=run_dir)
    for _ in range(cfg.flink.taskmanagers):
        subprocess.run(["bash", str(bin_dir / "taskmanager.sh"), "start"], env=env, check=True,
                       capture_output=True, cwd=run_dir)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        current = info(cfg)
        # usable = every TaskManager registered *with its slots* (they register a moment apart)
        if (current is not None and current.taskmanagers >= cfg.flink.taskmanagers
                and current.slots_total >= cfg.flink.taskmanagers * cfg.flink.task_slots):
            log(f"standalone cluster up: {current.taskmanagers} TaskManagers, "
                f"{current.slots_total} slots, web UI {current.rest_url}")
            return current
        time.sleep(1)
    down(cfg, log=lambda m: None)
    raise ClusterError(f"the cluster did not come up in {timeout:.0f} s; logs in {_dir(cfg) / 'log'}")


def down(cfg: Config, log=print) -> int:
    """Stop our JobManager and TaskManagers by the PIDs in our pid files; returns how many."""
    pids = [p for p in _pids(cfg) if _alive(p)]
    for pid in pids:
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.2)
    for pid in pids:
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)
    for pid_file in (_dir(cfg) / "pids").glob("*.pid"):
        pid_file.unlink()
    log(f"standalone cluster stopped ({len(pids)} processes)" if pids else "no standalone cluster running")
    return len(pids)


def _flink_cli(cfg: Config, args: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
    env = _prepare(cfg) if not cfg.flink.jobmanager_address.strip() else dict(os.environ)
    env.setdefault("FLINK_HOME", str(FLINK_HOME))
    # The job's driver process rebuilds exactly this configuration from the environment.
    env = {k: v for k, v in env.items() if not k.startswith("STREAMREC_")} | to_env(cfg)
    addr = cfg.flink.jobmanager_address.strip() or f"localhost:{cfg.flink.rest_port}"
    cmd = ["bash", str(FLINK_HOME / "bin" / "flink"), *args[:1], "-m", addr, *args[1:]]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)


def submit(cfg: Config, job_module: str = "streamrec.flink_jobs.pipeline", parallelism: int | None = None,
           job_args: list[str] | None = None) -> str:
    """Submit a job detached; returns its job id. The job runs with ``cfg`` (passed as env)."""
    flink = {"parallelism": parallelism} if parallelism else {}
    if not cfg.flink.jobmanager_address.strip():
        flink["ship_connector"] = False  # our standalone cluster has it in lib/
    cfg = cfg.model_copy(update={"flink": cfg.flink.model_copy(update=flink)})
    args = ["run", "-d", "-pym", job_module, "-pyfs", str(package_archive(cfg)),
            "-pyexec", sys.executable, "-pyclientexec", sys.executable]
    args += job_args or []
    proc = _flink_cli(cfg, args)
    match = re.search(r"JobID ([0-9a-f]{32})", proc.stdout + proc.stderr)
    if proc.returncode != 0 or not match:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
        raise ClusterError(f"flink run failed (exit {proc.returncode}):\n{tail}")
    return match.group(1)


def job_name(cfg: Config, job_id: str) -> str:
    return _rest(cfg, f"/jobs/{job_id}")["name"]


def running_jobs(cfg: Config, name: str) -> list[str]:
    """Ids of the cluster's jobs called ``name`` that are not in a terminal state."""
    return [j["jid"] for j in _rest(cfg, "/jobs/overview")["jobs"]
            if j["name"] == name and j["state"] not in {"FINISHED", "FAILED", "CANCELED"}]


def job_state(cfg: Config, job_id: str) -> str:
    return _rest(cfg, f"/jobs/{job_id}")["state"]


def wait_for_state(cfg: Config, job_id: str, states: set[str], timeout: float = 120) -> str:
    deadline = time.monotonic() + timeout
    state = "UNKNOWN"
    while time.monotonic() < deadline:
        state = job_state(cfg, job_id)
        if state in states:
            return state
        if state in {"FAILED", "CANCELED"} - states:
            raise ClusterError(f"job {job_id} is {state}")
        time.sleep(1)
    raise ClusterError(f"job {job_id} still {state} after {timeout:.0f} s")


def stop_with_savepoint(cfg: Config, job_id: str, savepoint_dir: Path | None = None) -> str:
    target = savepoint_dir or cfg.paths_resolved.state_dir / "savepoints"
    proc = _flink_cli(cfg, ["stop", "--savepointPath", target.as_uri(), job_id])
    match = re.search(r"Savepoint completed\. Path: (\S+)", proc.stdout + proc.stderr)
    if proc.returncode != 0 or not match:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
        raise ClusterError(f"flink stop failed (exit {proc.returncode}):\n{tail}")
    return match.group(1)
