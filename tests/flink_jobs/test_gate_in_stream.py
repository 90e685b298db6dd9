"""The quality gate on a running pipeline with the DEFAULT margin, confidence and looks: a stretch
of the stream carries label noise (planted with a seed: every event's item replaced by a random
one, as a broken item-id mapping upstream would), at the pace of the rest of the stream. Versions
trained on it are held back: on noisy held-out events neither model can be shown no worse by the
margin (a tie, rejected at the cap), on the clean events after it the noisy version is shown
worse (rejected). Versions before the noise are promoted, and no version is promoted unless its
lower bound clears -margin. Recall is measured before, during and after the noise, by the gate
(its figures per decision, printed) and on the pipeline's own recommendations (prequential
recall@10)."""

from __future__ import annotations

import bisect
import random
import threading
import time
from datetime import datetime

import pytest

from streamrec import replay
from streamrec.core.config import ExporterConfig
from streamrec.demo import start_exporter, stop_process
from streamrec.flink_jobs import pipeline
from streamrec.model.registry import Registry
from streamrec.runtime.kafka_io import ensure_topics
from tests.support import N_ITEMS, planted_stream, read_records

pytestmark = pytest.mark.slow

BEFORE, NOISE, AFTER = 3_000, 3_000, 3_000
DURING = 600  # clean events after the noise counted as "during" (the table still holds it)
RATE = 150    # events/s, noise included
GUARD_SLACK_MS = 4_000  # a swap check (scoring.swap_check_interval_s, 2 s) and the batches in flight


def noisy_stream(seed: int = 11) -> list[dict]:
    """``planted_stream`` whose events BEFORE .. BEFORE + NOISE have a uniformly random item."""
    rng = random.Random(seed)
    events = planted_stream(BEFORE + NOISE + AFTER, seed=seed)
    for event in events[BEFORE:BEFORE + NOISE]:
        event["item_id"] = f"i{rng.randrange(N_ITEMS)}"
    return events


def prequential_recall(clean: list[dict], recs: list[dict], k: int = 10) -> list[tuple[int, bool]]:
    """(event time, hit) for every first interaction of a user with an item that had a list
    before it: the hit is whether the user's latest list before the event held the item."""
    lists: dict[str, tuple[list[int], list[set[str]]]] = {}
    for rec in sorted(recs, key=lambda r: (r["source_partition"], r["source_offset"])):
        if rec["items"]:
            offsets, items = lists.setdefault(rec["user_id"], ([], []))
            offsets.append(rec["source_offset"])
            items.append({i["item_id"] for i in rec["items"][:k]})
    seen: dict[str, set[str]] = {}
    out = []
    for e in sorted(clean, key=lambda e: e["ts"]):
        user, item = e["user_id"], e["item_id"]
        if item not in seen.get(user, ()):
            offsets, items = lists.get(user, ([], []))
            pos = bisect.bisect_left(offsets, e["src_offset"]) - 1
            if pos >= 0:
                out.append((e["ts"], item in items[pos]))
        seen.setdefault(user, set()).add(item)
    return out


def test_versions_trained_on_label_noise_are_held_back_with_the_default_gate(cfg, tmp_path):
    defaults = ExporterConfig()
    cfg = cfg.model_copy(update={
        "paths": cfg.paths.model_copy(update={"registry_dir": tmp_path / "registry"}),
        # the decision rule's settings (margin, confidence, looks) stay the defaults; the cadence
        # and the time cap are short for a short stream
        "exporter": cfg.exporter.model_copy(update={"interval_s": 1.0, "every_n_changes": 40,
                                                    "export_min_events": 300, "gate_max_wait_s": 5.0,
                                                    "gate_decide_on_stop": True,
                                                    "retention": 100}),  # every version's meta stays
        "learner": cfg.learner.model_copy(update={"changelog_interval_ms": 300}),
    })
    ex = cfg.exporter
    assert (ex.gate_margin, ex.gate_confidence, ex.gate_min_events, ex.gate_events) == (
        defaults.gate_margin, defaults.gate_confidence, defaults.gate_min_events, defaults.gate_events)
    registry = Registry(cfg.paths_resolved.registry_dir)
    ensure_topics(cfg)
    events = noisy_stream()
    noise_from, noise_to = events[BEFORE]["ts"], events[BEFORE + NOISE - 1]["ts"]
    encoded = list(replay.encode_events(events))

    exporter = start_exporter(cfg, tmp_path / "exporter.log")
    run = pipeline.run(cfg, bounded=False, quiet=True, wait=False)
    producing = threading.Thread(target=replay.produce, args=(cfg, cfg.kafka.topics.raw, encoded),
                                 kwargs={"rate": RATE, "progress": False}, daemon=True)
    try:
        time.sleep(10)
        producing.start()
        producing.join(180)
        time.sleep(8)  # the last events through the job and the exporter's last look
    finally:
        run.cancel()
        stop_process(exporter, timeout=60)

    during_to = noise_to + DURING * 500  # planted_stream's events are 500 ms apart
    decided = [e for e in registry.read_log() if e["action"] in ("promote", "reject")]
    by_phase: dict[str, list[dict]] = {"before": [], "during": [], "after": []}
    for e in decided:
        trained_to = registry.read_meta(e["version"])["training_position"]["events_watermark"] or 0
        phase = "before" if trained_to < noise_from else "during" if trained_to <= during_to else "after"
        by_phase[phase].append(e)
        f = e["figures"]
        print(f"{e['version']} trained to {phase:6s} {e['action']:7s} candidate {f.get('candidate')} "
              f"vs {f.get('current', f.get('baseline'))} n {f.get('n')} diff {f.get('difference')} "
              f"[{f.get('lower_bound')}, {f.get('upper_bound')}] {f.get('trigger')} after {f.get('waited_s')} s")
    hits = prequential_recall(read_records(cfg, cfg.kafka.topics.clean),
                              read_records(cfg, cfg.kafka.topics.recommendations))
    recall = {}
    for phase, (lo, hi) in {"before": (0, noise_from), "during": (noise_from, noise_to),
                            "after": (noise_to, float("inf"))}.items():
        sel = [hit for ts, hit in hits if lo <= ts < hi]
        recall[phase] = sum(sel) / len(sel) if sel else float("nan")
    print("pipeline prequential recall@10:", recall)

    # versions of the clean stream are promoted; versions trained on the noise are held back
    assert any(e["action"] == "promote" for e in by_phase["before"]), by_phase
    held_back = [e for e in by_phase["during"] if e["action"] == "reject"]
    assert held_back, by_phase["during"]
    # every rejection is shown worse (upper bound below -margin, at a look or the cap) or a tie at
    # the cap / stop; no version is promoted unless its lower bound clears -margin
    for e in decided:
        f = e["figures"]
        if e["action"] == "promote":
            assert f["lower_bound"] > -ex.gate_margin
        elif f["upper_bound"] >= -ex.gate_margin:
            assert f["trigger"] in ("cap", "stop"), e
    assert registry.current() is not None
    assert registry.read_meta(registry.current())["status"] == "promoted"
    # the guard: from a swap check after a shown-worse rejection until the next promotion, the
    # stream serves CURRENT (its version in model_version), not the held-back live table
    recs = read_records(cfg, cfg.kafka.topics.recommendations)
    guarded, log_entries = 0, registry.read_log()
    for n, e in enumerate(log_entries):
        if e["action"] == "reject" and e.get("hold_back_live"):
            start = datetime.fromisoformat(e["ts"]).timestamp() * 1000 + GUARD_SLACK_MS
            end = next((datetime.fromisoformat(later["ts"]).timestamp() * 1000 for later in log_entries[n + 1:]
                        if later["action"] == "promote"), float("inf"))
            window = [r["model_version"] for r in recs if start <= r["emitted_ts"] < end]
            assert set(window) <= {e["from"]}, (e, sorted(set(window)))
            guarded += len(window)
    print(f"records served by CURRENT while the live model was held back: {guarded}")
    # the noise costs the live pipeline recall while it lasts (random items cannot be predicted)
    assert recall["during"] < recall["before"] and recall["during"] < recall["after"], recall
