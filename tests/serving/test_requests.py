"""Request checks, without HTTP."""

from __future__ import annotations

import asyncio
import re

import pytest

from streamrec.core.config import load_config
from streamrec.serving.requests import Limits, RequestError, ScoreRequest, parse_k, parse_score_request, plain_lookup

LIMITS = Limits.of(load_config(config_file=None, env={"STREAMREC_INGEST__MAX_ID_CHARS": "8",
                                                       "STREAMREC_SERVING__MAX_REQUEST_ITEMS": "3"}))


@pytest.mark.parametrize("text", ["0", "-1", "101", "1.5", "ten", "", " 5", "٣"])
def test_bad_k(text):
    with pytest.raises(RequestError) as err:
        parse_k(text, LIMITS)
    assert err.value.status == 400 and "k must be an integer from 1 to 100" in err.value.reason


def test_good_score_requests():
    assert parse_score_request(b'{"user_id": "u1"}', LIMITS) == ScoreRequest("u1", 10, frozenset(), None)
    req = parse_score_request(b'{"user_id": "u1", "k": 100, "exclude": null, "candidates": ["b", "a", "b"]}', LIMITS)
    assert req.k == 100 and req.candidates == ("b", "a")


@pytest.mark.parametrize("body, why", [
    (b"", "not JSON"),
    (b'{"user_id": "u1"', "not JSON"),
    (b'{"user_id": "u1", "k": NaN}', "not JSON"),
    (b"\x00", "not JSON"),
    (b'"u1"', "must be a JSON object"),
    (b"{}", "user_id is missing"),
    (b'{"user_id": ""}', "user_id is empty"),
    (b'{"user_id": "123456789"}', "longer than 8"),
    (b'{"user_id": "u\\u0000"}', "control character"),
    (b'{"user_id": ["u1"]}', "user_id must be a string"),
    (b'{"user_id": "u1", "k": "5"}', "k must be an integer"),
    (b'{"user_id": "u1", "k": 5.0}', "k must be an integer"),
    (b'{"user_id": "u1", "k": false}', "k must be an integer"),
    (b'{"user_id": "u1", "exclude": {"a": 1}}', "exclude must be a list"),
    (b'{"user_id": "u1", "exclude": ["a", 2]}', "exclude[1] must be a string"),
    (b'{"user_id": "u1", "exclude": ["a", "b", "c", "d"]}', "at most 3"),
    (b'{"user_id": "u1", "candidates": []}', "candidates is empty"),
    (b'{"user_id": "u1", "user": "u2"}', "unknown field 'user'"),
])
def test_bad_score_requests(body, why):
    with pytest.raises(RequestError) as err:
        parse_score_request(body, LIMITS)
    assert err.value.status == 400 and why in err.value.reason, err.value.reason


# -- the lookup route's fast path (serving/app.py) ------------------------------------------------

LOOKUP = "/v1/users/{}/recommendations"


@pytest.mark.parametrize("path, query, expected", [
    (LOOKUP.format("u1"), b"", ("u1", 10)),
    (LOOKUP.format("u1"), b"k=7", ("u1", 7)),
    (LOOKUP.format("u1"), b"k=0100", ("u1", 100)),
    (LOOKUP.format("a?b c"), b"k=1", ("a?b c", 1)),  # ids arrive percent-decoded
    (LOOKUP.format("12345678"), b"", ("12345678", 10)),
])
def test_plain_lookups(path, query, expected):
    assert plain_lookup(path, query, LIMITS) == expected


@pytest.mark.parametrize("path, query", [
    (LOOKUP.format("u1"), b"k=0"), (LOOKUP.format("u1"), b"k=101"), (LOOKUP.format("u1"), b"k="),
    (LOOKUP.format("u1"), b"k=ten"), (LOOKUP.format("u1"), b"k=-1"), (LOOKUP.format("u1"), b"k=5.0"),
    (LOOKUP.format("u1"), b"k=1&k=2"), (LOOKUP.format("u1"), b"k=5&"), (LOOKUP.format("u1"), b"n=3"),
    (LOOKUP.format("u1"), b"k=%35"), (LOOKUP.format("u1"), b"k=\xd9\xa3"), (LOOKUP.format("u1"), b"k=" + b"9" * 40),
    (LOOKUP.format("123456789"), b""), (LOOKUP.format("u\x00"), b""), (LOOKUP.format("u\x85"), b""),
    (LOOKUP.format(""), b""), (LOOKUP.format("a/b"), b""), ("/v1/users/recommendations", b""),
    (LOOKUP.format("u1") + "/", b""), ("/v1/score", b""), ("/v1/users/u1", b""),
])
def test_everything_else_is_left_to_the_route(path, query):
    """None: FastAPI answers these (with their 4xx / 404 / a 200 for an unusual but valid query)."""
    assert plain_lookup(path, query, LIMITS) is None


REQUESTS = [b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % target for target in (
    b"/v1/users/u1/recommendations?k=1", b"/v1/users/u1/recommendations", b"/v1/users/u%31/recommendations?k=2",
    b"/v1/users/nobody/recommendations?k=3", b"/v1/users/u1/recommendations?k=0", b"/v1/users/u1/recommendations?k=2&",
    b"/v1/users/u1/recommendations?k=1&k=2", b"/v1/users/u1/recommendations?n=1", b"/v1/users/a%2Fb/recommendations",
    b"/v1/users/u%00/recommendations", b"/v1/users/123456789/recommendations", b"/v1/users/u1/recommendations/",
    b"/v1/users//recommendations", b"/v1/users/\xc3\xa9/recommendations", b"/healthz", b"/nope",
)] + [
    b"HEAD /v1/users/u1/recommendations HTTP/1.1\r\nHost: x\r\n\r\n",
    b"POST /v1/users/u1/recommendations HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
    b"GET /v1/users/u1/recommendations?k=2 HTTP/1.0\r\n\r\n",
    b"GET /v1/users/u1/recommendations?k=2 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    b"GET /v1/users/u1/recommendations?k=2 HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc",
    # pipelined: a lookup behind a request still being answered waits for it, in order
    b"GET /v1/users/u1/recommendations HTTP/1.1\r\nHost: x\r\n\r\nGET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    b"GET /v1/users/u2/recommendations?k=1 HTTP/1.1\r\nHost: x\r\n\r\nGET /nope HTTP/1.1\r\nHost: x\r\n\r\n"
    b"GET /v1/users/u1/recommendations?k=2 HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n",
]


class _Transport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.data, self.closed = b"", False

    def get_extra_info(self, name, default=None):
        return {"sockname": ("127.0.0.1", 8000), "peername": ("127.0.0.1", 50000)}.get(name, default)

    def write(self, data) -> None:
        self.data += bytes(data)

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


async def _exchange(protocol_class, app, request: bytes) -> bytes:
    """``request`` through uvicorn's protocol ``protocol_class`` on a fake connection: the bytes
    written back (the date header fixed, age_ms zeroed), and whether the connection was closed."""
    import uvicorn
    from uvicorn.server import ServerState

    config = uvicorn.Config(app, http=protocol_class, lifespan="off", log_level="warning")
    config.load()
    state = ServerState()
    state.default_headers = [(b"date", b"Mon, 07 Dec 2026 00:00:00 GMT")] + config.encoded_headers
    protocol = config.http_protocol_class(config=config, server_state=state, app_state={},
                                          _loop=asyncio.get_running_loop())
    transport = _Transport()
    protocol.connection_made(transport)
    protocol.data_received(request)
    for _ in range(200):  # pipelined requests start as the ones before them finish
        await asyncio.sleep(0)
        if state.tasks:
            await asyncio.gather(*state.tasks)
    protocol._unset_keepalive_if_required()
    data = re.sub(rb'"age_ms":\d+', b'"age_ms":0', transport.data)
    # the latency histogram's values and the series' creation times differ from run to run
    data = re.sub(rb"(request_seconds_(?:bucket|sum)|_created)(\{.*\}) \S+", rb"\1\2 T", data)
    data = re.sub(rb"content-length: \d+(\r\ncontent-type: text/plain)", rb"content-length: N\1", data)
    return data + (b"<closed>" if transport.closed else b"")


def test_the_fast_paths_answer_as_the_route_byte_for_byte(tmp_path):
    """uvicorn's httptools protocol with FastAPI alone (the route), against serve()'s stack
    (lookup_protocol + FastLookups + FastAPI): the same bytes for every request, lookups good and
    bad, and the same request counts in /metrics."""
    pytest.importorskip("httptools")
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    from streamrec.serving.app import FastLookups, create_app, lookup_protocol
    from streamrec.serving.service import ServingService
    from tests.support import free_port

    cfg = load_config(config_file=None, env={"STREAMREC_INGEST__MAX_ID_CHARS": "8"}, overrides={
        "paths.state_dir": str(tmp_path), "kafka.bootstrap_servers": f"127.0.0.1:{free_port()}"})
    service = ServingService(cfg)  # not started: no reader, no model (the popularity list of the store)
    for user, items in (("u1", [("a", 0.5), ("b", None), ("c", 98765.432101)]), ("u2", [("c", 1e-6)])):
        service.store.apply_recommendation({
            "user_id": user, "items": [{"item_id": i, "score": s} for i, s in items], "model_version": "live",
            "strategy": "model", "cold_start": False, "user_events": 3, "event_ts": 1, "emitted_ts": 2})

    async def both(request: bytes) -> tuple[bytes, bytes]:
        return (await _exchange(HttpToolsProtocol, route_app, request),
                await _exchange(lookup_protocol(fast_app.state.lookups),
                                FastLookups(fast_app, fast_app.state.lookups), request))

    route_app, fast_app = create_app(service), create_app(service)
    for request in REQUESTS:
        route, fast = asyncio.run(both(request))
        assert route.startswith(b"HTTP/1.1 ") and fast == route, request
    lookups = 'streamrec_serving_requests_total{method="GET",route="/v1/users/{user_id}/recommendations",status='
    assert (lookups + '"200"} 11.0').encode() in route and (lookups + '"400"} 5.0').encode() in route
