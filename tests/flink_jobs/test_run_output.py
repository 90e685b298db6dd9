"""What `streamrec run` tells the person who started it: the web UI's address (answering while the
job runs), a progress line every few seconds, and no configuration dump."""

from __future__ import annotations

import json
import re
import time
import urllib.request

import pytest

from streamrec import replay
from streamrec.runtime.kafka_io import ensure_topics
from tests.support import StreamrecProcess, planted_stream

pytestmark = pytest.mark.slow

PROGRESS = re.compile(r"^\[streamrec-pipeline\] \d+ s: (about [\d,]+ recommendations committed|recommendations "
                      r"unknown).*, (source lag [\d,]+ events|source lag unknown), (CURRENT v\d{6}|no CURRENT model yet)",
                      re.M)


def test_run_prints_the_web_ui_and_progress_lines_and_no_configuration(cfg, tmp_path):
    ensure_topics(cfg)
    events = planted_stream(3_000, seed=5)
    assert replay.produce(cfg, cfg.kafka.topics.raw, replay.encode_events(events), progress=False).failed == 0
    run = StreamrecProcess(cfg, tmp_path / "run.log", "run", "--bounded", "--without-features", "--progress", "1")
    deadline = time.monotonic() + 120
    while not (found := re.search(r"web UI: (http://\S+)", run.output)):
        assert run.proc.poll() is None and time.monotonic() < deadline, run.output[-3000:]
        time.sleep(0.2)
    overview = None
    while overview is None and run.proc.poll() is None:
        try:  # the REST server comes up with the mini-cluster, a moment after the line
            with urllib.request.urlopen(f"{found.group(1)}/overview", timeout=2) as resp:
                overview = json.loads(resp.read())
        except OSError:
            time.sleep(0.2)
    assert run.wait(timeout=300) == 0, run.output[-3000:]
    assert overview is not None and overview["taskmanagers"] >= 1, run.output[-3000:]
    out = run.output
    assert len(PROGRESS.findall(out)) >= 2, out[-3000:]
    assert "configuration:" not in out and "bootstrap_servers" not in out, out[:3000]
