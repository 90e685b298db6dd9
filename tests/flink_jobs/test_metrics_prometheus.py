"""Flink's Prometheus reporter, the exporter's and the API's metrics (docs/metrics.md).

The slow test: `streamrec run` (its own process: the reporter's jar must be on the classpath of
the Flink JVM it launches) learns from a short stream with ``flink.prometheus_reporter`` on, with
`streamrec exporter --metrics-port P` and `streamrec serve` beside it; Debian's ``prometheus``
binary scrapes the three, and its HTTP API must return a Flink JVM/job family and the shard
learner's own counter with values, every exporter family with the value the registry has, and the
API's request counter. The others check, without a JVM, what each deployment is given: the
mini-cluster's settings and gateway classpath, `streamrec cluster`'s conf and plugins dir."""

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
from datetime import datetime
from pathlib import Path

import pytest
import yaml

from streamrec import replay
from streamrec.core.config import load_config
from streamrec.flink_jobs import env
from streamrec.model.metrics import DECISIONS
from streamrec.model.registry import Registry
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


def _start_prometheus(tmp_path, reporter_port: int, **targets: int) -> tuple[subprocess.Popen, str]:
    """Prometheus scraping the reporter (job ``flink``) and each of ``targets`` (job name -> port)."""
    api_port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s, scrape_timeout: 1s}\n"
        "scrape_configs:\n"
        "  - job_name: flink\n"
        f"    static_configs: [{{targets: ['127.0.0.1:{reporter_port}']}}]\n"
        + "".join(f"  - job_name: {job}\n    static_configs: [{{targets: ['127.0.0.1:{port}']}}]\n"
                  for job, port in targets.items()))
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


#: registry.log action -> the exporter's decision label
LOGGED_DECISIONS = {"promote": "promoted", "reject": "rejected", "hold": "held", "supersede": "superseded"}


def _exporter_in_prometheus(prometheus_url: str) -> dict:
    """What Prometheus has of the exporter's families now, in the shape of :func:`_registry_says`."""
    def series(promql: str) -> list[dict]:
        return _query(prometheus_url, promql)

    def one(promql: str) -> float | None:
        found = series(promql)
        return float(found[0]["value"][1]) if found else None

    def by(promql: str, label: str) -> dict:
        return {s["metric"][label]: (s["metric"].get("version"), float(s["value"][1])) for s in series(promql)}

    return {
        "published": one('streamrec_exporter_exports_total{outcome="published"}'),
        "failed": one('streamrec_exporter_exports_total{outcome="failed"}'),
        "decisions": {d: v for d, (_, v) in by("streamrec_exporter_gate_decisions_total", "decision").items()},
        "decided_on_stream": one("streamrec_exporter_export_to_decision_seconds_count"),
        "last": sorted((s["metric"]["version"], s["metric"]["decision"])
                       for s in series("streamrec_exporter_gate_last_decision_info == 1")),
        "current": sorted((s["metric"]["version"], s["metric"]["pinned"])
                          for s in series("streamrec_exporter_current_info == 1")),
        "recall": by("streamrec_exporter_gate_recall", "model"),
        "bounds": by("streamrec_exporter_gate_difference_bound", "bound"),
        "events": [(s["metric"]["version"], float(s["value"][1])) for s in series("streamrec_exporter_gate_events")],
        "last_export": one("streamrec_exporter_last_export_timestamp_seconds"),
        "age": one("streamrec_exporter_export_age_seconds"),
    }


def _registry_says(registry: Registry) -> dict:
    """The same figures from the registry: registry.log's publications and decisions, CURRENT, the
    last decision's meta.json quality, the newest version's created_at."""
    log = registry.read_log()
    decided = [e for e in log if e["action"] in LOGGED_DECISIONS]
    expected = {
        "published": float(sum(e["action"] == "publish" for e in log)),
        "failed": 0.0,
        "decisions": {d: float(sum(LOGGED_DECISIONS[e["action"]] == d for e in decided)) for d in DECISIONS},
        "decided_on_stream": float(len(decided)),  # none forced, refused or held at export here
        "last": [(decided[-1]["version"], LOGGED_DECISIONS[decided[-1]["action"]])] if decided else [],
        "current": [(registry.current(), "false")] if registry.current() else [],
    }
    if decided:
        version = decided[-1]["version"]
        q = registry.read_meta(version)["quality"]
        serving = q["current"] if q.get("current") is not None else q.get("baseline")
        expected.update(recall={"candidate": (version, q["candidate"]), "serving": (version, serving)},
                        bounds={"lower": (version, q["lower_bound"]), "upper": (version, q["upper_bound"])},
                        events=[(version, float(q["n"]))])
    versions = registry.list_versions()
    if versions:
        expected["last_export"] = datetime.fromisoformat(registry.read_meta(versions[-1])["created_at"]).timestamp()
    return expected


def _agrees(seen: dict, expected: dict) -> bool:
    exact = ("published", "failed", "decisions", "decided_on_stream", "last", "current", "events")
    if not expected["last"] or any(seen[key] != expected[key] for key in exact):
        return False
    for key in ("recall", "bounds"):
        if set(seen[key]) != set(expected[key]) or any(
                seen[key][k][0] != expected[key][k][0] or seen[key][k][1] != pytest.approx(expected[key][k][1], rel=1e-9)
                for k in expected[key]):
            return False
    return (seen["last_export"] is not None and abs(seen["last_export"] - expected["last_export"]) < 1.0
            and seen["age"] is not None and 0 <= seen["age"] <= time.time() - expected["last_export"] + 5)


@pytest.mark.slow
def test_a_real_prometheus_scrapes_flink_the_exporter_and_the_api(cfg, tmp_path):
    if PROMETHEUS is None:
        pytest.skip("Debian's Prometheus server is not installed (`apt-get install prometheus`; "
                    ".ci/run installs it)")
    reporter_port, exporter_port, api_port = free_port(), free_port(), free_port()
    cfg = cfg.model_copy(update={
        "flink": cfg.flink.model_copy(update={"prometheus_reporter": True, "prometheus_ports": str(reporter_port)}),
        "paths": cfg.paths.model_copy(update={"registry_dir": tmp_path / "registry"}),
        # one version, exported from the first 1,000 events; margin 1: the gate promotes it at its
        # first look, on the held-out events produced after it (a decision with every figure)
        "exporter": cfg.exporter.model_copy(update={"interval_s": 1.0, "every_n_changes": 40,
                                                    "export_min_events": 1_000, "gate_margin": 1.0,
                                                    "gate_max_wait_s": 30.0}),
        "learner": cfg.learner.model_copy(update={"changelog_interval_ms": 300}),
        "serving": cfg.serving.model_copy(update={"snapshot_file": tmp_path / "serving-snapshot.npz"}),
    })
    registry = Registry(cfg.paths_resolved.registry_dir)
    ensure_topics(cfg)
    events = list(replay.encode_events(planted_stream(1_600)))
    replay.produce(cfg, cfg.kafka.topics.raw, events[:1_000], progress=False)

    run = StreamrecProcess(cfg, tmp_path / "run.log", "run", "--without-features", "--progress", "0")
    exporter = StreamrecProcess(cfg, tmp_path / "exporter.log", "exporter", "--metrics-port", str(exporter_port))
    api = StreamrecProcess(cfg, tmp_path / "api.log", "serve", "--port", str(api_port))
    prometheus, prometheus_url = _start_prometheus(tmp_path, reporter_port, exporter=exporter_port, api=api_port)
    processes = {"streamrec run": run, "streamrec exporter": exporter, "streamrec serve": api}
    found: dict[str, list[dict]] = {}
    seen: dict = {}
    expected: dict = {}
    agreed = held_out_produced = False
    try:
        started = time.monotonic()
        # generous: the job starts its JVM and Python workers first, on cores shared with others
        deadline = started + 180
        while time.monotonic() < deadline and not (len(found) == 4 and agreed):
            for name, proc in processes.items():
                assert proc.proc.poll() is None, f"{name} ended:\n{proc.output[-3000:]}"
            assert prometheus.poll() is None, (tmp_path / "prometheus.log").read_text()[-3000:]
            if not held_out_produced and registry.list_versions():  # events after the version's cut
                replay.produce(cfg, cfg.kafka.topics.raw, events[1_000:], progress=False)
                held_out_produced = True
            try:
                for name, promql in (("job", f"{JOB_FAMILY} >= 1"), ("learner", f"{LEARNER_FAMILY} > 0"),
                                     ("exporter", 'up{job="exporter"} == 1'),
                                     ("api", 'streamrec_serving_requests_total{route="/metrics", status="200"} > 0')):
                    if name not in found and (result := _query(prometheus_url, promql)):
                        found[name] = result
                        print(f"{name} in Prometheus after {time.monotonic() - started:.0f} s")
                if held_out_produced:
                    seen, expected = _exporter_in_prometheus(prometheus_url), _registry_says(registry)
                    agreed = _agrees(seen, expected)
            except (urllib.error.URLError, OSError):
                pass  # Prometheus still starting
            time.sleep(1)
        targets = ""
        if len(found) < 4:
            with urllib.request.urlopen(f"{prometheus_url}/api/v1/targets", timeout=5) as resp:
                targets = resp.read().decode()[:3000]
        assert "job" in found, f"no {JOB_FAMILY} in Prometheus; targets: {targets}\n{run.output[-2000:]}"
        assert "learner" in found, (f"no {LEARNER_FAMILY} > 0 in Prometheus; the reporter's operator "
                                    f"families: {_operator_families(reporter_port)}\n{run.output[-2000:]}")
        learned = sum(float(series["value"][1]) for series in found["learner"])
        assert learned > 0
        assert all(series["metric"]["job"] == "flink" for series in found["learner"])
        # the reporter's labels name the job (characters other than [a-zA-Z0-9:_] become "_")
        assert {series["metric"].get("job_name") for series in found["learner"]} == {"streamrec_pipeline"}
        assert "exporter" in found, f"the exporter is not scraped; targets: {targets}\n{exporter.output[-2000:]}"
        assert f"exporter metrics on http://127.0.0.1:{exporter_port}/metrics" in exporter.output
        assert "api" in found, f"no API request counter in Prometheus; targets: {targets}\n{api.output[-2000:]}"
        assert held_out_produced, f"the exporter published nothing:\n{exporter.output[-3000:]}"
        assert agreed, (f"Prometheus and the registry disagree:\nPrometheus: {seen}\nregistry: {expected}\n"
                        f"{exporter.output[-3000:]}")
        assert seen["current"] == [("v000001", "false")] and seen["decisions"]["promoted"] == 1
        print(f"all seen after {time.monotonic() - started:.0f} s:", *(series["metric"] for series in found["learner"]))
        print("exporter in Prometheus:", seen)
    finally:
        for proc in (run.proc, exporter.proc, api.proc, prometheus):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(30)
