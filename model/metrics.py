"""The exporter sidecar's Prometheus metrics (``streamrec exporter``; docs/metrics.md).

:class:`ExporterMetrics` holds them on a registry of their own (nothing of prometheus_client's
default registry: no process or GC collectors, the families below and nothing else) and is fed by
:class:`model.exporter.Exporter` (:meth:`~ExporterMetrics.published`, :meth:`~ExporterMetrics.failed`,
:meth:`~ExporterMetrics.decided`); no HTTP here, so the counts are unit-testable.
:func:`serve_metrics` serves them with prometheus_client's own HTTP server, when
``exporter.metrics_port`` is set.

The families (docs/metrics.md has their labels and meaning):

- counters: ``streamrec_exporter_exports_total{outcome}`` (``published`` / ``failed``),
  ``streamrec_exporter_gate_decisions_total{decision}`` (``promoted`` / ``rejected`` / ``held`` /
  ``superseded``);
- a histogram: ``streamrec_exporter_export_to_decision_seconds`` (publication to decision, for
  the versions decided on the stream);
- gauges of the last decision: ``streamrec_exporter_gate_last_decision_info{version, decision}``,
  ``streamrec_exporter_gate_last_decision_timestamp_seconds``; of the last *evaluated* one:
  ``streamrec_exporter_gate_recall{version, model}`` (``candidate`` / ``serving``),
  ``streamrec_exporter_gate_difference_bound{version, bound}`` (``lower`` / ``upper``),
  ``streamrec_exporter_gate_events{version}``;
- ``streamrec_exporter_current_info{version, pinned}`` (the registry's CURRENT, read at scrape
  time), ``streamrec_exporter_last_export_timestamp_seconds`` and
  ``streamrec_exporter_export_age_seconds`` (at start: from the registry's newest version).

Families of the last decision, CURRENT and the last export have no sample until there is one.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric

log = logging.getLogger(__name__)

PREFIX = "streamrec_exporter_"
#: ``streamrec_exporter_exports_total``'s outcomes.
EXPORT_OUTCOMES = ("published", "failed")
#: ``streamrec_exporter_gate_decisions_total``'s decisions (the gate's final statuses).
DECISIONS = ("promoted", "rejected", "held", "superseded")
#: Seconds from publication to decision: the gate looks after 500, 1,000, 2,000 held-out events,
#: its time cap is ``exporter.gate_max_wait_s`` (60 s by default).
DECISION_BUCKETS = (0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0)


@dataclass(frozen=True)
class LastDecision:
    version: str
    decision: str
    at: float  # Unix seconds
    figures: Mapping[str, Any]


def evaluated_figures(figures: Mapping[str, Any]) -> dict[str, float]:
    """The scalar figures of an evaluated decision that the gauges export (missing or None ones
    left out): ``candidate``, ``serving`` (``current``, else ``baseline``), ``lower`` / ``upper``
    (bounds of the difference) and ``events`` (the held-out events compared).

    >>> evaluated_figures({"candidate": 0.5, "current": None, "baseline": 0.25, "lower_bound": -0.1,
    ...                    "upper_bound": 0.3, "evaluated": 7})
    {'candidate': 0.5, 'serving': 0.25, 'lower': -0.1, 'upper': 0.3, 'events': 7.0}
    >>> evaluated_figures({"candidate": None, "current": None, "evaluated": 0})  # forced, held at export
    {}
    """
    if figures.get("candidate") is None:  # nothing was evaluated (forced, refused, held at export)
        return {}
    serving = figures.get("current")
    if serving is None:
        serving = figures.get("baseline")
    events = figures.get("n", figures.get("evaluated"))
    out = {"candidate": figures["candidate"], "serving": serving, "lower": figures.get("lower_bound"),
           "upper": figures.get("upper_bound"), "events": events}
    return {k: float(v) for k, v in out.items() if v is not None}


class ExporterMetrics:
    """The exporter's metrics on a :class:`CollectorRegistry` of their own (:attr:`registry`).

    ``current``: returns ``(CURRENT's version or None, pinned)``, read at every scrape (the
    exporter passes its registry's); ``clock`` / ``monotonic`` are injectable for tests."""

    def __init__(self, current: Callable[[], tuple[str | None, bool]] | None = None,
                 clock: Callable[[], float] = time.time, monotonic: Callable[[], float] = time.monotonic):
        self.registry = CollectorRegistry(auto_describe=True)
        self.exports = Counter(f"{PREFIX}exports", "exports, by outcome: published (a registry version) "
                               "or failed", ["outcome"], registry=self.registry)
        self.decisions = Counter(f"{PREFIX}gate_decisions", "the quality gate's decisions of this "
                                 "exporter's versions, by decision", ["decision"], registry=self.registry)
        self.export_to_decision = Histogram(
            f"{PREFIX}export_to_decision_seconds", "seconds from a version's publication to the gate's "
            "decision, for versions decided on the stream", registry=self.registry, buckets=DECISION_BUCKETS)
        for outcome in EXPORT_OUTCOMES:  # every series exists from the start, at 0
            self.exports.labels(outcome)
        for decision in DECISIONS:
            self.decisions.labels(decision)
        self._current = current
        self._clock, self._monotonic = clock, monotonic
        self._lock = threading.Lock()  # the scrape thread reads what the exporter's thread writes
        self._published_at: dict[str, float] = {}  # version -> monotonic time, until decided
        self.last_export: float | None = None       # Unix seconds
        self.last_decision: LastDecision | None = None
        self.last_evaluated: LastDecision | None = None
        self.registry.register(_StateCollector(self))

    # ------------------------------------------------------------------ fed by the exporter
    def published(self, version: str, at: float | None = None) -> None:
        """``version`` was published (``at``: Unix seconds, now by default)."""
        with self._lock:
            self.exports.labels("published").inc()
            self.last_export = self._clock() if at is None else at
            self._published_at[version] = self._monotonic()

    def failed(self) -> None:
        """An export raised (nothing was published, or the gate could not take it)."""
        self.exports.labels("failed").inc()

    def seen_export(self, at: float) -> None:
        """At start: the registry's newest version was published at ``at`` (Unix seconds), by an
        earlier exporter; the export age counts from it until this one publishes."""
        with self._lock:
            if self.last_export is None or at > self.last_export:
                self.last_export = at

    def decided(self, version: str, decision: str, figures: Mapping[str, Any] | None = None,
                at_export: bool = False) -> None:
        """The gate decided ``version``: ``decision`` is its status (``pending`` is no decision and
        is ignored; so is any status outside :data:`DECISIONS`). A version :meth:`published` and
        decided on the stream is observed in the histogram; ``at_export``: it was settled at its
        export (forced, refused, held by a pin), with no wait to observe."""
        if decision not in DECISIONS:
            return
        figures = dict(figures or {})
        with self._lock:
            self.decisions.labels(decision).inc()
            started = self._published_at.pop(version, None)
            if at_export:
                started = None
            now = self._clock()
            self.last_decision = LastDecision(version, decision, now, figures)
            if evaluated_figures(figures):
                self.last_evaluated = self.last_decision
        if started is not None:
            self.export_to_decision.observe(max(0.0, self._monotonic() - started))


class _StateCollector:
    """The gauges read at scrape time."""

    def __init__(self, metrics: ExporterMetrics) -> None:
        self.metrics = metrics

    def describe(self) -> Iterator[Metric]:  # the names, without reading anything
        yield from self._families()

    def _families(self) -> list[GaugeMetricFamily]:
        return [
            GaugeMetricFamily(f"{PREFIX}gate_last_decision_info", "1: the gate's last decision of this "
                              "exporter's versions", labels=["version", "decision"]),
            GaugeMetricFamily(f"{PREFIX}gate_last_decision_timestamp_seconds", "when the gate made its "
                              "last decision (Unix seconds)"),
            GaugeMetricFamily(f"{PREFIX}gate_recall", "the last evaluated decision's recall@k: the "
                              "candidate's and the serving model's (CURRENT, or the popularity baseline)",
                              labels=["version", "model"]),
            GaugeMetricFamily(f"{PREFIX}gate_difference_bound", "the last evaluated decision's "
                              "confidence bounds of candidate - serving recall", labels=["version", "bound"]),
            GaugeMetricFamily(f"{PREFIX}gate_events", "the held-out events the last evaluated decision "
                              "compared the models on", labels=["version"]),
            GaugeMetricFamily(f"{PREFIX}current_info", "1: the registry's CURRENT version, and whether a "
                              "rollback pins it", labels=["version", "pinned"]),
            GaugeMetricFamily(f"{PREFIX}last_export_timestamp_seconds", "when the newest version was "
                              "published (Unix seconds)"),
            GaugeMetricFamily(f"{PREFIX}export_age_seconds", "seconds since the newest version was published"),
        ]

    def collect(self) -> Iterator[Metric]:
        m = self.metrics
        (info, decided_at, recall, bound, events, current, exported_at, age) = self._families()
        with m._lock:
            last, evaluated, last_export = m.last_decision, m.last_evaluated, m.last_export
        if last is not None:
            info.add_metric([last.version, last.decision], 1)
            decided_at.add_metric([], last.at)
        if evaluated is not None:
            fig = evaluated_figures(evaluated.figures)
            for model in ("candidate", "serving"):
                if model in fig:
                    recall.add_metric([evaluated.version, model], fig[model])
            for side in ("lower", "upper"):
                if side in fig:
                    bound.add_metric([evaluated.version, side], fig[side])
            if "events" in fig:
                events.add_metric([evaluated.version], fig["events"])
        if m._current is not None:
            try:
                version, pinned = m._current()
            except Exception as exc:  # noqa: BLE001 - a scrape must not fail over the registry
                log.warning("exporter metrics: cannot read CURRENT (%s)", exc)
            else:
                if version is not None:
                    current.add_metric([version, "true" if pinned else "false"], 1)
        if last_export is not None:
            exported_at.add_metric([], last_export)
            age.add_metric([], max(0.0, m._clock() - last_export))
        yield from (info, decided_at, recall, bound, events, current, exported_at, age)


def series_names(registry: CollectorRegistry) -> set[str]:
    """Every series name ``registry``'s families can expose, by the exposition format's rules
    (a counter ``x``: ``x_total``, ``x_created``; a histogram: ``_bucket``, ``_sum``, ``_count``,
    ``_created``; a gauge: its name), whether or not it has a sample now."""
    suffixes = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count", "_created"),
                "summary": ("", "_sum", "_count", "_created"), "info": ("_info",)}
    names = set()
    for family in registry.collect():
        for suffix in suffixes.get(family.type, ("",)):
            names.add(family.name + suffix)
    return names


class MetricsServer:
    """prometheus_client's HTTP server on a thread; :attr:`url` is the address it answers on."""

    def __init__(self, server, thread: threading.Thread, host: str) -> None:
        self._server, self._thread = server, thread
        self.port = server.server_port
        shown = f"[{host}]" if ":" in host else host
        self.url = f"http://{shown}:{self.port}/metrics"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


def serve_metrics(metrics: ExporterMetrics, host: str, port: int) -> MetricsServer:
    """Serve ``metrics`` on ``host:port`` (0: any free port; :attr:`MetricsServer.url` names it)."""
    server, thread = start_http_server(port, addr=host, registry=metrics.registry)
    return MetricsServer(server, thread, host)
