import socket

import pytest

from streamrec import broker
from streamrec.kafka_io import ensure_topics, admin
from tests.support import free_port, make_config

pytestmark = pytest.mark.slow


def test_up_reuse_down(tmp_path):
    cfg = make_config(tmp_path, free_port())
    first = broker.up(cfg, log=lambda m: None)
    try:
        assert first.started and first.embedded and first.pid
        assert broker.kafka_answers(cfg.bootstrap_servers)
        again = broker.up(cfg, log=lambda m: None)
        assert not again.started and again.pid == first.pid
        assert (tmp_path / "kafka" / "broker.pid").is_file()
    finally:
        assert broker.down(cfg, log=lambda m: None)
    assert not broker.kafka_answers(cfg.bootstrap_servers, timeout=1)
    assert not (tmp_path / "kafka" / "broker.pid").exists()
    assert broker.status(cfg) is None
    assert broker.down(cfg, log=lambda m: None) is False


def test_port_owned_by_something_else_fails_clearly(tmp_path):
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        cfg = make_config(tmp_path, squatter.getsockname()[1])
        with pytest.raises(broker.BrokerError, match="in use by a process streamrec did not start"):
            broker.up(cfg, log=lambda m: None)
    assert not (tmp_path / "kafka" / "broker.pid").exists()


def test_external_kafka_starts_nothing(tmp_path):
    cfg = make_config(tmp_path, free_port(), **{"kafka.bootstrap_servers": "kafka.example:9092"})
    status = broker.up(cfg, log=lambda m: None)
    assert status == broker.BrokerStatus("kafka.example:9092", embedded=False, pid=None, started=False)
    assert not (tmp_path / "kafka").exists()
    assert broker.down(cfg, log=lambda m: None) is False


def test_topics_created_with_configured_partitions(cfg):
    result = ensure_topics(cfg)
    assert set(result) == set(cfg.kafka.topics.all())
    assert set(result.values()) == {"created"}
    md = admin(cfg).list_topics(timeout=10).topics
    for topic in cfg.kafka.topics.all():
        assert len(md[topic].partitions) == cfg.kafka.partitions
    assert set(ensure_topics(cfg).values()) == {"exists"}  # idempotent
