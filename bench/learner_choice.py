"""Choose the online learner by prequential recall@10 on a time-ordered interaction file.

Usage::

    python -m streamrec.bench.learner_choice PATH/ml-100k.inter [--only NAME ...] [--jobs N] [--limit N]

``PATH`` is a RecBole-style ``.inter`` file (tab-separated, header
``user_id:token item_id:token rating:float timestamp:float``). Events are sorted by timestamp
(stable), ids kept as strings, every rating is a positive of weight 1. Each configuration is run
once (single pass, test-then-train, seen items excluded) and a table of recall@10, NDCG@10 and
runtime is printed. The results are recorded in docs/learner.md.
"""

from __future__ import annotations

import argparse
import csv
import os
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Any

from streamrec.udfs.online_mf import OnlineMF
from streamrec.udfs.popularity import Popularity
from streamrec.udfs.prequential import prequential

#: Every OnlineMF row starts from LearnerConfig()'s defaults (the chosen setting: softmax,
#: popularity-sampled negatives=8, sgd lr=0.2, reg=0.001, dim=32, popularity_prior=0.5) and
#: overrides a few fields. ``snapshot_every`` > 1 learns against a stale item snapshot.
BEST: dict[str, Any] = {}
_OLD = {"negatives": 4, "regularization": 0.01}  # the earlier defaults, for the sweep rows

# (name, kind, kwargs); kind "pop" -> Popularity(**kwargs), "mf" -> OnlineMF(**BEST | kwargs)
CONFIGS: list[tuple[str, str, dict[str, Any]]] = [
    ("pop-alltime", "pop", {}),
    ("pop-window-2000", "pop", {"window": 2000}),
    ("pop-halflife-2000", "pop", {"half_life": 2000}),
    ("bpr sgd lr.05 neg4 reg.01", "mf", {**_OLD, "objective": "bpr", "learning_rate": 0.05}),
    ("bpr sgd lr.3 neg4 reg.01", "mf", {**_OLD, "objective": "bpr", "learning_rate": 0.3}),
    ("bpr adagrad lr.05 neg4 reg.01", "mf",
     {**_OLD, "objective": "bpr", "optimizer": "adagrad", "learning_rate": 0.05}),
    ("softmax adagrad lr.05 neg4 reg.01", "mf",
     {**_OLD, "optimizer": "adagrad", "learning_rate": 0.05}),
    ("softmax lr.1 neg4 reg.01", "mf", {**_OLD, "learning_rate": 0.1}),
    ("softmax lr.2 neg4 reg.01", "mf", {**_OLD}),
    ("softmax lr.2 neg4 reg.01 a.25", "mf", {**_OLD, "popularity_prior": 0.25}),
    ("softmax lr.2 neg4 reg.01 a1", "mf", {**_OLD, "popularity_prior": 1.0}),
    ("softmax lr.2 neg4 reg.01 uniform", "mf", {**_OLD, "negative_sampling": "uniform"}),
    ("softmax lr.2 neg4 reg.01 dim16", "mf", {**_OLD, "dim": 16}),
    ("softmax lr.3 neg4 reg.01", "mf", {**_OLD, "learning_rate": 0.3}),
    ("softmax lr.2 neg8 reg.01", "mf", {"regularization": 0.01}),
    ("softmax lr.2 neg16 reg.01", "mf", {"regularization": 0.01, "negatives": 16}),
    ("softmax lr.2 neg8 reg.03", "mf", {"regularization": 0.03}),
    ("softmax lr.2 neg8 reg.003", "mf", {"regularization": 0.003}),
    ("softmax lr.2 neg8 reg0", "mf", {"regularization": 0.0}),
    ("softmax lr.25 neg8 reg.001", "mf", {"learning_rate": 0.25}),
    ("softmax lr.2 neg8 reg.001 dim64", "mf", {"dim": 64}),
    ("CHOSEN softmax lr.2 neg8 reg.001 a.5", "mf", {}),
    ("CHOSEN, snapshot_every=500", "mf", {"snapshot_every": 500}),
    ("CHOSEN, snapshot_every=2000", "mf", {"snapshot_every": 2000}),
    ("CHOSEN, snapshot_every=5000", "mf", {"snapshot_every": 5000}),
]


def load_events(path: str, limit: int | None = None) -> list[tuple[str, str, float, str]]:
    with open(path, newline="") as fh:
        reader = csv.reader(fh, delimiter="\t")
        header = next(reader)
        col = {name.split(":")[0]: n for n, name in enumerate(header)}
        rows = [(r[col["user_id"]], r[col["item_id"]], float(r[col["timestamp"]])) for r in reader]
    order = sorted(range(len(rows)), key=lambda n: rows[n][2])  # sorted() is stable
    events = [(rows[n][0], rows[n][1], 1.0, f"e{n}") for n in order]
    return events[:limit] if limit else events


def build(kind: str, kwargs: dict[str, Any]):
    if kind == "pop":
        return Popularity(**kwargs)
    return OnlineMF(**{**BEST, **kwargs})


def run_one(args: tuple[str, str, dict[str, Any], list]) -> tuple[str, float, float, float]:
    name, kind, kwargs, events = args
    model = build(kind, kwargs)
    t0 = time.perf_counter()
    res = prequential(model, events, k=10)
    return name, res.recall, res.ndcg, time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("path")
    ap.add_argument("--only", nargs="*", help="run only these configuration names")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--limit", type=int, default=None, help="first N events only")
    args = ap.parse_args(argv)
    events = load_events(args.path, args.limit)
    todo = [c for c in CONFIGS if not args.only or c[0] in args.only]
    print(f"{len(events)} events, {len({e[0] for e in events})} users, "
          f"{len({e[1] for e in events})} items; {len(todo)} configurations", flush=True)
    print(f"| {'configuration':<38} | recall@10 | NDCG@10 | seconds |")
    print(f"|{'-' * 40}|-----------|---------|---------|")
    jobs = [(name, kind, kw, events) for name, kind, kw in todo]
    with ProcessPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        for name, rec, ndcg, secs in pool.map(run_one, jobs):
            print(f"| {name:<38} | {rec:9.4f} | {ndcg:7.4f} | {secs:7.1f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
