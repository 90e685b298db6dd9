"""Two runs of the pipeline on one state dir: the second is refused with the holder named, before
it touches anything (``--fresh`` no longer deletes a live run's checkpoints); the lock dies with
its holder, SIGKILL included."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from streamrec.runtime import lineage
from streamrec.flink_jobs import pipeline
from tests.support import REPO, free_port, make_config

HOLD = """
import sys, time
from streamrec.runtime import lineage
from tests.support import make_config
cfg = make_config(sys.argv[1], int(sys.argv[2]))
lineage.run_lock(cfg, "streamrec-pipeline").acquire()
print("held", flush=True)
time.sleep(120)
"""


@pytest.fixture
def holder(tmp_path):
    """Another process holding the pipeline's lock on ``tmp_path``, as a live `streamrec run` does."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path), str(port)], cwd=REPO,
                            stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.stdout.readline().strip() == "held"
    yield proc, make_config(tmp_path, port)
    proc.kill()
    proc.wait()


def test_a_second_run_is_refused_and_fresh_deletes_nothing(holder):
    proc, cfg = holder
    job_dir = lineage.job_dir(cfg, pipeline.JOB_NAME)
    checkpoint = job_dir / "chk-7"
    checkpoint.mkdir(parents=True)
    (job_dir / lineage.LINEAGE_FILE).write_text('{"run_id": "live"}')
    for kwargs in ({}, {"fresh": True}, {"bounded": True}):
        with pytest.raises(lineage.LineageError) as err:
            pipeline.run(cfg, quiet=True, **kwargs)
        message = str(err.value)
        assert f"pid {proc.pid}" in message and "state dir" in message and "\n" not in message
    assert checkpoint.is_dir() and (job_dir / lineage.LINEAGE_FILE).read_text() == '{"run_id": "live"}'


def test_the_lock_dies_with_its_holder(holder):
    proc, cfg = holder
    with pytest.raises(lineage.LineageError):
        lineage.run_lock(cfg, pipeline.JOB_NAME).acquire()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 10
    while True:
        try:
            lineage.run_lock(cfg, pipeline.JOB_NAME).acquire().release()
            break
        except lineage.LineageError:
            assert time.monotonic() < deadline, "the lock outlived its holder"
            time.sleep(0.1)
