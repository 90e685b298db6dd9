"""Broker faults under a running exactly-once pipeline: the broker is killed with SIGKILL (or
stopped cleanly) while transactions are open, then started again on the same data. The job
recovers on its own and a read_committed reader of ``recommendations`` sees every source event
exactly once: 0 lost, 0 duplicated."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections import Counter

import pytest

from flink_jobs import pipeline
from streamrec import broker, replay
from streamrec.kafka_io import ensure_topics, read_topic
from tests.support import planted_stream, wait_for_records
from tests.support import free_port, make_config

pytestmark = pytest.mark.slow

N_EVENTS = 1_500


def _kill9(cfg) -> None:
    pid = broker.status(cfg).pid
    os.killpg(pid, signal.SIGKILL)
    while broker.kafka_answers(cfg.bootstrap_servers, timeout=0.5):
        time.sleep(0.1)


@pytest.mark.parametrize("fault", ["kill-9", "clean-down-up"])
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
            cfg, cfg.kafka.topics.raw, replay.encode_events(events), rate=100, progress=False)))
        try:
            time.sleep(12)  # job start-up
            feeder.start()
            time.sleep(6)  # mid-stream: transactions of the sinks are open now
            before = len(list(read_topic(cfg, cfg.kafka.topics.recommendations, idle_timeout=1)))
            if fault == "kill-9":
                _kill9(cfg)
                time.sleep(2)  # the job notices: producers and the source lose their broker
            else:
                assert broker.down(cfg, log=lambda m: None)
            restarted = broker.up(cfg, log=lambda m: None)
            assert restarted.started
            feeder.join(120)
            assert produced["result"].failed == 0  # the idempotent producer retried through it
            recs = wait_for_records(cfg, cfg.kafka.topics.recommendations, N_EVENTS - 1, timeout_s=240)
            status = run.job_client.get_job_status().result().name
        finally:
            run.job_client.cancel().result()
    finally:
        broker.down(cfg, log=lambda m: None)

    assert 0 < before < N_EVENTS, f"the fault did not land mid-stream ({before} records before it)"
    assert status == "RUNNING", status  # recovered on its own, within its restart strategy
    per_event = Counter(r["source_event_id"] for r in recs)
    lost = {e["event_id"] for e in events} - set(per_event)
    duplicated = {k: n for k, n in per_event.items() if n > 1}
    # (the stream's first event has nothing to recommend: no record, never an empty one)
    assert len(lost) <= 1 and not duplicated, f"{len(lost)} lost, {len(duplicated)} duplicated"
    assert len(recs) == N_EVENTS - len(lost)
