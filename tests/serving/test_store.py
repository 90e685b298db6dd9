"""The store and its snapshot, without Kafka."""

from __future__ import annotations

import numpy as np
import pytest

from streamrec.serving.snapshot import FORMAT_VERSION, SnapshotError, read_snapshot, write_snapshot
from streamrec.serving.store import ServingStore


def rec(user, items, strategy="model", version="live", emitted=1):
    return {"user_id": user, "items": [{"item_id": i, "score": s} for i, s in items], "model_version": version,
            "strategy": strategy, "cold_start": strategy != "model", "user_events": emitted, "event_ts": emitted - 1,
            "emitted_ts": emitted}


def test_the_newest_list_with_items_wins_and_none_never_replaces():
    store = ServingStore(width=3, dim=2)
    assert store.apply_recommendation(rec("u", [("a", 0.123457), ("b", 98765.432101)], emitted=5))
    assert not store.apply_recommendation(rec("u", [], strategy="none", emitted=6))
    assert not store.apply_recommendation(rec("v", [], strategy="none", emitted=6))
    got = store.lookup("u", 10)
    # the topic's doubles come back exactly (6-decimal scores of any size)
    assert got["items"] == [{"item_id": "a", "score": 0.123457}, {"item_id": "b", "score": 98765.432101}]
    assert (got["emitted_ts"], got["strategy"], got["model_version"]) == (5, "model", "live")
    assert store.lookup("v", 10) is None and store.lookup("nobody", 10) is None
    store.apply_recommendation(rec("u", [("c", None)], strategy="popularity", version="v000002", emitted=7))
    got = store.lookup("u", 10)
    assert got["items"] == [{"item_id": "c", "score": None}] and got["cold_start"]
    assert got["model_version"] == "v000002" and store.lists == 1
    # popularity by current lists: only u's list counts, its old items no longer
    assert store.popular_by_recommendations(5) == ["c"]


def test_rows_grow_and_lists_widen():
    store = ServingStore(width=2, dim=2, capacity=16)
    for n in range(1000):
        store.apply_recommendation(rec(f"u{n}", [(f"i{n % 7}", float(n))]))
    store.apply_recommendation(rec("u3", [(f"i{m}", float(m)) for m in range(5)]))  # wider than 2
    assert store.capacity >= 1000 and store.width == 5
    assert [i["item_id"] for i in store.lookup("u3", 10)["items"]] == [f"i{m}" for m in range(5)]
    assert store.lookup("u999", 10)["items"] == [{"item_id": "i5", "score": 999.0}]
    assert store.lookup("u3", 2)["items"][1]["item_id"] == "i1"  # k cuts the list


def test_vectors_tombstones_and_wrong_dimensions():
    store = ServingStore(width=2, dim=3)
    assert store.apply_user_vector("u", [1.0, 2.0, 3.0], ts=9)
    assert not store.apply_user_vector("u", [1.0, 2.0])
    assert store.vector("u").tolist() == [1.0, 2.0, 3.0] and store.vectors == 1
    store.apply_user_vector("u", None)
    assert store.vector("u") is None and store.vectors == 0
    store.apply_user_vector("ghost", None)  # a tombstone of a user never seen
    assert store.vectors == 0


def test_snapshot_round_trip(tmp_path):
    store = ServingStore(width=2, dim=2)
    for n in range(50):
        store.apply_recommendation(rec(f"ü{n}", [("a", 0.5), (f"i{n}", None)], version=f"v{n % 3}", emitted=n))
        store.apply_user_vector(f"ü{n}", [n, -n])
        store.advance("recs", n % 4, n + 1)
    path = tmp_path / "deep" / "snap.npz"
    write_snapshot(path, store, source={"topics": ["recs"]})
    back, source = read_snapshot(path)
    assert source == {"topics": ["recs"]}
    assert back.offsets == store.offsets and back.lists == 50 and back.vectors == 50
    for n in range(50):
        assert back.lookup(f"ü{n}", 5) == store.lookup(f"ü{n}", 5)
        assert np.array_equal(back.vector(f"ü{n}"), store.vector(f"ü{n}"))
    assert back.popular_by_recommendations(3) == store.popular_by_recommendations(3)
    store.items.code("interned, never counted")
    write_snapshot(path, store, source={})
    assert read_snapshot(path)[0].items.names == store.items.names
    back.apply_recommendation(rec("new", [("b", 1.0)]))  # a resumed store goes on growing
    assert back.lookup("new", 1)["items"][0]["item_id"] == "b"
    assert [p.name for p in path.parent.iterdir()] == ["snap.npz"]  # no temporary file left


def test_a_snapshot_of_another_format_is_refused(tmp_path):
    path = tmp_path / "snap.npz"
    write_snapshot(path, ServingStore(width=2, dim=2), source={})
    with np.load(path) as npz:
        arrays = dict(npz)
    arrays["header"] = np.frombuffer(bytes(arrays["header"]).replace(
        f'"format_version": {FORMAT_VERSION}'.encode(), b'"format_version": 99'), np.uint8)
    np.savez(path, **arrays)
    with pytest.raises(SnapshotError, match="version 99"):
        read_snapshot(path)
    path.write_bytes(b"not a snapshot")
    with pytest.raises(SnapshotError, match="unreadable"):
        read_snapshot(path)
