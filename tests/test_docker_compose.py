"""docker-compose.yml, validated by a real compose client (no Docker engine runs here or in CI:
the client parses, interpolates and validates the file against the compose schema)."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest
import yaml

from tests.support import REPO

COMPOSE = shutil.which("docker-compose")


@pytest.fixture(scope="module")
def stack() -> dict:
    if COMPOSE is None:
        pytest.skip("no compose client: `apt-get install docker-compose` (.ci/run installs it)")
    proc = subprocess.run([COMPOSE, "-f", str(REPO / "docker-compose.yml"), "--profile", "cli",
                           "config"], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    return yaml.safe_load(proc.stdout)


def test_kafka_is_4x_kraft_with_a_data_volume_and_a_healthcheck(stack):
    kafka = stack["services"]["kafka"]
    assert re.fullmatch(r"apache/kafka:4\.\d+\.\d+", kafka["image"])
    env = kafka["environment"]
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    for key in ("KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR", "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR",
                "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR"):
        assert str(env[key]) == "1", key
    assert any(v.startswith("kafka-data:") for v in kafka["volumes"])
    assert "kafka-data" in stack["volumes"]
    assert "kafka-broker-api-versions" in " ".join(kafka["healthcheck"]["test"])


def test_flink_runs_the_official_image_with_pyflink_and_the_connector():
    dockerfile = (REPO / "docker" / "Dockerfile").read_text()
    assert re.search(r"^FROM flink:2\.\d+\.\d+-java17$", dockerfile, re.M)
    assert "flink-connector.lock" in dockerfile and "sha256sum -c" in dockerfile
    assert "/opt/flink/lib/" in dockerfile
    # a regular install of the package (an editable one needs the source tree at run time)
    assert "uv pip install -c constraints.txt ." in dockerfile and "pip install -e" not in dockerfile
    for folder in ("streamrec", "core", "runtime", "flink_jobs", "udfs", "model", "sql"):
        assert f"COPY {folder} ./{folder}" in dockerfile, folder
    # the jobs register the validation fast path by class name: the cluster needs the UDF jar
    assert "javac" in dockerfile and "udfs/jvm" in dockerfile and "streamrec-udfs.jar" in dockerfile


def test_rest_port_is_bound_to_loopback_only(stack):
    for name, service in stack["services"].items():
        for port in service.get("ports", []):
            published = port if isinstance(port, str) else f"{port.get('host_ip', '')}:{port['published']}"
            assert published.startswith("127.0.0.1:"), f"{name} publishes {port} on every interface"
    jm = stack["services"]["jobmanager"]["ports"]
    assert jm, "the Flink web UI / REST port is not published at all"


def test_exporter_sidecar_and_job_share_the_registry_volume(stack):
    services = stack["services"]
    assert services["exporter"]["command"] == ["streamrec", "exporter"]
    for name in ("jobmanager", "taskmanager", "exporter", "cli"):
        assert any(v.startswith("streamrec-data:/data/streamrec") for v in services[name]["volumes"]), name
        assert services[name]["environment"]["STREAMREC_KAFKA__BOOTSTRAP_SERVERS"] == "kafka:9092"
    assert services["taskmanager"]["depends_on"]["jobmanager"]["condition"] == "service_healthy"


def _flink_properties(service: dict) -> dict:
    return yaml.safe_load(service["environment"]["FLINK_PROPERTIES"])


def test_every_flink_process_runs_the_prometheus_reporter(stack):
    for name in ("jobmanager", "taskmanager"):
        props = _flink_properties(stack["services"][name])
        assert props["metrics.reporter.prom.factory.class"] == \
            "org.apache.flink.metrics.prometheus.PrometheusReporterFactory", name
        assert str(props["metrics.reporter.prom.port"]) == "9249", name
    dockerfile = (REPO / "docker" / "Dockerfile").read_text()
    # the plugin jar comes from the same pinned POM and lock as `streamrec setup`'s
    assert "flink-metrics-prometheus.pom.xml" in dockerfile
    assert "grep -v '^#' /jvm/flink-metrics-prometheus.lock | sha256sum -c -" in dockerfile
    assert "/opt/flink/plugins/metrics-prometheus/" in dockerfile


def test_prometheus_scrapes_the_jobmanager_and_every_taskmanager(stack):
    prometheus = stack["services"]["prometheus"]
    assert re.fullmatch(r"prom/prometheus:v\d+\.\d+\.\d+", prometheus["image"])
    mounted = {v.split(":")[1]: v.split(":")[0] for v in prometheus["volumes"]}
    assert mounted["/etc/prometheus/prometheus.yml"] == str(REPO / "docker" / "prometheus.yml")
    assert mounted["/prometheus"] == "prometheus-data" and "prometheus-data" in stack["volumes"]
    assert "--config.file=/etc/prometheus/prometheus.yml" in prometheus["command"]
    scrape = yaml.safe_load((REPO / "docker" / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in scrape["scrape_configs"]}
    assert jobs["flink-jobmanager"]["static_configs"][0]["targets"] == ["jobmanager:9249"]
    # DNS discovery: each replica of `docker compose up --scale taskmanager=N` is a target
    (taskmanagers,) = jobs["flink-taskmanager"]["dns_sd_configs"]
    assert taskmanagers["names"] == ["taskmanager"] and taskmanagers["port"] == 9249
    for job in jobs.values():
        for target in (t for sc in job.get("static_configs", []) for t in sc["targets"]):
            assert target.split(":")[0] in stack["services"], f"{job['job_name']}: no service {target}"


def test_the_scrape_config_passes_promtool():
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("no promtool: `apt-get install prometheus` (.ci/run installs it)")
    proc = subprocess.run([promtool, "check", "config", str(REPO / "docker" / "prometheus.yml")],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
