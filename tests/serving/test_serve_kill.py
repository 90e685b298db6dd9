"""`streamrec serve` killed (SIGKILL) while it materialises the recommendations topic, after it
wrote a snapshot part-way: the restarted service resumes from that snapshot (not from the
beginning), reads the rest, and every user's answer is exactly the newest committed record with
items, nothing lost and nothing stale. No Flink: the topic is written by a producer here, with
records of the declared shape (core/records.py), many per user so that a user's newest record
lies beyond the snapshot."""

from __future__ import annotations

import random
import re
import signal
import threading
import time

import pytest

from streamrec import replay
from streamrec.core.records import RECOMMENDATION
from streamrec.runtime.kafka_io import ensure_topics
from streamrec.serving.snapshot import read_snapshot
from tests.serving.test_serve_e2e import SERVED_FIELDS, Client, start_service, stop_service
from tests.support import StreamrecProcess

pytestmark = pytest.mark.slow

USERS, RECORDS = 2_000, 60_000


def records(seed: int = 3) -> tuple[list[replay.ReplayItem], dict[str, dict]]:
    """RECORDS recommendation records over USERS users (keyed by user: a user's records share a
    partition), and each user's newest record with items. Every 50th record is a ``none``
    record, which never replaces a list."""
    rng = random.Random(seed)
    items, newest = [], {}
    for n in range(RECORDS):
        user = f"u{rng.randrange(USERS)}"
        none = n % 50 == 49
        rec = {"user_id": user,
               "items": [] if none else [{"item_id": f"i{rng.randrange(2_000)}", "score": round(rng.random(), 6)}
                                         for _ in range(10)],
               "model_version": "live", "strategy": "none" if none else "model", "cold_start": False,
               "user_events": n, "source_event_id": f"e{n}", "source_partition": 0, "source_offset": n,
               "event_ts": 1_700_000_000_000 + n, "emitted_ts": 1_800_000_000_000 + n, "batch_size": 1,
               "reason": "user_had_every_item" if none else None}
        if not none:
            newest[user] = rec
        items.append(replay.ReplayItem(user.encode(), RECOMMENDATION.encode(**rec).encode(), rec["event_ts"]))
    return items, newest


def applied(client: Client, topic: str) -> float:
    text = client.raw("GET", "/metrics")[1].decode()
    match = re.search(rf'streamrec_serving_records{{outcome="applied",topic="{re.escape(topic)}"}} (\S+)', text)
    return float(match.group(1)) if match else 0.0


def snapshot_records(path) -> int:
    """The records of the recommendations topic the snapshot at ``path`` had read (its offsets)."""
    store, _ = read_snapshot(path)
    return sum(next_offset for topic, parts in store.offsets.items() if "recommendations" in topic
               for next_offset in parts.values())


def test_serve_killed_while_materialising_resumes_from_its_snapshot_and_loses_nothing(cfg, tmp_path):
    cfg = cfg.model_copy(update={
        "serving": cfg.serving.model_copy(update={"snapshot_file": tmp_path / "serving.npz",
                                                  "snapshot_interval_s": 0.2, "probe_interval_s": 1.0}),
    })
    topic = cfg.kafka.topics.recommendations
    ensure_topics(cfg)
    items, newest = records()
    proc = StreamrecProcess(cfg, tmp_path / "serve.log", "serve", "--port", "0")
    try:
        deadline = time.monotonic() + 60
        while "serving on http://" not in proc.output:
            assert proc.proc.poll() is None and time.monotonic() < deadline, proc.output[-3000:]
            time.sleep(0.1)
        client = Client(proc.output.split("serving on ", 1)[1].split()[0])
        # the service reads while the records arrive: it is killed part-way, after a snapshot
        results = []
        producing = threading.Thread(target=lambda: results.append(replay.produce(cfg, topic, items, progress=False)))
        producing.start()
        snapshot = cfg.serving.snapshot_file
        while not (snapshot.exists() and applied(client, topic) >= RECORDS // 5):
            assert time.monotonic() < deadline + 60, proc.output[-3000:]
            time.sleep(0.02)
        proc.proc.send_signal(signal.SIGKILL)
        assert proc.wait(10) == -signal.SIGKILL
        producing.join(120)
        assert results and results[0].delivered == RECORDS and not results[0].failed
    finally:
        if proc.proc.poll() is None:
            proc.proc.kill()
    assert (snapshot_offsets := snapshot_records(snapshot)) < RECORDS, "killed after it had read everything"
    print(f"killed with a snapshot of {snapshot_offsets:,} of {RECORDS:,} records")

    proc, _, client = start_service(cfg, tmp_path / "serve-again.log")
    try:
        resumed = re.search(r"resumed from snapshot \S+: (\d+) users with a list", proc.output)
        assert resumed, proc.output[-2000:]  # not from the beginning
        for user in sorted(newest):
            status, body = client.get_list(user, 10)
            assert status == 200 and body["source"] == "stream", (user, body)
            assert {f: body[f] for f in SERVED_FIELDS} == {f: newest[user][f] for f in SERVED_FIELDS}, user
        # the resumed reader read from the snapshot's offsets on: at most the records after it again
        assert applied(client, topic) < RECORDS, "the restarted service read the topic from the beginning"
        print(f"resumed with {resumed.group(1)} users, then applied {applied(client, topic):,.0f} records")
    finally:
        stop_service(proc)
