import json
from collections import defaultdict

import pytest

from streamrec.runtime import assets
from streamrec import replay
from streamrec.runtime.kafka_io import ensure_topics, read_topic
from tests.support import make_config

pytestmark = pytest.mark.slow


def test_ml100k_full_replay_exact_count_and_per_partition_order(cfg):
    events = replay.ml100k_events(assets.ml100k_dir(cfg))
    assert len(events) == 100_000
    assert [e["ts"] for e in events] == sorted(e["ts"] for e in events)
    assert len({e["event_id"] for e in events}) == 100_000
    ensure_topics(cfg, [cfg.kafka.topics.raw])
    result = replay.produce(cfg, cfg.kafka.topics.raw, replay.encode_events(events),
                            total=len(events), progress=False)
    assert (result.sent, result.delivered, result.failed) == (100_000, 100_000, 0)

    records = list(read_topic(cfg, cfg.kafka.topics.raw))
    assert len(records) == 100_000
    position = {e["event_id"]: i for i, e in enumerate(events)}
    by_partition = defaultdict(list)
    partition_of_user = {}
    for rec in records:
        event = rec.json()
        assert rec.key.decode() == event["user_id"]
        # every user lives in exactly one partition (partition affinity for keyed state)
        assert partition_of_user.setdefault(event["user_id"], rec.partition) == rec.partition
        by_partition[rec.partition].append((rec.offset, position[event["event_id"]]))
    assert len(by_partition) == cfg.kafka.partitions
    for rows in by_partition.values():
        in_offset_order = [pos for _off, pos in sorted(rows)]
        assert in_offset_order == sorted(in_offset_order), "replay order broken inside a partition"
    assert {r.json()["event_id"] for r in records} == set(position)


def test_jsonl_lines_are_sent_verbatim(cfg, tmp_path):
    lines = [
        b'{"event_id":"a","user_id":"u1","item_id":"i1","event_type":"view","ts":1}',
        b'{not json at all',
        b'{"event_id":"b","user_id":"u1","item_id":"i2","event_type":"VIEW","ts":2}   ',
        "{\"user_id\": \"\u00e9\u00e8\"}".encode(),
        b'\xff\xfe binary garbage',
        b'[1, 2, 3]',
    ]
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\r\n\n")
    ensure_topics(cfg, [cfg.kafka.topics.raw])
    result = replay.produce(cfg, cfg.kafka.topics.raw, replay.jsonl_items(path), progress=False)
    assert (result.delivered, result.failed) == (len(lines), 0)
    got = sorted(r.value for r in read_topic(cfg, cfg.kafka.topics.raw))
    assert got == sorted(lines)


def test_limit_and_rate(cfg):
    ensure_topics(cfg, [cfg.kafka.topics.raw])
    events = [{"event_id": str(i), "user_id": "u", "item_id": "i", "event_type": "view", "ts": i}
              for i in range(100)]
    result = replay.produce(cfg, cfg.kafka.topics.raw, replay.encode_events(events), limit=20,
                            rate=100.0, progress=False)
    assert result.delivered == 20
    assert result.seconds >= 0.18  # 20 events at 100/s cannot be faster than ~0.19 s
    assert len(list(read_topic(cfg, cfg.kafka.topics.raw))) == 20


def test_delivery_failures_are_counted(tmp_path):
    from tests.support import free_port

    cfg = make_config(tmp_path, free_port(), **{
        "kafka.bootstrap_servers": f"127.0.0.1:{free_port()}",
        "kafka.client_properties": {"message.timeout.ms": "1500", "socket.connection.setup.timeout.ms": "1000"},
    })
    events = [{"event_id": str(i), "user_id": "u", "item_id": "i", "event_type": "view", "ts": i}
              for i in range(5)]
    result = replay.produce(cfg, "events.raw", replay.encode_events(events), progress=False)
    assert (result.sent, result.delivered, result.failed) == (5, 0, 5)
    assert result.first_error


def test_ml100k_rejects_a_foreign_file(tmp_path):
    (tmp_path / "ml-100k.inter").write_text("a,b,c\n1,2,3\n")
    with pytest.raises(ValueError, match="does not look like ML-100k"):
        replay.ml100k_events(tmp_path)


def test_pacer_refuses_bad_values():
    with pytest.raises(ValueError):
        replay._Pacer(rate=0, speedup=None)
    with pytest.raises(ValueError):
        replay._Pacer(rate=1, speedup=2)
