import socket

import pytest

from streamrec.runtime import broker
from streamrec.runtime.kafka_io import ensure_topics, admin
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
    # the changelogs are compacted (the latest record per key is the state), the event topics not
    from confluent_kafka.admin import ConfigResource

    resources = [ConfigResource(ConfigResource.Type.TOPIC, t) for t in cfg.kafka.topics.all()]
    client = admin(cfg)  # kept referenced until the futures resolve
    policy = {r.name: f.result()["cleanup.policy"].value
              for r, f in client.describe_configs(resources).items()}
    t = cfg.kafka.topics
    assert {n for n, p in policy.items() if p == "compact"} == {t.model_items, t.model_users,
                                                               t.features_user, t.features_item}
    assert policy[t.raw] == policy[t.clean] == policy[t.recommendations] == policy[t.item_deltas] == "delete"
    retention = client.describe_configs([ConfigResource(ConfigResource.Type.TOPIC, t.item_deltas)])
    [config] = [f.result() for f in retention.values()]
    assert config["retention.ms"].value == str(cfg.learner.exchange_retention_ms)


def test_data_survives_down_and_up(tmp_path):
    from streamrec import replay
    from streamrec.runtime.kafka_io import read_topic

    cfg = make_config(tmp_path, free_port())
    broker.up(cfg, log=lambda m: None)
    try:
        ensure_topics(cfg, ["kept"])
        events = [{"event_id": f"e{i}", "user_id": "u", "item_id": "i", "event_type": "view", "ts": i}
                  for i in range(50)]
        assert replay.produce(cfg, "kept", replay.encode_events(events), progress=False).failed == 0
        assert broker.down(cfg, log=lambda m: None)
        again = broker.up(cfg, log=lambda m: None)
        assert again.started  # a new process, on the same formatted storage
        assert len(list(read_topic(cfg, "kept"))) == 50
    finally:
        broker.down(cfg, log=lambda m: None)


def test_busy_controller_port_and_port_clash_fail_clearly(tmp_path):
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        busy = squatter.getsockname()[1]
        cfg = make_config(tmp_path, free_port(), **{"embedded.controller_port": busy})
        with pytest.raises(broker.BrokerError, match=f"port {busy} .* embedded.controller_port"):
            broker.up(cfg, log=lambda m: None)
    port = free_port()
    cfg = make_config(tmp_path, port, **{"embedded.controller_port": port})
    with pytest.raises(broker.BrokerError, match="needs two different ports"):
        broker.up(cfg, log=lambda m: None)


def test_out_of_range_port_is_a_config_error(tmp_path):
    from streamrec.core.config import ConfigError

    with pytest.raises(ConfigError, match="embedded.port = 80"):
        make_config(tmp_path, 80)


def test_server_properties_are_single_node_safe(tmp_path):
    cfg = make_config(tmp_path, free_port(), **{"embedded.server_properties": {"num.io.threads": "4"}})
    props = broker.server_properties(cfg)
    for key in ("offsets.topic.replication.factor", "transaction.state.log.replication.factor",
                "transaction.state.log.min.isr", "default.replication.factor", "min.insync.replicas"):
        assert props[key] == "1", key
    assert props["process.roles"] == "broker,controller"
    assert props["num.io.threads"] == "4"  # a user override wins
    assert int(props["transaction.max.timeout.ms"]) >= cfg.kafka.transaction_timeout_ms


def test_server_properties_file_is_readable_by_its_owner_only(tmp_path):
    """It holds the listeners' JAAS lines (passwords): 0600, also when an older file was 0644."""
    jaas = 'org.apache.kafka.common.security.plain.PlainLoginModule required password="pw";'
    cfg = make_config(tmp_path, free_port(), **{"embedded.server_properties": {
        "listener.name.sasl_plaintext.plain.sasl.jaas.config": jaas}})
    stale = tmp_path / "kafka" / "server.properties"
    stale.parent.mkdir(parents=True)
    stale.write_text("old")
    stale.chmod(0o644)
    props, _ = broker._write_config(cfg)
    assert props == stale
    assert props.stat().st_mode & 0o777 == 0o600
    assert jaas in props.read_text()


def test_storage_formats_with_a_cluster_id_that_starts_with_a_dash(tmp_path, monkeypatch):
    """1 in 32 random base64url ids start with '-': the storage tool must not read it as a flag."""
    class DashId:
        bytes = b"\xfb" + bytes(15)  # base64url "-wAAAA..."

    cfg = make_config(tmp_path, free_port())
    props, _ = broker._write_config(cfg)
    monkeypatch.setattr(broker.uuid, "uuid4", lambda: DashId)
    broker._format_storage(cfg, props)
    meta = (tmp_path / "kafka" / "data" / "meta.properties").read_text()
    assert "cluster.id=-wAAAAAAAAAAAAAAAAAAAA" in meta
