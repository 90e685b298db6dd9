"""Quality gate: a candidate model is promoted only if its recall@k on events it has not been
trained on is not worse than the serving model's by more than a margin.

Protocol (docs/registry.md, "Quality gate"), run by :class:`HoldOutGate` for the exporter:

1. **Refusals** (:func:`check_candidate`) before any evaluation: an unreadable or empty graph,
   NaN/Inf weights, a dimension other than ``learner.dim`` or CURRENT's. Status ``rejected``.
2. **Held-out events.** The candidate waits (status ``candidate``, *pending*) until
   ``min_events`` clean events at offsets at or past its training position (the ``events.clean``
   offsets recorded at its export, Kafka's next-offset convention) arrived for users that had a
   vector then; at most ``max_events`` are kept.
3. **Users.** The user vectors as of the export (a snapshot taken when it was published), so
   vectors trained on the held-out events do not leak into the score.
4. **Ranking.** For every user both models rank all items with the user's ``seen`` items
   excluded (the user's own held-out items never are); an event is a hit when its item is in the
   user's top ``k``. recall@k = hits / evaluated events.
5. **Decision.** Promote iff ``candidate >= reference - margin``. The reference is CURRENT on
   the same events and user vectors; with no loadable CURRENT it is the candidate's own
   *popularity baseline* (item vectors zeroed: bias + popularity prior only), so even the first
   model must rank better than "most popular" to be served.

>>> gate_decision(0.30, None, 0.02)
(True, 'first model: no current model to compare with')
>>> gate_decision(0.29, 0.30, 0.02)[0], gate_decision(0.27, 0.30, 0.02)[0]
(True, False)
>>> check_candidate(b"not onnx", {}, expected_dim=4).startswith("not a readable ONNX model")
True
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable, Mapping, Protocol, Sequence

import numpy as np

from streamrec.model.registry import CorruptModelError, PinnedError, RegistryError, version_number

log = logging.getLogger(__name__)

GATE_ACTOR = "gate"
FORCE_ACTOR = "cli/force"
BASELINE = "popularity baseline"


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
    seen: Mapping[str, Iterable[str]] | None = None,
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
    seen: Mapping[str, Iterable[str]] | None = None,
    k: int = 10,
) -> float:
    """recall@k as a float (0.0 when no event could be evaluated); :func:`evaluate` gives counts."""
    return evaluate(scoring_model, user_vectors, events, seen, k).recall


def _verdict(candidate_recall: float, reference_recall: float, margin: float,
             reference: str = "current") -> tuple[bool, str]:
    if math.isnan(candidate_recall):
        return False, "candidate recall is NaN"
    if candidate_recall >= reference_recall - margin:
        return True, (f"recall candidate {candidate_recall:.4f} >= {reference} {reference_recall:.4f}"
                      f" - margin {margin:.4f}")
    return False, (f"recall candidate {candidate_recall:.4f} < {reference} {reference_recall:.4f}"
                   f" - margin {margin:.4f}")


def gate_decision(
    candidate_recall: float, current_recall: float | None, margin: float
) -> tuple[bool, str]:
    """``(promote, reason)``: promote iff ``candidate >= current - margin``; no current -> promote."""
    if current_recall is None:
        return True, "first model: no current model to compare with"
    return _verdict(candidate_recall, current_recall, margin)


def run_gate(
    registry: Any,
    candidate_version: str,
    candidate_model: _Scorer,
    current_model: _Scorer | None,
    user_vectors: Mapping[str, np.ndarray],
    events: Sequence[tuple[str, str]],
    seen: Mapping[str, Iterable[str]] | None = None,
    k: int = 10,
    margin: float = 0.02,
    actor: str = GATE_ACTOR,
) -> GateResult:
    """Evaluate both models on the given events now, then ``registry.promote`` or
    ``registry.reject`` the candidate with the figures written into its meta.json ``quality``.
    The caller vouches that ``events`` are held out; the exporter uses :class:`HoldOutGate`."""
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


# ---------------------------------------------------------------------------- refusals
def check_candidate(
    model_bytes: bytes,
    meta: Mapping[str, Any],
    expected_dim: int,
    current_dim: int | None = None,
    current_version: str | None = None,
) -> str | None:
    """Why the graph ``model_bytes`` must not even be evaluated, or None: unreadable, empty, NaN
    or Inf in a weight, a dimension other than ``expected_dim`` (learner.dim) or
    ``current_dim`` (CURRENT's), or an item count meta.json disagrees with."""
    import onnx
    from onnx import numpy_helper

    try:
        graph = onnx.load_from_string(model_bytes).graph
    except Exception as exc:  # noqa: BLE001 - any parse failure is a refusal
        return f"not a readable ONNX model ({type(exc).__name__}: {exc})"
    inits = {init.name: init for init in graph.initializer}
    if "item_vectors" not in inits:
        return "not a streamrec scoring graph (no item_vectors initializer)"
    vectors = numpy_helper.to_array(inits["item_vectors"])
    if vectors.ndim != 2:
        return f"item_vectors has shape {list(vectors.shape)}, not [N, D]"
    n, dim = vectors.shape
    if n == 0:
        return "empty model: it has no items"
    for init in graph.initializer:
        values = numpy_helper.to_array(init)
        if values.dtype.kind == "f" and not np.isfinite(values).all():
            return f"{int(np.count_nonzero(~np.isfinite(values)))} non-finite (NaN/Inf) weights in {init.name}"
    if dim != expected_dim:
        return f"dimension {dim} differs from learner.dim = {expected_dim}"
    item_ids = meta.get("item_ids")
    if isinstance(item_ids, list) and len(item_ids) != n:
        return f"meta.json lists {len(item_ids)} item_ids but the graph has {n} items"
    if current_dim is not None and dim != current_dim:
        return _dim_refusal(dim, current_dim, current_version)
    return None


def _dim_refusal(dim: int, current_dim: int, current_version: str | None) -> str:
    return (f"dimension {dim} differs from CURRENT {current_version}'s {current_dim}: user vectors "
            "of one cannot rank the other's items (promote it by hand if the change is intended)")


# ---------------------------------------------------------------------------- the held-out gate
@dataclass
class GateDecision:
    """What the gate did with one version: ``status`` is ``pending`` (waiting for held-out
    events), ``promoted``, ``rejected``, ``held`` (CURRENT is pinned) or ``superseded``."""

    version: str
    status: str
    reason: str
    figures: dict[str, Any] = field(default_factory=dict)
    forced: bool = False

    @property
    def promoted(self) -> bool:
        return self.status == "promoted"

    def line(self) -> str:
        return f"gate {self.version}: {self.status}{' (forced)' if self.forced else ''}: {self.reason}"


@dataclass
class PendingCandidate:
    """A published candidate waiting for events past its training position."""

    version: str
    model: _Scorer
    #: events.clean partition -> first offset the candidate was not trained on
    cut: dict[int, int]
    #: user vectors as of the export (never updated: later ones have seen the held-out events)
    user_vectors: dict[str, np.ndarray]
    #: builds the popularity baseline, used when there is no loadable CURRENT to compare with
    baseline: Callable[[], _Scorer] | None = None
    events: list[tuple[str, str]] = field(default_factory=list)
    #: the first held-out offset per partition (always >= the cut: recorded as evidence)
    first_offsets: dict[int, int] = field(default_factory=dict)
    before_cut: int = 0         # events read after publishing at offsets before the cut (unused)
    skipped_no_vector: int = 0  # held-out events of users without a vector in the snapshot
    overflow: int = 0           # held-out events past max_events (unused)


class HoldOutGate:
    """Gates each candidate on events it has not seen; one candidate is pending at a time.

    :meth:`submit` a freshly published version (refusals, pin, ``force`` are settled at once,
    otherwise it becomes :attr:`pending`); feed every clean event to :meth:`observe`; call
    :meth:`decide` (e.g. after each consumed batch): it decides once :attr:`ready`.
    ``loader(model_bytes, meta)`` makes a scorer (e.g. ``ScoringModel.from_bytes`` on the CPU).

    A newer :meth:`submit` while one is pending supersedes the older (recorded, with its count of
    held-out events); so does a CURRENT newer than the candidate at decision time (it may have
    trained on the held-out events), and every submit supersedes older candidates nobody decided
    (left by an earlier exporter or a failed export: their user-vector snapshot is gone).
    """

    def __init__(
        self,
        registry: Any,
        loader: Callable[[bytes, dict[str, Any]], _Scorer],
        expected_dim: int,
        k: int = 10,
        margin: float = 0.02,
        min_events: int = 500,
        max_events: int = 2000,
        actor: str = GATE_ACTOR,
        force_actor: str = FORCE_ACTOR,
    ):
        if not 0 <= min_events <= max_events:
            raise ValueError(f"need 0 <= min_events <= max_events, got {min_events} and {max_events}")
        self.registry = registry
        self.loader = loader
        self.expected_dim = int(expected_dim)
        self.k, self.margin = int(k), float(margin)
        self.min_events, self.max_events = int(min_events), int(max_events)
        self.actor, self.force_actor = actor, force_actor
        self.pending: PendingCandidate | None = None
        self._current: tuple[str | None, _Scorer | None] = (None, None)
        self._failed_current: str | None = None

    # ------------------------------------------------------------------ inputs
    @property
    def ready(self) -> bool:
        return self.pending is not None and len(self.pending.events) >= self.min_events

    def observe(self, partition: int, offset: int, user_id: str, item_id: str) -> bool:
        """One ``events.clean`` record; True when it became a held-out event of the pending one."""
        p = self.pending
        if p is None:
            return False
        if offset < p.cut.get(partition, 0):
            p.before_cut += 1  # the candidate may have trained on it
            return False
        if user_id not in p.user_vectors:
            p.skipped_no_vector += 1
            return False
        if len(p.events) >= self.max_events:
            p.overflow += 1
            return False
        p.events.append((user_id, item_id))
        p.first_offsets.setdefault(partition, offset)
        return True

    def current_model(self) -> tuple[str | None, _Scorer | None]:
        """``(CURRENT, its scorer)``; the scorer is None when it cannot be loaded (logged once)."""
        version = self.registry.current()
        if version is None:
            return None, None
        if self._current[0] == version:
            return self._current
        try:
            data, meta = self.registry.load(version)
            model = self.loader(data, meta)
        except Exception as exc:  # noqa: BLE001 - corrupt / deleted: compare with the baseline
            if self._failed_current != version:
                log.error("gate: CURRENT %s cannot be loaded (%s); candidates are compared with "
                          "their %s", version, exc, BASELINE)
                self._failed_current = version
            return version, None
        self._current = (version, model)
        return self._current

    # ------------------------------------------------------------------ decisions
    def _supersede(self, version: str, reason: str, figures: dict[str, Any] | None = None) -> GateDecision:
        try:
            self.registry.supersede(version, reason, figures=figures, actor=self.actor)
        except (RegistryError, OSError) as exc:  # CURRENT meanwhile, or deleted: nothing to record
            log.warning("gate: could not mark %s superseded (%s)", version, exc)
        return GateDecision(version, "superseded", reason, dict(figures or {}))

    def submit(
        self,
        version: str,
        model_bytes: bytes,
        meta: dict[str, Any],
        user_vectors: Mapping[str, np.ndarray],
        cut: Mapping[int, int],
        force: bool = False,
        baseline: Callable[[], _Scorer] | None = None,
    ) -> GateDecision:
        """Settle or queue the freshly published ``version``; ``cut`` is its training position
        on events.clean (partition -> next offset), ``user_vectors`` the vectors at export."""
        number = version_number(version)
        if self.pending is not None and self.pending.version != version:
            old, self.pending = self.pending, None
            self._supersede(old.version, f"superseded by {version} before its decision "
                                         f"({len(old.events)} of {self.min_events} held-out events)")
        serving = self.registry.current()  # a candidate made CURRENT by hand is left alone
        for other in self.registry.undecided():  # cheap: cached summaries of meta.json
            if other not in (version, serving) and version_number(other) < number:
                self._supersede(other, f"superseded by {version}: left undecided by an earlier exporter "
                                       "or a failed export (its held-out events and user-vector snapshot are gone)")
        current_version, current = self.current_model()
        # --force may change the dimension on purpose; garbage it may not promote
        refusal = check_candidate(model_bytes, meta, self.expected_dim,
                                  None if force or current is None else current.dim, current_version)
        if refusal is not None:
            reason = f"refused before evaluation: {refusal}"
            self.registry.reject(version, reason, figures={"refused": refusal}, actor=self.actor)
            return GateDecision(version, "rejected", reason, {"refused": refusal})
        candidate = self.loader(model_bytes, meta)
        pin = self.registry.pinned()
        if pin is not None:  # a rollback holds: keep exporting, promote nothing (not even --force)
            reason = (f"held: CURRENT is pinned to {pin['version']} by {pin.get('actor')} "
                      f"({pin.get('reason')})")
            figures = {"metric": f"recall@{self.k}", "candidate": None, "current": None,
                       "current_version": current_version, "evaluated": 0}
            self.registry.hold(version, reason, figures=figures, actor=self.actor)
            return GateDecision(version, "held", reason, figures, forced=force)
        if force:
            reason = ("forced (--force): promoted at export, without waiting for held-out events "
                      "(the gate did not evaluate it)")
            figures = {"metric": f"recall@{self.k}", "candidate": None, "current": None,
                       "current_version": current_version, "evaluated": 0, "forced": True}
            self.registry.promote(version, actor=self.force_actor, reason=reason, figures=figures)
            self._current = (version, candidate)
            return GateDecision(version, "promoted", reason, figures, forced=True)
        self.pending = PendingCandidate(version, candidate, {int(p): int(o) for p, o in cut.items()},
                                        dict(user_vectors), baseline)
        return GateDecision(version, "pending", f"waiting for {self.min_events} clean events after "
                                                "its training position")

    def decide(self, seen: Mapping[str, Iterable[str]] | None = None) -> GateDecision | None:
        """Decide the pending candidate if :attr:`ready` (else None). ``seen``: each user's items
        so far (the held-out ones are never excluded for their own user)."""
        if not self.ready:
            return None
        # pending is cleared only once the decision is recorded: a failed registry write retries
        decision = self._decide(self.pending, seen)
        self.pending = None
        return decision

    def _decide(self, p: PendingCandidate, seen: Mapping[str, Iterable[str]] | None) -> GateDecision:
        try:
            status = self.registry.read_meta(p.version).get("status")
        except CorruptModelError as exc:
            log.warning("gate: pending %s vanished (%s); nothing to decide", p.version, exc)
            return GateDecision(p.version, "superseded", f"gone from the registry ({exc})")
        if status != "candidate":  # e.g. an operator or another exporter decided it
            return GateDecision(p.version, str(status), f"already {status} elsewhere: not decided again")
        current_version, current = self.current_model()
        if current_version is not None and version_number(current_version) > version_number(p.version):
            return self._supersede(p.version, f"superseded: CURRENT {current_version} is newer than "
                                              "this candidate and may have trained on its held-out events")
        if current is not None and current.dim != p.model.dim:
            refusal = _dim_refusal(p.model.dim, current.dim, current_version)
            self.registry.reject(p.version, f"refused before evaluation: {refusal}",
                                 figures={"refused": refusal}, actor=self.actor)
            return GateDecision(p.version, "rejected", f"refused before evaluation: {refusal}",
                                {"refused": refusal})

        cand = evaluate(p.model, p.user_vectors, p.events, seen, self.k)
        reference, name = (current, f"current {current_version}") if current is not None else (
            (p.baseline() if p.baseline is not None else None), BASELINE)
        ref = evaluate(reference, p.user_vectors, p.events, seen, self.k) if reference is not None else None
        if ref is None:
            promote, why = True, "first model: no CURRENT and no baseline to compare with"
        else:
            promote, why = _verdict(cand.recall, ref.recall, self.margin, name)
        if current is None and current_version is not None:
            why = f"CURRENT {current_version} cannot be loaded; {why}"
        why = f"{why} on {cand.evaluated} held-out events"
        figures = {
            "metric": f"recall@{self.k}",
            "candidate": cand.recall,
            "current": ref.recall if ref is not None and current is not None else None,
            "current_version": current_version if current is not None else None,
            "baseline": ref.recall if ref is not None and current is None else None,
            "compared_with": "current" if current is not None else (BASELINE if ref else None),
            "margin": self.margin,
            "evaluated": cand.evaluated,
            "held_out_events": len(p.events),
            "min_events": self.min_events,
            "skipped_no_vector": p.skipped_no_vector,
            "skipped_before_cut": p.before_cut,
            "beyond_max_events": p.overflow,
            "events_cut": {str(k): v for k, v in sorted(p.cut.items())},
            "first_held_out_offsets": {str(k): v for k, v in sorted(p.first_offsets.items())},
            "candidate_detail": cand.as_dict(),
            "current_detail": ref.as_dict() if ref is not None else None,
        }
        pin = self.registry.pinned()
        if pin is None and promote:
            try:
                self.registry.promote(p.version, actor=self.actor, reason=why, figures=figures)
                self._current = (p.version, p.model)
                return GateDecision(p.version, "promoted", why, figures)
            except PinnedError:
                pin = self.registry.pinned() or {"version": "?"}  # pinned in between: hold instead
        if pin is not None:
            reason = (f"held: CURRENT is pinned to {pin['version']} by {pin.get('actor')} "
                      f"({pin.get('reason')}); the gate would have {'promoted' if promote else 'rejected'} "
                      f"it: {why}")
            self.registry.hold(p.version, reason, figures=figures, actor=self.actor)
            return GateDecision(p.version, "held", reason, figures)
        self.registry.reject(p.version, why, figures=figures, actor=self.actor)
        return GateDecision(p.version, "rejected", why, figures)
