"""The whole product end to end on the embedded broker: replay -> pipeline job (ingestion, learning,
scoring) + exporter sidecar -> recommendations, with a hot swap and a corrupt version planted mid-run."""

from __future__ import annotations

import json
import random
import threading
import time
from collections import Counter

import pytest

from flink_jobs import pipeline
from model.registry import Registry
from streamrec import replay
from streamrec.demo import start_exporter, stop_process
from streamrec.kafka_io import ensure_topics, read_topic

pytestmark = pytest.mark.slow

N_USERS, N_ITEMS, N_GROUPS = 120, 80, 4


def planted_stream(n_events: int, seed: int = 7) -> list[dict]:
    """Users of group g mostly interact with items of group g; a few late-coming new users."""
    rng = random.Random(seed)
    events = []
    for n in range(n_events):
        user = rng.randrange(N_USERS if n < n_events * 0.9 else N_USERS + 20)  # +20 new users at the end
        group = user % N_GROUPS
        per = N_ITEMS // N_GROUPS
        item = group * per + rng.randrange(per) if rng.random() < 0.85 else rng.randrange(N_ITEMS)
        events.append({"event_id": f"ev-{n}", "user_id": f"u{user}", "item_id": f"i{item}",
                       "event_type": rng.choice(["view", "click", "cart", "purchase"]),
                       "ts": 1_700_000_000_000 + n * 500})
    return events


def plant_corrupt_version(registry: Registry, stop: threading.Event, planted: dict) -> None:
    """Once two versions exist, publish a copy of CURRENT with a damaged model file and point
    CURRENT at it directly (as a broken writer or a bad disk would)."""
    while not stop.is_set():
        current = registry.current()
        if current is not None and len(registry.list_versions()) >= 2:
            model_bytes, meta = registry.load(current)
            meta = {k: v for k, v in meta.items() if k in ("item_ids", "dim")}
            attachments = {"items.npz": registry.load_attachment(current, "items.npz")}
            version = registry.publish(model_bytes, meta, attachments)
            path = registry.path(version) / "model.onnx"
            data = bytearray(path.read_bytes())
            data[len(data) // 2] ^= 0xFF
            path.write_bytes(bytes(data))
            (registry.root / "CURRENT").write_text(version)
            planted.update(version=version, previous=current, at=time.monotonic())
            return
        time.sleep(0.2)


def test_pipeline_end_to_end_with_hot_swap_and_corrupt_version(cfg, tmp_path):
    cfg = cfg.model_copy(update={
        "paths": cfg.paths.model_copy(update={"registry_dir": tmp_path / "registry"}),
        "exporter": cfg.exporter.model_copy(update={"interval_s": 1.0, "every_n_changes": 40,
                                                    "gate_margin": 1.0}),
        "learner": cfg.learner.model_copy(update={"item_emit_interval_ms": 0}),
        "scoring": cfg.scoring.model_copy(update={"swap_check_interval_s": 0.5}),
    })
    registry_dir = cfg.paths_resolved.registry_dir
    registry_dir.mkdir(parents=True)
    ensure_topics(cfg)
    events = planted_stream(2400)
    duplicates = [dict(events[n]) for n in (10, 500, 1500)]  # same event_id: must be removed
    malformed = [b'{"event_id": "bad-1", "user_id": "u1"', b'{"event_id":"bad-2","user_id":"","item_id":"i1",'
                 b'"event_type":"view","ts":1700000000000}']
    items = list(replay.encode_events(events + duplicates))
    items += [replay.ReplayItem(None, raw, None) for raw in malformed]
    result = replay.produce(cfg, cfg.kafka.topics.raw, items, progress=False)
    assert result.failed == 0

    exporter = start_exporter(cfg, tmp_path / "exporter.log")
    registry = Registry(registry_dir)
    stop, planted = threading.Event(), {}
    planter = threading.Thread(target=plant_corrupt_version, args=(registry, stop, planted), daemon=True)
    planter.start()
    try:
        run = pipeline.run(cfg, bounded=True, quiet=True)
    finally:
        stop.set()
        stop_process(exporter)
        planter.join(5)
    log_text = (tmp_path / "exporter.log").read_text()

    # ingestion accounting
    assert run.ingest.cleaned == 2400 and run.ingest.duplicates == 3 and run.ingest.dlq == 2

    recs = [r.json() for r in read_topic(cfg, cfg.kafka.topics.recommendations)]
    # every valid, unique event yields exactly one recommendation record (throttle off by default)
    assert len(recs) == 2400, log_text[-2000:]
    source_ids = Counter(r["source_event_id"] for r in recs)
    assert set(source_ids) == {e["event_id"] for e in events}
    assert max(source_ids.values()) == 1  # read_committed: no duplicates

    model_recs = [r for r in recs if r["strategy"] == "model"]
    served = {r["model_version"] for r in model_recs}
    assert len(served) >= 2, f"no hot swap happened: served {served}"
    # early versions know few items (seen ones are excluded); once items are known, always K
    assert all(0 < len(r["items"]) <= cfg.scoring.top_k for r in model_recs)
    assert all(len(r["items"]) == cfg.scoring.top_k for r in model_recs[len(model_recs) // 2:])
    # the corrupt version was planted mid-run and never served; scoring went on
    assert planted, "the corrupt version was never planted (the exporter published < 2 versions)"
    assert planted["version"] not in {r["model_version"] for r in recs}
    by_offset = sorted(recs, key=lambda r: r["emitted_ts"])
    assert by_offset[-1]["strategy"] in ("model", "popularity")

    # cold start: a user's first events get the popularity list, and say so
    first_rec = {}
    for rec in sorted(recs, key=lambda r: r["source_offset"]):
        first_rec.setdefault(rec["user_id"], rec)
    cold = [r for r in first_rec.values() if r["model_version"] is not None]
    assert cold and all(r["strategy"] == "popularity" and r["cold_start"] for r in cold)

    # the learned model beats chance on the planted structure: most model lists stay in-group
    late = model_recs[len(model_recs) // 2:]
    in_group = sum(
        sum(int(it["item_id"][1:]) // (N_ITEMS // N_GROUPS) == int(r["user_id"][1:]) % N_GROUPS
            for it in r["items"]) for r in late) / (len(late) * cfg.scoring.top_k)
    assert in_group > 0.5, f"only {in_group:.2f} of recommended items in the user's group"

    changelog = [json.loads(r.value) for r in read_topic(cfg, cfg.kafka.topics.model_items)]
    assert {c["item_id"] for c in changelog} <= {f"i{n}" for n in range(N_ITEMS)}
