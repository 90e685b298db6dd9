"""The benchmark's arithmetic: percentiles, rates, series, batch sizes (pure, no I/O)."""

from __future__ import annotations

from collections import Counter
from typing import Iterable, Sequence

import numpy as np


def percentiles(values: Sequence[float], qs: Iterable[float] = (50, 95, 99)) -> dict[str, float | None]:
    """``{"p50": .., "p95": .., "p99": ..}`` with linear interpolation; None for no values.

    >>> percentiles([1, 2, 3, 4], qs=(50,))
    {'p50': 2.5}
    """
    arr = np.asarray(list(values), dtype=np.float64)
    out: dict[str, float | None] = {}
    for q in qs:
        key = f"p{q:g}"
        out[key] = float(np.percentile(arr, q)) if arr.size else None
    return out


def span_throughput(count: int, first_ms: int | None, last_ms: int | None) -> float | None:
    """``count`` events over the span first..last (ms) in events/s; None when undefined."""
    if not count or first_ms is None or last_ms is None or last_ms <= first_ms:
        return None
    return count / ((last_ms - first_ms) / 1000.0)


def time_reached(samples: Sequence[tuple[float, float]], target: float) -> float | None:
    """When a growing count first reached ``target``, from ``(time, count)`` samples: linear
    between the last sample below it and the first at or above it (None if never reached).

    >>> time_reached([(0.0, 0), (1.0, 40), (2.0, 100)], 70)
    1.5
    >>> time_reached([(0.0, 0), (1.0, 40)], 70) is None
    True
    """
    before = None
    for t, count in samples:
        if count >= target:
            if before is None or count == before[1]:
                return t
            t0, c0 = before
            return t0 + (target - c0) / (count - c0) * (t - t0)
        before = (t, count)
    return None


def rate_series(times_ms: Sequence[int], bin_s: float = 1.0, t0_ms: int | None = None) -> list[list[float]]:
    """Events per second in consecutive bins: ``[[t_s (bin start, from t0), events/s], ...]``.

    >>> rate_series([0, 100, 1500, 3100], bin_s=1.0)
    [[0.0, 2.0], [1.0, 1.0], [2.0, 0.0], [3.0, 1.0]]
    """
    if not len(times_ms):
        return []
    t = np.asarray(times_ms, dtype=np.float64)
    t0 = float(t.min() if t0_ms is None else t0_ms)
    idx = np.floor((t - t0) / (bin_s * 1000.0)).astype(np.int64)
    idx = idx[idx >= 0]
    counts = np.bincount(idx)
    return [[round(n * bin_s, 3), float(c) / bin_s] for n, c in enumerate(counts)]


def latency_series(times_ms: Sequence[int], latencies_ms: Sequence[float], bin_s: float = 1.0,
                   t0_ms: int | None = None) -> list[dict]:
    """Per time bin: ``{"t_s", "n", "p50", "p99"}`` of the latencies whose time falls in it.

    >>> latency_series([0, 10, 1200], [5, 15, 7])
    [{'t_s': 0.0, 'n': 2, 'p50': 10.0, 'p99': 14.9}, {'t_s': 1.0, 'n': 1, 'p50': 7.0, 'p99': 7.0}]
    """
    if not len(times_ms):
        return []
    t = np.asarray(times_ms, dtype=np.float64)
    lat = np.asarray(latencies_ms, dtype=np.float64)
    t0 = float(t.min() if t0_ms is None else t0_ms)
    idx = np.floor((t - t0) / (bin_s * 1000.0)).astype(np.int64)
    out = []
    for b in np.unique(idx[idx >= 0]):
        sel = lat[idx == b]
        out.append({"t_s": round(float(b) * bin_s, 3), "n": int(sel.size),
                    "p50": round(float(np.percentile(sel, 50)), 3),
                    "p99": round(float(np.percentile(sel, 99)), 3)})
    return out


def batch_histogram(record_batch_sizes: Iterable[int]) -> dict[int, int]:
    """Scoring batches by size, from the ``batch_size`` of each record (a batch of b records
    contributes b records of batch_size b).

    >>> batch_histogram([1, 3, 3, 3, 2, 2])
    {1: 1, 2: 1, 3: 1}
    """
    records = Counter(int(b) for b in record_batch_sizes)
    return {size: -(-n // size) for size, n in sorted(records.items())}


def batch_summary(record_batch_sizes: Sequence[int]) -> dict:
    hist = batch_histogram(record_batch_sizes)
    batches = sum(hist.values())
    records = len(record_batch_sizes)
    return {
        "batches": batches,
        "records": records,
        "mean_batch": records / batches if batches else None,
        "max_batch": max(hist) if hist else None,
        "record_weighted_p50": percentiles(record_batch_sizes, (50,))["p50"],
        "histogram": {str(k): v for k, v in hist.items()},
    }


def downsample(values: Sequence[float], max_points: int = 500) -> list[list[float]]:
    """``[[index, value], ...]`` with at most ~``max_points`` evenly spaced points (last kept).

    >>> downsample([0.0, 1.0, 2.0, 3.0, 4.0], max_points=2)
    [[0, 0.0], [3, 3.0], [4, 4.0]]
    """
    n = len(values)
    if n == 0:
        return []
    step = max(1, -(-n // max_points))
    idx = list(range(0, n, step))
    if idx[-1] != n - 1:
        idx.append(n - 1)
    return [[i, round(float(values[i]), 6)] for i in idx]


def mean_or_none(values: list[float] | None) -> float | None:
    """The mean to one decimal; None for no values.

    >>> mean_or_none([1.0, 2.0]), mean_or_none([])
    (1.5, None)
    """
    return round(float(np.mean(values)), 1) if values else None
