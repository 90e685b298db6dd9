"""The online MF learner of :mod:`udfs.online_mf`, vectorised over a micro-batch of events.

Same model, objective and hyper-parameters as :class:`udfs.online_mf.OnlineMF` (sampled softmax
with logQ correction over popularity-sampled negatives, or BPR; SGD or AdaGrad; L2), but a batch
of ``B`` events is a few numpy operations per round instead of ``B`` Python steps
(docs/hot-path.md):

* **users** step one event after another (in rounds: the ``r``-th event of every user of the
  batch at once), each gradient at the user's current vector, so event ``j``'s vector has seen
  the user's events ``<= j`` and none after;
* **items** are read as they were at the batch's start; their gradients are summed per item
  (``np.add.at``) and applied once, after the batch;
* as in the reference, each event's step is bounded (``max_step``, :func:`udfs.online_mf.step_scale`)
  and no vector grows beyond ``max_norm`` (docs/learner.md, "Bounded steps").

Negatives are drawn from the batch's starting item table in proportion to popularity (or
uniformly) with a generator seeded by the batch's first event id and size, so a replayed batch
draws the same negatives; a negative equal to the event's item, or that the user has had
(``avoid``), is dropped. Items are sampled in id order, so the draw does not depend on the order
in which a restored table was rebuilt.

>>> from udfs.online_mf import LearnerParams
>>> table = ItemTable(LearnerParams.of(None, dim=4, seed=1))
>>> rows = table.rows(["a", "b", "c"])
>>> rows.tolist(), len(table), table.ids
([0, 1, 2], 3, ['a', 'b', 'c'])
>>> step = batch_step(table, np.zeros((2, 4), np.float32) + 0.1, np.zeros((2, 4), np.float32),
...                   np.array([0, 0]), rows[:2], np.ones(2), ["e1", "e2"], None)
>>> step.event_vectors.shape, step.user_vectors.shape, bool((table.updates[:2] > 0).all())
((2, 4), (2, 4), True)
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import numpy as np

from streamrec.udfs.embeddings import init_vector, item_key
from streamrec.udfs.modes import NEGATIVE_SAMPLERS, OBJECTIVES, OPTIMIZERS, choose, sigmoid
from streamrec.udfs.online_mf import LearnerParams, _clip_rows, clip_norms, finite_rows, step_bound

_FLOAT16_MAX = float(np.finfo(np.float16).max)


#: The item record (:func:`_item_dtype`): an item's learned columns, the processing time of the
#: record's last write (so expiry is known after a restore too), and the shard's own updates not
#: yet sent to the other shards (udfs/item_exchange.py). Format 2 was the same without the pending
#: updates; it is still read (as nothing pending).
ITEM_FORMAT = 3
_READABLE_ITEM_FORMATS = (2, 3)

#: An item's learned columns, and those of them a shard exchanges as deltas (its own steps).
_LEARNED = (("vectors", "vector"), ("accum", "accum"), ("bias", "bias"), ("bias_accum", "bias_accum"),
            ("updates", "updates"), ("popularity", "popularity"))


def _item_dtype(dim: int, version: int = ITEM_FORMAT) -> np.dtype:
    fields = [("version", "u1"), ("dim", "<u2"), ("updates", "<u8"), ("popularity", "<f8"),
              ("bias", "<f4"), ("bias_accum", "<f4"), ("vector", "<f4", (dim,)),
              ("accum", "<f4", (dim,)), ("written_ms", "<i8")]
    if version >= 3:
        fields += [("pending_updates", "<u8"), ("pending_popularity", "<f8"), ("pending_bias", "<f4"),
                   ("pending_bias_accum", "<f4"), ("pending_vector", "<f4", (dim,)),
                   ("pending_accum", "<f4", (dim,))]
    return np.dtype(fields)


class ItemTable:
    """Every item's state as columns (vectors, AdaGrad sums, bias, updates, popularity).

    With ``track_pending`` (a shard of several: udfs/item_exchange.py) every step this shard
    applies is also added to the ``pending_*`` columns until :meth:`take_pending` hands them over
    for the other shards; steps received from them (:meth:`apply_deltas`) are not.
    """

    def __init__(self, params: LearnerParams, capacity: int = 1024, track_pending: bool = False) -> None:
        self.params = params
        d = params.dim
        self.ids: list[str] = []
        self.index: dict[str, int] = {}
        self.vectors = np.zeros((capacity, d), np.float32)
        self.accum = np.zeros((capacity, d), np.float32)
        self.bias = np.zeros(capacity, np.float32)
        self.bias_accum = np.zeros(capacity, np.float32)
        self.updates = np.zeros(capacity, np.int64)
        self.popularity = np.zeros(capacity, np.float64)
        self.written_ms = np.zeros(capacity, np.int64)  # when each row was last written to state
        self.track_pending = track_pending
        for column, _ in _LEARNED:  # this shard's own steps since the last take_pending()
            setattr(self, f"pending_{column}", np.zeros_like(getattr(self, column)))
        self._sorted: np.ndarray | None = None  # rows in id order (for sampling)

    def __len__(self) -> int:
        return len(self.ids)

    def _grow(self, needed: int) -> None:
        cap = len(self.bias)
        if needed <= cap:
            return
        new = max(needed, 2 * cap)
        for name in _COLUMNS:
            old = getattr(self, name)
            arr = np.zeros((new, *old.shape[1:]), old.dtype)
            arr[:cap] = old
            setattr(self, name, arr)

    def rows(self, item_ids: Iterable[str]) -> np.ndarray:
        """Rows of ``item_ids``; unknown ids are added with their deterministic initial vector."""
        out = []
        p = self.params
        for item in item_ids:
            row = self.index.get(item)
            if row is None:
                row = len(self.ids)
                self._grow(row + 1)
                self.ids.append(item)
                self.index[item] = row
                self.vectors[row] = init_vector(item_key(item), p.dim, p.seed, p.init_scale)
                self._sorted = None
            out.append(row)
        return np.asarray(out, dtype=np.int64)

    def sorted_rows(self) -> np.ndarray:
        if self._sorted is None:
            self._sorted = np.asarray(sorted(range(len(self.ids)), key=self.ids.__getitem__), dtype=np.int64)
        return self._sorted

    # keyed state ------------------------------------------------------------------------------
    def encode(self, rows: Iterable[int], now_ms: int | None = None) -> dict[str, bytes]:
        """Item records of ``rows``, written at ``now_ms`` (if given): :data:`ITEM_FORMAT` when
        pending steps are tracked, else format 2 (the same without them: half the bytes)."""
        rows = np.fromiter(rows, dtype=np.int64)
        if now_ms is not None:
            self.written_ms[rows] = now_ms
        version = ITEM_FORMAT if self.track_pending else 2
        rec = np.zeros(len(rows), _item_dtype(self.params.dim, version))
        rec["version"], rec["dim"], rec["written_ms"] = version, self.params.dim, self.written_ms[rows]
        for column, field in _LEARNED:
            rec[field] = getattr(self, column)[rows]
            if version >= 3:
                rec[f"pending_{field}"] = getattr(self, f"pending_{column}")[rows]
        raw, size = rec.tobytes(), rec.dtype.itemsize
        return {self.ids[r]: raw[n * size:(n + 1) * size] for n, r in enumerate(rows.tolist())}

    def restore(self, records: Iterable[tuple[str, bytes]]) -> int:
        by_format: dict[int, tuple[list[str], list[bytes]]] = {}
        for item_id, raw in records:
            version = raw[0] if raw else None
            if version not in _READABLE_ITEM_FORMATS or len(raw) != _item_dtype(self.params.dim, version).itemsize:
                raise ValueError(f"item record of {item_id!r}: {len(raw)} bytes, format {raw[:1]!r}; expected "
                                 f"{_item_dtype(self.params.dim).itemsize} bytes of format {ITEM_FORMAT} "
                                 f"(or 2) at dim {self.params.dim}")
            ids, blobs = by_format.setdefault(version, ([], []))
            ids.append(item_id)
            blobs.append(raw)
        for version, (ids, blobs) in by_format.items():
            rec = np.frombuffer(b"".join(blobs), dtype=_item_dtype(self.params.dim, version))
            rows = self.rows(ids)
            for column, field in _LEARNED:
                getattr(self, column)[rows] = rec[field]
                if version >= 3:
                    getattr(self, f"pending_{column}")[rows] = rec[f"pending_{field}"]
            self.written_ms[rows] = rec["written_ms"]
        return sum(len(ids) for ids, _ in by_format.values())

    # steps ------------------------------------------------------------------------------------
    def add(self, rows: np.ndarray, **steps: np.ndarray) -> None:
        """Add this shard's own ``steps`` (column name -> values per row; ``rows`` distinct) to
        the table, and to the pending columns when they are tracked."""
        for column, step in steps.items():
            getattr(self, column)[rows] += step
            if self.track_pending:
                getattr(self, f"pending_{column}")[rows] += step

    def take_pending(self, half_precision: Sequence[str] = ()) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """The rows with steps not yet handed over, and those steps per column; they are cleared
        (write the rows back to state in the same call: their records hold the pending steps).
        Columns in ``half_precision`` are handed over rounded to float16 and their rounding error
        stays pending (error feedback: it goes with the item's next steps, nothing is lost).

        >>> from udfs.online_mf import LearnerParams
        >>> table = ItemTable(LearnerParams.of(None, dim=2, seed=1), track_pending=True)
        >>> table.add(table.rows(["a"]), vectors=np.array([[0.1, 1e-3]], np.float32), updates=np.array([1]))
        >>> rows, steps = table.take_pending(half_precision=["vectors"])
        >>> sent, left = steps["vectors"][0], table.pending_vectors[0]
        >>> bool((sent + left == np.float32([0.1, 1e-3])).all()), bool(0 < abs(left[0]) < 1e-4)
        (True, True)
        """
        n = len(self.ids)
        rows = np.flatnonzero((self.pending_updates[:n] != 0) | (self.pending_popularity[:n] != 0))
        steps = {}
        for column, _ in _LEARNED:
            pending = getattr(self, f"pending_{column}")
            if column in half_precision:
                sent = np.clip(pending[rows], -_FLOAT16_MAX, _FLOAT16_MAX).astype(np.float16).astype(pending.dtype)
                pending[rows] -= sent
            else:
                sent = pending[rows].copy()
                pending[rows] = 0
            steps[column] = sent
        return rows, steps

    def apply_deltas(self, item_ids: Sequence[str], steps: dict[str, np.ndarray]) -> np.ndarray:
        """Add another shard's steps (column name -> values per item) to these items, new ones
        starting from their deterministic initial vector as they did there; returns their rows."""
        rows = self.rows(item_ids)
        changed, inverse = np.unique(rows, return_inverse=True)
        for column, step in steps.items():
            col = getattr(self, column)
            summed = np.zeros((len(changed), *col.shape[1:]), col.dtype)
            np.add.at(summed, inverse, np.asarray(step, col.dtype))
            col[changed] += summed
        return changed

    def reset_nonfinite(self, rows: np.ndarray | None = None) -> np.ndarray:
        """Put every row of ``rows`` (None: all) whose vector, bias or AdaGrad sums are not finite
        back to its initial state (its deterministic vector, zero bias and sums; update count and
        popularity kept, a non-finite popularity zeroed) with nothing pending for the other
        shards; returns those rows. Bounded steps keep the table finite: this is the guard that
        keeps one bad row from reaching the records (strict JSON refuses NaN) or the other shards.

        >>> from udfs.online_mf import LearnerParams
        >>> table = ItemTable(LearnerParams.of(None, dim=2, seed=1))
        >>> rows = table.rows(["a", "b"])
        >>> table.vectors[1] = np.nan
        >>> table.reset_nonfinite().tolist(), bool(np.isfinite(table.vectors[:2]).all())
        ([1], True)
        """
        n = len(self.ids)
        rows = np.arange(n) if rows is None else np.asarray(rows, np.int64)
        bad = rows[~finite_rows(self.vectors[rows], self.accum[rows], self.bias[rows], self.bias_accum[rows],
                                self.popularity[rows])]
        if len(bad):
            p = self.params
            for r in bad.tolist():
                self.vectors[r] = init_vector(item_key(self.ids[r]), p.dim, p.seed, p.init_scale)
            self.accum[bad], self.bias[bad], self.bias_accum[bad] = 0, 0, 0
            self.popularity[bad] = np.where(np.isfinite(self.popularity[bad]), self.popularity[bad], 0.0)
            for column, _ in _LEARNED:
                getattr(self, f"pending_{column}")[bad] = 0
        return bad

    def expire(self, written_before_ms: int) -> list[str]:
        """Drop the items last written before ``written_before_ms`` (keyed state's TTL expires
        them there); returns their ids. The rows of the others are renumbered (in order)."""
        n = len(self.ids)
        return self._drop(self.written_ms[:n] < written_before_ms)

    def drop_all_but(self, keep_ids: set[str]) -> list[str]:
        """Drop every item not in ``keep_ids``; returns their ids (rows renumbered, in order)."""
        return self._drop(np.fromiter((i not in keep_ids for i in self.ids), bool, len(self.ids)))

    def _drop(self, gone: np.ndarray) -> list[str]:
        if not gone.any():
            return []
        dropped = [self.ids[r] for r in np.flatnonzero(gone).tolist()]
        keep = np.flatnonzero(~gone)
        for name in _COLUMNS:
            col = getattr(self, name)
            fresh = np.zeros_like(col)
            fresh[:len(keep)] = col[keep]
            setattr(self, name, fresh)
        self.ids = [self.ids[r] for r in keep.tolist()]
        self.index = {item: row for row, item in enumerate(self.ids)}
        self._sorted = None
        return dropped


_COLUMNS = tuple(c for c, _ in _LEARNED) + ("written_ms",) + tuple(f"pending_{c}" for c, _ in _LEARNED)


@dataclass
class BatchStep:
    event_vectors: np.ndarray  #: float32 [B, D]: each event's user vector after its own step
    user_vectors: np.ndarray  #: float32 [U, D]: the users' vectors after the batch
    user_accum: np.ndarray  #: float32 [U, D]: their AdaGrad sums
    changed_items: np.ndarray  #: rows updated by the batch


def batch_step(table: ItemTable, user_vectors: np.ndarray, user_accum: np.ndarray, user_slot: np.ndarray,
               positives: np.ndarray, weights: np.ndarray, event_ids: Sequence[str],
               avoid: Callable[[np.ndarray, np.ndarray], np.ndarray] | None,
               learn: np.ndarray | None = None) -> BatchStep:
    """Learn one batch. ``user_vectors`` / ``user_accum`` are the batch's distinct users' starting
    states ``[U, D]``, ``user_slot[j]`` the user of event ``j``, ``positives`` the events' item
    rows (already in ``table``), ``avoid(slots, rows) -> bool`` marks items a user has had,
    ``learn`` (bool ``[B]``) leaves events out of learning (they keep their user's vector).

    Users step one event after the other: the batch runs in rounds, round ``r`` holding the
    ``r``-th event of every user, each user's gradient taken at its current vector (summing a
    burst of one user's gradients at one point overshoots: recall@10 0.079 instead of 0.117 on
    ML-100k at 256 events per batch). Items are read as they were at the batch's start and their
    gradients are summed and applied once, after the batch (for SGD the same as stepping them one
    update at a time, up to the L2 term)."""
    p = table.params
    objective = choose(OBJECTIVES, p.objective, "objective")
    optimizer = choose(OPTIMIZERS, p.optimizer, "optimizer")
    sampler = choose(NEGATIVE_SAMPLERS, p.negative_sampling, "negative_sampling")
    b = len(positives)
    learn = np.ones(b, bool) if learn is None else np.asarray(learn, bool)
    w = np.where(learn, np.asarray(weights, np.float64), 0.0)
    users = np.array(user_vectors, dtype=np.float32, copy=True)
    accum = np.array(user_accum, dtype=np.float32, copy=True)

    # what the batch reads of the items: their state at the batch's start
    v_pos = table.vectors[positives]
    b_pos = table.bias[positives].astype(np.float64)
    negatives = _sample(table, b, p, event_ids, sampler)
    m = negatives.shape[1]
    valid = negatives != positives[:, None]
    if m and avoid is not None:
        valid &= ~avoid(user_slot, negatives)
    v_neg = table.vectors[negatives]  # [B, M, D]
    b_neg = table.bias[negatives].astype(np.float64)
    log_q = None
    if objective.uses_log_q and sampler.corrects_log_q and table.popularity[:len(table)].sum() > 0:
        log_q = np.log(np.maximum(np.concatenate([table.popularity[positives][:, None],
                                                  table.popularity[negatives]], axis=1), 1.0))
    lonely = ~valid.any(1) if m else np.ones(b, bool)

    c_pos = np.zeros(b)
    c_neg = np.zeros((b, m))
    u_at = np.empty((b, p.dim), np.float32)  # the user vector each event's gradient was taken at
    event_vectors = np.empty((b, p.dim), np.float32)
    # A heavy user makes a batch run ~100 rounds of a few events each, so numpy's per-call cost
    # dominates: the positive and the negatives are one [B, 1 + M] candidate block (column 0 the
    # positive), scored and differentiated with one einsum each per round, and what does not
    # depend on the user vector (biases, logQ, masks) is computed once per batch.
    cand_v = np.concatenate([v_pos[:, None, :], v_neg], axis=1)  # [B, 1 + M, D]
    cand_b = np.concatenate([b_pos[:, None], b_neg], axis=1)  # [B, 1 + M]
    shift = objective.batch_offsets(b, m, valid, log_q) if m else None
    if shift is not None:
        cand_b = cand_b + shift  # e.g. softmax logits: score - logQ, invalid negatives excluded
    any_lonely, all_learn = bool(lonely.any()), bool(learn.all())
    # Each event's step within max_step (udfs/online_mf.py step_scale), and every vector within
    # max_norm. The sequential reference clips a user's vector after each step; here a round
    # clips its users' vectors as it reads them, and the event vectors and the users' vectors
    # are clipped once after the rounds: the same vectors, with one |u|^2 per round for both
    # (np.vecdot: a round is a few events, where einsum's overhead per call is twice its).
    bound, max_sq = step_bound(p) / p.learning_rate, p.max_norm * p.max_norm
    if bound:
        cand_sq = np.vecdot(cand_v, cand_v, dtype=np.float64) + 1.0  # |v_k|^2 + 1 (the bias)
    for ev in _rounds(_occurrence(user_slot)):
        sl = user_slot[ev]
        u = users[sl]
        sq = np.vecdot(u, u)
        if sq.max() > max_sq:
            u = _clip_rows(u, sq, p.max_norm)
            sq = np.vecdot(u, u)
        u_at[ev] = u
        cv = cand_v[ev]
        s = np.einsum("bd,bkd->bk", u, cv) + cand_b[ev]
        we = w[ev]
        if not m:
            c = (we * sigmoid(-s[:, 0]))[:, None]
        else:
            c, s_pos = objective.batch_coefficients(s, we, ev, shift, valid)
        if m and any_lonely:  # an event without any valid negative takes a pointwise logistic step
            c[:, 0] = np.where(lonely[ev], we * sigmoid(-s_pos), c[:, 0])
        if bound:  # as step_scale: sum_k |c_k| (|u|^2 + |v_k|^2 + 1) <= max_step / lr
            den = cand_sq[ev]
            den += sq[:, None]
            change = np.vecdot(np.abs(c), den)
            if change.max() > bound:
                c *= np.minimum(1.0, bound / np.maximum(change, 1e-30))[:, None]
        c_pos[ev] = c[:, 0]
        if m:
            c_neg[ev] = c[:, 1:]
        grad = np.einsum("bk,bkd->bd", c.astype(np.float32), cv) - np.float32(p.regularization) * u
        if not all_learn:
            grad *= learn[ev, None]
        optimizer.step_rows(users, accum, sl, u, grad, p.learning_rate)
        event_vectors[ev] = users[sl]
    event_vectors = clip_norms(event_vectors, p.max_norm)
    users = clip_norms(users, p.max_norm)

    # items: every contribution summed per row, applied once
    contributes = np.concatenate([learn, (valid & learn[:, None]).reshape(-1)])
    rows = np.concatenate([positives, negatives.reshape(-1)])[contributes]
    coef = np.concatenate([c_pos, c_neg.reshape(-1)]).astype(np.float32)[contributes]
    at = np.concatenate([u_at, np.repeat(u_at, m, axis=0)])[contributes]
    changed, inverse = np.unique(rows, return_inverse=True)
    grad_v = np.zeros((len(changed), p.dim), np.float32)
    np.add.at(grad_v, inverse, coef[:, None] * at - p.regularization * table.vectors[rows])
    grad_b = np.zeros(len(changed), np.float64)
    np.add.at(grad_b, inverse, coef - p.regularization * table.bias[rows])
    counts = np.bincount(inverse, minlength=len(changed))
    steps = optimizer.item_steps(table, changed, grad_v, grad_b, p.learning_rate)
    new = table.vectors[changed] + steps["vectors"]
    sq = np.einsum("nd,nd->n", new, new)
    over = sq > max_sq
    if over.any():  # the step that leaves the vector at max_norm instead
        steps["vectors"][over] = _clip_rows(new[over], sq[over], p.max_norm) - table.vectors[changed[over]]
    table.add(changed, **steps, updates=counts)
    popular, weight_sum = np.unique(positives[learn], return_inverse=True)
    table.add(popular, popularity=np.bincount(weight_sum, weights=w[learn], minlength=len(popular)))
    return BatchStep(event_vectors, users, accum, changed)


def _occurrence(slot: np.ndarray) -> np.ndarray:
    """For each event, how many events of the same user came before it in the batch.

    >>> _occurrence(np.array([3, 1, 3, 3, 1])).tolist()
    [0, 0, 1, 2, 1]
    """
    order = np.argsort(slot, kind="stable")
    s = slot[order]
    first = np.r_[True, s[1:] != s[:-1]] if len(s) else np.zeros(0, bool)
    start = np.maximum.accumulate(np.where(first, np.arange(len(s)), 0)) if len(s) else s
    out = np.empty(len(s), np.int64)
    out[order] = np.arange(len(s)) - start
    return out


def _rounds(occurrence: np.ndarray) -> list[np.ndarray]:
    """The events of each round, in batch order: round ``r`` holds every user's ``r``-th event.

    >>> [r.tolist() for r in _rounds(np.array([0, 0, 1, 2, 1]))]
    [[0, 1], [2, 4], [3]]
    """
    order = np.argsort(occurrence, kind="stable")
    return np.split(order, np.cumsum(np.bincount(occurrence))[:-1]) if len(order) else []


def _sample(table: ItemTable, b: int, p: LearnerParams, event_ids: Sequence[str], sampler) -> np.ndarray:
    """``[B, negatives]`` item rows from the table as it is at the batch's start, drawn by
    ``sampler`` (:data:`udfs.modes.NEGATIVE_SAMPLERS`)."""
    n = len(table)
    if p.negatives <= 0 or n == 0 or b == 0:
        return np.zeros((b, 0), np.int64)
    digest = hashlib.blake2b(f"{event_ids[0]}|{b}|{p.seed}".encode("utf-8"), digest_size=8).digest()
    uniforms = np.random.default_rng(int.from_bytes(digest, "little")).random((b, p.negatives))
    order = table.sorted_rows()
    pop = np.maximum(table.popularity[order], 0.0)
    idx = sampler.draw(uniforms, n, np.cumsum(pop), pop.sum())
    return order[np.minimum(idx, n - 1)]
