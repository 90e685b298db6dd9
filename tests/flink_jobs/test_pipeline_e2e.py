"""The whole product end to end on the embedded broker: replay -> pipeline job (ingestion, learning,
scoring) + exporter sidecar -> recommendations. Served live (the shard's own item table) and from
the registry (hot swaps, and poisoned versions made CURRENT mid-run: a checksum mismatch, another
dimension, NaN weights, a truncated file, a missing attachment; none is served, each refusal is in
the registry's log and `streamrec model list`, and the job runs with no restart allowed)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import pytest

from streamrec.flink_jobs import pipeline
import numpy as np

from streamrec.model.item_table import ItemTable
from streamrec.model.onnx_model import export_model_bytes, popularity_prior
from streamrec.model.registry import Registry
from streamrec import replay
from streamrec.core.config import to_env
from streamrec.demo import start_exporter, stop_process
from streamrec.evaluate import evaluate
from streamrec.runtime.kafka_io import ensure_topics, read_topic
from tests.support import (N_ITEMS, account_ingestion, account_recommendations, planted_stream, read_records,
                           wait_for_records)

pytestmark = pytest.mark.slow

def _histories(clean: list[dict], recs: list[dict]):
    """(record, items its user had up to and including the record's event) for every record."""
    by_offset = {(e["src_partition"], e["src_offset"]): e for e in clean}
    events = sorted(clean, key=lambda e: (e["src_partition"], e["src_offset"]))
    seen: dict[str, set[str]] = {}
    upto: dict[tuple[int, int], set[str]] = {}
    for e in events:
        seen.setdefault(e["user_id"], set()).add(e["item_id"])
        upto[(e["src_partition"], e["src_offset"])] = set(seen[e["user_id"]])
    for r in recs:
        key = (r["source_partition"], r["source_offset"])
        if key in by_offset:
            yield r, upto[key]


def _poisons(registry: Registry, good: str) -> dict[str, str]:
    """Publish one poisoned copy of ``good`` per kind; returns kind -> version."""
    model_bytes, meta = registry.load(good)
    meta = {k: v for k, v in meta.items() if k in ("item_ids", "dim")}
    table = ItemTable.from_npz_bytes(registry.load_attachment(good, "items.npz"))
    out = {}
    # checksum mismatch: the file damaged after publishing (a bad disk, a broken copy)
    version = registry.publish(model_bytes, meta, {"items.npz": table.to_npz_bytes()})
    path = registry.path(version) / "model.onnx"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    out["checksum"] = version
    # a model of another dimension (an old version, or a changed learner.dim), consistent in itself
    small = ItemTable(table.item_ids, table.vectors[:, :8].copy(), table.bias, table.popularity)
    out["dimension"] = registry.publish(
        export_model_bytes(small.vectors, small.bias, popularity_prior(small.popularity), 0.5),
        dict(meta, dim=8), {"items.npz": small.to_npz_bytes()})
    # NaN weights behind a valid checksum
    nan = ItemTable(table.item_ids, table.vectors.copy(), table.bias, table.popularity)
    nan.vectors[0, 0] = np.nan
    out["nan"] = registry.publish(model_bytes, meta, {"items.npz": nan.to_npz_bytes()})
    # a truncated model file behind a valid checksum (a writer that crashed mid-write)
    out["truncated"] = registry.publish(model_bytes[: len(model_bytes) // 3], meta,
                                        {"items.npz": table.to_npz_bytes()})
    # the item table attachment missing
    out["attachment"] = registry.publish(model_bytes, meta)
    return out


def plant_poisoned_versions(registry: Registry, stop: threading.Event, planted: dict,
                            wait_for_refusal: bool) -> None:
    """Once two versions exist, point CURRENT directly (as a broken writer would) at each poisoned
    version in turn, waiting for the job to refuse it (``wait_for_refusal``), then back at the
    good version."""
    while not stop.is_set():
        good = registry.current()
        if good is None or len(registry.list_versions()) < 2:
            time.sleep(0.2)
            continue
        planted.update(previous=good, versions=_poisons(registry, good))
        for kind, version in planted["versions"].items():
            (registry.root / "CURRENT").write_text(version)
            deadline = time.monotonic() + 20
            while wait_for_refusal and not stop.is_set() and time.monotonic() < deadline \
                    and version not in registry.refusals():
                if registry.current() != version:  # the exporter promoted meanwhile: again
                    (registry.root / "CURRENT").write_text(version)
                time.sleep(0.2)
        (registry.root / "CURRENT").write_text(good)
        planted["done"] = time.monotonic()
        return


@pytest.mark.parametrize("serve", ["live", "registry"])
def test_pipeline_end_to_end(cfg, tmp_path, serve):
    cfg = cfg.model_copy(update={
        "paths": cfg.paths.model_copy(update={"registry_dir": tmp_path / "registry"}),
        # the gate decides after 50 held-out events, an export follows 300 events after the last
        # (at 80 events/s: a version every ~4 s, so the poisons are planted while events flow)
        "exporter": cfg.exporter.model_copy(update={"interval_s": 1.0, "every_n_changes": 40,
                                                    "gate_margin": 1.0, "gate_min_events": 50,
                                                    "gate_max_wait_s": 5.0, "export_min_events": 300}),
        "learner": cfg.learner.model_copy(update={"changelog_interval_ms": 200}),
        # a cold start of 3 events (the default is 1): the popularity fallback is exercised
        "scoring": cfg.scoring.model_copy(update={"swap_check_interval_s": 0.5, "serve": serve,
                                                  "cold_start_min_events": 3}),
        "flink": cfg.flink.model_copy(update={"restart_attempts": 0}),
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

    exporter = start_exporter(cfg, tmp_path / "exporter.log")
    registry = Registry(registry_dir)
    stop, planted = threading.Event(), {}
    planter = threading.Thread(target=plant_poisoned_versions, args=(registry, stop, planted, serve == "registry"),
                               daemon=True)
    planter.start()
    # The job runs unbounded while events arrive at a steady rate, as in production: checkpoints
    # commit as it goes, the exporter sees the changelog move and publishes versions mid-run.
    run = pipeline.run(cfg, bounded=False, quiet=True, wait=False)
    try:
        time.sleep(15)  # let the job start: events then flow in at a steady rate
        result = replay.produce(cfg, cfg.kafka.topics.raw, items, rate=80, progress=False)
        assert result.failed == 0
        recs = wait_for_records(cfg, cfg.kafka.topics.recommendations, len(events), timeout_s=180)
        # The job is cancelled, not finished: what no checkpoint committed before the cancel is
        # aborted. The rejected records are the stream's last, so their commit may come a
        # checkpoint after the last recommendation's: wait for every output the test counts.
        clean = wait_for_records(cfg, cfg.kafka.topics.clean, 2400, timeout_s=60)
        dlq = wait_for_records(cfg, cfg.kafka.topics.dlq, 2, timeout_s=60)
        recs = read_records(cfg, cfg.kafka.topics.recommendations)
    finally:
        run.cancel()
        stop.set()
        stop_process(exporter)
        planter.join(5)
    log_text = (tmp_path / "exporter.log").read_text()

    # ingestion accounting: every input record ends in exactly one place
    # (read again after the cancel: nothing committed may have gone, nothing more may have come)
    for topic, before in ((cfg.kafka.topics.clean, clean), (cfg.kafka.topics.dlq, dlq)):
        after = read_records(cfg, topic)
        assert sorted(map(json.dumps, after)) == sorted(map(json.dumps, before)), topic
    assert len(clean) == 2400 and len(dlq) == 2, (len(clean), len(dlq))
    assert len(clean) + len(dlq) + len(duplicates) == len(items)
    # record by record: each raw record in exactly one of events.clean / events.dlq, or dropped
    # as a duplicate, and those are exactly the three planted ones
    raw = list(read_topic(cfg, cfg.kafka.topics.raw))
    ingested = account_ingestion(raw, clean, dlq)
    assert ingested.exact and ingested.checked == len(items), ingested
    by_key = {(r.partition, r.offset): r.value for r in raw}
    assert sorted(json.loads(by_key[k])["event_id"] for k in ingested.dropped) == \
        sorted(d["event_id"] for d in duplicates), ingested.dropped

    # every valid, unique event yields exactly one recommendation record; one with nothing to
    # show says so (`none`, no items, a reason): only the stream's first event (nothing known yet
    # but its own item) can be one
    recommended = account_recommendations(clean, recs)
    assert recommended.exact and recommended.checked == 2400, (str(recommended), log_text[-2000:])
    none = [r for r in recs if r["strategy"] == "none"]
    assert all(r["source_offset"] == 0 for r in none) and len(none) <= 1, none  # a partition's first
    assert all(r["items"] and r["reason"] is None for r in recs if r["strategy"] != "none")
    assert all(not ({i["item_id"] for i in r["items"]} & seen) for r, seen in _histories(clean, recs))

    model_recs = sorted((r for r in recs if r["strategy"] == "model"), key=lambda r: r["event_ts"])
    served = {r["model_version"] for r in model_recs}
    if serve == "registry":
        assert len(served) >= 2, f"no hot swap happened: served {served}"
    else:  # the live table, named after the CURRENT it was checked against (the gate's promotions)
        assert all(v == "live" or v.startswith("live+v") for v in served) and len(served) >= 2, served
    # every record names what scored it
    assert all(r["model_version"] for r in recs)
    # early versions may know fewer unseen items than K; once items are known, always K
    assert all(len(r["items"]) <= cfg.scoring.top_k for r in model_recs)
    short = [r for r in model_recs[len(model_recs) // 2:] if len(r["items"]) != cfg.scoring.top_k]
    assert not short, f"{len(short)} late records with fewer than K items, e.g. {short[:2]}"
    # the poisoned versions were planted mid-run and never served; scoring went on, and the job
    # never restarted (restart_attempts = 0: a failure would have ended it)
    assert planted.get("done"), "the poisons were never planted (the exporter published < 2 versions)"
    poisoned = set(planted["versions"].values())
    assert not poisoned & {r["model_version"] for r in recs}
    if serve == "registry":  # each refusal is in the registry's log with its reason
        refusals = registry.refusals()
        reasons = {kind: " ".join(e["reason"] for e in refusals.get(v, [])) for kind, v in planted["versions"].items()}
        assert all(reasons.values()), reasons
        assert "sha256" in reasons["checksum"] and "dim 8" in reasons["dimension"], reasons
        assert "non-finite" in reasons["nan"] and "items.npz" in reasons["attachment"], reasons
        def cli(*args: str) -> str:
            env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMREC_")} | to_env(cfg)
            return subprocess.run([sys.executable, "-m", "streamrec.cli", *args], capture_output=True,
                                  text=True, env=env, check=True).stdout

        logged = [json.loads(line) for line in cli("model", "log", "--last", "0", "--json").splitlines()]
        assert poisoned <= {e["version"] for e in logged if e["action"] == "refuse"}
        # `model list` shows the refusal on every poisoned version retention has kept
        listed = {v["version"]: v for v in json.loads(cli("model", "list", "--json"))["versions"]}
        assert all(listed[v]["refused"] for v in poisoned if v in listed)
    # the popularity fallback is computed in the stream: no list waits for the first model version
    assert {r["strategy"] for r in recs} <= {"model", "popularity", "none"}
    by_offset = sorted(recs, key=lambda r: r["emitted_ts"])
    assert by_offset[-1]["strategy"] in ("model", "popularity")

    # cold start: a user's events before the model learned 3 of them get the popularity list,
    # and say so; from the 3rd on the model's
    served = [r for r in recs if r["strategy"] != "none"]
    first_rec = {}
    for rec in sorted(served, key=lambda r: r["source_offset"]):
        first_rec.setdefault(rec["user_id"], rec)
    cold = list(first_rec.values())
    assert cold and all(r["strategy"] == "popularity" and r["cold_start"] for r in cold)
    if serve == "live":  # (a registry-served job has no model before the first version)
        assert all(r["strategy"] == ("model" if r["user_events"] >= 3 else "popularity") for r in served)

    # the learned model found the planted structure: prequential recall@10 of the pipeline's own
    # lists beats popularity on the same events (in memory: MF 0.30 sequential / 0.21 stale, popularity 0.13)
    quality = evaluate(clean, recs, k=cfg.scoring.top_k, learner_cfg=cfg.learner)
    assert quality.coverage > 0.9
    assert quality.pipeline.recall > quality.popularity.recall, quality.table()

    changelog = read_records(cfg, cfg.kafka.topics.model_items)
    assert {c["item_id"] for c in changelog} <= {f"i{n}" for n in range(N_ITEMS)}
