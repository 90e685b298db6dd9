"""The checkpoint storage fills up under a running `streamrec run --bounded` (a real 48 MB tmpfs
as paths.checkpoint_dir, filled mid-run): the job stops with one sentence saying what is full
and how to go on, and once space is back the very same command resumes from its last completed
checkpoint: every raw record in exactly one of events.clean / events.dlq, every clean event
exactly one recommendation record. Needs root (mount)."""

from __future__ import annotations

import os
import time

import pytest

from streamrec import replay
from streamrec.runtime.kafka_io import end_offsets, ensure_topics, read_topic
from tests.support import StreamrecProcess as Run, read_records
from tests.support import account_ingestion, account_recommendations, fill_up, planted_stream, small_filesystem

pytestmark = [pytest.mark.slow, pytest.mark.faults]  # ~2-3 min: make test-faults

N_EVENTS = 4_000


@pytest.fixture
def small_disk(tmp_path):
    with small_filesystem(tmp_path / "checkpoints", "48m") as mount:
        yield mount


def test_a_full_checkpoint_disk_stops_the_job_clearly_and_the_same_command_resumes(cfg, tmp_path, small_disk):
    cfg = cfg.model_copy(update={
        "paths": cfg.paths.model_copy(update={"checkpoint_dir": small_disk}),
        # give up at the first failed checkpoint: restarts on a full disk only fail again
        "flink": cfg.flink.model_copy(update={"restart_attempts": 0, "tolerable_checkpoint_failures": 0}),
    })
    ensure_topics(cfg)
    events = planted_stream(N_EVENTS, seed=3)
    assert replay.produce(cfg, cfg.kafka.topics.raw, replay.encode_events(events), progress=False).failed == 0
    first = Run(cfg, tmp_path / "first.log", "run", "--bounded", "--without-features")
    deadline = time.monotonic() + 240
    while sum(end_offsets(cfg, cfg.kafka.topics.recommendations).values()) == 0:
        assert first.proc.poll() is None, first.output[-3000:]
        assert time.monotonic() < deadline, first.output[-3000:]
        time.sleep(0.2)
    filler = fill_up(small_disk, chunk=1_048_576)  # after the first commit: a checkpoint to resume from exists
    rc = first.wait(timeout=300)
    out = first.output
    assert rc != 0, out[-3000:]
    last = [line for line in out.splitlines() if line.startswith("error:")]
    assert last and "No space left on device" in last[-1] and "run the same command" in last[-1], out[-3000:]
    assert "Traceback" not in out, out[-3000:]

    os.unlink(filler)
    again = Run(cfg, tmp_path / "again.log", "run", "--bounded", "--without-features")
    assert again.wait(timeout=600) == 0, again.output[-3000:]
    assert "resum" in again.output.lower(), again.output[-3000:]
    raw = list(read_topic(cfg, cfg.kafka.topics.raw))
    clean = read_records(cfg, cfg.kafka.topics.clean)
    dlq = read_records(cfg, cfg.kafka.topics.dlq)
    recs = read_records(cfg, cfg.kafka.topics.recommendations)
    ingested = account_ingestion(raw, clean, dlq)
    assert ingested.exact and ingested.checked == N_EVENTS, ingested
    recommended = account_recommendations(clean, recs)
    assert recommended.exact and recommended.checked == N_EVENTS, recommended
