"""Prequential, latency-independent evaluation of the pipeline's recommendations.

For every cleaned event (u, i) in stream order, take the latest recommendation list for u whose
``source_offset`` is below the event's ``src_offset`` (a user's events all live in one
``events.raw`` partition, so offsets order them); it is a hit if i is in that list. A record with
no items (``strategy`` ``none``: the user had every known item) is not a list: the user's
previous list stays the latest, as if the record were not there. Only first
interactions are evaluated (items the user already had are excluded from every list, so a
re-consumption can never be a hit). Reported over the events that had a prior list, with the
coverage (share of evaluated events that had one).

In the same pass and on exactly the same events, two baselines:
- windowed popularity (the most popular items of the last ``popularity_window`` events);
- a sequential in-memory reference of the pipeline's model (:class:`udfs.online_mf.OnlineMF`,
  same hyper-parameters, snapshot refreshed after every event: no staleness, no asynchrony).
Both baselines exclude everything the user has had (the protocol's "seen items excluded"); the
pipeline excludes the user's ``learner.recent_items`` most recent items (its keyed state).
The ratio pipeline / reference is what staleness and asynchrony cost.

The events and recommendations are the topics' records (core/records.py ``CLEAN_EVENT``,
``RECOMMENDATION``; :func:`evaluate_topics` decodes them strictly); :func:`evaluate` reads the
fields below of them.

>>> events = [dict(user_id="u", item_id=i, src_partition=0, src_offset=n, weight=1.0, ts=n, event_id=str(n))
...           for n, i in enumerate(["a", "b", "c"])]
>>> recs = [dict(user_id="u", source_offset=0, items=[{"item_id": "b", "score": 1.0}])]
>>> r = evaluate(events, recs, k=10, baselines=False)
>>> (r.pipeline.evaluated, r.pipeline.hits, round(r.coverage, 3))
(2, 1, 0.667)
"""

from __future__ import annotations

import bisect
import math
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from typing import Iterable

import numpy as np

from streamrec.core.records import CLEAN_EVENT, RECOMMENDATION
from streamrec.udfs.prequential import hit_rank, ndcg_of_rank


@dataclass
class Metrics:
    evaluated: int = 0
    hits: int = 0
    ndcg_sum: float = 0.0
    ranks: list[int] = field(default_factory=list, repr=False)

    def add(self, rank: int) -> None:
        self.evaluated += 1
        self.ranks.append(rank)
        if rank >= 0:
            self.hits += 1
            self.ndcg_sum += ndcg_of_rank(rank)

    @property
    def recall(self) -> float:
        return self.hits / self.evaluated if self.evaluated else math.nan

    @property
    def ndcg(self) -> float:
        return self.ndcg_sum / self.evaluated if self.evaluated else math.nan

    def rolling_recall(self, window: int = 2000) -> np.ndarray:
        hits = (np.asarray(self.ranks) >= 0).astype(np.float64)
        if len(hits) < window:
            return np.cumsum(hits) / np.arange(1, len(hits) + 1)
        return np.convolve(hits, np.ones(window) / window, mode="valid")

    def summary(self) -> dict:
        return {"evaluated": self.evaluated, "hits": self.hits, "recall": self.recall, "ndcg": self.ndcg}


@dataclass
class EvalResult:
    k: int
    events: int             # cleaned events read
    first_interactions: int
    with_prior_list: int
    pipeline: Metrics
    popularity: Metrics | None
    reference: Metrics | None

    @property
    def coverage(self) -> float:
        return self.with_prior_list / self.first_interactions if self.first_interactions else math.nan

    @property
    def ratio(self) -> float:
        if self.reference is None or not self.reference.recall:
            return math.nan
        return self.pipeline.recall / self.reference.recall

    def to_dict(self) -> dict:
        out = {"k": self.k, "events": self.events, "first_interactions": self.first_interactions,
               "with_prior_list": self.with_prior_list, "coverage": self.coverage,
               "pipeline": self.pipeline.summary(), "pipeline_over_reference": self.ratio}
        for name in ("popularity", "reference"):
            metrics = getattr(self, name)
            out[name] = metrics.summary() if metrics else None
        return out

    def table(self) -> str:
        rows = [("pipeline", self.pipeline)]
        rows += [(n, m) for n, m in (("popularity (windowed)", self.popularity),
                                      ("reference (sequential, no staleness)", self.reference)) if m]
        lines = [f"{'model':40s} {'recall@' + str(self.k):>10s} {'NDCG@' + str(self.k):>9s} {'events':>8s}"]
        for name, m in rows:
            lines.append(f"{name:40s} {m.recall:10.4f} {m.ndcg:9.4f} {m.evaluated:8d}")
        lines.append(f"coverage: {self.coverage:.3f} of {self.first_interactions} first interactions "
                     f"had a prior list; pipeline/reference = {self.ratio:.2f}")
        return "\n".join(lines)


def stream_order(events: Iterable[dict]) -> list[dict]:
    """Cleaned events in event-time order (ties: partition, then offset)."""
    return sorted(events, key=lambda e: (e["ts"], e["src_partition"], e["src_offset"]))


def evaluate(events: Iterable[dict], recommendations: Iterable[dict], k: int = 10,
             baselines: bool = True, learner_cfg=None, popularity_window: int = 5000) -> EvalResult:
    events = stream_order(events)
    lists: dict[str, tuple[list[int], list[list[str]]]] = defaultdict(lambda: ([], []))
    for rec in sorted(recommendations, key=lambda r: r["source_offset"]):
        if not rec["items"]:  # nothing was shown: the previous list is still the user's latest
            continue
        offsets, items = lists[rec["user_id"]]
        offsets.append(rec["source_offset"])
        items.append([it["item_id"] for it in rec["items"]][:k])

    popularity = reference = None
    if baselines:
        from streamrec.udfs.online_mf import OnlineMF
        from streamrec.udfs.popularity import Popularity

        pop_model, ref_model = Popularity(window=popularity_window), OnlineMF(learner_cfg, snapshot_every=1)
        popularity, reference = Metrics(), Metrics()
    pipeline = Metrics()
    seen: dict[str, set[str]] = defaultdict(set)
    first = with_list = 0
    for event in events:
        user, item = event["user_id"], event["item_id"]
        if item not in seen[user]:
            first += 1
            offsets, item_lists = lists.get(user, ([], []))
            pos = bisect.bisect_left(offsets, event["src_offset"]) - 1
            if pos >= 0:
                with_list += 1
                pipeline.add(hit_rank(item_lists[pos], item))
                if baselines:
                    popularity.add(hit_rank(pop_model.recommend(user, k, exclude=seen[user]), item))
                    reference.add(hit_rank(ref_model.recommend(user, k, exclude=seen[user]), item))
        seen[user].add(item)
        if baselines:
            weight = float(event["weight"])
            pop_model.learn_one(user, item, weight)
            ref_model.learn_one(user, item, weight, event["event_id"])
    return EvalResult(k, len(events), first, with_list, pipeline, popularity, reference)


def evaluate_topics(cfg, k: int = 10, baselines: bool = True) -> EvalResult:
    """Read ``events.clean`` and ``recommendations`` (read_committed) and evaluate."""
    from streamrec.runtime.kafka_io import read_topic

    events = [CLEAN_EVENT.decode(r.value) for r in read_topic(cfg, cfg.kafka.topics.clean)]
    recs = [RECOMMENDATION.decode(r.value) for r in read_topic(cfg, cfg.kafka.topics.recommendations)]
    return evaluate(events, recs, k=k, baselines=baselines, learner_cfg=cfg.learner)


__all__ = ["Metrics", "EvalResult", "evaluate", "evaluate_topics", "stream_order", "asdict"]
