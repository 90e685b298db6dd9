"""A second stream for the quality check: a bigger catalogue, heavy users, years of event time.

Planted structure, so there is something to learn: ``clusters`` groups of items; every user
prefers one or two clusters (the second one replacing the first over the user's lifetime: taste
drifts), and within a cluster items are Zipf-popular. User activity is Zipf too, so a few users
have thousands of events (more than ``learner.recent_items``: their whole history must be
excluded, not the last 200). Events spread over ``years`` of event time.

``quality(...)`` runs the pipeline's learner core (:class:`udfs.shard_model.ShardModel`, the
exact code of the Flink operator, batch for batch: tests/flink_jobs/test_learning_equivalence.py)
and the sequential reference on the stream, with the evaluator of ``make bench``.

    python -m streamrec.bench.synthetic [EVENTS]
"""

from __future__ import annotations

import sys
import time
from collections import Counter

import numpy as np

DAY_MS = 86_400_000


def synthetic_stream(events: int = 100_000, items: int = 10_000, users: int = 2_000, clusters: int = 50,
                     years: float = 3.0, seed: int = 11) -> list[dict]:
    rng = np.random.default_rng(seed)
    per = items // clusters
    within = 1.0 / np.arange(1, per + 1) ** 0.9
    within /= within.sum()
    activity = 1.0 / np.arange(1, users + 1) ** 1.1
    activity /= activity.sum()
    first = rng.integers(clusters, size=users)
    second = rng.integers(clusters, size=users)
    who = rng.choice(users, size=events, p=activity)
    seen_count = np.zeros(users, np.int64)
    totals = np.bincount(who, minlength=users)
    t0 = 1_420_070_400_000  # 2015-01-01
    span = years * 365 * DAY_MS
    out = []
    for n, u in enumerate(who.tolist()):
        progress = seen_count[u] / max(totals[u], 1)  # taste drifts from the first to the second cluster
        r = rng.random()
        if r < 0.85:
            cluster = first[u] if rng.random() > progress else second[u]
            item = cluster * per + int(rng.choice(per, p=within))
        else:
            item = int(rng.integers(items))
        seen_count[u] += 1
        out.append({"event_id": f"s{n}", "user_id": f"su{u}", "item_id": f"si{item}", "event_type": "click",
                    "ts": int(t0 + span * n / events), "weight": 1.0, "src_partition": 0, "src_offset": n})
    return out


def quality(cfg, events: list[dict], batch: int = 256, say=print) -> dict:
    """Recall@k of the shard core and of the sequential reference on ``events``, with the share
    of evaluated events from users past ``learner.recent_items`` items."""
    from streamrec.evaluate import evaluate
    from streamrec.udfs.online_mf import LearnerParams
    from streamrec.udfs.shard_model import Event, ShardModel, ShardSettings

    sc = cfg.scoring
    shard = ShardModel(LearnerParams.of(cfg.learner), ShardSettings.from_config(cfg))
    users, recs = {}, []
    cpu = time.process_time()
    for lo in range(0, len(events), batch):
        out = shard.process([Event(e["event_id"], e["user_id"], e["item_id"], e["weight"], e["ts"], 0, e["src_offset"])
                             for e in events[lo:lo + batch]], users, now_ms=0)
        users.update(out.user_records)
        recs += out.recommendations
    core_cpu = (time.process_time() - cpu) / len(events) * 1e6
    say(f"second stream: {len(events):,} events, learner core {core_cpu:.0f} CPU µs/event; "
        "replaying the sequential reference ...")
    ev = evaluate(events, recs, k=sc.top_k, learner_cfg=cfg.learner)
    history: dict[str, set] = {}
    heavy = evaluated = 0
    for e in events:
        had = history.setdefault(e["user_id"], set())
        if e["item_id"] not in had:
            evaluated += 1
            heavy += len(had) >= cfg.learner.recent_items
        had.add(e["item_id"])
    return {"events": len(events), "items": len({e["item_id"] for e in events}),
            "users": len(history), "max_user_events": max(Counter(e["user_id"] for e in events).values()),
            "years": round((events[-1]["ts"] - events[0]["ts"]) / (365 * DAY_MS), 2),
            "evaluated_from_users_past_recent_items": heavy / evaluated if evaluated else None,
            "batch": batch, "core_cpu_us_per_event": round(core_cpu, 1),
            "pipeline": ev.pipeline.summary(), "reference": ev.reference.summary(),
            "popularity": ev.popularity.summary(), "pipeline_over_reference": ev.ratio,
            "coverage": ev.coverage}


def main(argv: list[str] | None = None) -> int:
    from streamrec.core.config import load_config

    argv = sys.argv[1:] if argv is None else argv
    n = int(argv[0]) if argv else 100_000
    result = quality(load_config(), synthetic_stream(n))
    for key, value in result.items():
        print(f"{key}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
