"""`streamrec serve` as a real process over what a real bounded pipeline run wrote: every user's
answer is the newest committed non-``none`` record of the topic, scoring follows CURRENT and a
rollback's pin, bad input is a 4xx JSON answer, a restart resumes from the snapshot, and the
dashboard draws the run (tests/serving/dashboard_check.py)."""

from __future__ import annotations

import http.client
import json
import re
import signal
import time
import urllib.parse

import pytest

from streamrec import replay
from streamrec.core.records import RECOMMENDATION
from streamrec.flink_jobs import pipeline
from streamrec.model.registry import Registry
from streamrec.runtime.kafka_io import ensure_topics, read_topic
from tests.serving.dashboard_check import check_dashboard
from tests.support import StreamrecProcess, export_forced, planted_stream

pytestmark = pytest.mark.slow

#: the fields of a recommendation record the service gives back as they are
SERVED_FIELDS = ("user_id", "items", "model_version", "strategy", "cold_start", "user_events", "event_ts",
                 "emitted_ts")


class Client:
    def __init__(self, url: str) -> None:
        parts = urllib.parse.urlsplit(url)
        self.conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)

    def call(self, method: str, path: str, body: bytes | None = None) -> tuple[int, dict]:
        status, data = self.raw(method, path, body)
        return status, json.loads(data) if data else {}

    def raw(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        self.conn.request(method, path, body=body)
        response = self.conn.getresponse()
        return response.status, response.read()

    def get_list(self, user: str, k: int) -> tuple[int, dict]:
        return self.call("GET", f"/v1/users/{urllib.parse.quote(user, safe='')}/recommendations?k={k}")

    def score(self, **body) -> tuple[int, dict]:
        return self.call("POST", "/v1/score", json.dumps(body).encode())


def start_service(cfg, log_path, timeout_s: float = 60.0) -> tuple[StreamrecProcess, str, Client]:
    """`streamrec serve --port 0`, once /readyz says it caught up."""
    proc = StreamrecProcess(cfg, log_path, "serve", "--port", "0")
    try:
        deadline = time.monotonic() + timeout_s
        while "serving on http://" not in proc.output:
            assert proc.proc.poll() is None and time.monotonic() < deadline, proc.output[-3000:]
            time.sleep(0.2)
        url = proc.output.split("serving on ", 1)[1].split()[0]
        client = Client(url)
        while True:
            status, body = client.call("GET", "/readyz")
            if status == 200:
                return proc, url, client
            assert status == 503 and body["reason"], body
            assert time.monotonic() < deadline, f"not ready in {timeout_s} s: {body}\n{proc.output[-3000:]}"
            time.sleep(0.3)
    except BaseException:
        proc.proc.kill()
        proc.wait(10)
        raise


def stop_service(proc: StreamrecProcess) -> None:
    proc.proc.send_signal(signal.SIGTERM)
    # uvicorn shuts down gracefully (the lifespan writes the snapshot), then re-raises the signal
    assert proc.wait(30) in (0, -signal.SIGTERM), proc.output[-3000:]
    assert "Traceback" not in proc.output, proc.output[-3000:]


def newest_lists(cfg) -> tuple[dict[str, dict], set[str]]:
    """Per user, the newest record with items (offset order: a user's records share a partition),
    and every user the topic names."""
    newest, users = {}, set()
    for r in sorted(read_topic(cfg, cfg.kafka.topics.recommendations), key=lambda r: (r.partition, r.offset)):
        rec = RECOMMENDATION.decode(r.value)
        users.add(rec["user_id"])
        if rec["strategy"] != "none" and rec["items"]:
            newest[rec["user_id"]] = rec
    return newest, users


def test_serve_answers_what_the_stream_committed(cfg, tmp_path):
    cfg = cfg.model_copy(update={
        "paths": cfg.paths.model_copy(update={"registry_dir": tmp_path / "registry"}),
        "serving": cfg.serving.model_copy(update={"snapshot_file": tmp_path / "serving.npz",
                                                  "probe_interval_s": 1.0}),
        "scoring": cfg.scoring.model_copy(update={"swap_check_interval_s": 0.5}),
        "learner": cfg.learner.model_copy(update={"changelog_interval_ms": 200}),
    })
    ensure_topics(cfg)
    replay.produce(cfg, cfg.kafka.topics.raw, replay.encode_events(planted_stream(600)), progress=False)
    pipeline.run(cfg, bounded=True, quiet=True, with_features=False)
    first = export_forced(cfg).version
    registry = Registry(cfg.paths_resolved.registry_dir)
    model_bytes, meta = registry.load(first)
    second = registry.publish(model_bytes, {k: meta[k] for k in ("item_ids", "dim")},
                              {"items.npz": registry.load_attachment(first, "items.npz")})
    registry.promote(second, actor="test", reason="a second version to roll back from")
    newest, users = newest_lists(cfg)
    assert len(newest) > 50

    proc, url, client = start_service(cfg, tmp_path / "serve.log")
    try:
        # the dashboard (page and /v1/stats) on this run, in headless Chromium
        check_dashboard(client, url, 600, second, tmp_path)
        client = Client(url)  # a new connection: uvicorn closed the idle one (keep-alive timeout)
        # every user: exactly the newest committed record with items; one without any: popularity
        k = cfg.scoring.top_k
        for user in sorted(users):
            status, body = client.get_list(user, k)
            assert status == 200, body
            if user in newest:
                assert {f: body[f] for f in SERVED_FIELDS} == {f: newest[user][f] for f in SERVED_FIELDS}, user
                assert body["source"] == "stream" and body["age_ms"] >= 0
            else:
                assert body["source"] == "popularity", body
        status, body = client.get_list("nobody-has-this-id", 5)
        assert status == 200 and body["source"] == "popularity" and len(body["items"]) == 5, body
        assert body["model_version"] == second and "items.npz" in body["popularity_basis"], body

        # scoring with CURRENT, the user's own vector, without what the caller excludes
        user = sorted(newest)[0]
        status, body = client.score(user_id=user, k=5)
        assert status == 200 and body["model_version"] == second and not body["cold_start"], body
        top = [i["item_id"] for i in body["items"]]
        assert len(top) == 5
        status, body = client.score(user_id=user, k=5, exclude=top[:3])
        assert status == 200 and len(body["items"]) == 5, body
        assert not {i["item_id"] for i in body["items"]} & set(top[:3]), body
        status, body = client.score(user_id=user, k=2, candidates=[top[4], top[3], "no-such-item"])
        assert [i["item_id"] for i in body["items"]] == [top[3], top[4]], body
        assert body["unknown_candidates"] == ["no-such-item"]

        # a rollback pins the previous version: scoring follows within a few seconds
        registry.rollback(first, actor="test", reason="serve follows the pin")
        deadline = time.monotonic() + 10
        while client.score(user_id=user, k=5)[1]["model_version"] != first:
            assert time.monotonic() < deadline, "the service still scores with the version rolled back from"
            time.sleep(0.2)
        status, models = client.call("GET", "/v1/models")
        assert models["current"] == models["serving"] == first and models["pin"]["version"] == first, models

        # bad input: a 4xx with a JSON reason, never a 500
        too_long = "u" * (cfg.ingest.max_id_chars + 1)
        bad = [("GET", "/v1/users/u1/recommendations?k=0", None, 400),
               ("GET", f"/v1/users/u1/recommendations?k={cfg.serving.max_k + 1}", None, 400),
               ("GET", "/v1/users/u1/recommendations?k=ten", None, 400),
               ("GET", "/v1/users/u1/recommendations?n=3", None, 400),
               ("GET", "/v1/users/u1/recommendations?k=1&k=2", None, 400),
               ("GET", f"/v1/users/{too_long}/recommendations", None, 400),
               ("GET", "/v1/users/u%001/recommendations", None, 400),
               ("POST", "/v1/score", b'{"user_id": "u1", ', 400),
               ("POST", "/v1/score", b'["u1"]', 400),
               ("POST", "/v1/score", b'{"user_id": 5}', 400),
               ("POST", "/v1/score", b'{"user_id": "u1", "k": true}', 400),
               ("POST", "/v1/score", b'{"user_id": "u1", "k": 0}', 400),
               ("POST", "/v1/score", b'{"user_id": "u1", "exclude": "i1"}', 400),
               ("POST", "/v1/score", b'{"user_id": "u1", "exclude": ["i\\u0000"]}', 400),
               ("POST", "/v1/score", b'{"user_id": "u1", "surprise": 1}', 400),
               ("POST", "/v1/score", json.dumps({"user_id": too_long}).encode(), 400),
               ("POST", "/v1/score", b"{" + b" " * cfg.serving.max_body_bytes + b"}", 413),
               ("GET", "/v1/nothing", None, 404),
               ("DELETE", "/v1/score", None, 405)]
        for method, path, body, expected in bad:  # each on a connection of its own
            status, answer = Client(url).call(method, path, body)
            assert (status, bool(answer.get("reason"))) == (expected, True), (method, path[:60], status, answer)
        metrics = client.raw("GET", "/metrics")[1].decode()
        assert 'streamrec_serving_requests_total{method="POST",route="/v1/score",status="400"}' in metrics
        assert f'streamrec_serving_model_info{{provider="CPUExecutionProvider",version="{first}"}} 1.0' in metrics \
            or "CUDAExecutionProvider" in metrics
        # every recommendation applied is in the freshness histogram, once
        topic = re.escape(cfg.kafka.topics.recommendations)
        applied = float(re.search(rf'streamrec_serving_records{{outcome="applied",topic="{topic}"}} (\S+)', metrics)[1])
        counted = float(re.search(r"^streamrec_serving_freshness_seconds_count (\S+)$", metrics, re.M)[1])
        in_inf = float(re.search(r'^streamrec_serving_freshness_seconds_bucket{le="\+Inf"} (\S+)$', metrics, re.M)[1])
        assert applied > 0 and counted == in_inf == applied, (applied, counted, in_inf)
    finally:
        stop_service(proc)

    # a restart resumes from the snapshot written at shutdown, and answers the same
    proc, _, client = start_service(cfg, tmp_path / "serve-again.log")
    try:
        assert "resumed from snapshot" in proc.output, proc.output[-2000:]
        for user in sorted(newest)[:20]:
            status, body = client.get_list(user, k)
            assert {f: body[f] for f in SERVED_FIELDS} == {f: newest[user][f] for f in SERVED_FIELDS}
    finally:
        stop_service(proc)
