"""Crash-safe exactly-once as users run it: `streamrec run --bounded` is killed with SIGKILL (the
driver and its Flink JVM, as a crash or an OOM killer would) at random points of a replay, and
the very same command is simply run again. read_committed readers then find every ``events.raw``
record exactly once in ``events.clean`` or ``events.dlq`` and one ``recommendations`` record per
clean event: 0 lost, 0 duplicated, counted exactly (tests.support.account_*); a re-run after the
job finished refuses to recompute (which would publish everything again) and says --fresh.

The heavy variant (30,000 events, 3 kills) is marked ``faults``: ``make test-faults``."""

from __future__ import annotations

import os
import random
import signal
import time

import pytest

from streamrec.runtime import lineage
from streamrec.flink_jobs.pipeline import JOB_NAME
from streamrec.runtime import assets
from streamrec import replay
from streamrec.runtime.kafka_io import end_offsets, ensure_topics, read_topic
from tests.support import StreamrecProcess as Run, read_records
from tests.support import account_ingestion, account_recommendations


def _committed(cfg) -> int:
    return sum(end_offsets(cfg, cfg.kafka.topics.recommendations).values())


def _kill_when(cfg, run: Run, committed_at_least: int, extra_s: float, timeout_s=240) -> int:
    """SIGKILL the run's process group once ``committed_at_least`` offsets are committed (plus a
    random extra delay, so the kill lands anywhere between two checkpoints)."""
    deadline = time.monotonic() + timeout_s
    while _committed(cfg) < committed_at_least:
        assert run.proc.poll() is None, f"the run ended before the kill point:\n{run.output[-3000:]}"
        assert time.monotonic() < deadline, f"the run made no progress:\n{run.output[-3000:]}"
        time.sleep(0.3)
    time.sleep(extra_s)
    at = _committed(cfg)
    os.killpg(run.proc.pid, signal.SIGKILL)
    run.wait(30)
    # a kill after the job's end tests nothing of a crash (and the next run rightly refuses)
    assert not (lineage.read_lineage(lineage.job_dir(cfg, JOB_NAME)) or {}).get("finished"), (
        f"the kill at {at} committed offsets came after the bounded job had finished: the kill "
        "point is too late for this machine's speed")
    return at


def _crash_and_resume(cfg, logs, n_events: int, kills: int, seed: int) -> dict:
    # checkpoints (commits) every 500 ms: kill points fall between commits of a fast job too
    cfg = cfg.model_copy(update={"flink": cfg.flink.model_copy(update={"checkpoint_interval_ms": 500})})
    ensure_topics(cfg)
    events = replay.ml100k_events(assets.ml100k_dir(cfg))[:n_events]
    assert replay.produce(cfg, cfg.kafka.topics.raw, replay.encode_events(events), progress=False).failed == 0
    rng = random.Random(seed)
    # kill points spread over the replay (offsets include transaction markers: ~1 per checkpoint)
    # early enough that the rest of the replay outlasts the extra delay at ~3,500 events/s
    points = sorted(rng.uniform(0.1, 0.4) * n_events for _ in range(kills))
    kill_log, outputs = [], []
    for n, point in enumerate(points):
        committed_before = _committed(cfg)
        run = Run(cfg, logs / f"run-{n}.log", "run", "--bounded")
        # at least one commit of this run's own: it resumed and moved on before it dies
        kill_log.append(_kill_when(cfg, run, max(int(point), committed_before + 1),
                                   extra_s=rng.uniform(0.0, 0.3)))
        outputs.append(run.output)
    final = Run(cfg, logs / "final.log", "run", "--bounded")
    assert final.wait(timeout=600) == 0, final.output[-3000:]
    outputs.append(final.output)
    again = Run(cfg, logs / "again.log", "run", "--bounded")
    rc = again.wait(timeout=300)
    return {"events": events, "kill_offsets": kill_log, "outputs": outputs,
            "rerun_rc": rc, "rerun_out": again.output}


def _assert_exactly_once(cfg, result: dict) -> None:
    outputs = result["outputs"]
    assert "fresh start" in outputs[0]
    for out in outputs[1:]:
        assert "resuming run" in out, out[-2000:]  # the same command found the checkpoint itself
    assert result["kill_offsets"] == sorted(result["kill_offsets"])
    n_events = len(result["events"])
    raw = list(read_topic(cfg, cfg.kafka.topics.raw))
    clean = read_records(cfg, cfg.kafka.topics.clean)
    dlq = read_records(cfg, cfg.kafka.topics.dlq)
    recs = read_records(cfg, cfg.kafka.topics.recommendations)
    # every raw record in exactly one of events.clean / events.dlq (ML-100k: all valid, unique)
    ingested = account_ingestion(raw, clean, dlq)
    assert ingested.exact and ingested.checked == n_events and not ingested.dropped, ingested
    assert len(clean) == n_events and not dlq
    # every clean event exactly one recommendation record (`none` when nothing was left to
    # recommend: ML-100k opens with one-user bursts), no exemption
    recommended = account_recommendations(clean, recs)
    assert recommended.exact and recommended.checked == n_events, recommended
    assert {r["source_event_id"] for r in recs} == {e["event_id"] for e in result["events"]}
    # finished: running the command once more refuses instead of publishing everything again
    assert result["rerun_rc"] == 1 and "--fresh" in result["rerun_out"], result["rerun_out"][-1500:]
    assert len(list(read_topic(cfg, cfg.kafka.topics.recommendations))) == len(recs)


@pytest.mark.slow
def test_kill9_of_the_job_then_the_same_command_again(cfg, tmp_path):
    result = _crash_and_resume(cfg, tmp_path, n_events=16_000, kills=2, seed=3)
    _assert_exactly_once(cfg, result)


@pytest.mark.faults
def test_kill9_three_times_on_30k_events(cfg, tmp_path):
    result = _crash_and_resume(cfg, tmp_path, n_events=30_000, kills=3, seed=14)
    _assert_exactly_once(cfg, result)
