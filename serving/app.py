"""The HTTP face of :class:`ServingService`: FastAPI routes, JSON errors, Prometheus metrics, and
:func:`serve` (uvicorn on a socket bound first, so port 0 works and the URL printed is the real one).

Every answer is an orjson body. Bad input is a 4xx ``{"error", "reason"}``, never a 500: the
request checks are :mod:`serving.requests`; unknown routes and methods come from Starlette's
``HTTPException``, and the handlers below give them the same shape.

The lookup route is the hot one (docs/serving.md, "Figures"), so :func:`serve` answers its plain
requests (:func:`serving.requests.plain_lookup`: a valid id, no query or ``k=<digits>`` in range)
before FastAPI: in uvicorn's httptools protocol itself (:func:`lookup_protocol`: no ASGI scope,
task or Request object per lookup, one write per response), or, where that protocol is not used,
in a pure-ASGI app in front of FastAPI (:class:`FastLookups`). Both give the bytes the FastAPI
route gives and count the request in the same metrics; anything else, every bad lookup
included, goes to FastAPI as before.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import time
from http import HTTPStatus
from typing import Callable

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.exceptions import HTTPException

from streamrec.core.config import Config
from streamrec.serving.dashboard import add_dashboard_routes
from streamrec.serving.models import NoModelError
from streamrec.serving.requests import RequestError, check_id, parse_k, parse_score_request, plain_lookup
from streamrec.serving.service import ServingService

log = logging.getLogger(__name__)

#: The routes, as metric labels (a fixed set: a label per raw path would grow without bound).
ROUTES = ("/v1/users/{user_id}/recommendations", "/v1/score", "/v1/models", "/healthz", "/readyz", "/metrics",
          "/", "/v1/stats")


_METHODS = frozenset(("GET", "POST", "HEAD", "PUT", "DELETE", "PATCH", "OPTIONS"))


def route_of(path: str) -> str:
    """
    >>> route_of("/v1/users/u%2F1/recommendations"), route_of("/nope")
    ('/v1/users/{user_id}/recommendations', 'unmatched')
    """
    if path.startswith("/v1/users/") and path.endswith("/recommendations"):
        return ROUTES[0]
    return path if path in ROUTES else "unmatched"


def json_response(doc: dict, status: int = 200) -> Response:
    return Response(orjson.dumps(doc), status_code=status, media_type="application/json")


def error_response(status: int, reason: str) -> Response:
    return json_response({"error": HTTPStatus(status).phrase, "reason": reason}, status)


class _StoreCollector:
    """The service's gauges, read at scrape time."""

    def __init__(self, service: ServingService) -> None:
        self.service = service

    def collect(self):
        s = self.service
        store, reader = s.store, s.materializer
        users = GaugeMetricFamily("streamrec_serving_users", "users in the store", labels=["with"])
        users.add_metric(["list"], store.lists)
        users.add_metric(["vector"], store.vectors)
        yield users
        yield GaugeMetricFamily("streamrec_serving_store_bytes", "bytes of the store's arrays in use",
                                value=store.nbytes())
        yield GaugeMetricFamily("streamrec_serving_lag_records", "records between the store and the "
                                "topics' newest end offsets known", value=reader.lag())
        yield GaugeMetricFamily("streamrec_serving_ready", "1 once caught up and the broker answers",
                                value=float(reader.readiness()[0]))
        records = GaugeMetricFamily("streamrec_serving_records", "records read, by topic and outcome",
                                    labels=["topic", "outcome"])
        for topic in reader.topics:
            records.add_metric([topic, "applied"], reader.applied[topic])
            records.add_metric([topic, "skipped"], reader.skipped[topic])
        yield records
        yield GaugeMetricFamily("streamrec_serving_snapshots", "snapshots written", value=reader.snapshots)
        fresh = reader.freshness
        yield HistogramMetricFamily(
            "streamrec_serving_freshness_seconds", "recommendation records from the learner's emit "
            "(emitted_ts) to answerable by this service", buckets=[(repr(b) if b != float("inf") else "+Inf", n)
                                                                   for b, n in fresh.cumulative()],
            sum_value=fresh.sum_ms / 1000)
        version, loaded = s.models.current()
        model = GaugeMetricFamily("streamrec_serving_model_info", "the model version /v1/score serves",
                                  labels=["version", "provider"])
        if version is not None:
            model.add_metric([version, loaded.scoring.provider], 1)
        yield model


class _Metrics:
    """The request counter and latency histogram, their children cached per label set
    (``.labels()`` costs microseconds a call). A child is made on its first request, as
    ``.labels()`` made it, so /metrics lists the same series."""

    def __init__(self, count: Counter, seconds: Histogram) -> None:
        self.count, self.seconds = count, seconds
        self._counts: dict[tuple[str, str, int], Counter] = {}
        self._seconds: dict[str, Histogram] = {}

    def record(self, route: str, method: str, status: int, elapsed: float) -> None:
        timer = self._seconds.get(route)
        if timer is None:
            timer = self._seconds[route] = self.seconds.labels(route)
        timer.observe(elapsed)
        counter = self._counts.get((route, method, status))
        if counter is None:
            counter = self._counts[(route, method, status)] = self.count.labels(route, method, str(status))
        counter.inc()


class _Timing:
    """Pure ASGI middleware: request counts and latency per route (no per-request task, unlike
    Starlette's BaseHTTPMiddleware)."""

    def __init__(self, app, metrics: _Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started, status = time.perf_counter(), 500

        async def send_status(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            method = scope["method"] if scope["method"] in _METHODS else "other"
            self.metrics.record(route_of(scope["path"]), method, status, time.perf_counter() - started)


class Lookups:
    """The lookup route's plain requests without FastAPI: :meth:`body` is the route's body, or
    None for a request the route itself must answer; :meth:`record` counts one in the metrics as
    the route's middleware would."""

    def __init__(self, service: ServingService, metrics: _Metrics) -> None:
        self.service, self.metrics, self.limits = service, metrics, service.limits

    def body(self, path: str, query: bytes) -> bytes | None:
        found = plain_lookup(path, query, self.limits)
        if found is None:
            return None
        try:
            return orjson.dumps(self.service.recommendations(*found))
        except Exception:  # a bug: FastAPI answers the request again, and logs it with its 500
            return None

    def record(self, elapsed: float) -> None:
        self.metrics.record(ROUTES[0], "GET", 200, elapsed)


#: The headers FastAPI's ``Response`` gives a JSON body, before the body's length.
_JSON_HEADERS = (b"content-type", b"application/json")


class FastLookups:
    """Pure ASGI, in front of the FastAPI app: a plain lookup is answered here (no routing, no
    Request object), everything else (lifespan included) goes to the app."""

    def __init__(self, app, lookups: Lookups) -> None:
        self.app, self.lookups = app, lookups

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["method"] == "GET":
            started = time.perf_counter()
            body = self.lookups.body(scope["path"], scope["query_string"])
            if body is not None:
                await send({"type": "http.response.start", "status": 200,
                            "headers": [(b"content-length", b"%d" % len(body)), _JSON_HEADERS]})
                await send({"type": "http.response.body", "body": body})
                self.lookups.record(time.perf_counter() - started)
                return
        await self.app(scope, receive, send)


def lookup_protocol(lookups: Lookups):
    """uvicorn's httptools protocol, answering plain lookups as their headers complete: the
    status line, uvicorn's default headers (``date``, ``server``), FastAPI's two and the body in
    one write, as uvicorn would write them. The ASGI path (FastLookups, then FastAPI) keeps
    every other request, and a lookup that arrives while an earlier request of the connection is
    still being answered (pipelined), or while the connection's writes are paused. Returns
    ``"auto"`` (uvicorn's own choice) where httptools is not importable."""
    try:
        from urllib.parse import unquote

        import httptools
        from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
    except ImportError:
        return "auto"
    status_200 = STATUS_LINE[200]

    class LookupProtocol(HttpToolsProtocol):
        _answer: tuple[float, bytes, bool] | None = None
        _head: tuple[list | None, bytes] = (None, b"")

        def _idle(self) -> bool:
            """Nothing of this connection in flight, nothing queued, writes not paused."""
            try:
                return ((self.cycle is None or self.cycle.response_complete) and not self.pipeline
                        and not self.expect_100_continue and not self.flow.write_paused)
            except AttributeError:  # another uvicorn's internals: the ASGI path (FastLookups) for all
                return False

        def on_headers_complete(self) -> None:
            parser = self.parser
            if (self.url.startswith(b"/v1/users/") and parser.get_method() == b"GET" and self._idle()
                    and not parser.should_upgrade()):
                started = time.perf_counter()
                try:
                    url = httptools.parse_url(self.url)
                    path = url.path.decode("ascii")
                except (httptools.HttpParserInvalidURLError, UnicodeDecodeError):
                    path = None
                if path is not None:
                    if "%" in path:
                        path = unquote(path)
                    body = lookups.body(path, url.query or b"")
                    if body is not None:
                        keep_alive = parser.get_http_version() != "1.0" and parser.should_keep_alive()
                        self._answer = (started, body, keep_alive)
                        return
            super().on_headers_complete()

        def on_body(self, body: bytes) -> None:
            if self._answer is None:
                super().on_body(body)

        def on_message_complete(self) -> None:
            answer = self._answer
            if answer is None:
                return super().on_message_complete()
            self._answer = None
            started, body, keep_alive = answer
            defaults, head = LookupProtocol._head
            if defaults is not self.server_state.default_headers:  # a new date: once a second
                defaults = self.server_state.default_headers
                head = status_200 + b"".join(b"%s: %s\r\n" % (name.lower(), value) for name, value in defaults)
                LookupProtocol._head = (defaults, head)
            self.transport.write(b"%scontent-length: %d\r\ncontent-type: application/json\r\n%s\r\n%s" % (
                head, len(body), b"" if keep_alive else b"connection: close\r\n", body))
            if not keep_alive:
                self.transport.close()
            lookups.record(time.perf_counter() - started)
            self.on_response_complete()

    return LookupProtocol


def create_app(service: ServingService) -> FastAPI:
    """The FastAPI app: every route, the JSON errors, the metrics. ``app.state.lookups`` answers
    the lookup route's plain requests without it (:func:`serve` puts it in front)."""
    metrics = CollectorRegistry()
    count = Counter("streamrec_serving_requests", "HTTP requests", ["route", "method", "status"], registry=metrics)
    seconds = Histogram("streamrec_serving_request_seconds", "HTTP request latency", ["route"], registry=metrics,
                        buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0))
    metrics.register(_StoreCollector(service))
    limits, max_body = service.limits, service.cfg.serving.max_body_bytes

    @contextlib.asynccontextmanager
    async def lifespan(app):
        service.start()
        try:
            yield
        finally:
            service.stop()

    app = FastAPI(title="streamrec", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    timing = _Metrics(count, seconds)
    app.add_middleware(_Timing, metrics=timing)
    app.state.lookups = Lookups(service, timing)

    @app.exception_handler(RequestError)
    async def bad_request(request, exc: RequestError):
        return error_response(exc.status, exc.reason)

    @app.exception_handler(HTTPException)
    async def http_error(request, exc: HTTPException):
        reason = {404: f"no route {request.url.path[:200]!r}",
                  405: f"{request.method} is not allowed on {request.url.path[:200]!r}"}.get(exc.status_code, str(exc.detail))
        return error_response(exc.status_code, reason)

    @app.exception_handler(RequestValidationError)
    async def invalid(request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        return error_response(400, f"{'.'.join(map(str, first.get('loc', ())))}: {first.get('msg', 'invalid')}")

    @app.exception_handler(Exception)
    async def bug(request, exc: Exception):  # a bug: logged with its traceback, answered in JSON
        log.error("%s %s failed", request.method, request.url.path[:200], exc_info=exc)
        return error_response(500, f"internal error: {type(exc).__name__}")

    @app.exception_handler(NoModelError)
    async def no_model(request, exc: NoModelError):
        return error_response(503, str(exc))

    @app.get("/v1/users/{user_id}/recommendations")
    async def recommendations(request: Request):  # checked by hand: no pydantic on the hot path
        user_id = request.path_params["user_id"]
        params = request.query_params
        unknown = [key for key in params if key != "k"]
        if unknown:
            raise RequestError(f"unknown query parameter {unknown[0][:40]!r} (allowed: k)")
        if len(params.getlist("k")) > 1:
            raise RequestError("k is given more than once")
        k = parse_k(params.get("k"), limits)
        return json_response(service.recommendations(check_id(user_id, "user_id", limits), k))

    @app.post("/v1/score")
    async def score(request: Request):
        declared = request.headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > max_body):
            raise RequestError(f"the body must be at most {max_body} bytes", 413)
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > max_body:
                raise RequestError(f"the body must be at most {max_body} bytes", 413)
        return json_response(service.score(parse_score_request(bytes(body), limits)))

    @app.get("/v1/models")
    def models():  # reads meta.json files: in the thread pool, off the event loop
        return json_response(service.models.describe())

    @app.get("/healthz")
    async def healthz():
        return json_response({"status": "alive"})

    @app.get("/readyz")
    async def readyz():
        ready, reason = service.materializer.readiness()
        return json_response({"ready": ready, "reason": reason}, 200 if ready else 503)

    @app.get("/metrics")
    async def prometheus():
        return Response(generate_latest(metrics), media_type=CONTENT_TYPE_LATEST)

    add_dashboard_routes(app, service)  # GET / and /v1/stats (serving/dashboard.py)
    return app


def serve(cfg: Config, host: str | None = None, port: int | None = None,
          announce: Callable[[str], None] = print) -> None:
    """Bind ``host:port`` (the config's unless given; port 0 = any free one), announce the URL,
    and serve until SIGINT / SIGTERM; the store is snapshotted on the way out."""
    import uvicorn

    host = host or cfg.serving.host
    port = cfg.serving.port if port is None else port
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP named: asyncio sets TCP_NODELAY only on sockets that say so, and without it a
    # keep-alive response's body waits for the client's delayed ACK (Nagle)
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind((host, port))
    sock.listen(2048)  # connections queue from now on: the URL announced below can be used at once
    bound = sock.getsockname()[1]
    service = ServingService(cfg)
    app = create_app(service)
    lookups = app.state.lookups
    server = uvicorn.Server(uvicorn.Config(FastLookups(app, lookups), http=lookup_protocol(lookups),
                                           log_level="warning", access_log=False, lifespan="on",
                                           timeout_graceful_shutdown=10))
    shown = f"[{host}]" if family == socket.AF_INET6 else host
    announce(f"serving on http://{shown}:{bound}")
    server.run(sockets=[sock])
