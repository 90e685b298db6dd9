"""The smallest real job: events.raw -> copy topic through Flink with an exactly-once Kafka sink."""

import pytest

from streamrec.flink_jobs import passthrough
from streamrec import replay
from streamrec.runtime.kafka_io import ensure_topics, read_topic

pytestmark = pytest.mark.slow


def test_passthrough_exact_count_exactly_once(cfg):
    target = cfg.kafka.topics.clean
    ensure_topics(cfg, [cfg.kafka.topics.raw, target])
    events = [{"event_id": f"e{i}", "user_id": f"u{i % 13}", "item_id": f"i{i % 7}",
               "event_type": "view", "ts": 1_000 + i} for i in range(2_500)]
    replay.produce(cfg, cfg.kafka.topics.raw, replay.encode_events(events), progress=False)

    passthrough.run(cfg, target, bounded=True)

    committed = [r.value for r in read_topic(cfg, target, read_committed=True)]
    assert len(committed) == 2_500
    assert len(set(committed)) == 2_500  # no duplicates
    assert set(committed) == {v.value for v in replay.encode_events(events)}
