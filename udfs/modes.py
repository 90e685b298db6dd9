"""The learner's modes, each name mapped to its implementation in one table: the objective
(``learner.objective``), the optimiser (``learner.optimizer``) and how negatives are drawn
(``learner.negative_sampling``). Both forms of the model read them here: the sequential one
(:mod:`udfs.online_mf`, one event at a time) and the vectorised one (:mod:`udfs.minibatch_mf`, a
micro-batch at a time); a mode is added by adding an entry with both. An unknown name is an error
that names the choices:

>>> choose(OBJECTIVES, "warp", "objective")
Traceback (most recent call last):
...
ValueError: unknown objective 'warp': choose one of 'softmax', 'bpr'
>>> choose(OPTIMIZERS, "sgd", "optimizer").step(np.float32([1.0]), None, np.float32([0.5]), 0.1)[0].tolist()
[1.0499999523162842]
"""

from __future__ import annotations

import math
from typing import Mapping, TypeVar

import numpy as np

__all__ = ["OBJECTIVES", "OPTIMIZERS", "NEGATIVE_SAMPLERS", "choose", "sigmoid"]

ADAGRAD_EPS = 1e-6

T = TypeVar("T")


def choose(table: Mapping[str, T], name: str, what: str) -> T:
    """``table[name]``, or a ValueError naming ``what`` and the choices."""
    try:
        return table[name]
    except KeyError:
        raise ValueError(f"unknown {what} {name!r}: choose one of {', '.join(map(repr, table))}") from None


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-np.clip(x, -35.0, 35.0)))


# -- objectives: the ascent coefficients of the positive and the negatives ------------------------

class Softmax:
    """Sampled softmax over the positive and its negatives, logQ-corrected when the negatives
    were drawn by popularity (subtract the log of each candidate's sampling weight)."""

    uses_log_q = True

    @staticmethod
    def event_coefficients(s_pos: float, s_neg: np.ndarray, w: float, pops: np.ndarray | None):
        """One event (udfs/online_mf.py): ``(c_pos, c_neg)`` of scores ``s_pos``, ``s_neg``;
        ``pops``: the candidates' popularity (positive first) when logQ-corrected."""
        logits = np.concatenate(([s_pos], s_neg))
        if pops is not None:
            logits = logits - np.log(np.maximum(pops, 1.0))
        logits = logits - logits.max()
        prob = np.exp(logits)
        prob /= prob.sum()
        return w * float(1.0 - prob[0]), -w * prob[1:]

    @staticmethod
    def batch_offsets(b: int, m: int, valid: np.ndarray, log_q: np.ndarray | None) -> np.ndarray:
        """What the batch adds to the candidates' scores ``[B, 1 + M]`` once: minus logQ, and
        minus infinity for the invalid negatives (they drop out of the softmax)."""
        shift = np.zeros((b, 1 + m))
        if log_q is not None:
            shift -= log_q
        shift[:, 1:][~valid] = -np.inf
        return shift

    @staticmethod
    def batch_coefficients(s: np.ndarray, we: np.ndarray, ev: np.ndarray, shift: np.ndarray, valid: np.ndarray):
        """One round of a batch (udfs/minibatch_mf.py): the coefficients ``[R, 1 + M]`` of the
        round's scores ``s`` (offsets included; changed in place) and the positives' raw scores."""
        s_pos = s[:, 0] - shift[ev, 0]  # the positive's raw score, for a lonely event
        s -= s.max(axis=1, keepdims=True)
        c = np.exp(s)
        c *= -(we / c.sum(axis=1))[:, None]
        c[:, 0] += we
        return c, s_pos


class Bpr:
    """Pairwise BPR: the positive against each valid negative, averaged."""

    uses_log_q = False

    @staticmethod
    def event_coefficients(s_pos: float, s_neg: np.ndarray, w: float, pops: np.ndarray | None):
        g = w * sigmoid(s_neg - s_pos) / len(s_neg)
        return float(g.sum()), -g

    @staticmethod
    def batch_offsets(b: int, m: int, valid: np.ndarray, log_q: np.ndarray | None) -> None:
        return None

    @staticmethod
    def batch_coefficients(s: np.ndarray, we: np.ndarray, ev: np.ndarray, shift: None, valid: np.ndarray):
        s_pos = s[:, 0]
        ok = valid[ev]
        g = we[:, None] * sigmoid(s[:, 1:] - s_pos[:, None]) * ok / np.maximum(ok.sum(1), 1)[:, None]
        return np.concatenate([g.sum(1)[:, None], -g], axis=1), s_pos


OBJECTIVES = {"softmax": Softmax(), "bpr": Bpr()}


# -- optimisers: one ascent step ----------------------------------------------------------------

class Sgd:
    @staticmethod
    def step(param: np.ndarray, accum, grad: np.ndarray, lr: float):
        """``(new param, new accum)``, never in place."""
        return param + lr * grad, accum

    @staticmethod
    def step_scalar(value: float, accum: float, grad: float, lr: float) -> tuple[float, float]:
        return value + lr * grad, accum

    @staticmethod
    def step_rows(params: np.ndarray, accum: np.ndarray, rows: np.ndarray, current: np.ndarray,
                  grad: np.ndarray, lr: float) -> None:
        """``params[rows]`` (now ``current``) stepped in place (a batch's round of users)."""
        params[rows] = current + lr * grad

    @staticmethod
    def item_steps(table, rows: np.ndarray, grad_v: np.ndarray, grad_b: np.ndarray, lr: float) -> dict:
        """The steps of the items' columns (``ItemTable.add``) for their summed gradients."""
        return dict(vectors=lr * grad_v, bias=(lr * grad_b).astype(np.float32))


class AdaGrad:
    @staticmethod
    def step(param: np.ndarray, accum: np.ndarray, grad: np.ndarray, lr: float):
        accum = accum + grad * grad
        return param + lr * grad / (np.sqrt(accum) + ADAGRAD_EPS), accum

    @staticmethod
    def step_scalar(value: float, accum: float, grad: float, lr: float) -> tuple[float, float]:
        accum = accum + grad * grad
        return value + lr * grad / (math.sqrt(accum) + ADAGRAD_EPS), accum

    @staticmethod
    def step_rows(params: np.ndarray, accum: np.ndarray, rows: np.ndarray, current: np.ndarray,
                  grad: np.ndarray, lr: float) -> None:
        acc = accum[rows] + grad * grad
        accum[rows] = acc
        params[rows] = current + lr * grad / (np.sqrt(acc) + ADAGRAD_EPS)

    @staticmethod
    def item_steps(table, rows: np.ndarray, grad_v: np.ndarray, grad_b: np.ndarray, lr: float) -> dict:
        accum_v = table.accum[rows] + grad_v * grad_v
        accum_b = table.bias_accum[rows] + (grad_b * grad_b).astype(np.float32)
        return dict(accum=grad_v * grad_v, bias_accum=(grad_b * grad_b).astype(np.float32),
                    vectors=lr * grad_v / (np.sqrt(accum_v) + ADAGRAD_EPS),
                    bias=(lr * grad_b / (np.sqrt(accum_b) + ADAGRAD_EPS)).astype(np.float32))


OPTIMIZERS = {"sgd": Sgd(), "adagrad": AdaGrad()}


# -- negative sampling: rows for uniforms in [0, 1) -----------------------------------------------

class ByPopularity:
    """In proportion to the popularity counts (uniformly while every count is zero)."""

    corrects_log_q = True  # the softmax subtracts the log of these weights

    @staticmethod
    def draw(uniforms: np.ndarray, n: int, cumulative: np.ndarray, total: float) -> np.ndarray:
        """Rows (before clipping to ``n - 1``) of ``uniforms`` over ``n`` items whose popularity
        sums cumulatively to ``cumulative`` and in all to ``total``."""
        if total > 0:
            return np.searchsorted(cumulative, uniforms * total, side="right")
        return Uniform.draw(uniforms, n, cumulative, total)


class Uniform:
    corrects_log_q = False

    @staticmethod
    def draw(uniforms: np.ndarray, n: int, cumulative: np.ndarray, total: float) -> np.ndarray:
        return (uniforms * n).astype(np.int64)


NEGATIVE_SAMPLERS = {"popularity": ByPopularity(), "uniform": Uniform()}
