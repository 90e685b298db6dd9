"""Turning scoring requests into recommendation records (plain Python; the Flink Scorer wraps it).

A request is what the UserLearner emits after learning one event: the user's fresh vector, the
items to exclude (recently seen), and where the event came from. A batch of requests is scored in
one onnxruntime call. When a young model knows fewer unseen items than K, the list is filled up
with popular items (their ``score`` is null: they were not scored by the model). Users with too
little history (fewer than ``cold_start_min_events`` learned events) get the popularity list
instead, and the record says so (``strategy``).

>>> req = ScoringRequest("u1", np.zeros(2, np.float32), ["a"], 1, "e1", 0, 7, 1000)
>>> popular = PopularityList(["a", "b", "c"], [3.0, 2.0, 1.0], "v000001")
>>> [r["items"] for r in recommend_batch([req], None, popular, k=2, cold_start_min_events=3, now_ms=5)]
[[{'item_id': 'b', 'score': 2.0}, {'item_id': 'c', 'score': 1.0}]]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

#: ``strategy`` values of a recommendation record.
MODEL, POPULARITY, NO_MODEL = "model", "popularity", "no_model"


@dataclass(frozen=True)
class ScoringRequest:
    user_id: str
    vector: np.ndarray
    recent: list[str]
    events: int
    source_event_id: str
    source_partition: int
    source_offset: int
    event_ts: int


@dataclass(frozen=True)
class PopularityList:
    """Items by descending popularity, from the current registry version's item table."""

    item_ids: list[str]
    scores: list[float]
    version: str | None

    @classmethod
    def from_arrays(cls, item_ids: Sequence[str], popularity: np.ndarray, version: str | None,
                    keep: int = 1000) -> "PopularityList":
        # stable order: popularity descending, then item id
        order = sorted(range(len(item_ids)), key=lambda n: (-float(popularity[n]), str(item_ids[n])))[:keep]
        return cls([str(item_ids[n]) for n in order], [float(popularity[n]) for n in order], version)

    def top(self, k: int, exclude: set[str]) -> list[dict]:
        out = []
        for item, score in zip(self.item_ids, self.scores):
            if item not in exclude:
                out.append({"item_id": item, "score": round(score, 6)})
                if len(out) == k:
                    break
        return out


def _record(req: ScoringRequest, items: list[dict], version: str | None, strategy: str,
            now_ms: int) -> dict:
    return {
        "user_id": req.user_id,
        "items": items,
        "model_version": version,
        "strategy": strategy,
        "cold_start": strategy != MODEL,
        "user_events": req.events,  # the user's learned-event count (UserState.events)
        "source_event_id": req.source_event_id,
        "source_partition": req.source_partition,
        "source_offset": req.source_offset,
        "event_ts": req.event_ts,
        "emitted_ts": now_ms,
    }


def recommend_batch(requests: Sequence[ScoringRequest], model, popular: PopularityList | None,
                    k: int, cold_start_min_events: int, now_ms: int) -> list[dict]:
    """One record per request, in request order. ``model`` is a ``model.scoring.ScoringModel``
    (or None before the first version exists)."""
    warm = [n for n, r in enumerate(requests) if model is not None and r.events >= cold_start_min_events]
    out: list[dict | None] = [None] * len(requests)
    if warm:
        vectors = np.stack([requests[n].vector for n in warm]).astype(np.float32, copy=False)
        excludes = [set(requests[n].recent) for n in warm]
        lists = model.topk(vectors, k, exclude=excludes)
        for n, ranked, exclude in zip(warm, lists, excludes):
            items = [{"item_id": item, "score": round(float(score), 6)} for item, score in ranked]
            if len(items) < k and popular is not None:
                # a young model may know fewer unseen items than k: fill up with popular ones
                taken = exclude | {it["item_id"] for it in items}
                items += [dict(it, score=None) for it in popular.top(k - len(items), taken)]
            out[n] = _record(requests[n], items, model.version, MODEL, now_ms)
    for n, req in enumerate(requests):
        if out[n] is None:
            if popular is None:
                out[n] = _record(req, [], None, NO_MODEL, now_ms)
            else:
                out[n] = _record(req, popular.top(k, set(req.recent)), popular.version, POPULARITY, now_ms)
    return out  # type: ignore[return-value]
