"""Flink's Prometheus reporter (docs/metrics.md).

The slow test: `streamrec run` (its own process: the reporter's jar must be on the classpath of
the Flink JVM it launches) learns from a short stream with ``flink.prometheus_reporter`` on;
Debian's ``prometheus`` binary scrapes the reporter's port, and its HTTP API must return a Flink
JVM/job family and the shard learner's own counter with values. The others check, without a JVM,
what each deployment is given: the mini-cluster's settings and gateway classpath, `streamrec
cluster`'s conf and plugins dir."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

from streamrec import replay
from streamrec.core.config import load_config
from streamrec.flink_jobs import env
from streamrec.runtime import assets, cluster
from streamrec.runtime.kafka_io import ensure_topics
from tests.support import REPO, StreamrecProcess, free_port, planted_stream

PROMETHEUS = shutil.which("prometheus")
#: A counter of the shard learner (udfs/learner_core.py COUNTERS), as the reporter names it.
LEARNER_FAMILY = "flink_taskmanager_job_task_operator_events_learned"
JOB_FAMILY = "flink_jobmanager_numRunningJobs"


def _query(prometheus_url: str, promql: str) -> list[dict]:
    url = f"{prometheus_url}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    with urllib.request.urlopen(url, timeout=5) as resp:
        body = json.loads(resp.read())
    assert body["status"] == "success", body
    return body["data"]["result"]


def _operator_families(reporter_port: int) -> list[str]:
    """The operator metric families the reporter serves now (for a failure's message)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{reporter_port}/metrics", timeout=5) as resp:
            lines = resp.read().decode().splitlines()
    except (urllib.error.URLError, OSError) as exc:
        return [f"(no answer: {exc})"]
    return sorted({ln.split("{")[0] for ln in lines if ln.startswith("flink_taskmanager_job_task_operator_")})


def _start_prometheus(tmp_path, reporter_port: int) -> tuple[subprocess.Popen, str]:
    api_port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s, scrape_timeout: 1s}\n"
        "scrape_configs:\n"
        "  - job_name: flink\n"
        f"    static_configs: [{{targets: ['127.0.0.1:{reporter_port}']}}]\n")
    with open(tmp_path / "prometheus.log", "w") as log:
        proc = subprocess.Popen(
            [PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{api_port}"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    return proc, f"http://127.0.0.1:{api_port}"


def _config(tmp_path, **flink: str):
    return load_config(config_file=None, env={
        "STREAMREC_PATHS__STATE_DIR": str(tmp_path), "STREAMREC_PATHS__CACHE_DIR": str(REPO / ".streamrec" / "cache"),
        **{f"STREAMREC_FLINK__{key.upper()}": value for key, value in flink.items()}})


def test_the_reporter_is_off_unless_switched_on(tmp_path):
    assert not [k for k in env.flink_settings(_config(tmp_path), "a-job") if k.startswith("metrics.reporter")]
    on = env.flink_settings(_config(tmp_path, prometheus_reporter="true", prometheus_ports="9300-9302"), "a-job")
    assert on["metrics.reporter.prom.factory.class"] == "org.apache.flink.metrics.prometheus.PrometheusReporterFactory"
    assert on["metrics.reporter.prom.port"] == "9300-9302"


def test_the_gateway_classpath_is_flinks_lib_plus_the_locked_reporter_jar(tmp_path):
    import pyflink

    cfg = _config(tmp_path)
    jar = assets.prometheus_reporter_jar(cfg)
    assert assets.sha256_of(jar) == assets.FLINK_METRICS_PROMETHEUS.pinned()[jar.name]
    flink_lib = Path(pyflink.__file__).resolve().parent / "lib"
    lib = env.gateway_lib_dir(cfg, flink_lib, jar)
    assert sorted(p.name for p in lib.iterdir()) == sorted([*(p.name for p in flink_lib.glob("*.jar")), jar.name])
    assert (lib / jar.name).resolve() == jar.resolve()
    assert env.gateway_lib_dir(cfg, flink_lib, jar) == lib  # shared, not rebuilt


def test_the_cluster_gets_the_reporter_as_a_plugin_and_a_port_per_process(tmp_path):
    cfg = _config(tmp_path, prometheus_reporter="true", prometheus_ports="9300-9302", taskmanagers="2")
    run_env = cluster._prepare(cfg)
    conf = yaml.safe_load((tmp_path / "cluster" / "conf" / "config.yaml").read_text())
    assert conf["metrics.reporter.prom.port"] == "9300-9302"
    plugins = Path(run_env["FLINK_PLUGINS_DIR"])
    assert plugins == tmp_path / "cluster" / "plugins"
    (jar,) = (plugins / "metrics-prometheus").iterdir()
    assert jar.resolve() == assets.prometheus_reporter_jar(cfg).resolve()
    assert (plugins / "metrics-jmx").is_symlink()  # Flink's other plugins stay available
    with pytest.raises(cluster.ClusterError, match="widen the range"):
        cluster._prepare(_config(tmp_path, prometheus_reporter="true", prometheus_ports="9300-9301",
                                 taskmanagers="2"))


@pytest.mark.slow
def test_a_real_prometheus_scrapes_flink_and_the_shard_learner(cfg, tmp_path):
    if PROMETHEUS is None:
        pytest.skip("Debian's Prometheus server is not installed (`apt-get install prometheus`; "
                    ".ci/run installs it)")
    reporter_port = free_port()
    cfg = cfg.model_copy(update={"flink": cfg.flink.model_copy(update={
        "prometheus_reporter": True, "prometheus_ports": str(reporter_port)})})
    ensure_topics(cfg)
    replay.produce(cfg, cfg.kafka.topics.raw, replay.encode_events(planted_stream(1_500)), progress=False)

    run = StreamrecProcess(cfg, tmp_path / "run.log", "run", "--without-features", "--progress", "0")
    prometheus, prometheus_url = _start_prometheus(tmp_path, reporter_port)
    found: dict[str, list[dict]] = {}
    try:
        started = time.monotonic()
        # generous: the job starts its JVM and Python workers first, on cores shared with others
        deadline = started + 120
        while time.monotonic() < deadline and len(found) < 2:
            assert run.proc.poll() is None, f"streamrec run ended:\n{run.output[-3000:]}"
            assert prometheus.poll() is None, (tmp_path / "prometheus.log").read_text()[-3000:]
            try:
                for name, promql in (("job", f"{JOB_FAMILY} >= 1"), ("learner", f"{LEARNER_FAMILY} > 0")):
                    if name not in found and (result := _query(prometheus_url, promql)):
                        found[name] = result
            except (urllib.error.URLError, OSError):
                pass  # Prometheus still starting
            time.sleep(1)
        targets = ""
        if len(found) < 2:
            with urllib.request.urlopen(f"{prometheus_url}/api/v1/targets", timeout=5) as resp:
                targets = resp.read().decode()[:1500]
        assert "job" in found, f"no {JOB_FAMILY} in Prometheus; targets: {targets}\n{run.output[-2000:]}"
        assert "learner" in found, (f"no {LEARNER_FAMILY} > 0 in Prometheus; the reporter's operator "
                                    f"families: {_operator_families(reporter_port)}\n{run.output[-2000:]}")
        learned = sum(float(series["value"][1]) for series in found["learner"])
        assert learned > 0
        assert all(series["metric"]["job"] == "flink" for series in found["learner"])
        # the reporter's labels name the job (characters other than [a-zA-Z0-9:_] become "_")
        assert {series["metric"].get("job_name") for series in found["learner"]} == {"streamrec_pipeline"}
        print(f"seen after {time.monotonic() - started:.0f} s:", *(series["metric"] for series in found["learner"]))
    finally:
        for proc in (run.proc, prometheus):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(30)
