"""The embedded broker behind TLS with SCRAM-SHA-512 users (SASL_SSL, what a production Kafka
cluster asks for): the pipeline job (Java client), the replay and the exporter (librdkafka) all
authenticate with `kafka.security`, and neither password appears in any process's command line
while they run, nor in any output or log the product, Flink or the broker writes.

The broker's own inter-broker user is a PLAIN one in server.properties (0600); the clients'
SCRAM user is created over that authenticated channel with the Admin API, so no password is ever
an argument of a process (the storage tool's ``--add-scram`` would put it on a command line)."""

from __future__ import annotations

import subprocess
import threading
import uuid
from pathlib import Path

import pytest

from streamrec.flink_jobs import pipeline
from streamrec.runtime import broker
from streamrec import replay
from streamrec.runtime.kafka_io import admin, ensure_topics
from tests.support import account_recommendations, export_forced, free_port, make_config, planted_stream, read_records

pytestmark = pytest.mark.slow

HOST = "127.0.0.1"


def _certificates(directory: Path) -> tuple[Path, Path]:
    """A CA and a server certificate for 127.0.0.1 (openssl; test material only)."""
    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
            "-days", "2", "-subj", "/CN=streamrec-test-ca")
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
            "-subj", f"/CN={HOST}")
    (directory / "san.ext").write_text(f"subjectAltName=IP:{HOST},DNS:localhost\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", "server.crt", "-days", "2", "-extfile", "san.ext")
    openssl("pkcs8", "-topk8", "-nocrypt", "-in", "server.key", "-out", "server.p8")
    keystore = directory / "server.pem"  # Kafka's PEM keystore: the PKCS#8 key, then the chain
    keystore.write_text((directory / "server.p8").read_text() + (directory / "server.crt").read_text())
    keystore.chmod(0o600)
    return directory / "ca.pem", keystore


class CommandLineWatch:
    """Samples every process's command line (what `ps` shows any user) for the secrets."""

    def __init__(self, secrets: list[str]):
        self.secrets = [s.encode() for s in secrets]
        self.found: list[str] = []
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.wait(0.3):
            for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
                try:
                    text = cmdline.read_bytes()
                except OSError:
                    continue
                if any(s in text for s in self.secrets):
                    self.found.append(text.replace(b"\0", b" ").decode(errors="replace")[:200])
            self.samples += 1

    def __enter__(self) -> "CommandLineWatch":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def _appended(paths: list[Path], before: dict[Path, int]) -> bytes:
    out = b""
    for path in paths:
        if path.is_file():
            with open(path, "rb") as fh:
                fh.seek(before.get(path, 0) if path.stat().st_size >= before.get(path, 0) else 0)
                out += fh.read()
    return out


def test_scram_over_tls_pipeline_and_exporter_and_no_secret_anywhere(tmp_path, capfd):
    import pyflink
    from confluent_kafka.admin import ScramCredentialInfo, ScramMechanism, UserScramCredentialUpsertion

    secret, admin_secret = f"S3cr3t-{uuid.uuid4().hex}", f"Adm1n-{uuid.uuid4().hex}"
    ca, keystore = _certificates(tmp_path)
    port, controller = free_port(), free_port()
    plain_admin = ('org.apache.kafka.common.security.plain.PlainLoginModule required '
                   f'username="admin" password="{admin_secret}" user_admin="{admin_secret}";')
    common = {
        "embedded.controller_port": controller,
        "embedded.server_properties": {
            "listeners": f"SASL_SSL://{HOST}:{port},CONTROLLER://{HOST}:{controller}",
            "advertised.listeners": f"SASL_SSL://{HOST}:{port}",
            "inter.broker.listener.name": "SASL_SSL",
            "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,SASL_SSL:SASL_SSL",
            "sasl.enabled.mechanisms": "PLAIN,SCRAM-SHA-512",
            "sasl.mechanism.inter.broker.protocol": "PLAIN",
            "listener.name.sasl_ssl.plain.sasl.jaas.config": plain_admin,
            "listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config":
                "org.apache.kafka.common.security.scram.ScramLoginModule required;",
            "ssl.keystore.type": "PEM",
            "ssl.keystore.location": str(keystore),
            "ssl.truststore.type": "PEM",  # the broker is its own inter-broker client
            "ssl.truststore.location": str(ca),
        },
        "kafka.security.protocol": "SASL_SSL",
        "kafka.security.ssl_ca_location": str(ca),
    }
    admin_cfg = make_config(tmp_path / "state", port, **common, **{
        "kafka.security.sasl_mechanism": "PLAIN", "kafka.security.sasl_username": "admin",
        "kafka.security.sasl_password": admin_secret})
    cfg = make_config(tmp_path / "state", port, **common, **{
        "kafka.security.sasl_mechanism": "SCRAM-SHA-512", "kafka.security.sasl_username": "streamrec",
        "kafka.security.sasl_password": secret})
    flink_logs = sorted(Path(pyflink.__file__).parent.joinpath("log").glob("*"))
    before = {p: p.stat().st_size for p in flink_logs}
    with CommandLineWatch([secret, admin_secret]) as watch:
        broker.up(admin_cfg, log=print)
        try:
            upsert = UserScramCredentialUpsertion(
                "streamrec", ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, 8192), secret.encode())
            client = admin(admin_cfg)  # referenced until the futures are done
            for future in client.alter_user_scram_credentials([upsert]).values():
                future.result(30)
            ensure_topics(cfg)  # from here on only the SCRAM user, over TLS
            events = planted_stream(300)
            assert replay.produce(cfg, cfg.kafka.topics.raw, replay.encode_events(events),
                                  progress=False).failed == 0
            run = pipeline.run(cfg, bounded=True, quiet=True, with_features=False)
            assert run.ingest.cleaned == len(events)
            clean = read_records(cfg, cfg.kafka.topics.clean)
            recs = read_records(cfg, cfg.kafka.topics.recommendations)
            recommended = account_recommendations(clean, recs)  # the Java client read and wrote over TLS
            assert recommended.exact and recommended.checked == len(events), recommended
            version = export_forced(cfg)
            assert version
        finally:
            broker.down(admin_cfg, log=print)
    assert watch.samples > 10 and watch.found == [], f"a password on a command line: {watch.found}"
    out, err = capfd.readouterr()
    logs = [*(broker.broker_dir(cfg) / "logs").glob("*.log"), broker.broker_dir(cfg) / "stdout.log"]
    texts = {"output": (out + err).encode(), "broker logs": _appended(logs, {}),
             "flink logs": _appended(flink_logs, before)}
    for where, text in texts.items():
        for s in (secret, admin_secret):
            assert s.encode() not in text, f"a password is in the {where}"
