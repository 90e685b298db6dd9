"""Online matrix factorisation for implicit feedback: the sequential reference, event by event.

Score of item ``i`` for user ``u``::

    score(u, i) = u . v_i + b_i + alpha * log1p(pop_i)        (alpha = popularity_prior)

where ``pop_i`` is the item's popularity count (sum of the weights of its positive events) as
seen in the item snapshot. The prior is added when *scoring* only: training uses
``u . v_i + b_i`` with popularity-sampled negatives, whose sampled-softmax (logQ-corrected) loss
learns the user-specific part; putting the prior into the training score as well measured worse
(docs/learner.md).

The sequential reference, as pure functions (the pipeline's shard learns a micro-batch at a
time with the same arithmetic: udfs/minibatch_mf.py):

* :func:`user_step` reads item vectors from a read-only :class:`ItemSnapshot` (the
  last exported model; may be stale or empty, missing items get the deterministic hash
  initialisation), takes one optimiser step on the user vector and returns one
  :class:`ItemUpdate` for the positive item and one per sampled negative. Each update carries
  the user vector *before* this event's step (the simultaneous-update form of SGD: user and items
  are both moved along the gradient evaluated at the same point).
* :func:`item_step` applies one :class:`ItemUpdate` to an :class:`ItemState`.

Negatives are drawn from the snapshot (uniformly or in proportion to popularity) with uniforms
from :func:`udfs.embeddings.hash_uniforms` of the event id and seed, so a Flink run and an
in-memory run with the same snapshot draw the same negatives. Items in the user's recent list and
the positive itself are dropped from the draw (so fewer than ``negatives`` may be used).

:class:`OnlineMF` composes exactly these functions into a River-style estimator; its item
snapshot is refreshed from the item states every ``snapshot_every`` events (1 = fully
sequential; larger values reproduce the pipeline's export staleness).

>>> model = OnlineMF(dim=8, seed=1)
>>> for n in range(300):
...     user, item = f"u{n % 6}", f"i{(n % 6) // 3 * 5 + n % 5}"
...     model.learn_one(user, item)
>>> recs = model.recommend("u0", k=3, exclude_seen=False)
>>> len(recs), all(r in {"i0", "i1", "i2", "i3", "i4"} for r in recs)
(3, True)
"""

from __future__ import annotations

import bisect
import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from streamrec.udfs.base import Recommender
from streamrec.udfs.embeddings import hash_uniforms, init_vector, item_key, user_key
from streamrec.udfs.modes import NEGATIVE_SAMPLERS, OBJECTIVES, OPTIMIZERS, choose, sigmoid

__all__ = [
    "LearnerParams",
    "UserState",
    "ItemState",
    "ItemUpdate",
    "ItemSnapshot",
    "user_step",
    "item_step",
    "sample_negatives",
    "step_bound",
    "step_scale",
    "clip_norms",
    "clip_vector",
    "finite_rows",
    "finite_state",
    "OnlineMF",
    "init_user_state",
    "init_item_state",
]

#: Current state format version (first byte of every serialised state).


# --------------------------------------------------------------------------------------------
# hyper-parameters


@dataclass(frozen=True)
class LearnerParams:
    """The learner's hyper-parameters as a plain frozen dataclass (cheap to read per event).

    Build it with :meth:`of` from a ``streamrec.core.config.LearnerConfig`` (or any object with the same
    attribute names), optionally overriding fields; values are validated by ``LearnerConfig``.

    >>> LearnerParams.of(None, dim=8).dim
    8
    >>> LearnerParams.of(None, dim=1)
    Traceback (most recent call last):
    ...
    ValueError: invalid learner parameters: dim: Input should be greater than or equal to 2
    """

    dim: int
    learning_rate: float
    regularization: float
    init_scale: float
    seed: int
    negatives: int
    recent_items: int
    objective: str
    negative_sampling: str
    popularity_prior: float
    optimizer: str
    max_step: float
    max_norm: float

    @classmethod
    def of(cls, cfg: Any = None, **overrides: Any) -> "LearnerParams":
        if isinstance(cfg, LearnerParams) and not overrides:
            return cfg
        from pydantic import ValidationError

        from streamrec.core.config import LearnerConfig

        if cfg is None:
            values: dict[str, Any] = {}
        elif isinstance(cfg, LearnerConfig):
            values = cfg.model_dump()
        else:
            values = {
                name: getattr(cfg, name)
                for name in LearnerConfig.model_fields
                if hasattr(cfg, name)
            }
        values.update(overrides)
        try:
            full = LearnerConfig.model_validate(values)
        except ValidationError as exc:
            msgs = "; ".join(
                f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
            )
            raise ValueError(f"invalid learner parameters: {msgs}") from None
        return cls(**{f.name: getattr(full, f.name) for f in dataclasses.fields(cls)})


# --------------------------------------------------------------------------------------------
# states and messages


@dataclass
class UserState:
    """Per-user keyed state. Treated as immutable: steps return new objects."""

    vector: np.ndarray  #: float32[dim]
    accum: np.ndarray  #: float32[dim], AdaGrad sum of squared gradients
    recent: list[str] = field(default_factory=list)  #: most recent last, <= recent_items
    events: int = 0  #: events learned


@dataclass
class ItemState:
    """Per-item keyed state. Treated as immutable: steps return new objects."""

    vector: np.ndarray  #: float32[dim]
    bias: float
    accum: np.ndarray  #: float32[dim], AdaGrad sum of squared gradients of the vector
    bias_accum: float = 0.0
    updates: int = 0  #: ItemUpdates applied (positive and negative)
    popularity: float = 0.0  #: sum of the weights of positive updates (the snapshot's pop count)


@dataclass(frozen=True)
class ItemUpdate:
    """What the user side sends to the item side for one item of one event.

    ``coef`` is the ascent coefficient of the loss w.r.t. the item's score (event weight
    included): the item moves by ``coef * user_vector`` (and its bias by ``coef``) before
    regularisation and the optimiser's scaling. ``user_vector`` is the user's vector *before* the
    event's step. ``weight`` is the event weight; ``positive`` items add it to their popularity.
    """

    item_id: str
    user_vector: np.ndarray
    coef: float
    weight: float
    event_id: str
    positive: bool


# --------------------------------------------------------------------------------------------
# item snapshot


class ItemSnapshot:
    """A read-only view of the exported item model: vectors, biases and popularity counts.

    Items are kept sorted by id, so popularity-proportional sampling maps the same uniform to the
    same item whatever order the snapshot was assembled in.

    >>> snap = ItemSnapshot.from_mapping(
    ...     {"b": (np.ones(2, np.float32), 0.5), "a": (np.zeros(2, np.float32), 0.0)},
    ...     popularity={"a": 3.0}, dim=2)
    >>> snap.ids, len(snap), "a" in snap, snap.popularity_of("b")
    (['a', 'b'], 2, True, 0.0)
    >>> ItemSnapshot.empty(4).sample(np.array([0.3]), "popularity").tolist()
    []
    """

    def __init__(
        self,
        ids: Sequence[str],
        vectors: np.ndarray,
        biases: np.ndarray,
        popularity: np.ndarray,
        dim: int,
    ) -> None:
        order = sorted(range(len(ids)), key=lambda n: ids[n])
        self.dim = int(dim)
        self.ids: list[str] = [str(ids[n]) for n in order]
        self.index: dict[str, int] = {item: n for n, item in enumerate(self.ids)}
        idx = np.asarray(order, dtype=np.int64)
        self.vectors = np.asarray(vectors, dtype=np.float32).reshape(len(ids), self.dim)[idx].copy()
        self.biases = np.asarray(biases, dtype=np.float32).reshape(len(ids))[idx].copy()
        self.popularity = np.asarray(popularity, dtype=np.float64).reshape(len(ids))[idx].copy()
        self._derive()

    def _derive(self) -> None:
        self.log_pop = np.log1p(np.maximum(self.popularity, 0.0))
        self._cum = np.cumsum(np.maximum(self.popularity, 0.0))

    # constructors ---------------------------------------------------------------------------
    @classmethod
    def empty(cls, dim: int) -> "ItemSnapshot":
        return cls([], np.zeros((0, dim)), np.zeros(0), np.zeros(0), dim)

    @classmethod
    def from_mapping(
        cls,
        items: Mapping[str, tuple[np.ndarray, float]],
        popularity: Mapping[str, float] | None = None,
        dim: int | None = None,
    ) -> "ItemSnapshot":
        """From ``item_id -> (vector, bias)`` and ``item_id -> popularity count``."""
        ids = list(items)
        if dim is None:
            if not ids:
                raise ValueError("dim is required for an empty snapshot")
            dim = len(items[ids[0]][0])
        vecs = np.zeros((len(ids), dim), dtype=np.float32)
        biases = np.zeros(len(ids), dtype=np.float32)
        for n, item in enumerate(ids):
            vec, bias = items[item]
            vecs[n] = vec
            biases[n] = bias
        pop = np.array([float((popularity or {}).get(i, 0.0)) for i in ids], dtype=np.float64)
        return cls(ids, vecs, biases, pop, dim)

    @classmethod
    def from_states(cls, states: Mapping[str, ItemState], dim: int) -> "ItemSnapshot":
        ids = list(states)
        vecs = np.zeros((len(ids), dim), dtype=np.float32)
        for n, item in enumerate(ids):
            vecs[n] = states[item].vector
        biases = np.array([states[i].bias for i in ids], dtype=np.float32)
        pop = np.array([states[i].popularity for i in ids], dtype=np.float64)
        return cls(ids, vecs, biases, pop, dim)

    # queries --------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.ids)

    def __contains__(self, item_id: object) -> bool:
        return item_id in self.index

    def popularity_of(self, item_id: str) -> float:
        n = self.index.get(item_id)
        return 0.0 if n is None else float(self.popularity[n])

    def sample(self, uniforms: np.ndarray, mode: str) -> np.ndarray:
        """Row indices for ``uniforms`` in [0, 1), drawn as ``mode`` says
        (:data:`udfs.modes.NEGATIVE_SAMPLERS`: ``"uniform"`` over rows, or ``"popularity"`` in
        proportion to the popularity counts, uniform while every count is zero)."""
        sampler = choose(NEGATIVE_SAMPLERS, mode, "negative_sampling")
        n = len(self.ids)
        if n == 0:
            return np.zeros(0, dtype=np.int64)
        return np.minimum(sampler.draw(uniforms, n, self._cum, self._cum[-1]), n - 1)

    # used only by OnlineMF to refresh rows in place (the snapshot is read-only to user_step) ---
    def _update_rows(self, items: Iterable[str], states: Mapping[str, ItemState]) -> None:
        items = list(items)
        new = sorted(i for i in items if i not in self.index)
        if new:
            first = len(self.ids)
            for item in new:
                pos = bisect.bisect_left(self.ids, item)
                self.ids.insert(pos, item)
                first = min(first, pos)
            rows = [self.index.get(i, -1) for i in self.ids]  # -1 marks the new rows
            keep = np.array([r for r in rows if r >= 0], dtype=np.int64)
            at = np.array([n for n, r in enumerate(rows) if r >= 0], dtype=np.int64)
            n = len(self.ids)
            vectors = np.zeros((n, self.dim), dtype=np.float32)
            biases = np.zeros(n, dtype=np.float32)
            popularity = np.zeros(n, dtype=np.float64)
            vectors[at], biases[at], popularity[at] = (
                self.vectors[keep], self.biases[keep], self.popularity[keep])
            self.vectors, self.biases, self.popularity = vectors, biases, popularity
            for pos in range(first, n):
                self.index[self.ids[pos]] = pos
        for item in items:
            n = self.index[item]
            st = states[item]
            self.vectors[n] = st.vector
            self.biases[n] = st.bias
            self.popularity[n] = st.popularity
        self._derive()


# --------------------------------------------------------------------------------------------
# the two steps


def init_user_state(user_id: str, cfg: object) -> UserState:
    """A fresh :class:`UserState` for ``user_id`` (its vector from :func:`udfs.embeddings.user_key`)."""
    p = LearnerParams.of(cfg)
    vec = init_vector(user_key(user_id), p.dim, p.seed, p.init_scale)
    return UserState(vector=vec, accum=np.zeros(p.dim, dtype=np.float32), recent=[], events=0)


def init_item_state(item_id: str, cfg: object) -> ItemState:
    """A fresh :class:`ItemState` for ``item_id`` (its vector from :func:`udfs.embeddings.item_key`)."""
    p = LearnerParams.of(cfg)
    vec = init_vector(item_key(item_id), p.dim, p.seed, p.init_scale)
    return ItemState(vector=vec, bias=0.0, accum=np.zeros(p.dim, dtype=np.float32))

def sample_negatives(
    snapshot: ItemSnapshot,
    item_id: str,
    event_id: str,
    cfg: Any,
    avoid: Sequence[str] = (),
) -> list[int]:
    """Snapshot rows of the event's negatives: ``negatives`` draws from the hash "RNG" of
    ``event_id``, without the positive and the ``avoid`` ids (duplicates kept: they are draws).

    >>> snap = ItemSnapshot.from_mapping({f"i{n}": (np.zeros(2), 0.0) for n in range(50)}, dim=2)
    >>> p = LearnerParams.of(None, dim=2, negatives=5, negative_sampling="uniform")
    >>> sample_negatives(snap, "i0", "ev-1", p) == sample_negatives(snap, "i0", "ev-1", p)
    True
    >>> len(sample_negatives(snap, "i0", "ev-1", p)) <= 5
    True
    """
    p = LearnerParams.of(cfg)
    if p.negatives <= 0 or len(snapshot) == 0:
        return []
    rows = snapshot.sample(hash_uniforms(str(event_id), p.seed, p.negatives), p.negative_sampling)
    skip = {snapshot.index[i] for i in (item_id, *avoid) if i in snapshot.index}
    return [int(r) for r in rows if int(r) not in skip]


def user_step(
    state: UserState,
    item_id: str,
    weight: float,
    event_id: str,
    snapshot: ItemSnapshot,
    cfg: Any,
) -> tuple[UserState, list[ItemUpdate]]:
    """Learn one positive event on the user side; return the new state and the item updates.

    The first update is always the positive item (even without negatives, so the item side
    counts its popularity); then one per sampled negative, in draw order. The event's
    coefficients are scaled down so that its step stays within ``max_step`` (:func:`step_scale`;
    the updates carry the scaled ones), and the new user vector is kept within ``max_norm``
    (:func:`item_step` keeps the items' so).
    """
    p = LearnerParams.of(cfg)
    objective = choose(OBJECTIVES, p.objective, "objective")
    item_id = str(item_id)
    event_id = str(event_id)
    w = float(weight)
    u = state.vector

    row = snapshot.index.get(item_id)
    if row is None:
        v_pos = init_vector(item_key(item_id), p.dim, p.seed, p.init_scale)
        b_pos, pop_pos = 0.0, 0.0
    else:
        v_pos = snapshot.vectors[row]
        b_pos, pop_pos = float(snapshot.biases[row]), float(snapshot.popularity[row])
    s_pos = float(u @ v_pos) + b_pos

    neg_rows = sample_negatives(snapshot, item_id, event_id, p, avoid=state.recent)
    if neg_rows:
        v_neg = snapshot.vectors[neg_rows]
        s_neg = (v_neg @ u + snapshot.biases[neg_rows]).astype(np.float64)
        pops = None  # the candidates' sampling weights, for the softmax's logQ correction
        if (objective.uses_log_q and choose(NEGATIVE_SAMPLERS, p.negative_sampling, "negative_sampling").corrects_log_q
                and snapshot._cum[-1] > 0):
            pops = np.concatenate(([pop_pos], snapshot.popularity[neg_rows]))
        c_pos, c_neg = objective.event_coefficients(s_pos, s_neg, w, pops)
    else:
        # nothing to contrast with (empty snapshot or negatives=0): a pointwise logistic step
        v_neg = np.zeros((0, p.dim), np.float32)
        c_neg = np.zeros(0)
        c_pos = w * float(sigmoid(-s_pos))
    bound = step_bound(p)
    if bound:  # the event's step within max_step (a heavy weight must not overshoot)
        scale = float(step_scale(float(u @ u), np.concatenate(([v_pos @ v_pos], np.einsum("kd,kd->k", v_neg, v_neg))),
                                 np.concatenate(([c_pos], c_neg)), p.learning_rate, bound))
        c_pos, c_neg = c_pos * scale, c_neg * scale
    grad = c_pos * v_pos + c_neg.astype(np.float32) @ v_neg if neg_rows else c_pos * v_pos
    grad = grad - p.regularization * u
    new_u, new_acc = choose(OPTIMIZERS, p.optimizer, "optimizer").step(u, state.accum, grad, p.learning_rate)
    new_u = clip_vector(new_u, p.max_norm)

    recent = [i for i in state.recent if i != item_id]
    recent.append(item_id)
    if len(recent) > p.recent_items:
        recent = recent[len(recent) - p.recent_items :]
    new_state = UserState(vector=new_u, accum=new_acc, recent=recent, events=state.events + 1)

    u_sent = state.vector  # never mutated: states are replaced, not updated in place
    updates = [ItemUpdate(item_id, u_sent, c_pos, w, event_id, True)]
    for r, c in zip(neg_rows, c_neg):
        updates.append(ItemUpdate(snapshot.ids[r], u_sent, float(c), w, event_id, False))
    return new_state, updates


def step_bound(p: LearnerParams) -> float:
    """The bound :func:`step_scale` keeps an event's step within under ``p``: ``max_step`` for
    SGD, 0 (none) for AdaGrad, whose steps are divided by the root of the summed squared
    gradients and so do not grow with the event weight (bounding them as SGD's measured worse,
    docs/learner.md "Bounded steps").

    >>> step_bound(LearnerParams.of(None)), step_bound(LearnerParams.of(None, optimizer="adagrad"))
    (4.0, 0.0)
    """
    return p.max_step if p.optimizer == "sgd" else 0.0


def step_scale(user_sq, cand_sq: np.ndarray, coef: np.ndarray, learning_rate: float, bound: float):
    """The factor (at most 1) by which an event's coefficients are scaled so that its SGD step
    changes the scores of its candidates by at most ``bound`` in all, to first order.

    An event moves the user by ``lr * sum_k c_k v_k`` and each candidate ``k`` (the positive and
    its negatives) by ``lr * c_k u`` and its bias by ``lr * c_k``: candidate ``k``'s score moves by
    ``lr * c_k * (|u|^2 + |v_k|^2 + 1)`` (cross terms between candidates left out). The
    coefficients carry the event weight, so a heavy event, a large learning rate or long vectors
    make a step that overshoots the loss's minimum; repeated, the vectors grow without bound
    (docs/learner.md, "Bounded steps"). ``user_sq``: ``|u|^2`` (one event) or ``[R]`` (a round
    of events: then ``cand_sq`` / ``coef`` are ``[R, K]`` and the factors ``[R]``).

    >>> float(step_scale(1.0, np.array([1.0, 1.0]), np.array([0.5, -0.5]), 0.2, 3.0))  # 0.6 <= 3
    1.0
    >>> float(step_scale(1.0, np.array([1.0, 1.0]), np.array([10.0, -10.0]), 0.2, 3.0))  # 12 > 3
    0.25
    """
    change = learning_rate * (np.abs(coef) * (np.asarray(user_sq)[..., None] + cand_sq + 1.0)).sum(-1)
    return np.minimum(1.0, bound / np.maximum(change, 1e-30))


def clip_norms(rows: np.ndarray, max_norm: float) -> np.ndarray:
    """``rows`` (float32 ``[N, D]``), each longer than ``max_norm`` scaled back to that length
    (the same array when none is).

    >>> clip_norms(np.float32([[3.0, 4.0], [0.3, 0.4]]), 1.0).tolist()
    [[0.6000000238418579, 0.800000011920929], [0.30000001192092896, 0.4000000059604645]]
    """
    sq = np.einsum("nd,nd->n", rows, rows)
    if not (sq > max_norm * max_norm).any():
        return rows
    return _clip_rows(rows, sq, max_norm)


def _clip_rows(rows: np.ndarray, sq: np.ndarray, max_norm: float) -> np.ndarray:
    over = sq > max_norm * max_norm
    scale = np.where(over, max_norm / np.sqrt(np.where(over, sq, 1.0)), 1.0).astype(np.float32)
    return rows * scale[:, None]


def clip_vector(vector: np.ndarray, max_norm: float) -> np.ndarray:
    """:func:`clip_norms` of one vector, for the sequential learner's per-event steps: one dot
    product when it is within ``max_norm`` (nearly always), the same arithmetic when it is not.

    >>> clip_vector(np.float32([3.0, 4.0]), 1.0).tolist(), clip_vector(np.float32([0.3, 0.4]), 1.0).tolist()
    ([0.6000000238418579, 0.800000011920929], [0.30000001192092896, 0.4000000059604645])
    """
    if not float(vector @ vector) > max_norm * max_norm:
        return vector
    return clip_norms(vector[None, :], max_norm)[0]


def finite_state(vector: np.ndarray, accum: np.ndarray | None, *scalars: float) -> bool:
    """Whether one row's vector, accumulator (None: unchanged by the step, so checked before)
    and scalars are all finite: one sum of a dot product, a sum and the scalars (a NaN or an
    infinity anywhere makes it non-finite; vectors within ``max_norm`` cannot overflow it), for
    the sequential learner's per-event check.

    >>> v, acc = np.float32([1.0, 2.0]), np.float32([0.0, 0.0])
    >>> finite_state(v, acc, 0.5), finite_state(np.float32([np.nan, 0]), acc), finite_state(v, acc, float("inf"))
    (True, False, False)
    """
    return math.isfinite(float(vector @ vector) + (0.0 if accum is None else float(accum.sum())) + sum(scalars))


def finite_rows(*columns: np.ndarray) -> np.ndarray:
    """Per row, whether every value of every column (``[N]`` or ``[N, ...]``) is finite.

    >>> finite_rows(np.float32([[1, 2], [np.nan, 0], [1, 1]]), np.float32([0, 0, np.inf])).tolist()
    [True, False, False]
    """
    ok = np.ones(len(columns[0]), bool)
    for col in columns:
        col = np.asarray(col)
        ok &= np.isfinite(col).all(axis=tuple(range(1, col.ndim)))
    return ok


def item_step(state: ItemState, update: ItemUpdate, cfg: Any) -> ItemState:
    """Apply one :class:`ItemUpdate` to the item's state (keyed by item)."""
    p = LearnerParams.of(cfg)
    optimizer = choose(OPTIMIZERS, p.optimizer, "optimizer")
    v = state.vector
    grad = update.coef * np.asarray(update.user_vector, dtype=np.float32) - p.regularization * v
    new_v, new_acc = optimizer.step(v, state.accum, grad, p.learning_rate)
    new_v = clip_vector(new_v, p.max_norm)
    g_b = update.coef - p.regularization * state.bias
    bias, b_acc = optimizer.step_scalar(state.bias, state.bias_accum, g_b, p.learning_rate)
    return ItemState(
        vector=new_v,
        bias=float(np.float32(bias)),
        accum=new_acc,
        bias_accum=float(np.float32(b_acc)),
        updates=state.updates + 1,
        popularity=state.popularity + (update.weight if update.positive else 0.0),
    )


# --------------------------------------------------------------------------------------------
# serialisation

# --------------------------------------------------------------------------------------------
# the in-memory estimator


class OnlineMF(Recommender):
    """River-style online MF estimator (a :class:`udfs.base.Recommender`) built from :func:`user_step` and :func:`item_step`.

    ``cfg`` is a ``LearnerConfig`` / :class:`LearnerParams` (default: ``LearnerConfig()``),
    keyword overrides replace single fields. Item updates are applied to the item states at once;
    learning and :meth:`recommend` read items from the snapshot, refreshed every
    ``snapshot_every`` events. The user side is always fresh.

    >>> m = OnlineMF(dim=4, seed=3, snapshot_every=2)
    >>> m.learn_one("alice", "x"); len(m.snapshot), len(m.items)
    (0, 1)
    >>> m.learn_one("bob", "y"); sorted(m.snapshot.ids)
    ['x', 'y']
    >>> m.recommend("alice", k=5)
    ['y']
    >>> m.score("alice", ["x", "y"]).shape
    (2,)
    """

    def __init__(self, cfg: Any = None, *, snapshot_every: int = 1, **overrides: Any) -> None:
        if snapshot_every < 1:
            raise ValueError("snapshot_every must be >= 1")
        self.params = LearnerParams.of(cfg, **overrides)
        self.snapshot_every = int(snapshot_every)
        self.users: dict[str, UserState] = {}
        self.items: dict[str, ItemState] = {}
        self.snapshot = ItemSnapshot.empty(self.params.dim)
        self.n_events = 0
        #: Users and items put back to their initial state because a step left them non-finite
        #: (the step bound and max_norm keep them finite: a guard, as in the pipeline's shard).
        self.rows_reset = 0
        self._dirty: set[str] = set()

    def learn_one(
        self, user: str, item: str, weight: float = 1.0, event_id: str | None = None
    ) -> None:
        p = self.params
        user, item = str(user), str(item)
        if event_id is None:
            event_id = f"{user}|{item}|{self.n_events}"
        state = self.users.get(user)
        if state is None:
            state = init_user_state(user, p)
        accum = state.accum
        state, updates = user_step(state, item, weight, event_id, self.snapshot, p)
        if not finite_state(state.vector, None if state.accum is accum else state.accum):
            state = dataclasses.replace(init_user_state(user, p), recent=state.recent, events=state.events)
            self.rows_reset += 1
        self.users[user] = state
        for upd in updates:
            ist = self.items.get(upd.item_id)
            if ist is None:
                ist = init_item_state(upd.item_id, p)
            accum = ist.accum
            ist = item_step(ist, upd, p)
            if not finite_state(ist.vector, None if ist.accum is accum else ist.accum, ist.bias, ist.bias_accum):
                ist = dataclasses.replace(init_item_state(upd.item_id, p), updates=ist.updates,
                                          popularity=ist.popularity)
                self.rows_reset += 1
            self.items[upd.item_id] = ist
            self._dirty.add(upd.item_id)
        self.n_events += 1
        if self.n_events % self.snapshot_every == 0:
            self.refresh_snapshot()

    def refresh_snapshot(self) -> None:
        """Export the item states to the snapshot (what the pipeline's exporter does)."""
        if not self._dirty:
            return
        self.snapshot._update_rows(self._dirty, self.items)
        self._dirty = set()

    def _user_vector(self, user: str) -> np.ndarray:
        state = self.users.get(str(user))
        if state is not None:
            return state.vector
        p = self.params
        return init_vector(user_key(str(user)), p.dim, p.seed, p.init_scale)

    def score(self, user: str, item_ids: Sequence[str]) -> np.ndarray:
        """Scores (float64) of ``item_ids`` for ``user``; items missing from the snapshot score
        with their hash-initialised vector, zero bias and zero popularity."""
        p, snap = self.params, self.snapshot
        u = self._user_vector(user).astype(np.float64)
        out = np.empty(len(item_ids), dtype=np.float64)
        for n, item in enumerate(item_ids):
            row = snap.index.get(str(item))
            if row is None:
                v = init_vector(item_key(str(item)), p.dim, p.seed, p.init_scale)
                out[n] = float(u @ v)
            else:
                out[n] = (
                    float(u @ snap.vectors[row])
                    + float(snap.biases[row])
                    + p.popularity_prior * float(snap.log_pop[row])
                )
        return out

    def recommend(
        self,
        user: str,
        k: int = 10,
        exclude_seen: bool = True,
        exclude: Iterable[str] | None = None,
    ) -> list[str]:
        """Top-``k`` snapshot items for ``user``, best first; ``exclude_seen`` drops the user's
        recent items (the bounded list in its state), ``exclude`` any further ids."""
        snap = self.snapshot
        if len(snap) == 0 or k <= 0:
            return []
        u = self._user_vector(user).astype(np.float32)
        scores = snap.vectors @ u + snap.biases + np.float32(self.params.popularity_prior) * snap.log_pop
        banned: list[int] = []
        lookup = snap.index.get
        if exclude_seen and str(user) in self.users:
            banned.extend(r for r in map(lookup, self.users[str(user)].recent) if r is not None)
        if exclude is not None:
            banned.extend(r for r in map(lookup, exclude) if r is not None)
        if banned:
            scores[banned] = -np.inf
        n_ok = len(snap) - len(set(banned))
        k = min(k, n_ok)
        if k <= 0:
            return []
        if k < len(scores):
            top = np.argpartition(-scores, k - 1)[:k]
        else:
            top = np.arange(len(scores))
        top = top[np.lexsort((top, -scores[top]))]
        return [snap.ids[n] for n in top]
