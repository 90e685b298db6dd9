"""``streamrec demo`` / ``make demo``: the whole product on one machine, then everything stopped."""

from __future__ import annotations

import sys
import time

from streamrec import assets, broker, kafka_io, replay
from streamrec.config import Config


def _say(msg: str) -> None:
    print(f"[demo] {msg}", flush=True)


def run_demo(cfg: Config, limit: int | None = None, keep_running: bool = False) -> int:
    from flink_jobs import pipeline

    started_at = time.monotonic()
    _say(assets.check_java())
    data_dir = assets.ml100k_dir(cfg)
    assets.connector_jars(cfg)
    status = broker.up(cfg, log=_say)
    try:
        # A demo starts from a clean slate so its counts mean something.
        topics = cfg.kafka.topics.all()
        kafka_io.delete_topics(cfg, topics)
        kafka_io.ensure_topics(cfg, topics)
        events = replay.ml100k_events(data_dir)
        if limit:
            events = events[:limit]
        _say(f"replaying {len(events):,} ML-100k events into {cfg.kafka.topics.raw}")
        result = replay.produce(cfg, cfg.kafka.topics.raw, replay.encode_events(events), total=len(events))
        if result.failed:
            _say(f"replay failed: {result.failed} records undelivered ({result.first_error})")
            return 1
        _say(f"replayed {result.delivered:,} events at {result.rate:,.0f} events/s")
        job_start = time.monotonic()
        pipeline.run(cfg, bounded=True)
        job_seconds = time.monotonic() - job_start
        out = sum(1 for _ in kafka_io.read_topic(cfg, cfg.kafka.topics.clean))
        _say(f"pipeline finished in {job_seconds:.1f} s: {result.delivered:,} events in, "
             f"{out:,} records in {cfg.kafka.topics.clean} (read_committed)")
        _say("stages run: pass-through only; ingestion, learning and scoring are not built yet")
        _say(f"demo done in {time.monotonic() - started_at:.0f} s")
        return 0 if out == result.delivered else 1
    finally:
        if status.started and not keep_running:
            broker.down(cfg, log=_say)
        elif status.embedded and not keep_running:
            _say("the broker was already running before the demo; left running (`streamrec down` stops it)")
        sys.stdout.flush()
