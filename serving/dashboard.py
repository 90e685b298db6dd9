"""The dashboard of `streamrec serve`: ``GET /`` (serving/static/dashboard.html, SVG charts drawn by
its own script, no library, no network) and ``GET /v1/stats`` (the JSON it polls).

:func:`add_dashboard_routes` wires it into the app: a :class:`~streamrec.serving.stats.ServeStats`
fed by the reader (``Materializer.on_records``: every batch of recommendation records applied),
and a thread of its own (``serving-dashboard``) that reads ``events.clean`` read_committed (the
items of the events, for the prequential recall), closes a statistics bucket every second, and
samples the serve's lag, the version it scores with and, every ``PIPELINE_LAG_EVERY_S``, the
pipeline's consumer group lag on ``events.raw``. The model versions and gate decisions come
from the registry's log (re-read only when the file changed).

The clean events are read from the beginning when the service starts without a snapshot (it
rereads the recommendations from the beginning too), else from their end: after a resume the
recall covers the events that come after it.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from datetime import datetime
from importlib.resources import files
from pathlib import Path
from typing import Any

import orjson
from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient
from fastapi import FastAPI
from fastapi.responses import Response

from streamrec.core.config import Config
from streamrec.runtime.kafka_io import _base as kafka_base, consumer
from streamrec.serving.materializer import TopicUnavailable, _client_errors, end_offsets
from streamrec.serving.stats import ServeStats, plotted_version

log = logging.getLogger(__name__)

#: The pipeline's consumer groups on events.raw are named after its job (flink_jobs/features.py
#: PIPELINE_JOB_NAME) and run id: ``streamrec-pipeline-<run id>``.
PIPELINE_GROUP_PREFIX = "streamrec-pipeline-"
PIPELINE_LAG_EVERY_S = 5.0
#: Registry log actions shown on the versions chart.
DECISIONS = ("publish", "promote", "reject", "hold", "supersede", "rollback", "pin", "unpin", "refuse")


def dashboard_html() -> bytes:
    return files("streamrec.serving").joinpath("static/dashboard.html").read_bytes()


def _epoch_ms(iso: str | None) -> int | None:
    try:
        return int(datetime.fromisoformat(iso).timestamp() * 1000) if iso else None
    except ValueError:
        return None


def decision_of(entry: dict[str, Any]) -> dict[str, Any]:
    """A registry log entry as the versions chart shows it.

    >>> d = decision_of({"ts": "2026-12-07T01:02:07.552+00:00", "action": "promote", "version": "v000002",
    ...                  "figures": {"candidate": 0.062, "current": 0.054, "evaluated": 1000}})
    >>> d["t"], d["number"], d["label"]
    (1796605327552, 2, 'v000002 promote: recall 0.062 vs 0.054 on 1000 events')
    >>> decision_of({"action": "promote", "version": "v000001", "reason": "forced",
    ...              "figures": {"candidate": None}})["label"]
    'v000001 promote: forced'
    """
    figures = entry.get("figures") or {}
    label = f"{entry.get('version')} {entry.get('action')}"
    candidate = figures.get("candidate") if isinstance(figures, dict) else None
    if isinstance(candidate, (int, float)):
        against = figures.get("current") if figures.get("current") is not None else figures.get("baseline")
        label += f": recall {candidate:.3f}" + (f" vs {against:.3f}" if isinstance(against, (int, float)) else "") \
            + f" on {figures.get('evaluated', 0)} events"
    elif entry.get("reason"):
        label += f": {str(entry['reason'])[:80]}"
    return {"t": _epoch_ms(entry.get("ts")), "action": entry.get("action"), "version": entry.get("version"),
            "number": plotted_version(entry.get("version")), "label": label}


class Dashboard:
    def __init__(self, cfg: Config, service) -> None:
        self.cfg, self.service = cfg, service
        self.stats = ServeStats(k=cfg.scoring.top_k)
        self.clean = cfg.kafka.topics.clean
        # without a snapshot the reader starts at the beginning: so do the clean events
        self.from_beginning = not any(service.store.offsets.values())
        self.pipeline_lag: int | None = None
        self._pipeline_lag_at = float("-inf")
        self._admin = None
        self._log_seen: tuple | None = None
        self._decisions: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        service.materializer.on_records = self.stats.offer

    # -- lifecycle ---------------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="serving-dashboard", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.cfg.serving.broker_timeout_s + 5)

    # -- the thread --------------------------------------------------------------------------------
    def _loop(self) -> None:
        cons = consumer(self.cfg, group="streamrec-serve-dashboard", read_committed=True, **_client_errors())
        try:
            assigned = False
            next_tick = time.time() + 1.0
            while not self._stop.is_set():
                if not assigned:
                    assigned = self._assign(cons)
                if assigned:
                    try:
                        messages = cons.consume(1000, timeout=0.1)
                    except KafkaException as exc:
                        log.warning("kafka: %s", exc)
                        messages = []
                    if messages:
                        self._events(messages)
                else:
                    self._stop.wait(0.2)
                self.stats.drain()
                if time.time() >= next_tick:
                    self._tick(cons)
                    next_tick += 1.0
                    if next_tick < time.time():  # a stall (a slow broker): no burst of catch-up ticks
                        next_tick = time.time() + 1.0
        except Exception:  # noqa: BLE001 - the dashboard never ends the service
            log.exception("the dashboard's thread stopped")
        finally:
            cons.close()

    def _assign(self, cons) -> bool:
        try:
            parts = end_offsets(cons, self.clean, self.cfg.serving.broker_timeout_s)
        except (KafkaException, TopicUnavailable):
            return False
        start = OFFSET_BEGINNING if self.from_beginning else OFFSET_END
        cons.assign([TopicPartition(self.clean, p, start) for p in parts])
        return True

    def _events(self, messages) -> None:
        triples = []
        for msg in messages:
            value = msg.value() if msg.error() is None else None
            if value is None:
                continue
            try:
                doc = orjson.loads(value)
                triples.append((doc["event_id"], doc["user_id"], doc["item_id"]))
            except (ValueError, KeyError, TypeError):
                continue
        self.stats.events(triples)

    def _tick(self, cons) -> None:
        reader = self.service.materializer
        lag = reader.lag() if reader.ends else None
        if time.monotonic() - self._pipeline_lag_at >= PIPELINE_LAG_EVERY_S:
            self._pipeline_lag_at = time.monotonic()
            self.pipeline_lag = self._pipeline_group_lag(cons)
        version, _ = self.service.models.current()
        self.stats.tick(lag_serve=lag, lag_pipeline=self.pipeline_lag, serving_version=version)

    def _pipeline_group_lag(self, cons) -> int | None:
        """events.raw's end offsets minus the offsets committed by the most advanced pipeline
        consumer group (the lineage running now, or last); None if there is none or no answer."""
        try:
            timeout = self.cfg.serving.broker_timeout_s
            raw = self.cfg.kafka.topics.raw
            if self._admin is None:
                self._admin = AdminClient({**kafka_base(self.cfg), **_client_errors()})
            listed = self._admin.list_consumer_groups(request_timeout=timeout).result(timeout)
            groups = [g.group_id for g in listed.valid if g.group_id.startswith(PIPELINE_GROUP_PREFIX)]
            if not groups:
                return None
            ends = end_offsets(cons, raw, timeout)
            best: tuple[int, int] | None = None
            for group in groups:
                committed = _group_offsets(self._admin, group, raw, ends, timeout)
                if committed is None:
                    continue
                done = sum(committed.values())
                if best is None or done > best[0]:
                    best = (done, sum(max(0, end - committed.get(p, 0)) for p, end in ends.items()))
            return None if best is None else best[1]
        except Exception as exc:  # noqa: BLE001 - a lag we cannot read is shown as unknown
            log.debug("pipeline lag unknown: %s", exc)
            return None

    # -- what /v1/stats answers ----------------------------------------------------------------------
    def decisions(self) -> list[dict[str, Any]]:
        registry = self.service.models.registry
        path = Path(registry.root) / "registry.log"
        try:
            st = path.stat()
            seen = (st.st_size, st.st_mtime_ns)
        except OSError:
            return []
        if seen != self._log_seen:
            try:
                entries = [e for e in registry.read_log() if e.get("action") in DECISIONS]
            except OSError as exc:  # shown as no decisions; the next poll tries again
                log.warning("cannot read the registry log: %s", exc)
                return self._decisions
            self._decisions = [decision_of(e) for e in entries]
            self._log_seen = seen
        return self._decisions

    def to_json(self) -> dict[str, Any]:
        out = self.stats.to_json()
        since = (out["t"][0] if out["t"] else int(time.time() * 1000)) - 60_000
        decisions = self.decisions()
        registry = self.service.models.registry
        version, _ = self.service.models.current()
        current = registry.current()
        out["models"] = {"current": current, "current_number": plotted_version(current), "serving": version,
                         "pin": (registry.pinned() or {}).get("version"),
                         "decisions": [d for d in decisions if d["t"] is None or d["t"] >= since][-200:],
                         "versions": len(registry.list_versions())}
        out["pipeline_group_prefix"] = PIPELINE_GROUP_PREFIX
        return out


def _group_offsets(admin, group: str, topic: str, ends: dict[int, int], timeout: float) -> dict[int, int] | None:
    from confluent_kafka import ConsumerGroupTopicPartitions

    request = ConsumerGroupTopicPartitions(group, [TopicPartition(topic, p) for p in ends])
    result = admin.list_consumer_group_offsets([request], request_timeout=timeout)[group].result(timeout)
    offsets = {tp.partition: tp.offset for tp in result.topic_partitions if tp.offset >= 0 and not tp.error}
    return offsets or None


def add_dashboard_routes(app: FastAPI, service) -> Dashboard:
    """``GET /`` and ``GET /v1/stats`` on ``app``; the dashboard's thread runs within the app's
    lifespan (after the service started, stopped before it stops)."""
    dashboard = Dashboard(service.cfg, service)
    page = dashboard_html()
    inner = app.router.lifespan_context

    @contextlib.asynccontextmanager
    async def lifespan(app_):
        async with inner(app_) as state:
            dashboard.start()
            try:
                yield state
            finally:
                dashboard.stop()

    app.router.lifespan_context = lifespan

    @app.get("/")
    async def page_route():
        return Response(page, media_type="text/html; charset=utf-8",
                        headers={"cache-control": "no-cache"})

    @app.get("/v1/stats")
    def stats_route():  # reads the registry's files: in the thread pool, off the event loop
        return Response(orjson.dumps(dashboard.to_json()), media_type="application/json")

    return dashboard
