"""Broker faults under a running exactly-once pipeline: the broker is killed with SIGKILL (or
stopped cleanly) while transactions are open, then started again on the same data; or frozen
for 30 s with SIGSTOP, then continued (make test-faults). The job
recovers on its own and read_committed readers see every ``events.raw`` record exactly once in
``events.clean`` or ``events.dlq``, and every clean event exactly once in ``recommendations``:
0 lost, 0 duplicated, counted exactly (tests.support.account_*)."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from streamrec.flink_jobs import pipeline
from streamrec.runtime import broker
from streamrec import replay
from streamrec.runtime.kafka_io import ensure_topics, read_topic
from tests.support import (account_ingestion, account_recommendations, free_port, make_config, planted_stream,
                           read_records, wait_for_records)

pytestmark = pytest.mark.slow

N_EVENTS = 1_500
WARM_UP = 100


def _kill9(cfg) -> None:
    pid = broker.status(cfg).pid
    os.killpg(pid, signal.SIGKILL)
    while broker.kafka_answers(cfg.bootstrap_servers, timeout=0.5):
        time.sleep(0.1)


def _first_commit_after(cfg, since: float, timeout_s: float) -> float:
    """Seconds from ``since`` until the recommendations' committed end offsets grow (the job wrote
    and committed again: its recovery time as a reader sees it)."""
    from confluent_kafka import KafkaException

    from streamrec.runtime.kafka_io import KafkaSetupError, end_offsets

    def committed() -> int | None:
        try:
            return sum(end_offsets(cfg, cfg.kafka.topics.recommendations, retry_s=1.0).values())
        except (KafkaException, KafkaSetupError):  # a broker just back: leaders not yet elected
            return None

    start = None
    while start is None:
        start = committed()
        assert time.monotonic() - since < timeout_s, "the recommendations' offsets never became readable"
    while (now := committed()) is None or now <= start:
        assert time.monotonic() - since < timeout_s, "the job never committed again"
        time.sleep(0.1)
    return time.monotonic() - since


def _freeze(cfg, seconds: float) -> None:
    """SIGSTOP the broker's process group for ``seconds`` (a stalled disk or a long GC pause: its
    sockets stay open, nothing answers), then SIGCONT it."""
    pid = broker.status(cfg).pid
    os.killpg(pid, signal.SIGSTOP)
    try:
        time.sleep(seconds)
    finally:
        os.killpg(pid, signal.SIGCONT)


@pytest.mark.parametrize("fault", ["kill-9", "clean-down-up",
                                   pytest.param("freeze-30s", marks=pytest.mark.faults)])
def test_pipeline_is_exactly_once_across_a_broker_restart(tmp_path, fault):
    cfg = make_config(tmp_path / "state", free_port(), **{
        "paths.registry_dir": str(tmp_path / "registry"),
        "learner.changelog_interval_ms": 0,
    })
    broker.up(cfg, log=lambda m: None)
    try:
        ensure_topics(cfg)
        events = planted_stream(N_EVENTS, seed=11)
        run = pipeline.run(cfg, bounded=False, quiet=True, wait=False)
        produced = {}
        feeder = threading.Thread(target=lambda: produced.update(result=replay.produce(
            cfg, cfg.kafka.topics.raw, replay.encode_events(events[WARM_UP:]), rate=100, progress=False)))
        try:
            # the job is live once a warm-up's records are committed (start-up takes 10-40 s,
            # depending on the machine's load); only then the steady feed, and the fault 4 s into it
            assert replay.produce(cfg, cfg.kafka.topics.raw, replay.encode_events(events[:WARM_UP]),
                                  progress=False).failed == 0
            wait_for_records(cfg, cfg.kafka.topics.recommendations, WARM_UP // 2, timeout_s=120)
            feeder.start()
            time.sleep(4)  # mid-stream: transactions of the sinks are open now
            before = len(list(read_topic(cfg, cfg.kafka.topics.recommendations, idle_timeout=1)))
            if fault == "freeze-30s":
                _freeze(cfg, 30)  # the same broker process goes on
            else:
                if fault == "kill-9":
                    _kill9(cfg)
                    time.sleep(2)  # the job notices: producers and the source lose their broker
                else:
                    assert broker.down(cfg, log=lambda m: None)
                restarted = broker.up(cfg, log=lambda m: None)
                assert restarted.started
            back = time.monotonic()  # the broker answers again: how long until the job commits anew
            recovered_s = _first_commit_after(cfg, back, timeout_s=240)
            print(f"[{fault}] the job committed again {recovered_s:.1f} s after the broker was back")
            feeder.join(120)
            assert produced["result"].failed == 0  # the idempotent producer retried through it
            # every event gets a record (`none` if it has nothing to recommend); then a few more
            # checkpoints, which would commit any duplicate
            wait_for_records(cfg, cfg.kafka.topics.recommendations, N_EVENTS, timeout_s=240)
            time.sleep(5)
            recs = read_records(cfg, cfg.kafka.topics.recommendations)
            status = run.job_client.get_job_status().result().name
            raw = list(read_topic(cfg, cfg.kafka.topics.raw))
            clean = read_records(cfg, cfg.kafka.topics.clean)
            dlq = read_records(cfg, cfg.kafka.topics.dlq)
        finally:
            run.cancel()
    finally:
        broker.down(cfg, log=lambda m: None)

    assert 0 < before < N_EVENTS, f"the fault did not land mid-stream ({before} records before it)"
    assert status == "RUNNING", status  # recovered on its own, within its restart strategy
    # every raw record in exactly one of events.clean / events.dlq (all valid, none a duplicate)
    ingested = account_ingestion(raw, clean, dlq)
    assert ingested.exact and ingested.checked == N_EVENTS and not ingested.dropped, ingested
    assert len(clean) == N_EVENTS and not dlq
    # every clean event exactly one recommendation record, no exemption
    recommended = account_recommendations(clean, recs)
    assert recommended.exact and recommended.checked == N_EVENTS, recommended
    assert len(recs) == N_EVENTS and {r["source_event_id"] for r in recs} == {e["event_id"] for e in events}
