"""The learner's micro-batch windows drop no event.

A bounded run windows the events on ``arrival``, an event-time stamp of the wall clock taken on
the way in. Many events share a millisecond at a few thousand events per second; a watermark
equal to the newest stamp made an event of the same millisecond late when it came after the
watermark, and in the last millisecond of a window Flink dropped it without a trace (the crash
test lost one such event in a CI run). One-millisecond windows make every millisecond a window's
last: this run lost 21 of its 12,000 events that way before the watermark trailed the stamps.
"""

from __future__ import annotations

import pytest

from streamrec.flink_jobs import pipeline
from streamrec.runtime import assets
from streamrec import replay
from streamrec.runtime.kafka_io import ensure_topics
from tests.support import account_recommendations, read_records

pytestmark = pytest.mark.slow

N_EVENTS = 12_000


def test_a_bounded_run_recommends_for_every_event_with_one_ms_windows(cfg, tmp_path):
    cfg = cfg.model_copy(update={
        "scoring": cfg.scoring.model_copy(update={"batch_interval_ms": 1}),
    })
    ensure_topics(cfg)
    events = replay.ml100k_events(assets.ml100k_dir(cfg))[:N_EVENTS]
    assert replay.produce(cfg, cfg.kafka.topics.raw, replay.encode_events(events), progress=False).failed == 0

    pipeline.run(cfg, bounded=True, quiet=True, with_features=False)

    clean = read_records(cfg, cfg.kafka.topics.clean)
    recs = read_records(cfg, cfg.kafka.topics.recommendations)
    assert len(clean) == N_EVENTS
    # every event that reached the learner's windows has exactly one record (`none` included)
    recommended = account_recommendations(clean, recs)
    assert recommended.exact and recommended.checked == N_EVENTS, recommended
