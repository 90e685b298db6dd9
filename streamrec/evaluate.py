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

Beside recall@K and NDCG@K, every model's lists are described by (plain functions below, each
with its exact definition; :class:`Metrics` accumulates the same figures in the one pass):

- precision@K (:func:`precision_at_k`): hits over the list slots shown, so ``recall / K`` for
  full lists (one relevant item per evaluated event);
- catalogue coverage (:func:`catalogue_coverage`): distinct items in the evaluated lists over the
  distinct items of the whole stream;
- novelty (:func:`novelty`): the mean self-information ``-log2(popularity)`` of the recommended
  items, popularity as of the evaluated event (its share of the events before it);
- the share of cold-start lists (:func:`cold_start_share`): evaluated events judged by a list the
  pipeline marked ``cold_start`` (popularity, the user too new); for the baselines ``None``.

``evaluate_from`` (0 to 1) evaluates only the events past that share of the stream (in stream
order; the earlier ones are still learned and still count as had): "hits counted on the last 70 %"
is ``evaluate_from=0.3``.

>>> events = [dict(user_id="u", item_id=i, src_partition=0, src_offset=n, weight=1.0, ts=n, event_id=str(n))
...           for n, i in enumerate(["a", "b", "c"])]
>>> recs = [dict(user_id="u", source_offset=0, items=[{"item_id": "b", "score": 1.0}])]
>>> r = evaluate(events, recs, k=10, baselines=False)
>>> (r.pipeline.evaluated, r.pipeline.hits, round(r.coverage, 3))
(2, 1, 0.667)
>>> m = r.pipeline  # b@1 and c@2 judged by the list [b]: 1 hit in 2 slots, 1 item of 3 shown;
>>> # b's popularity: not had before b@1 (counted as 1 of the 1 event: 0 bits), 1 of 2 before c@2 (1 bit)
>>> m.precision, m.catalogue_coverage, m.novelty, m.cold_start_share
(0.5, 0.3333333333333333, 0.5, 0.0)
"""

from __future__ import annotations

import bisect
import math
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from typing import Iterable, Mapping, Sequence

import numpy as np

from streamrec.core.records import CLEAN_EVENT, RECOMMENDATION
from streamrec.udfs.prequential import hit_rank, ndcg_of_rank


def precision_at_k(lists: Iterable[Sequence[str]], relevant: Iterable[str], k: int = 10) -> float:
    """Precision@k of lists each judged by one relevant item: the hits over the slots shown,
    ``sum(item in list[:k]) / sum(len(list[:k]))`` (a list shorter than k counts its own length;
    full lists give recall@k / k). NaN without a slot.

    >>> precision_at_k([["a", "b"], ["c", "d"], ["e"]], ["b", "x", "e"], k=2)
    0.4
    >>> precision_at_k([["a", "b", "c"]], ["c"], k=2)
    0.0
    """
    hits = slots = 0
    for shown, item in zip(lists, relevant):
        shown = list(shown)[:k]
        slots += len(shown)
        hits += item in shown
    return hits / slots if slots else math.nan


def catalogue_coverage(lists: Iterable[Sequence[str]], catalogue: int, k: int = 10) -> float:
    """The share of the catalogue ever recommended: distinct items in the lists' first ``k``
    slots over ``catalogue`` (the evaluator's: the distinct items of the whole stream). NaN for an
    empty catalogue.

    >>> catalogue_coverage([["a", "b"], ["b", "c"], ["a"]], catalogue=8)
    0.375
    >>> catalogue_coverage([["a", "b"], ["c", "d"]], catalogue=4, k=1)
    0.5
    """
    seen = {item for shown in lists for item in list(shown)[:k]}
    return len(seen) / catalogue if catalogue else math.nan


def self_information(count: int, total: int) -> float:
    """``-log2(max(count, 1) / total)`` bits: an item with ``count`` of the ``total`` events
    before the evaluated one (an item not had yet counts as had once). 0 for the only item.

    >>> self_information(2, 8), self_information(0, 8), self_information(5, 5)
    (2.0, 3.0, -0.0)
    """
    return -math.log2(max(count, 1) / total)


def novelty(lists: Iterable[Sequence[str]], counts: Iterable[Mapping[str, int]], totals: Iterable[int],
            k: int = 10) -> float:
    """Mean self-information of the recommended items (higher: less popular items recommended):
    over every slot of every list's first ``k``, :func:`self_information` of its item with the
    popularity as of that list's evaluated event (``counts``: events per item before it,
    ``totals``: events before it, all users, re-consumptions included). In bits; NaN without a
    slot.

    >>> novelty([["a", "b"], ["c"]], [{"a": 4, "b": 1}, {"a": 4, "b": 2, "c": 2}], [8, 8])
    2.0
    """
    bits = slots = 0.0
    for shown, count, total in zip(lists, counts, totals):
        for item in list(shown)[:k]:
            bits += self_information(count.get(item, 0), total)
            slots += 1
    return bits / slots if slots else math.nan


def cold_start_share(flags: Iterable[bool]) -> float:
    """The share of evaluated events judged by a cold-start list (the record's ``cold_start``:
    popularity, as the user had fewer than ``scoring.cold_start_min_events`` learned events).

    >>> cold_start_share([True, False, False, False])
    0.25
    """
    flags = list(flags)
    return sum(map(bool, flags)) / len(flags) if flags else math.nan


@dataclass
class Metrics:
    evaluated: int = 0
    hits: int = 0
    ndcg_sum: float = 0.0
    ranks: list[int] = field(default_factory=list, repr=False)
    slots: int = 0              #: list slots shown (first k of each evaluated list)
    novelty_bits: float = 0.0   #: self-information summed over those slots
    cold: int | None = 0        #: evaluated events judged by a cold-start list (None: not told)
    recommended: set[str] = field(default_factory=set, repr=False)  #: distinct items in the lists
    catalogue: int = 0          #: distinct items of the stream (set by :func:`evaluate`)

    def add(self, rank: int, shown: Sequence[str] = (), bits: float = 0.0, cold: bool | None = False) -> None:
        """One evaluated event: its hit ``rank``, the list ``shown`` (its first k), the summed
        self-information of those items, whether the list was a cold-start one."""
        self.evaluated += 1
        self.ranks.append(rank)
        if rank >= 0:
            self.hits += 1
            self.ndcg_sum += ndcg_of_rank(rank)
        self.slots += len(shown)
        self.novelty_bits += bits
        self.recommended.update(shown)
        if cold is None or self.cold is None:
            self.cold = None
        else:
            self.cold += bool(cold)

    @property
    def recall(self) -> float:
        return self.hits / self.evaluated if self.evaluated else math.nan

    @property
    def ndcg(self) -> float:
        return self.ndcg_sum / self.evaluated if self.evaluated else math.nan

    @property
    def precision(self) -> float:
        """:func:`precision_at_k` of the evaluated lists."""
        return self.hits / self.slots if self.slots else math.nan

    @property
    def catalogue_coverage(self) -> float:
        """:func:`catalogue_coverage` of the evaluated lists."""
        return len(self.recommended) / self.catalogue if self.catalogue else math.nan

    @property
    def novelty(self) -> float:
        """:func:`novelty` of the evaluated lists, in bits."""
        return self.novelty_bits / self.slots if self.slots else math.nan

    @property
    def cold_start_share(self) -> float | None:
        """:func:`cold_start_share` of the evaluated lists; None where the lists carry no flag."""
        if self.cold is None:
            return None
        return self.cold / self.evaluated if self.evaluated else math.nan

    def rolling_recall(self, window: int = 2000) -> np.ndarray:
        hits = (np.asarray(self.ranks) >= 0).astype(np.float64)
        if len(hits) < window:
            return np.cumsum(hits) / np.arange(1, len(hits) + 1)
        return np.convolve(hits, np.ones(window) / window, mode="valid")

    def summary(self) -> dict:
        return {"evaluated": self.evaluated, "hits": self.hits, "recall": self.recall, "ndcg": self.ndcg,
                "precision": self.precision, "catalogue_coverage": self.catalogue_coverage,
                "novelty_bits": self.novelty, "cold_start_share": self.cold_start_share}


@dataclass
class EvalResult:
    k: int
    events: int             # cleaned events read
    first_interactions: int
    with_prior_list: int
    pipeline: Metrics
    popularity: Metrics | None
    reference: Metrics | None
    evaluate_from: float = 0.0  # the share of the stream learned before the evaluated part

    @property
    def coverage(self) -> float:
        return self.with_prior_list / self.first_interactions if self.first_interactions else math.nan

    @property
    def ratio(self) -> float:
        if self.reference is None or not self.reference.recall:
            return math.nan
        return self.pipeline.recall / self.reference.recall

    def to_dict(self) -> dict:
        out = {"k": self.k, "events": self.events, "evaluate_from": self.evaluate_from,
               "catalogue": self.pipeline.catalogue, "first_interactions": self.first_interactions,
               "with_prior_list": self.with_prior_list, "coverage": self.coverage,
               "pipeline": self.pipeline.summary(), "pipeline_over_reference": self.ratio}
        for name in ("popularity", "reference"):
            metrics = getattr(self, name)
            out[name] = metrics.summary() if metrics else None
        return out

    def table(self) -> str:
        """The text table ``streamrec eval`` and ``streamrec demo`` print: per model recall@K,
        NDCG@K, precision@K, catalogue coverage, novelty (bits) and the share of cold-start
        lists ("-": not applicable), then the coverage of prior lists."""
        rows = [("pipeline", self.pipeline)]
        rows += [(n, m) for n, m in (("popularity (windowed)", self.popularity),
                                      ("reference (sequential, no staleness)", self.reference)) if m]
        k = str(self.k)
        lines = [f"{'model':40s} {'recall@' + k:>10s} {'NDCG@' + k:>9s} {'P@' + k:>7s} {'catalog':>8s} "
                 f"{'novelty':>8s} {'cold':>6s} {'events':>8s}"]
        for name, m in rows:
            cold = "-" if m.cold_start_share is None else f"{m.cold_start_share:.3f}"
            lines.append(f"{name:40s} {m.recall:10.4f} {m.ndcg:9.4f} {m.precision:7.4f} "
                         f"{m.catalogue_coverage:8.3f} {m.novelty:8.2f} {cold:>6s} {m.evaluated:8d}")
        lines.append(f"coverage: {self.coverage:.3f} of {self.first_interactions} first interactions "
                     f"had a prior list; pipeline/reference = {self.ratio:.2f}")
        lines.append("catalog: share of the stream's items ever recommended; novelty: mean -log2(share of "
                     "earlier events) of the recommended items, bits; cold: share of cold-start lists")
        return "\n".join(lines)


def stream_order(events: Iterable[dict]) -> list[dict]:
    """Cleaned events in event-time order (ties: partition, then offset)."""
    return sorted(events, key=lambda e: (e["ts"], e["src_partition"], e["src_offset"]))


def evaluate(events: Iterable[dict], recommendations: Iterable[dict], k: int = 10,
             baselines: bool = True, learner_cfg=None, popularity_window: int = 5000,
             evaluate_from: float = 0.0) -> EvalResult:
    """The prequential evaluation (module docstring); ``evaluate_from``: evaluate only the events
    from that share of the stream on (0: all)."""
    if not 0.0 <= evaluate_from < 1.0:
        raise ValueError(f"evaluate_from must be in [0, 1), not {evaluate_from}")
    events = stream_order(events)
    start = math.floor(evaluate_from * len(events))
    lists: dict[str, tuple[list[int], list[list[str]], list[bool]]] = defaultdict(lambda: ([], [], []))
    for rec in sorted(recommendations, key=lambda r: r["source_offset"]):
        if not rec["items"]:  # nothing was shown: the previous list is still the user's latest
            continue
        offsets, items, colds = lists[rec["user_id"]]
        offsets.append(rec["source_offset"])
        items.append([it["item_id"] for it in rec["items"]][:k])
        colds.append(bool(rec.get("cold_start")))

    popularity = reference = None
    if baselines:
        from streamrec.udfs.online_mf import OnlineMF
        from streamrec.udfs.popularity import Popularity

        pop_model, ref_model = Popularity(window=popularity_window), OnlineMF(learner_cfg, snapshot_every=1)
        popularity, reference = Metrics(cold=None), Metrics(cold=None)
    pipeline = Metrics()
    seen: dict[str, set[str]] = defaultdict(set)
    counts: dict[str, int] = defaultdict(int)  # events per item so far (novelty's popularity)

    def bits(shown: list[str], total: int) -> float:
        return sum(self_information(counts.get(i, 0), total) for i in shown)

    first = with_list = 0
    for n, event in enumerate(events):
        user, item = event["user_id"], event["item_id"]
        if n >= start and item not in seen[user]:
            first += 1
            offsets, item_lists, colds = lists.get(user, ([], [], []))
            pos = bisect.bisect_left(offsets, event["src_offset"]) - 1
            if pos >= 0:
                with_list += 1
                shown = item_lists[pos]
                pipeline.add(hit_rank(shown, item), shown, bits(shown, n), colds[pos])
                if baselines:
                    for metrics, model in ((popularity, pop_model), (reference, ref_model)):
                        shown = list(model.recommend(user, k, exclude=seen[user]))[:k]
                        metrics.add(hit_rank(shown, item), shown, bits(shown, n), None)
        seen[user].add(item)
        counts[item] += 1
        if baselines:
            weight = float(event["weight"])
            pop_model.learn_one(user, item, weight)
            ref_model.learn_one(user, item, weight, event["event_id"])
    for metrics in (pipeline, popularity, reference):
        if metrics is not None:
            metrics.catalogue = len(counts)
    return EvalResult(k, len(events), first, with_list, pipeline, popularity, reference, evaluate_from)


def evaluate_topics(cfg, k: int = 10, baselines: bool = True, evaluate_from: float = 0.0) -> EvalResult:
    """Read ``events.clean`` and ``recommendations`` (read_committed) and evaluate."""
    from streamrec.runtime.kafka_io import read_topic

    events = [CLEAN_EVENT.decode(r.value) for r in read_topic(cfg, cfg.kafka.topics.clean)]
    recs = [RECOMMENDATION.decode(r.value) for r in read_topic(cfg, cfg.kafka.topics.recommendations)]
    return evaluate(events, recs, k=k, baselines=baselines, learner_cfg=cfg.learner, evaluate_from=evaluate_from)


__all__ = ["Metrics", "EvalResult", "evaluate", "evaluate_topics", "stream_order", "asdict", "precision_at_k",
           "catalogue_coverage", "self_information", "novelty", "cold_start_share"]
