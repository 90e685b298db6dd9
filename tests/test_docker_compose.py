"""docker-compose.yml, validated by a real compose client (no Docker engine runs here or in CI:
the client parses, interpolates and validates the file against the compose schema); the files its
services mount (Prometheus' scrape config, Grafana's provisioning and dashboard), checked with
promtool where it is installed; and every PromQL expression of the dashboard, whose metric names
must all be families streamrec exports."""

from __future__ import annotations

import ast
import json
import re
import shutil
import subprocess
from pathlib import Path

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
    for folder in ("streamrec", "core", "runtime", "flink_jobs", "udfs", "model", "serving", "sql"):
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
    for name in ("jobmanager", "taskmanager", "exporter", "api", "cli"):
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


# --------------------------------------------------------------------------- api, exporter metrics, grafana
PROMETHEUS_YML = REPO / "docker" / "prometheus.yml"
GRAFANA = REPO / "docker" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "streamrec.json"


def _mounts(service: dict) -> dict[str, str]:
    """target -> source of a service's volumes (a bind mount's source is an absolute path)."""
    out = {}
    for volume in service.get("volumes", []):
        if isinstance(volume, dict):
            out[volume["target"]] = volume["source"]
        else:
            source, target = volume.split(":")[:2]
            out[target] = source
    return out


def test_every_file_a_service_mounts_or_builds_from_exists(stack):
    named = set(stack.get("volumes") or {})
    for name, service in stack["services"].items():
        for target, source in _mounts(service).items():
            if source.startswith("/"):
                assert Path(source).exists(), f"{name} mounts {source} (on {target}): missing"
                assert Path(source).resolve().is_relative_to(REPO), f"{name} mounts {source} from outside the repo"
            else:
                assert source in named, f"{name}: volume {source} is not declared"
        build = service.get("build")
        if build:
            assert (Path(build["context"]) / build.get("dockerfile", "Dockerfile")).is_file(), name


def test_the_api_serves_on_the_compose_network_and_publishes_on_loopback(stack):
    api = stack["services"]["api"]
    assert api["image"] == stack["services"]["exporter"]["image"] == "streamrec:latest"
    assert api["command"][:2] == ["streamrec", "serve"]
    args = dict(zip(api["command"][2::2], api["command"][3::2]))
    assert args["--host"] == "0.0.0.0"  # inside the container: Prometheus reaches it as api:PORT
    ports = [p if isinstance(p, str) else f"{p['host_ip']}:{p['published']}:{p['target']}" for p in api["ports"]]
    assert [p.removesuffix("/tcp") for p in ports] == [f"127.0.0.1:{args['--port']}:{args['--port']}"]
    assert "/healthz" in " ".join(api["healthcheck"]["test"])


def _scrape_jobs() -> dict[str, dict]:
    return {job["job_name"]: job for job in yaml.safe_load(PROMETHEUS_YML.read_text())["scrape_configs"]}


def test_prometheus_scrapes_the_exporter_and_the_api_where_they_listen(stack):
    services = stack["services"]
    jobs = _scrape_jobs()
    exporter_env = services["exporter"]["environment"]
    assert exporter_env["STREAMREC_EXPORTER__METRICS_HOST"] == "0.0.0.0"
    assert jobs["streamrec-exporter"]["static_configs"][0]["targets"] == [
        f"exporter:{exporter_env['STREAMREC_EXPORTER__METRICS_PORT']}"]
    api_args = dict(zip(services["api"]["command"][2::2], services["api"]["command"][3::2]))
    assert jobs["streamrec-api"]["static_configs"][0]["targets"] == [f"api:{api_args['--port']}"]
    # the exporter's metrics port is not published: only the compose network reaches it
    assert not services["exporter"].get("ports")
    # the settings the exporter gets are valid streamrec settings
    from streamrec.core.config import load_config

    cfg = load_config(config_file=None, env={k: str(v) for k, v in exporter_env.items()})
    assert cfg.exporter.metrics_port == int(exporter_env["STREAMREC_EXPORTER__METRICS_PORT"])


def test_grafana_is_provisioned_with_prometheus_and_the_dashboard(stack):
    grafana = stack["services"]["grafana"]
    assert re.fullmatch(r"grafana/grafana:\d+\.\d+\.\d+", grafana["image"])
    mounts = _mounts(grafana)
    assert mounts["/etc/grafana/provisioning"] == str(GRAFANA / "provisioning")
    assert mounts["/var/lib/grafana"] == "grafana-data"
    (datasource,) = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())["datasources"]
    assert datasource["type"] == "prometheus"
    host, port = re.fullmatch(r"http://([a-z-]+):(\d+)", datasource["url"]).groups()
    assert host in stack["services"] and port == "9090"
    (provider,) = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "streamrec.yml").read_text())["providers"]
    assert mounts[provider["options"]["path"]] == str(DASHBOARD.parent)
    dashboard = json.loads(DASHBOARD.read_text())
    assert grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"] == \
        f"{provider['options']['path']}/{DASHBOARD.name}"
    assert dashboard["uid"] == "streamrec" and dashboard["panels"]
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == datasource["uid"], panel["title"]
        assert panel["targets"] and all(t["datasource"]["uid"] == datasource["uid"] for t in panel["targets"])


# ---- PromQL: the metric names an expression selects, by PromQL's lexical grammar ---------------
#: Grafana's interval variables, the only ones the dashboard may use, and a duration for each.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "1h"}
_TOKEN = re.compile(r"""
    (?P<space>\s+) | (?P<comment>\#[^\n]*)
  | (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
  | (?P<number>0[xX][0-9a-fA-F]+|(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?(?:[smhdwy]|ms)?(?:\d+(?:ms|[smhdwy]))*)
  | (?P<ident>[a-zA-Z_:][a-zA-Z0-9_:]*)
  | (?P<op>=~|!~|!=|==|<=|>=|[-+*/%^<>=(){}\[\],@])
""", re.X)
#: Keywords followed by a parenthesised list of label names.
LABEL_LISTS = {"by", "without", "on", "ignoring", "group_left", "group_right"}
#: PromQL's other keywords: the aggregation operators (lexed as keywords, whatever follows them),
#: the binary and modifier keywords, and the two float literals.
KEYWORDS = {"sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values", "bottomk",
            "topk", "quantile", "limitk", "limit_ratio", "bool", "offset", "and", "or", "unless", "atan2",
            "inf", "nan"}


def metric_names(expr: str) -> set[str]:
    """The metric names ``expr`` selects: identifiers that are not label names (inside ``{}``
    or a ``by`` / ``without`` / ``on`` / ``ignoring`` / ``group_*`` list), not a function or an
    aggregation operator or another keyword, not a function (followed by ``(``); plus
    ``{__name__="..."}`` matchers.

    >>> sorted(metric_names('sum by (le) (rate(a_bucket{job="x", le!="1"}[5m])) / on (job) group_left (l) b'))
    ['a_bucket', 'b']
    >>> sorted(metric_names('{__name__="c_total"} and histogram_quantile(0.9, d offset 5m) > bool 1'))
    ['c_total', 'd']
    """
    tokens = []
    for m in _TOKEN.finditer(expr):
        if m.lastgroup not in ("space", "comment"):
            tokens.append((m.lastgroup, m.group()))
    assert "".join(t for _, t in tokens) == re.sub(r"\s+|\#[^\n]*", "", expr), f"not lexed whole: {expr}"
    names: set[str] = set()
    braces = brackets = 0
    in_list = False
    for n, (kind, text) in enumerate(tokens):
        following = tokens[n + 1][1] if n + 1 < len(tokens) else None
        if text == "{":
            braces += 1
        elif text == "}":
            braces -= 1
        elif text == "[":
            brackets += 1
        elif text == "]":
            brackets -= 1
        elif in_list:
            in_list = text != ")"
        elif kind == "ident" and braces:
            if text == "__name__" and tokens[n + 1][1] == "=":
                names.add(ast.literal_eval(tokens[n + 2][1]))
        elif kind == "ident" and not brackets:
            if text.lower() in LABEL_LISTS and following == "(":
                in_list = True
            elif text.lower() not in KEYWORDS and following != "(":
                names.add(text)
    return names


def _dashboard_exprs() -> list[str]:
    exprs = []
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            for variable, duration in GRAFANA_VARIABLES.items():
                expr = expr.replace(variable, duration)
            assert "$" not in expr, f"{panel['title']}: a Grafana variable the test does not know: {expr}"
            exprs.append(expr)
    return exprs


def _api_series() -> set[str]:
    """The series names serving/app.py's metrics can expose: each Counter, Histogram or
    GaugeMetricFamily constructed there with a literal name, by the exposition format's rules."""
    suffixes = {"Counter": ("_total", "_created"), "Histogram": ("_bucket", "_sum", "_count", "_created"),
                "GaugeMetricFamily": ("",), "Gauge": ("",),
                "HistogramMetricFamily": ("_bucket", "_sum", "_count")}
    names = set()
    tree = ast.parse((REPO / "serving" / "app.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in suffixes:
            first = node.args[0] if node.args else None
            assert isinstance(first, ast.Constant) and isinstance(first.value, str), ast.dump(node)[:200]
            names.update(first.value + suffix for suffix in suffixes[node.func.id])
    return names


def exported_series() -> set[str]:
    """Every series name streamrec exports: the exporter's (its registry), the API's (its code),
    the shard learner's counters and gauges as Flink's reporter names them
    (``flink_taskmanager_job_task_operator_<name>``, udfs/learner_core.py), and Flink's own
    families that docs/metrics.md names in full."""
    from streamrec.model.metrics import ExporterMetrics, series_names
    from streamrec.udfs.learner_core import COUNTERS, GAUGES

    flink_documented = set(re.findall(r"`(flink_[A-Za-z0-9_]+)`", (REPO / "docs" / "metrics.md").read_text()))
    learner = {f"flink_taskmanager_job_task_operator_{name}" for name in (*COUNTERS, *GAUGES)}
    return series_names(ExporterMetrics().registry) | _api_series() | learner | flink_documented


def test_the_dashboard_selects_only_series_streamrec_exports():
    exported = exported_series()
    assert {"streamrec_exporter_exports_total", "streamrec_serving_requests_total",
            "streamrec_serving_request_seconds_bucket", "flink_taskmanager_job_task_operator_events_learned",
            "flink_jobmanager_job_lastCheckpointDuration"} <= exported
    used = set()
    for expr in _dashboard_exprs():
        names = metric_names(expr)
        assert names, f"selects no metric: {expr}"
        unknown = names - exported
        assert not unknown, f"{expr}: {sorted(unknown)} are not series streamrec exports"
        used |= names
    # every panel the dashboard promises has its series
    for family in ("streamrec_exporter_gate_decisions_total", "streamrec_exporter_export_age_seconds",
                   "streamrec_exporter_current_info", "streamrec_serving_model_info",
                   "streamrec_serving_request_seconds_bucket", "streamrec_serving_freshness_seconds_bucket",
                   "flink_taskmanager_job_task_operator_KafkaSourceReader_KafkaConsumer_records_lag_max"):
        assert family in used, family


def test_the_dashboards_promql_parses(tmp_path):
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("no promtool: `apt-get install prometheus` (.ci/run installs it)")
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"streamrec:dashboard_expr_{n}", "expr": expr} for n, expr in enumerate(_dashboard_exprs())]}]}
    (tmp_path / "rules.yml").write_text(yaml.safe_dump(rules))
    proc = subprocess.run([promtool, "check", "rules", str(tmp_path / "rules.yml")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
