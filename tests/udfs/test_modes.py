"""The learner's modes come from one table each (udfs/modes.py): an unknown name is an error
naming the choices, in the sequential model and in the vectorised one alike."""

import dataclasses

import numpy as np
import pytest

from streamrec.udfs.minibatch_mf import ItemTable, batch_step
from streamrec.udfs.modes import NEGATIVE_SAMPLERS, OBJECTIVES, OPTIMIZERS
from streamrec.udfs.online_mf import ItemSnapshot, LearnerParams, OnlineMF, init_user_state, user_step


@pytest.mark.parametrize("field, table", [("objective", OBJECTIVES), ("optimizer", OPTIMIZERS),
                                          ("negative_sampling", NEGATIVE_SAMPLERS)])
def test_an_unknown_mode_names_the_choices(field, table):
    params = dataclasses.replace(LearnerParams.of(None, dim=4, seed=1), **{field: "nonsense"})
    choices = ", ".join(map(repr, table))
    message = f"unknown {field} 'nonsense': choose one of {choices}"
    items = ItemTable(params)
    rows = items.rows(["a", "b", "c"])
    with pytest.raises(ValueError, match=message):
        batch_step(items, np.zeros((1, 4), np.float32), np.zeros((1, 4), np.float32), np.array([0]), rows[:1],
                   np.ones(1), ["e1"], None)
    snapshot = ItemSnapshot.from_mapping({i: (np.ones(4, np.float32), 0.0) for i in "abc"}, dim=4)
    with pytest.raises(ValueError, match=message):
        user_step(init_user_state("u", params), "a", 1.0, "e1", snapshot, params)


def test_the_configuration_offers_exactly_the_tables_modes():
    from typing import get_args

    from streamrec.core.config import LearnerConfig

    for field, table in (("objective", OBJECTIVES), ("optimizer", OPTIMIZERS),
                         ("negative_sampling", NEGATIVE_SAMPLERS)):
        assert set(get_args(LearnerConfig.model_fields[field].annotation)) == set(table), field
    assert OnlineMF(dim=4, objective="bpr", optimizer="adagrad", negative_sampling="uniform")  # each is valid
