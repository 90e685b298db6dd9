"""The exporter's Prometheus metrics (model/metrics.py): exact counts without HTTP, the wiring in
the exporter (every registry version and every gate decision counted once, the figures of the
last evaluated decision as meta.json has them), the settings, and the HTTP server on a free port.
A real Prometheus scraping `streamrec exporter` is tests/flink_jobs/test_metrics_prometheus.py."""

from __future__ import annotations

import errno
import urllib.request

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from streamrec.cli import main
from streamrec.core.config import ConfigError, load_config
from streamrec.model.metrics import DECISIONS, ExporterMetrics, serve_metrics, series_names
from tests.model.test_exporter_state import _events, _exporter, _feed, _world_records

FAMILIES = {  # name -> type, as the exposition declares them
    "streamrec_exporter_exports": "counter",
    "streamrec_exporter_gate_decisions": "counter",
    "streamrec_exporter_export_to_decision_seconds": "histogram",
    "streamrec_exporter_gate_last_decision_info": "gauge",
    "streamrec_exporter_gate_last_decision_timestamp_seconds": "gauge",
    "streamrec_exporter_gate_recall": "gauge",
    "streamrec_exporter_gate_difference_bound": "gauge",
    "streamrec_exporter_gate_events": "gauge",
    "streamrec_exporter_current_info": "gauge",
    "streamrec_exporter_last_export_timestamp_seconds": "gauge",
    "streamrec_exporter_export_age_seconds": "gauge",
}


class Clock:
    def __init__(self, t: float = 1_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def _value(m: ExporterMetrics, name: str, **labels: str) -> float | None:
    return m.registry.get_sample_value(name, labels)


def test_counts_figures_and_ages_exactly():
    wall, mono = Clock(1_000.0), Clock(50.0)
    current = {"version": None, "pinned": False}
    m = ExporterMetrics(current=lambda: (current["version"], current["pinned"]), clock=wall, monotonic=mono)
    assert {f.name: f.type for f in m.registry.collect()} == FAMILIES
    # every counter series exists from the start, at 0; nothing else has a sample yet
    assert _value(m, "streamrec_exporter_exports_total", outcome="published") == 0
    assert all(_value(m, "streamrec_exporter_gate_decisions_total", decision=d) == 0 for d in DECISIONS)
    assert _value(m, "streamrec_exporter_export_age_seconds") is None
    assert _value(m, "streamrec_exporter_current_info", version="v000001", pinned="false") is None

    for n in (1, 2, 3):
        m.published(f"v00000{n}")
    m.failed()
    mono.t, wall.t = 52.5, 1_010.0
    figures = {"candidate": 0.25, "current": None, "baseline": 0.125, "lower_bound": -0.05,
               "upper_bound": 0.3, "n": 40, "evaluated": 40}
    m.decided("v000001", "promoted", figures)                            # on the stream, 2.5 s
    m.decided("v000002", "pending")                                      # no decision
    m.decided("v000002", "superseded")                                   # on the stream, 2.5 s
    m.decided("v000003", "held", {"candidate": None}, at_export=True)    # no wait to observe
    m.decided("v000003", "candidate")                                    # not a decision
    current.update(version="v000001", pinned=True)
    wall.t = 1_012.0

    assert _value(m, "streamrec_exporter_exports_total", outcome="published") == 3
    assert _value(m, "streamrec_exporter_exports_total", outcome="failed") == 1
    assert {d: _value(m, "streamrec_exporter_gate_decisions_total", decision=d) for d in DECISIONS} == {
        "promoted": 1, "rejected": 0, "held": 1, "superseded": 1}
    assert _value(m, "streamrec_exporter_export_to_decision_seconds_count") == 2
    assert _value(m, "streamrec_exporter_export_to_decision_seconds_sum") == 5.0
    assert _value(m, "streamrec_exporter_export_to_decision_seconds_bucket", le="2.0") == 0
    assert _value(m, "streamrec_exporter_export_to_decision_seconds_bucket", le="5.0") == 2
    # the last decision (held, nothing evaluated); the figures stay the last evaluated one's
    assert _value(m, "streamrec_exporter_gate_last_decision_info", version="v000003", decision="held") == 1
    assert _value(m, "streamrec_exporter_gate_last_decision_timestamp_seconds") == 1_010.0
    assert _value(m, "streamrec_exporter_gate_recall", version="v000001", model="candidate") == 0.25
    assert _value(m, "streamrec_exporter_gate_recall", version="v000001", model="serving") == 0.125
    assert _value(m, "streamrec_exporter_gate_difference_bound", version="v000001", bound="lower") == -0.05
    assert _value(m, "streamrec_exporter_gate_difference_bound", version="v000001", bound="upper") == 0.3
    assert _value(m, "streamrec_exporter_gate_events", version="v000001") == 40
    assert _value(m, "streamrec_exporter_current_info", version="v000001", pinned="true") == 1
    assert _value(m, "streamrec_exporter_last_export_timestamp_seconds") == 1_000.0
    assert _value(m, "streamrec_exporter_export_age_seconds") == 12.0
    # one series per family at most: the old versions' figures are gone
    assert len([s for f in m.registry.collect() if f.name == "streamrec_exporter_gate_recall" for s in f.samples]) == 2


def test_a_registry_that_cannot_be_read_costs_the_current_series_only():
    def broken():
        raise OSError(errno.EIO, "I/O error")

    m = ExporterMetrics(current=broken)
    m.published("v000001")
    samples = {s.name for f in m.registry.collect() for s in f.samples}
    assert "streamrec_exporter_exports_total" in samples and "streamrec_exporter_current_info" not in samples


def test_series_names_follow_the_exposition_format():
    names = series_names(ExporterMetrics().registry)
    assert {"streamrec_exporter_exports_total", "streamrec_exporter_gate_decisions_total",
            "streamrec_exporter_export_to_decision_seconds_bucket", "streamrec_exporter_export_to_decision_seconds_count",
            "streamrec_exporter_export_age_seconds", "streamrec_exporter_current_info"} <= names
    assert "streamrec_exporter_exports" not in names


def test_the_exporter_counts_every_version_and_decision_once(tmp_path, monkeypatch):
    """The registry is the reference: versions published, decisions logged, CURRENT, the last
    decision's figures (meta.json quality), the newest version's publication time."""
    items, ids, item_recs, user_recs, history, events = _world_records()
    exp = _exporter(tmp_path, dim=16, gate_min_events=300, gate_events=1000, gate_margin=0.02)
    reg, m = exp.registry, exp.metrics
    _feed(exp, item_recs)
    _feed(exp, user_recs, "users")
    _events(exp, history + events, partition=0, start=0)
    cut = len(history) + len(events)
    r1 = exp.export()
    assert r1.pending and _value(m, "streamrec_exporter_gate_last_decision_info",
                                 version=r1.version, decision="promoted") is None
    _events(exp, events, partition=0, start=cut)
    assert exp.check_gate().status == "promoted"
    # a second candidate, superseded by a third before its decision (a newer export while pending)
    _feed(exp, item_recs[:3])
    r2 = exp.export()
    assert r2.pending
    _feed(exp, item_recs[3:6])
    r3 = exp.export()
    assert reg.read_meta(r2.version)["status"] == "superseded"
    _events(exp, events, partition=0, start=cut + len(events))
    last = exp.check_gate()
    assert last.version == r3.version and last.status in ("promoted", "rejected")
    # a failed export: nothing published
    _feed(exp, item_recs[:1])
    monkeypatch.setattr(reg, "publish", lambda *a, **k: (_ for _ in ()).throw(OSError(errno.ENOSPC, "full")))
    with pytest.raises(OSError):
        exp.export()
    monkeypatch.undo()
    # a forced export is decided at export: counted, not observed as a wait
    exp.force = True
    _feed(exp, item_recs[:2])
    r4 = exp.export()
    assert r4.promoted and r4.decision.forced

    log = reg.read_log()
    actions = {"promote": "promoted", "reject": "rejected", "hold": "held", "supersede": "superseded"}
    logged = {d: sum(1 for e in log if actions.get(e["action"]) == d) for d in DECISIONS}
    assert _value(m, "streamrec_exporter_exports_total", outcome="published") == len(reg.list_versions()) == 4
    assert _value(m, "streamrec_exporter_exports_total", outcome="failed") == 1
    assert {d: _value(m, "streamrec_exporter_gate_decisions_total", decision=d) for d in DECISIONS} == logged
    assert sum(logged.values()) == 4
    assert _value(m, "streamrec_exporter_export_to_decision_seconds_count") == 3  # r1, r2, r3 on the stream
    assert _value(m, "streamrec_exporter_current_info", version=reg.current(), pinned="false") == 1
    assert _value(m, "streamrec_exporter_gate_last_decision_info", version=r4.version, decision="promoted") == 1
    quality = reg.read_meta(r3.version)["quality"]  # the last evaluated decision
    assert _value(m, "streamrec_exporter_gate_recall", version=r3.version, model="candidate") == quality["candidate"]
    assert _value(m, "streamrec_exporter_gate_recall", version=r3.version, model="serving") == quality["current"]
    for side in ("lower", "upper"):
        assert _value(m, "streamrec_exporter_gate_difference_bound", version=r3.version,
                      bound=side) == quality[f"{side}_bound"]
    assert _value(m, "streamrec_exporter_gate_events", version=r3.version) == quality["n"] > 0
    from datetime import datetime

    created = datetime.fromisoformat(reg.read_meta(r4.version)["created_at"]).timestamp()
    assert abs(_value(m, "streamrec_exporter_last_export_timestamp_seconds") - created) < 1.0

    # a restarted exporter's export age counts from the registry's newest version
    again = _exporter(tmp_path, dim=16)
    assert again.metrics.last_export == pytest.approx(created, abs=0.001)
    assert _value(again.metrics, "streamrec_exporter_exports_total", outcome="published") == 0


def test_the_metrics_settings(tmp_path):
    cfg = load_config(config_file=None, env={})
    assert (cfg.exporter.metrics_host, cfg.exporter.metrics_port) == ("127.0.0.1", None)
    cfg = load_config(config_file=None, env={"STREAMREC_EXPORTER__METRICS_PORT": "0",
                                             "STREAMREC_EXPORTER__METRICS_HOST": "0.0.0.0"})
    assert (cfg.exporter.metrics_host, cfg.exporter.metrics_port) == ("0.0.0.0", 0)
    for bad in ("-1", "65536", "nine"):
        with pytest.raises(ConfigError, match="exporter.metrics_port"):
            load_config(config_file=None, env={"STREAMREC_EXPORTER__METRICS_PORT": bad})
    with pytest.raises(ConfigError, match="exporter.metrics_host"):
        load_config(config_file=None, env={"STREAMREC_EXPORTER__METRICS_HOST": ""})


def test_once_refuses_the_metrics_flags(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    for name in [n for n in __import__("os").environ if n.startswith("STREAMREC_")]:
        monkeypatch.delenv(name)
    assert main(["exporter", "--once", "--metrics-port", "0"]) == 2
    assert "--metrics-port" in capsys.readouterr().err


def test_the_server_answers_on_a_free_loopback_port():
    m = ExporterMetrics(current=lambda: ("v000007", False))
    m.published("v000007")
    server = serve_metrics(m, "127.0.0.1", 0)
    try:
        assert server.port > 0 and server.url == f"http://127.0.0.1:{server.port}/metrics"
        with urllib.request.urlopen(server.url, timeout=5) as resp:
            text = resp.read().decode()
    finally:
        server.close()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    # its own registry: no process_* or python_* families (the text format shows a counter's and
    # a histogram's _created as gauges of their own)
    assert {name for name in families if not name.endswith("_created")} == set(FAMILIES)
    (published,) = [s for s in families["streamrec_exporter_exports"].samples
                    if s.name.endswith("_total") and s.labels == {"outcome": "published"}]
    assert published.value == 1
    assert [s.labels for s in families["streamrec_exporter_current_info"].samples] == [
        {"version": "v000007", "pinned": "false"}]
    assert np.isfinite(families["streamrec_exporter_export_age_seconds"].samples[0].value)
