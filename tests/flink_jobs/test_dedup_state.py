"""Dedup state is bounded by the horizon: an event_id is remembered for ``dedup_horizon_ms`` of
processing time after its first occurrence (the SQL dedup's state TTL), then forgotten.

On an unbounded ingestion job: a duplicate within the horizon is dropped; the same id sent again
after the horizon is kept again, which is what proves the id left the state. And the watermark
passes the dedup while the job runs: the features job (reading events.clean beside it) closes
feature windows before any end of input (a table converted from a stream without a declared
watermark once dropped them, so features came out only when a bounded input ended)."""

import time

import pytest

from streamrec.flink_jobs import features, ingest
from streamrec.flink_jobs.env import build_runtime
from streamrec import replay
from streamrec.runtime.kafka_io import ensure_topics, read_topic

pytestmark = pytest.mark.slow

HORIZON_MS = 2_000


def _event(event_id: str, n: int) -> dict:
    return {"event_id": event_id, "user_id": f"u{n}", "item_id": f"i{n}", "event_type": "view",
            "ts": 1_700_000_000_000 + n * 1_000}


def _clean_ids(cfg, expected: int, timeout_s: float = 90) -> list[str]:
    deadline = time.monotonic() + timeout_s
    while True:
        ids = [r.json()["event_id"] for r in read_topic(cfg, cfg.kafka.topics.clean, idle_timeout=1)]
        if len(ids) >= expected or time.monotonic() > deadline:
            return ids
        time.sleep(1)


def test_a_duplicate_is_dropped_within_the_horizon_and_the_id_forgotten_after_it(cfg):
    cfg = cfg.model_copy(update={
        "ingest": cfg.ingest.model_copy(update={"dedup_horizon_ms": HORIZON_MS}),
        "kafka": cfg.kafka.model_copy(update={"partitions": 1}),
    })
    ensure_topics(cfg, ingest.ingestion_topics(cfg))
    rt = build_runtime(cfg, ingest.JOB_NAME)
    statements = rt.t_env.create_statement_set()
    ingest.add_ingestion(rt, cfg, False, statements)
    statements.attach_as_datastream()
    job = rt.env.execute_async(ingest.JOB_NAME)
    feature_job = features.run(cfg, wait=False, quiet=True).job_client
    try:
        send = lambda events: replay.produce(cfg, cfg.kafka.topics.raw, replay.encode_events(events),  # noqa: E731
                                             progress=False)
        send([_event("probe", 0)])
        assert _clean_ids(cfg, 1) == ["probe"], "the job did not start"
        send([_event("dup", 1), _event("dup", 2)])  # within the horizon: the second is dropped
        send([_event("marker-1", 3)])
        assert sorted(_clean_ids(cfg, 3)) == ["dup", "marker-1", "probe"]
        time.sleep(3 * HORIZON_MS / 1000)  # past the horizon: the id has left the state
        send([_event("dup", 4), _event("marker-2", 5)])
        ids = _clean_ids(cfg, 5)
        # two days of event time later: every window of the events above has closed (the
        # features job learns of the watermark that event moved from the next clean event,
        # which carries it: sent once the first is through)
        later = _event("x", 0)["ts"] + 2 * 86_400_000
        send([dict(_event("later", 6), ts=later)])
        _clean_ids(cfg, 6)
        send([dict(_event("later-2", 7), ts=later + 1_000)])
        deadline = time.monotonic() + 90
        rows = []
        while not rows and time.monotonic() < deadline:
            rows = list(read_topic(cfg, cfg.kafka.topics.features_user, idle_timeout=1))
            time.sleep(1)
    finally:
        feature_job.cancel().result()
        job.cancel().result()
    assert sorted(ids) == ["dup", "dup", "marker-1", "marker-2", "probe"]
    assert rows, "no feature window closed while the job ran: the watermark did not pass the dedup"
