"""Every check of udfs/checks.py against every :class:`udfs.base.Recommender` implementation."""

import pytest

from streamrec.udfs import checks
from streamrec.udfs.online_mf import LearnerParams, OnlineMF
from streamrec.udfs.popularity import Popularity
from streamrec.udfs.shard_model import ShardModel, ShardSettings


def _river(seed):
    pytest.importorskip("river")
    from streamrec.bench.river_peer import RiverBiasedMF

    return RiverBiasedMF(seed=seed)


#: A fresh recommender of each implementation, by seed.
IMPLEMENTATIONS = {
    "online_mf": lambda seed: OnlineMF(dim=16, seed=seed),
    "shard_model": lambda seed: ShardModel(LearnerParams.of(None, dim=16, seed=seed), ShardSettings(top_k=10)),
    "popularity": lambda seed: Popularity(),
    "river_biased_mf": _river,
}


#: Checks an implementation fails, and why: kept as strict expected failures, so a change that
#: makes one pass is noticed.
KNOWN_FAILURES = {
    # the benchmark's peer as configured there (SGD 0.05, uniform negatives that may be the
    # positive itself: the first events, when the popular item is the only one known, teach it
    # as a negative four times for each positive) does not learn the planted stream in 800 events
    ("river_biased_mf", "check_learns_the_popular_item"): "River's peer learns the popular item as a negative",
    ("river_biased_mf", "check_learns_each_users_group"): "River's peer ranks near chance after 800 events",
}


@pytest.mark.parametrize("check", checks.CHECKS, ids=lambda c: c.__name__.removeprefix("check_"))
@pytest.mark.parametrize("name", IMPLEMENTATIONS)
def test_check(name, check, request):
    reason = KNOWN_FAILURES.get((name, check.__name__))
    if reason:
        request.applymarker(pytest.mark.xfail(reason=reason, raises=AssertionError, strict=True))
    check(IMPLEMENTATIONS[name])
