"""A SASL-secured broker: the job authenticates with `kafka.security` (Python and Java clients),
does its work, and the password appears in no output and no log the product or Flink writes."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from streamrec.flink_jobs import ingest
from streamrec.runtime import broker
from streamrec import replay
from streamrec.runtime.kafka_io import ensure_topics, read_topic
from tests.support import free_port, make_config, planted_stream

pytestmark = pytest.mark.slow


def _flink_logs() -> list[Path]:
    import pyflink

    return sorted(Path(pyflink.__file__).parent.joinpath("log").glob("*"))


def test_sasl_broker_job_runs_and_the_password_is_in_no_output_or_log(tmp_path, capfd):
    secret = f"S3cr3t-{uuid.uuid4().hex}"
    port, controller = free_port(), free_port()
    host = "127.0.0.1"
    jaas = ('org.apache.kafka.common.security.plain.PlainLoginModule required '
            f'username="streamrec" password="{secret}" user_streamrec="{secret}";')
    cfg = make_config(tmp_path / "state", port, **{
        "embedded.controller_port": controller,
        # the embedded broker with one SASL/PLAIN listener (clients and the broker itself)
        "embedded.server_properties": {
            "listeners": f"SASL_PLAINTEXT://{host}:{port},CONTROLLER://{host}:{controller}",
            "advertised.listeners": f"SASL_PLAINTEXT://{host}:{port}",
            "inter.broker.listener.name": "SASL_PLAINTEXT",
            "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,SASL_PLAINTEXT:SASL_PLAINTEXT",
            "sasl.enabled.mechanisms": "PLAIN",
            "sasl.mechanism.inter.broker.protocol": "PLAIN",
            "listener.name.sasl_plaintext.plain.sasl.jaas.config": jaas,
        },
        "kafka.security.protocol": "SASL_PLAINTEXT",
        "kafka.security.sasl_mechanism": "PLAIN",
        "kafka.security.sasl_username": "streamrec",
        "kafka.security.sasl_password": secret,
    })
    before = {p: p.stat().st_size for p in _flink_logs()}
    broker.up(cfg, log=print)
    try:
        ensure_topics(cfg, ingest.ingestion_topics(cfg))
        events = planted_stream(300)
        assert replay.produce(cfg, cfg.kafka.topics.raw, replay.encode_events(events), progress=False).failed == 0
        summary = ingest.run(cfg, bounded=True)  # the Java client authenticates too
        assert summary.cleaned == len(events)
        assert len(list(read_topic(cfg, cfg.kafka.topics.clean))) == len(events)
    finally:
        broker.down(cfg, log=print)
    # the broker prints its settings at start: Kafka hides password values (its own JAAS line,
    # which holds the password, is in the server.properties streamrec wrote, not in a log)
    for path in (broker.broker_dir(cfg) / "logs").glob("*.log"):
        assert secret not in path.read_text(errors="replace"), f"the password is in the broker's {path.name}"
    assert secret not in (broker.broker_dir(cfg) / "stdout.log").read_text(errors="replace")
    out, err = capfd.readouterr()
    assert secret not in out and secret not in err
    # every log Flink (and the Python operators) wrote during the run: only what was appended
    for path in _flink_logs():
        if path.is_file():
            with open(path, "rb") as fh:
                fh.seek(before.get(path, 0) if path.stat().st_size >= before.get(path, 0) else 0)
                assert secret.encode() not in fh.read(), f"the password is in {path.name}"
