"""The peer row of the benchmark: River's matrix factorisation recommender on the same stream.

River (PyPI ``river``, the online-ML library) has ``reco.BiasedMF``: a rating regressor
``y ~ mu + b_u + b_i + <p_u, q_i>`` learned one ``learn_one`` at a time. For implicit feedback it
learns every event as ``y = 1`` plus ``negatives`` items drawn uniformly with ``y = 0`` (the usual
way to train a pointwise model on positives only). Evaluated like the pipeline and the reference:
for every first interaction, top-``k`` over all items known so far, the user's whole history
excluded (River scores one item per ``predict_one`` call), then learn.

River 0.26 needs numpy >= 2.2.5, which apache-beam's cap forbids: 0.23.0 is the newest release
whose requirements fit the pinned set (numpy 2.1.3).

    python -m bench.river_peer PATH/ml-100k.inter [N]
"""

from __future__ import annotations

import random
import sys
import time
from typing import Iterable

import numpy as np

from streamrec.udfs.base import Recommender


class RiverBiasedMF(Recommender):
    """River's ``reco.BiasedMF`` as a :class:`udfs.base.Recommender`: each event is learned as
    ``y = 1``, then ``negatives`` items drawn uniformly from those known before it as ``y = 0``;
    a list scores every known item (one ``predict_one`` each)."""

    def __init__(self, negatives: int = 4, seed: int = 42) -> None:
        from river import optim, reco

        self.model = reco.BiasedMF(n_factors=32, bias_optimizer=optim.SGD(0.025),
                                   latent_optimizer=optim.SGD(0.05),
                                   latent_initializer=optim.initializers.Normal(mu=0.0, sigma=0.1, seed=seed),
                                   l2_bias=0.0, l2_latent=0.001, seed=seed)
        self.negatives = negatives
        self.rng = random.Random(seed)
        self.items: list[str] = []  # known items, in order of arrival
        self.known: set[str] = set()
        self.seen: dict[str, set[str]] = {}

    def learn_one(self, user: str, item: str, weight: float = 1.0, event_id: str | None = None) -> None:
        user, item = str(user), str(item)
        self.model.learn_one(user, item, 1.0)
        for _ in range(self.negatives if self.items else 0):
            self.model.learn_one(user, self.items[self.rng.randrange(len(self.items))], 0.0)
        self.seen.setdefault(user, set()).add(item)
        if item not in self.known:
            self.known.add(item)
            self.items.append(item)

    def recommend(self, user: str, k: int = 10, exclude_seen: bool = True,
                  exclude: Iterable[str] | None = None) -> list[str]:
        banned = set(exclude or ())
        if exclude_seen:
            banned |= self.seen.get(str(user), set())
        candidates = [i for i in self.items if i not in banned]
        scores = np.fromiter((self.model.predict_one(user, i) for i in candidates), np.float64, len(candidates))
        return [candidates[n] for n in np.argsort(-scores, kind="stable")[:max(k, 0)]]


def river_peer(events: list[dict], k: int = 10, negatives: int = 4, seed: int = 42) -> dict:
    """Prequential recall@k and events/s of River's BiasedMF over ``events`` (dicts with
    ``user_id``, ``item_id``), in stream order."""
    import river

    model = RiverBiasedMF(negatives, seed)
    evaluated = hits = 0
    wall, cpu = time.perf_counter(), time.process_time()
    for ev in events:
        user, item = str(ev["user_id"]), str(ev["item_id"])
        if item not in model.seen.get(user, ()) and model.items:
            evaluated += 1
            hits += item in model.recommend(user, k)
        model.learn_one(user, item)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {"library": f"river {river.__version__}", "model": "reco.BiasedMF (32 factors, y=1 + "
            f"{negatives} uniform negatives with y=0)", "events": len(events), "evaluated": evaluated,
            "recall": hits / evaluated if evaluated else None, "events_per_s": len(events) / wall,
            "cpu_us_per_event": cpu / len(events) * 1e6}


def main(argv: list[str] | None = None) -> int:
    from pathlib import Path

    from streamrec.replay import ml100k_events

    argv = sys.argv[1:] if argv is None else argv
    events = ml100k_events(Path(argv[0]).parent)
    n = int(argv[1]) if len(argv) > 1 else 5_000
    print(river_peer(events[:n]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
