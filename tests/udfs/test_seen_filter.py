import numpy as np
import pytest

from streamrec.udfs.seen_filter import SeenFilter, false_positive_rate, item_positions


def test_every_added_item_is_seen_and_false_positives_follow_the_formula():
    f = SeenFilter.empty(bits=8192, hashes=4)
    added = [f"item-{n}" for n in range(1000)]
    for item in added:
        f = f.add(item)
    assert f.count >= 990  # an id whose bits were all set already (a false positive) is not counted
    assert f.contains_positions(item_positions(added, 8192, 4)).all()  # never a false negative
    probes = [f"other-{n}" for n in range(20_000)]
    rate = f.contains_positions(item_positions(probes, 8192, 4)).mean()
    expected = false_positive_rate(1000, 8192, 4)
    assert 0.5 * expected < rate < 1.5 * expected, (rate, expected)


def test_round_trip_and_refusals():
    f = SeenFilter.empty(64, 2).add("a")
    assert SeenFilter.from_bytes(f.to_bytes()) == f
    with pytest.raises(ValueError, match="multiple of 8"):
        SeenFilter.empty(100, 2)
    with pytest.raises(ValueError, match="format version"):
        SeenFilter.from_bytes(b"\x09" + f.to_bytes()[1:])
    with pytest.raises(ValueError, match="bytes of bits"):
        SeenFilter.from_bytes(f.to_bytes()[:-1])


def test_positions_are_a_pure_function_of_the_id():
    a = item_positions(["x", "y"], 4096, 3)
    assert (a == item_positions(["x", "y"], 4096, 3)).all() and a.shape == (2, 3)
    assert ((a >= 0) & (a < 4096)).all()
    assert not np.array_equal(a[0], a[1])
