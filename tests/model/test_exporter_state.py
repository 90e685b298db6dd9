"""The exporter's record handling without Kafka: last record wins, tombstones, bad records,
sorted item order, gate inputs and bounded seen sets."""

import json

import numpy as np

from model import exporter as ex
from model.exporter import FEATURE_ITEM_ID, FEATURE_POPULARITY, ExporterState


def _j(obj) -> bytes:
    return json.dumps(obj).encode()


def test_items_features_users_and_order():
    st = ExporterState(dim=2, gate_events=3)
    assert not st.changed
    st.apply("items", b"b", _j({"item_id": "b", "vector": [1, 2], "bias": 0.5, "updates": 1, "ts": 10}))
    st.apply("items", b"a", _j({"item_id": "a", "vector": [3, 4], "bias": -1, "updates": 1, "ts": 30}))
    st.apply("items", b"b", _j({"item_id": "b", "vector": [5, 6], "bias": 0.25, "updates": 2, "ts": 20}))
    st.apply("items", b"c", _j({"item_id": "c", "vector": [0, 0], "bias": 0, "updates": 1, "ts": 5}))
    st.apply("items", b"c", None)  # tombstone
    st.apply("features", b"b", _j({FEATURE_ITEM_ID: "b", FEATURE_POPULARITY: 7.0, "other": 1}))
    st.apply("users", b"u", _j({"user_id": "u", "vector": [1, 0], "events": 3, "ts": 1}))
    assert st.changed and st.item_changes == 5 and st.feature_changes == 1
    t = st.item_table()
    assert t.item_ids.tolist() == ["a", "b"]  # sorted ids, c deleted
    np.testing.assert_array_equal(t.vectors, [[3, 4], [5, 6]])  # last record of b wins
    np.testing.assert_array_equal(t.bias, np.array([-1, 0.25], np.float32))
    np.testing.assert_array_equal(t.popularity, [0, 7])  # 0 without features
    assert st.items_watermark == 30
    st.mark_exported()
    assert not st.changed
    st.apply("features", b"b", _j({FEATURE_ITEM_ID: "b", FEATURE_POPULARITY: 7.0}))  # no change
    assert not st.changed
    users, _, _ = st.gate_inputs()
    assert list(users) == ["u"]


def test_bad_records_are_counted_and_skipped():
    st = ExporterState(dim=2, gate_events=3)
    for raw in [b"{not json", _j([1, 2]), _j({"item_id": "x", "vector": [1]}),
                _j({"item_id": "x", "vector": [1, float("nan")]}), _j({"vector": [1, 2]}),
                _j({"item_id": "x", "vector": [1, 2], "bias": "high"})]:
        assert st.apply("items", None, raw) is False
    assert st.bad["items"] == 6 and st.items == {}
    assert st.apply("features", b"i", _j({FEATURE_ITEM_ID: "i"})) is False
    assert st.apply("events", b"u", _j({"user_id": "u"})) is False
    assert not st.changed


def test_ring_buffer_and_bounded_seen(monkeypatch):
    monkeypatch.setattr(ex, "SEEN_ITEMS_PER_USER", 3)
    monkeypatch.setattr(ex, "SEEN_USERS_MAX", 2)
    st = ExporterState(dim=2, gate_events=4)
    for n in range(6):
        st.apply("events", b"u1", _j({"user_id": "u1", "item_id": f"i{n}", "ts": n}))
    st.apply("events", b"u2", _j({"user_id": "u2", "item_id": "j", "ts": 100}))
    _, events, seen = st.gate_inputs()
    assert events == [("u1", "i3"), ("u1", "i4"), ("u1", "i5"), ("u2", "j")]
    assert seen == {"u1": {"i3", "i4", "i5"}, "u2": {"j"}}
    st.apply("events", b"u3", _j({"user_id": "u3", "item_id": "k", "ts": 5}))
    assert list(st.seen) == ["u2", "u3"]  # least recently active user dropped
    assert st.events_watermark == 100 and not st.changed  # events alone do not trigger exports


def test_export_triggers(tmp_path):
    from model.exporter import Exporter
    from tests.support import make_config

    cfg = make_config(tmp_path, 19999, **{"exporter.every_n_changes": 3, "exporter.interval_s": 60.0,
                                      "learner.dim": 2, "paths.registry_dir": str(tmp_path / "reg")})
    exp = Exporter(cfg)  # no Kafka needed until poll()
    assert not exp._due(0.0)  # nothing changed
    exp.state.apply("items", b"a", _j({"item_id": "a", "vector": [1, 2], "bias": 0}))
    assert exp._due(0.0)  # never exported: due as soon as something changed
    exp._last_export = 100.0
    assert not exp._due(101.0) and exp._due(160.0)  # interval
    for n in range(2):
        exp.state.apply("items", b"b", _j({"item_id": "b", "vector": [1, 2], "bias": n}))
    assert exp._due(101.0)  # change count
    exp._retry_at = 200.0
    assert not exp._due(150.0) and exp._due(200.0)  # back-off after a failed export
    r = exp.export()  # exports into the registry without Kafka
    assert r.version == "v000001" and r.promoted and r.items == 2 and not exp.state.changed
    assert exp.training_position()["watermark"] is None
