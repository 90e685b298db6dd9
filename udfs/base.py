"""The interface every streaming recommender here implements (as River's ``reco.base``), and the
interaction they learn from.

A :class:`Recommender` learns a stream of interactions, one (:meth:`~Recommender.learn_one`) or
a batch (:meth:`~Recommender.learn_many`) at a time, in stream order, and ranks items for a user
(:meth:`~Recommender.recommend`). Implementations: :class:`udfs.online_mf.OnlineMF` (the
sequential reference), :class:`udfs.shard_model.ShardModel` (the pipeline's vectorised shard),
:class:`udfs.popularity.Popularity` (the baseline) and ``bench.river_peer.RiverBiasedMF`` (River's
matrix factorisation, the benchmark's peer). :mod:`udfs.checks` holds the behaviour every one of
them must show; tests/udfs/test_learner_checks.py runs each check against each.

>>> from udfs.popularity import Popularity
>>> model = Popularity()
>>> model.learn_many([Event("e1", "u1", "x", 1.0, 0, 0, 0), Event("e2", "u2", "y", 1.0, 0, 0, 1),
...                   Event("e3", "u3", "y", 1.0, 0, 0, 2)])
>>> model.recommend("u9", k=2), model.recommend("u2", k=2), model.recommend("u9", k=2, exclude=["y"])
(['y', 'x'], ['x'], ['x'])
"""

from __future__ import annotations

import abc
from typing import Iterable, NamedTuple, Sequence

__all__ = ["Event", "Recommender"]


class Event(NamedTuple):
    """One interaction, as a micro-batch carries it (``events.clean`` has the full record):
    its id, who had which item with what implicit-feedback weight, its event time (epoch ms)
    and where it came from (partition and offset of ``events.raw``)."""

    event_id: str
    user_id: str
    item_id: str
    weight: float
    ts: int
    src_partition: int
    src_offset: int


class Recommender(abc.ABC):
    """A recommender that learns from a stream.

    ``recommend`` returns at most ``k`` distinct item ids the model knows, best first, none of
    ``exclude`` and (with ``exclude_seen``) none the user has had as far as the model remembers;
    it never fails for a user the model has not seen. A model is deterministic: the same stream
    (and seed, where it has one) gives the same lists."""

    #: Whether lists depend on the user's own history beyond excluding it (a most-popular
    #: baseline's do not).
    personalised: bool = True

    @abc.abstractmethod
    def learn_one(self, user: str, item: str, weight: float = 1.0, event_id: str | None = None) -> None:
        """Learn that ``user`` had ``item`` (an implicit positive of ``weight``)."""

    def learn_many(self, events: Sequence[Event]) -> None:
        """Learn ``events`` in order; one event after another unless the model batches them."""
        for e in events:
            self.learn_one(e.user_id, e.item_id, e.weight, e.event_id)

    @abc.abstractmethod
    def recommend(self, user: str, k: int = 10, exclude_seen: bool = True,
                  exclude: Iterable[str] | None = None) -> list[str]:
        """The top-``k`` items for ``user``, best first."""
