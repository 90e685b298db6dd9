"""Without a broker the service runs on: /readyz's reason says why it is not ready, and lookups
answer from what it has (no Kafka needed: a closed port is the absent broker)."""

from __future__ import annotations

import time

from streamrec.core.config import load_config
from streamrec.serving.service import ServingService
from tests.support import free_port


def test_an_absent_broker_makes_the_service_unready_not_dead(tmp_path):
    cfg = load_config(config_file=None, env={}, overrides={
        "paths.state_dir": str(tmp_path), "kafka.bootstrap_servers": f"127.0.0.1:{free_port()}",
        "serving.broker_timeout_s": 0.5, "serving.probe_interval_s": 0.5, "scoring.provider": "cpu"})
    service = ServingService(cfg)
    service.start()
    try:
        deadline = time.monotonic() + 20
        while "did not answer" not in service.materializer.readiness()[1]:
            assert time.monotonic() < deadline, service.materializer.readiness()
            time.sleep(0.1)
        ready, reason = service.materializer.readiness()
        assert not ready and cfg.bootstrap_servers in reason
        answer = service.recommendations("anyone", 5)
        assert answer["source"] == "popularity" and answer["items"] == []
    finally:
        service.stop()
    assert not (tmp_path / cfg.serving.snapshot_file).exists()  # nothing read, nothing written
