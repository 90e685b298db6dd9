"""The embedded broker's log dir fills up under a running `streamrec run --bounded` (its state dir
on a real 160 MB tmpfs, filled mid-run): Kafka takes its only log dir offline and stops, saying
so in its log; the job waits for it (its restart strategy); once space is back `streamrec up`
starts the broker on the same data and the job finishes on its own: every raw record in exactly
one of events.clean / events.dlq, every clean event exactly one recommendation record. Needs
root (mount)."""

from __future__ import annotations

import contextlib
import os
import signal
import time

import pytest

from streamrec.runtime import broker
from streamrec import replay
from streamrec.runtime.kafka_io import end_offsets, ensure_topics, read_topic
from tests.support import StreamrecProcess as Run
from tests.support import (account_ingestion, account_recommendations, fill_up, free_port, make_config,
                           planted_stream, small_filesystem)

pytestmark = [pytest.mark.slow, pytest.mark.faults]

N_EVENTS = 4_000


def test_a_full_broker_disk_stops_the_broker_and_the_job_finishes_once_it_is_back(tmp_path):
    with contextlib.ExitStack() as stack, small_filesystem(tmp_path / "state", "160m") as state:
        cfg = make_config(state, free_port(), **{
            "paths.checkpoint_dir": str(tmp_path / "checkpoints"),
            "paths.registry_dir": str(tmp_path / "registry"),
            # long enough to wait out a broker restart (the broker tests' recovery took seconds)
            "flink.restart_attempts": 30, "flink.restart_delay_ms": 2_000,
        })
        broker.up(cfg, log=print)
        try:
            ensure_topics(cfg)
            events = planted_stream(N_EVENTS, seed=5)
            assert replay.produce(cfg, cfg.kafka.topics.raw, replay.encode_events(events),
                                  progress=False).failed == 0
            run = Run(cfg, tmp_path / "run.log", "run", "--bounded", "--without-features")
            stack.callback(lambda: run.proc.poll() is None and os.killpg(run.proc.pid, signal.SIGKILL))
            deadline = time.monotonic() + 240
            while sum(end_offsets(cfg, cfg.kafka.topics.recommendations).values()) == 0:
                assert run.proc.poll() is None, run.output[-3000:]
                assert time.monotonic() < deadline, run.output[-3000:]
                time.sleep(0.2)
            filler = fill_up(state, chunk=1_048_576)
            deadline = time.monotonic() + 120
            while broker.kafka_answers(cfg.bootstrap_servers, timeout=0.5):
                assert time.monotonic() < deadline, "the broker kept answering on a full disk"
                time.sleep(0.5)
            # the broker's own log is on the full disk too: its last lines may be cut short
            logs = "".join(p.read_text(errors="replace") for p in (broker.broker_dir(cfg) / "logs").glob("*.log"))
            assert "LogDirFailureChannel" in logs and "IOException" in logs, logs[-2000:]
            assert run.proc.poll() is None, run.output[-3000:]  # the job waits for its broker
            filler.unlink()
            assert broker.up(cfg, log=print).started
            assert run.wait(timeout=420) == 0, run.output[-3000:]
            raw = list(read_topic(cfg, cfg.kafka.topics.raw))
            clean = [r.json() for r in read_topic(cfg, cfg.kafka.topics.clean)]
            dlq = [r.json() for r in read_topic(cfg, cfg.kafka.topics.dlq)]
            recs = [r.json() for r in read_topic(cfg, cfg.kafka.topics.recommendations)]
        finally:
            broker.down(cfg, log=print)
    ingested = account_ingestion(raw, clean, dlq)
    assert ingested.exact and ingested.checked == N_EVENTS, ingested
    recommended = account_recommendations(clean, recs)
    assert recommended.exact and recommended.checked == N_EVENTS, recommended
