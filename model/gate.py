"""Quality gate: a candidate model is promoted only if its recall@k on recent held-out events is
not worse than the serving model's by more than a margin.

Protocol (see docs/registry.md): the exporter keeps the last ``exporter.gate_events`` clean events
that arrived *after* the candidate's training position, as ``(user_id, item_id)`` pairs, plus
each user's ``seen`` items from before. For every user with a vector, both models rank all items
with ``seen`` excluded (the user's own held-out items are never excluded); an event is a hit when
its item is in that user's top ``k``. recall@k = hits / evaluated events. Both models are scored
with the same user vectors, events and exclusions, so only the item side differs.

>>> gate_decision(0.30, None, 0.02)
(True, 'first model: no current model to compare with')
>>> gate_decision(0.29, 0.30, 0.02)[0], gate_decision(0.27, 0.30, 0.02)[0]
(True, False)
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Mapping, Protocol, Sequence

import numpy as np

log = logging.getLogger(__name__)


class _Scorer(Protocol):
    dim: int
    version: str | None

    def topk(
        self, user_vectors: np.ndarray, k: int, exclude: Sequence[Iterable[str] | None] | None = None
    ) -> list[list[tuple[str, float]]]: ...


@dataclass
class RecallResult:
    """recall@k and how it was obtained."""

    recall: float
    k: int
    hits: int = 0
    evaluated: int = 0
    #: events whose user has no vector (not evaluated).
    skipped_no_vector: int = 0
    #: evaluated events whose item the model does not know (always misses).
    unknown_items: int = 0
    users: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class GateResult:
    promote: bool
    reason: str
    candidate: RecallResult
    current: RecallResult | None
    margin: float
    figures: dict[str, Any] = field(default_factory=dict)


def evaluate(
    scoring_model: _Scorer,
    user_vectors: Mapping[str, np.ndarray],
    events: Sequence[tuple[str, str]],
    seen: Mapping[str, set[str]] | None = None,
    k: int = 10,
    batch_size: int = 256,
) -> RecallResult:
    """recall@k of ``scoring_model`` on held-out ``events`` with counts (see module docstring)."""
    if k < 1:
        raise ValueError("k must be >= 1")
    seen = seen or {}
    targets: dict[str, list[str]] = {}
    skipped = 0
    for user_id, item_id in events:
        if user_id not in user_vectors:
            skipped += 1
            continue
        targets.setdefault(user_id, []).append(item_id)
    known = getattr(scoring_model, "index", None)
    result = RecallResult(recall=0.0, k=k, skipped_no_vector=skipped, users=len(targets))
    users = list(targets)
    for start in range(0, len(users), batch_size):
        chunk = users[start:start + batch_size]
        mat = np.stack([np.asarray(user_vectors[u], dtype=np.float32).reshape(-1) for u in chunk])
        exclude = [set(seen.get(u, ())) - set(targets[u]) for u in chunk]
        ranked = scoring_model.topk(mat, k, exclude=exclude)
        for user_id, row in zip(chunk, ranked):
            top = {item_id for item_id, _ in row}
            for item_id in targets[user_id]:
                result.evaluated += 1
                result.hits += item_id in top
                if known is not None and item_id not in known:
                    result.unknown_items += 1
    result.recall = result.hits / result.evaluated if result.evaluated else 0.0
    return result


def evaluate_recall(
    scoring_model: _Scorer,
    user_vectors: Mapping[str, np.ndarray],
    events: Sequence[tuple[str, str]],
    seen: Mapping[str, set[str]] | None = None,
    k: int = 10,
) -> float:
    """recall@k as a float (0.0 when no event could be evaluated); :func:`evaluate` gives counts."""
    return evaluate(scoring_model, user_vectors, events, seen, k).recall


def gate_decision(
    candidate_recall: float, current_recall: float | None, margin: float
) -> tuple[bool, str]:
    """``(promote, reason)``: promote iff ``candidate >= current - margin``; no current -> promote."""
    if current_recall is None:
        return True, "first model: no current model to compare with"
    if math.isnan(candidate_recall):
        return False, "candidate recall is NaN"
    if candidate_recall >= current_recall - margin:
        return True, (f"recall candidate {candidate_recall:.4f} >= current {current_recall:.4f}"
                      f" - margin {margin:.4f}")
    return False, (f"recall candidate {candidate_recall:.4f} < current {current_recall:.4f}"
                   f" - margin {margin:.4f}")


def run_gate(
    registry: Any,
    candidate_version: str,
    candidate_model: _Scorer,
    current_model: _Scorer | None,
    user_vectors: Mapping[str, np.ndarray],
    events: Sequence[tuple[str, str]],
    seen: Mapping[str, set[str]] | None = None,
    k: int = 10,
    margin: float = 0.02,
    actor: str = "gate",
) -> GateResult:
    """Evaluate both models, then ``registry.promote`` or ``registry.reject`` the candidate with
    the figures written into its meta.json ``quality``."""
    cand = evaluate(candidate_model, user_vectors, events, seen, k)
    cur = evaluate(current_model, user_vectors, events, seen, k) if current_model is not None else None
    promote, reason = gate_decision(cand.recall, cur.recall if cur else None, margin)
    figures = {
        "metric": f"recall@{k}",
        "candidate": cand.recall,
        "current": cur.recall if cur else None,
        "current_version": getattr(current_model, "version", None),
        "margin": margin,
        "evaluated": cand.evaluated,
        "skipped_no_vector": cand.skipped_no_vector,
        "candidate_detail": cand.as_dict(),
        "current_detail": cur.as_dict() if cur else None,
    }
    if promote:
        registry.promote(candidate_version, actor=actor, reason=reason, figures=figures)
    else:
        registry.reject(candidate_version, reason=reason, figures=figures, actor=actor)
    log.info("gate %s: %s (%s)", candidate_version, "promoted" if promote else "rejected", reason)
    return GateResult(promote, reason, cand, cur, margin, figures)
