"""Quality gate: a candidate model is promoted only if, on events it has not been trained on, it
is shown to be no worse than the serving model by more than a margin.

Protocol (docs/registry.md, "Quality gate"), run by :class:`HoldOutGate` for the exporter:

1. **Refusals** (:func:`check_candidate`) before any evaluation: an unreadable or empty graph,
   NaN/Inf weights, a dimension other than ``learner.dim`` or CURRENT's. Status ``rejected``.
2. **Held-out events.** Clean events at offsets at or past the candidate's training position
   (the ``events.clean`` offsets recorded at its export, Kafka's next-offset convention), of
   every user of the gate's user sample (:class:`UserSample`); at most ``max_events`` are kept.
3. **Users.** The sampled user vectors as of the export (a snapshot taken when it was published),
   so vectors trained on the held-out events do not leak into the score. A user without a vector
   then is scored with a zero vector: the model's item bias + popularity prior ranking, what a
   cold user gets.
4. **Ranking.** For every user both models rank all items with the user's ``seen`` items
   excluded (the user's own held-out items never are); an event is a hit when its item is in the
   user's top ``k``.
5. **Decision** (:func:`paired_decision`): both models are scored on the *same* events, so the
   per-event difference ``hit(candidate) - hit(reference)`` is paired. At looks after
   ``min_events``, ``2 x min_events``, ... events: promote when the lower confidence bound of the
   mean difference is above ``-margin``, reject when the upper bound is below ``-margin``, else
   keep collecting. At the cap (``max_events`` events, or ``max_wait_s`` after the export, or the
   exporter stopping with ``decide_on_stop``) the last look decides, and a tie (the interval
   still straddles ``-margin``) goes to the serving model: rejected. The reference is CURRENT;
   with no loadable CURRENT it is the candidate's own *popularity baseline* (item vectors zeroed),
   so even the first model must rank no worse than "most popular" to be served.

>>> gate_decision(0.30, None, 0.02)
(True, 'first model: no current model to compare with')
>>> gate_decision(0.29, 0.30, 0.02)[0], gate_decision(0.27, 0.30, 0.02)[0]
(True, False)
>>> check_candidate(b"not onnx", {}, expected_dim=4).startswith("not a readable ONNX model")
True
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from statistics import NormalDist
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
    #: events whose user has no vector (not evaluated unless cold users are scored).
    skipped_no_vector: int = 0
    #: evaluated events of users without a vector, ranked by a zero user vector (bias + prior).
    cold_events: int = 0
    #: evaluated events whose item the model does not know (always misses).
    unknown_items: int = 0
    users: int = 0
    #: per evaluated event, in the order of the events given: hit or not (for paired comparisons)
    event_hits: np.ndarray | None = field(default=None, repr=False, compare=False)

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k != "event_hits"}


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
    cold_users: bool = False,
) -> RecallResult:
    """recall@k of ``scoring_model`` on held-out ``events`` with counts (see module docstring).
    Events of users without a vector are skipped, or with ``cold_users`` ranked with a zero user
    vector (the model's item bias + popularity prior: what a cold user is served)."""
    if k < 1:
        raise ValueError("k must be >= 1")
    seen = seen or {}
    kept = [(u, i) for u, i in events if cold_users or u in user_vectors]
    positions: dict[str, list[int]] = {}  # user -> positions in kept, the order given
    for pos, (user_id, _item) in enumerate(kept):
        positions.setdefault(user_id, []).append(pos)
    known = getattr(scoring_model, "index", None)
    result = RecallResult(recall=0.0, k=k, skipped_no_vector=len(events) - len(kept),
                          cold_events=sum(u not in user_vectors for u, _ in kept), users=len(positions))
    hits = np.zeros(len(kept), dtype=bool)
    zero = np.zeros(int(scoring_model.dim), dtype=np.float32)
    users = list(positions)
    for start in range(0, len(users), batch_size):
        chunk = users[start:start + batch_size]
        mat = np.stack([np.asarray(user_vectors[u], dtype=np.float32).reshape(-1) if u in user_vectors else zero
                        for u in chunk])
        own = {u: {kept[p][1] for p in positions[u]} for u in chunk}
        exclude = [set(seen.get(u, ())) - own[u] for u in chunk]
        ranked = scoring_model.topk(mat, k, exclude=exclude)
        for user_id, row in zip(chunk, ranked):
            top = {item_id for item_id, _ in row}
            for pos in positions[user_id]:
                item_id = kept[pos][1]
                hits[pos] = item_id in top
                if known is not None and item_id not in known:
                    result.unknown_items += 1
    result.evaluated = len(kept)
    result.hits = int(np.count_nonzero(hits))
    result.event_hits = hits
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
    """``(promote, reason)``: promote iff ``candidate >= current - margin``; no current -> promote.
    The point comparison of two recalls, blind to how many events they rest on; the gates
    (:func:`run_gate`, :class:`HoldOutGate`) decide by :func:`paired_decision` instead."""
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
    confidence: float = 0.95,
) -> GateResult:
    """Evaluate both models on the given events now (one look, at the cap: a tie rejects), then
    ``registry.promote`` or ``registry.reject`` the candidate with the figures written into its
    meta.json ``quality``. The caller vouches that ``events`` are held out; the exporter uses
    :class:`HoldOutGate`."""
    cand = evaluate(candidate_model, user_vectors, events, seen, k)
    cur = evaluate(current_model, user_vectors, events, seen, k) if current_model is not None else None
    paired = None
    if cur is None:
        promote, reason = gate_decision(cand.recall, None, margin)
    else:
        paired = paired_decision(cand.event_hits, cur.event_hits, margin, look_z(confidence, 1), final=True)
        promote, reason = paired.verdict == PROMOTE, paired.reason("current")
    figures = {
        "metric": f"recall@{k}",
        "candidate": cand.recall,
        "current": cur.recall if cur else None,
        "current_version": getattr(current_model, "version", None),
        "margin": margin,
        "evaluated": cand.evaluated,
        "skipped_no_vector": cand.skipped_no_vector,
        **(paired.figures() if paired is not None else {}),
        "candidate_detail": cand.as_dict(),
        "current_detail": cur.as_dict() if cur else None,
    }
    if promote:
        registry.promote(candidate_version, actor=actor, reason=reason, figures=figures)
    else:
        registry.reject(candidate_version, reason=reason, figures=figures, actor=actor)
    log.info("gate %s: %s (%s)", candidate_version, "promoted" if promote else "rejected", reason)
    return GateResult(promote, reason, cand, cur, margin, figures)


# ---------------------------------------------------------------------------- the decision rule
PROMOTE, REJECT, WAIT = "promote", "reject", "wait"


@dataclass(frozen=True)
class PairedDecision:
    """The paired comparison of a candidate with its reference on the same ``n`` events.

    ``wins``: events the candidate hit and the reference missed; ``losses``: the other way round.
    ``diff`` = candidate recall - reference recall; ``lower`` / ``upper``: its confidence bounds
    (Agresti-Min adjusted Wald interval for matched proportions: half an event added to each cell
    of the 2x2 table, so that a handful of concordant events is never mistaken for certainty)."""

    verdict: str
    n: int
    candidate: float
    reference: float
    wins: int
    losses: int
    diff: float
    lower: float
    upper: float
    z: float
    margin: float
    final: bool

    def reason(self, reference: str = "reference") -> str:
        if self.n == 0:
            return ("no held-out events at the cap: the serving model stays" if self.verdict == REJECT
                    else f"no held-out events: {self.verdict}")
        figures = (f"recall candidate {self.candidate:.4f} vs {reference} {self.reference:.4f} on {self.n} "
                   f"paired held-out events: difference {self.diff:+.4f}, bounds [{self.lower:+.4f}, "
                   f"{self.upper:+.4f}] (z {self.z:.2f})")
        if self.verdict == PROMOTE:
            return f"{figures}: lower bound > -margin {self.margin:.4f}"
        if self.upper < -self.margin:
            return f"{figures}: upper bound < -margin {self.margin:.4f}"
        if self.verdict == REJECT:  # the cap with the interval straddling -margin
            return f"{figures}: a tie at the cap (bounds straddle -margin {self.margin:.4f}): the serving model stays"
        return f"{figures}: bounds straddle -margin {self.margin:.4f}, collecting more events"

    def figures(self) -> dict[str, Any]:
        return {"n": self.n, "wins": self.wins, "losses": self.losses, "difference": self.diff,
                "lower_bound": self.lower, "upper_bound": self.upper, "z": self.z, "final": self.final}


def paired_decision(candidate_hits: Sequence[bool] | np.ndarray, reference_hits: Sequence[bool] | np.ndarray,
                    margin: float, z: float, final: bool = False) -> PairedDecision:
    """Promote, reject or wait on per-event hits of two models on the same events.

    Promote when ``lower > -margin`` (shown no worse than the margin), reject when
    ``upper < -margin`` (shown worse), otherwise wait; with ``final`` a wait becomes a reject (a
    tie goes to the serving model).

    >>> better = [True] * 60 + [False] * 440
    >>> d = paired_decision(better, [False] * 500, margin=0.02, z=2.0)
    >>> d.verdict, d.diff, round(d.lower, 4)
    ('promote', 0.12, 0.0903)
    >>> paired_decision([False] * 500, better, margin=0.02, z=2.0).verdict
    'reject'
    >>> tie = paired_decision([True, False] * 10, [False, True] * 10, margin=0.02, z=2.0)
    >>> tie.verdict, tie.diff, tie.lower < -0.02 < tie.upper
    ('wait', 0.0, True)
    >>> paired_decision([True, False] * 10, [False, True] * 10, margin=0.02, z=2.0, final=True).verdict
    'reject'
    >>> paired_decision([True] * 3, [True] * 3, margin=0.02, z=2.0).verdict  # 3 events prove nothing
    'wait'
    """
    cand = np.asarray(candidate_hits, dtype=bool)
    ref = np.asarray(reference_hits, dtype=bool)
    if cand.shape != ref.shape:
        raise ValueError(f"paired hits differ in length: {cand.shape} and {ref.shape}")
    n = int(cand.size)
    wins, losses = int(np.count_nonzero(cand & ~ref)), int(np.count_nonzero(ref & ~cand))
    diff = (wins - losses) / n if n else 0.0
    # Agresti-Min: +0.5 in each of the four cells (n + 2 events, wins and losses + 0.5 each)
    m = n + 2
    p_win, p_loss = (wins + 0.5) / m, (losses + 0.5) / m
    centre = p_win - p_loss
    half = z * math.sqrt(max(p_win + p_loss - centre * centre, 0.0) / m)
    lower, upper = centre - half, centre + half
    if lower > -margin:
        verdict = PROMOTE
    elif upper < -margin or final:
        verdict = REJECT
    else:
        verdict = WAIT
    return PairedDecision(verdict, n, float(cand.mean()) if n else 0.0, float(ref.mean()) if n else 0.0,
                          wins, losses, diff, lower, upper, z, float(margin), bool(final))


def look_schedule(min_events: int, max_events: int) -> list[int]:
    """The event counts at which the gate looks: ``min_events`` doubling up to ``max_events``.

    ``min_events = 0`` looks at once (at export, on no events: the gate promotes without
    evidence, for setups that do not want one) and then at the cap.

    >>> look_schedule(500, 2000), look_schedule(500, 1500), look_schedule(0, 2000), look_schedule(0, 0)
    ([500, 1000, 2000], [500, 1000, 1500], [0, 2000], [0])
    """
    if max_events <= 0 or min_events <= 0:
        return sorted({0, max(0, max_events)})
    looks, n = [], min_events
    while n < max_events:
        looks.append(n)
        n *= 2
    return looks + [max_events]


def look_z(confidence: float, looks: int) -> float:
    """The normal quantile of each look's one-sided bound: the error ``1 - confidence`` split
    evenly over the looks (Bonferroni), so repeated looks keep the stated confidence.

    >>> round(look_z(0.95, 1), 3), round(look_z(0.95, 3), 3)
    (1.645, 2.128)
    """
    return NormalDist().inv_cdf(1.0 - (1.0 - confidence) / max(1, looks))


# ---------------------------------------------------------------------------- the user sample
class UserSample:
    """A bounded, deterministic sample of users: a user is in it iff the 64-bit hash of its id is
    below a threshold, which halves (evicting the users above it) whenever more than
    ``max_users`` are in. So it holds between ``max_users / 2`` and ``max_users`` users once the
    stream has that many, every user equally likely, the same users in every process.

    >>> s = UserSample(max_users=4)
    >>> [s.admit(f"u{i}")[0] for i in range(3)]
    [True, True, True]
    >>> evicted = [e for i in range(3, 40) for e in s.admit(f"u{i}")[1]]
    >>> 2 <= len(s) <= 4 and len(evicted) > 0 and all(u not in s for u in evicted)
    True
    >>> UserSample(0).admit("u1")  # 0: no cap, every user
    (True, [])
    """

    def __init__(self, max_users: int):
        self.max_users = int(max_users)
        self.threshold = 1 << 64
        self.members: dict[str, int] = {}

    @staticmethod
    def hash(user_id: str) -> int:
        return int.from_bytes(hashlib.blake2b(user_id.encode("utf-8", "replace"), digest_size=8).digest(), "big")

    def __contains__(self, user_id: str) -> bool:
        return self.max_users <= 0 or user_id in self.members

    def __len__(self) -> int:
        return len(self.members)

    @property
    def fraction(self) -> float:
        """The share of all users the sample keeps (1.0 until the cap was first reached)."""
        return self.threshold / (1 << 64)

    def admit(self, user_id: str) -> tuple[bool, list[str]]:
        """``(in the sample, users evicted to make room)`` for a user seen in the stream."""
        if self.max_users <= 0:
            return True, []
        if user_id in self.members:
            return True, []
        h = self.hash(user_id)
        if h >= self.threshold:
            return False, []
        self.members[user_id] = h
        evicted: list[str] = []
        while len(self.members) > self.max_users:
            self.threshold //= 2
            gone = [u for u, uh in self.members.items() if uh >= self.threshold]
            for u in gone:
                del self.members[u]
            evicted += gone
        return user_id in self.members, evicted


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
    #: False when an operator or another exporter had decided the version already: not this gate
    decided_here: bool = True

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
    #: the sampled users' vectors as of the export (never updated: later ones have seen the
    #: held-out events)
    user_vectors: dict[str, np.ndarray]
    #: builds the popularity baseline, used when there is no loadable CURRENT to compare with
    baseline: Callable[[], _Scorer] | None = None
    #: time.monotonic() at submit: the cap ``max_wait_s`` and the figure ``waited_s`` count from it
    submitted_at: float = 0.0
    events: list[tuple[str, str]] = field(default_factory=list)
    #: the first held-out offset per partition (always >= the cut: recorded as evidence)
    first_offsets: dict[int, int] = field(default_factory=dict)
    before_cut: int = 0         # events read after publishing at offsets before the cut (unused)
    unsampled: int = 0          # held-out events of users outside the gate's user sample (unused)
    overflow: int = 0           # held-out events past max_events (unused)
    look: int = 0               # index of the next look (HoldOutGate.looks)
    last: PairedDecision | None = None  # the latest look's comparison (a wait)


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
        confidence: float = 0.95,
        max_wait_s: float = 0.0,
        max_users: int = 0,
        clock: Callable[[], float] = time.monotonic,
    ):
        if not 0 <= min_events <= max_events:
            raise ValueError(f"need 0 <= min_events <= max_events, got {min_events} and {max_events}")
        if not 0.5 <= confidence < 1:
            raise ValueError(f"confidence must be in [0.5, 1), got {confidence}")
        self.registry = registry
        self.loader = loader
        self.expected_dim = int(expected_dim)
        self.k, self.margin = int(k), float(margin)
        self.min_events, self.max_events = int(min_events), int(max_events)
        self.confidence, self.max_wait_s = float(confidence), float(max_wait_s)
        #: the decision's looks, and each look's z: the last one is the cap
        self.looks = look_schedule(self.min_events, self.max_events)
        self.z = look_z(self.confidence, len(self.looks) + 1)  # + the early cap at max_wait_s
        self.sample = UserSample(max_users)
        self.clock = clock
        self.actor, self.force_actor = actor, force_actor
        self.pending: PendingCandidate | None = None
        self._current: tuple[str | None, _Scorer | None] = (None, None)
        self._failed_current: str | None = None

    # ------------------------------------------------------------------ inputs
    def at_cap(self, now: float | None = None) -> bool:
        """The pending candidate must be decided now: ``max_events`` held-out events, or it waited
        ``max_wait_s`` (0: no time cap)."""
        p = self.pending
        if p is None:
            return False
        waited = (self.clock() if now is None else now) - p.submitted_at
        return len(p.events) >= self.max_events or (self.max_wait_s > 0 and waited >= self.max_wait_s)

    @property
    def ready(self) -> bool:
        """A look is due: the pending candidate has the next look's number of held-out events."""
        p = self.pending
        return p is not None and (len(p.events) >= self.looks[min(p.look, len(self.looks) - 1)]
                                  or self.at_cap())

    def observe(self, partition: int, offset: int, user_id: str, item_id: str) -> bool:
        """One ``events.clean`` record; True when it became a held-out event of the pending one."""
        p = self.pending
        if p is None:
            return False
        if offset < p.cut.get(partition, 0):
            p.before_cut += 1  # the candidate may have trained on it
            return False
        if user_id not in self.sample:
            p.unsampled += 1
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
                                         f"({len(old.events)} of {self.min_events} held-out events)",
                            self._waiting_figures(old))
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
        sampled = {u: v for u, v in user_vectors.items() if u in self.sample}
        self.pending = PendingCandidate(version, candidate, {int(p): int(o) for p, o in cut.items()},
                                        sampled, baseline, submitted_at=self.clock())
        return GateDecision(version, "pending", f"waiting for {self.looks[0]} clean events after "
                                                "its training position")

    def _waiting_figures(self, p: PendingCandidate) -> dict[str, Any]:
        last = p.last.figures() if p.last is not None else {}
        return {"held_out_events": len(p.events), "waited_s": round(self.clock() - p.submitted_at, 3),
                **{k: v for k, v in last.items() if k != "final"}}

    def decide(self, seen: Mapping[str, Iterable[str]] | None = None, final: bool = False) -> GateDecision | None:
        """Look at the pending candidate if a look is due (:attr:`ready`) or ``final`` (the
        exporter stops and must not leave it undecided): promote, reject (or hold, if pinned),
        or None while it keeps collecting. ``seen``: each user's items so far (the held-out ones
        are never excluded for their own user)."""
        if self.pending is None or not (final or self.ready):
            return None
        # pending is cleared only once the decision is recorded: a failed registry write retries
        trigger = "stop" if final else "cap" if self.at_cap() else "look"
        decision = self._decide(self.pending, seen, trigger)
        if decision is not None:
            self.pending = None
        return decision

    def _decide(self, p: PendingCandidate, seen: Mapping[str, Iterable[str]] | None,
                trigger: str) -> GateDecision | None:
        final = trigger != "look"
        try:
            status = self.registry.read_meta(p.version).get("status")
        except CorruptModelError as exc:
            log.warning("gate: pending %s vanished (%s); nothing to decide", p.version, exc)
            return GateDecision(p.version, "superseded", f"gone from the registry ({exc})")
        if status != "candidate":  # e.g. an operator or another exporter decided it
            return GateDecision(p.version, str(status), f"already {status} elsewhere: not decided again",
                                decided_here=False)
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

        cand = evaluate(p.model, p.user_vectors, p.events, seen, self.k, cold_users=True)
        reference, name = (current, f"current {current_version}") if current is not None else (
            (p.baseline() if p.baseline is not None else None), BASELINE)
        ref = (evaluate(reference, p.user_vectors, p.events, seen, self.k, cold_users=True)
               if reference is not None else None)
        paired = None
        if ref is None:
            promote, why = True, "first model: no CURRENT and no baseline to compare with"
        elif not p.events and self.min_events == 0:
            promote, why = True, f"gate_min_events = 0: promoted without evidence (compared with {name})"
        else:
            paired = paired_decision(cand.event_hits, ref.event_hits, self.margin, self.z, final)
            if paired.verdict == WAIT:
                p.last = paired
                p.look = min(p.look + 1, len(self.looks) - 1)
                return None
            promote, why = paired.verdict == PROMOTE, paired.reason(name)
        if current is None and current_version is not None:
            why = f"CURRENT {current_version} cannot be loaded; {why}"
        figures = {
            "metric": f"recall@{self.k}",
            "candidate": cand.recall,
            "current": ref.recall if ref is not None and current is not None else None,
            "current_version": current_version if current is not None else None,
            "baseline": ref.recall if ref is not None and current is None else None,
            "compared_with": "current" if current is not None else (BASELINE if ref else None),
            "margin": self.margin,
            "rule": "paired: promote iff lower bound > -margin; reject iff upper bound < -margin; "
                    "at the cap a tie rejects",
            "confidence": self.confidence,
            **(paired.figures() if paired is not None else {}),
            "evaluated": cand.evaluated,
            "cold_events": cand.cold_events,
            "held_out_events": len(p.events),
            "min_events": self.min_events,
            "looks": len([n for n in self.looks if n <= len(p.events)]) or 1,
            "trigger": trigger,  # look, cap (gate_events / gate_max_wait_s) or stop (decide_on_stop)
            "waited_s": round(self.clock() - p.submitted_at, 3),
            "sample_users": len(p.user_vectors),
            "sample_fraction": self.sample.fraction,
            "skipped_unsampled": p.unsampled,
            "skipped_before_cut": p.before_cut,
            "beyond_max_events": p.overflow,
            "events_cut": {str(k): v for k, v in sorted(p.cut.items())},
            "events_cut_total": sum(p.cut.values()),
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
        # shown worse than CURRENT (not a tie at the cap): the live model this version is an
        # export of is held back, and the stream serves CURRENT until an export is promoted
        shown_worse = current is not None and paired is not None and paired.upper < -self.margin
        self.registry.reject(p.version, why, figures=figures, actor=self.actor, hold_back_live=shown_worse)
        return GateDecision(p.version, "rejected", why + ("; the live model is held back: the stream "
                            f"serves {current_version} until an export is promoted" if shown_worse else ""),
                            figures)
