"""Behaviour every :class:`udfs.base.Recommender` must show (as River's ``checks``): each check
takes ``make(seed) -> a fresh recommender`` and raises an ``AssertionError`` saying what failed.
tests/udfs/test_learner_checks.py runs every check of :data:`CHECKS` against every implementation.

The stream is planted: two groups of users, each having only its own half of the items, and one
item every user has had, so a model that learns ranks its group's items and that item high.

>>> from udfs.popularity import Popularity
>>> for check in CHECKS:
...     check(lambda seed: Popularity())
"""

from __future__ import annotations

import random
from typing import Callable

from streamrec.udfs.base import Event, Recommender

__all__ = ["CHECKS", "planted_stream"]

Make = Callable[[int], Recommender]
K = 5
USERS_PER_GROUP, ITEMS_PER_GROUP = 8, 40
#: The item every user has: a popular item.
EVERYBODY = "everybody"


def planted_stream(events: int = 800, seed: int = 0) -> list[Event]:
    """``events`` interactions: user ``a3`` has items ``a*`` only, ``b5`` items ``b*`` only, and
    every user has :data:`EVERYBODY` (early, so that each user's later lists must do without it).

    >>> [(e.user_id, e.item_id) for e in planted_stream(3)]
    [('a0', 'everybody'), ('a1', 'everybody'), ('a2', 'everybody')]
    """
    rng = random.Random(seed)
    users = [f"{g}{n}" for g in "ab" for n in range(USERS_PER_GROUP)]
    out = [(u, EVERYBODY) for u in users]
    while len(out) < events:
        user = rng.choice(users)
        out.append((user, f"{user[0]}{rng.randrange(ITEMS_PER_GROUP)}"))
    return [Event(f"e{n}", user, item, 1.0, 1_000 * n, 0, n) for n, (user, item) in enumerate(out[:events])]


def _learned(make: Make, seed: int = 1, events: int = 800) -> tuple[Recommender, dict[str, set[str]]]:
    model, had = make(seed), {}
    stream = planted_stream(events)
    for lo in range(0, len(stream), 50):  # batches, as the pipeline learns
        model.learn_many(stream[lo:lo + 50])
    for e in stream:
        had.setdefault(e.user_id, set()).add(e.item_id)
    return model, had


def check_a_new_model_recommends_nothing(make: Make) -> None:
    model = make(1)
    assert model.recommend("u1", k=K) == [], "a model that learned nothing recommended items"


def check_k_distinct_known_items(make: Make) -> None:
    model, had = _learned(make)
    known = set().union(*had.values())
    for user in had:
        recs = model.recommend(user, k=K, exclude_seen=False)
        assert len(recs) == K, f"{user}: {len(recs)} items for k={K}: {recs}"
        assert len(set(recs)) == K, f"{user}: an item twice: {recs}"
        assert set(recs) <= known, f"{user}: items never learned: {set(recs) - known}"
    assert model.recommend(next(iter(had)), k=0) == [], "k=0 gave items"


def check_never_what_the_user_had(make: Make) -> None:
    model, had = _learned(make)
    for user, items in had.items():
        recs = model.recommend(user, k=K)
        assert not set(recs) & items, f"{user} had {sorted(set(recs) & items)}, recommended anyway"
        assert recs, f"{user}: nothing recommended though it lacks {2 * ITEMS_PER_GROUP + 1 - len(items)} items"


def check_never_an_excluded_item(make: Make) -> None:
    model, had = _learned(make)
    for user in had:
        best = model.recommend(user, k=K, exclude_seen=False)
        recs = model.recommend(user, k=K, exclude_seen=False, exclude=best[:3])
        assert not set(recs) & set(best[:3]), f"{user}: excluded {best[:3]}, got {recs}"
        assert len(recs) == K, f"{user}: {len(recs)} items after excluding 3 of many"


def check_an_unknown_user_gets_a_list(make: Make) -> None:
    model, had = _learned(make)
    recs = model.recommend("nobody-ever", k=K)
    assert len(recs) == len(set(recs)) == K, f"an unknown user got {recs}"


def check_recommending_changes_nothing(make: Make) -> None:
    model, had = _learned(make)
    first = {user: model.recommend(user, k=K) for user in had}
    again = {user: model.recommend(user, k=K) for user in had}
    assert first == again, "recommend() changed what the model recommends"


def check_deterministic(make: Make) -> None:
    (one, had), (two, _) = _learned(make, seed=7), _learned(make, seed=7)
    for user in [*had, "nobody-ever"]:
        assert one.recommend(user, k=K) == two.recommend(user, k=K), f"{user}: two runs differ"


def check_learns_the_popular_item(make: Make) -> None:
    """Learned from an early stream (every user had :data:`EVERYBODY` first): the item everybody
    had is among a new user's first two."""
    model = make(1)
    model.learn_many(planted_stream(2 * USERS_PER_GROUP + 20))
    recs = model.recommend("nobody-ever", k=K)
    assert EVERYBODY in recs[:2], f"the item every user had is not at the top of a new user's list: {recs}"


def check_learns_each_users_group(make: Make) -> None:
    """A personalised model ranks a user's own group's unseen items above the other group's
    (chance: about half of a list)."""
    model, had = _learned(make)
    if not model.personalised:
        return
    own = [sum(item[0] == user[0] for item in model.recommend(user, k=K)) / K for user in had]
    share = sum(own) / len(own)
    assert share >= 0.8, f"only {share:.2f} of the lists are the user's own group's items (chance ~0.5)"


#: Every check, in the order they are best read.
CHECKS: tuple[Callable[[Make], None], ...] = (
    check_a_new_model_recommends_nothing, check_k_distinct_known_items, check_never_what_the_user_had,
    check_never_an_excluded_item, check_an_unknown_user_gets_a_list, check_recommending_changes_nothing,
    check_deterministic, check_learns_the_popular_item, check_learns_each_users_group,
)
