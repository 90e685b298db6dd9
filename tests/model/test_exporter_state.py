"""The exporter without Kafka: record handling (last record wins, tombstones, bad records, sorted
item order, bounded seen sets), export triggers, the held-out gate fed through ExporterState
with partitions and offsets, and every meta.json field of an export."""

import json
import os

import numpy as np

from streamrec.model import exporter as ex
from streamrec.model.exporter import PIPELINE_JOB, Exporter, ExporterState, config_sha256
from streamrec.model.item_table import ITEMS_ATTACHMENT
from streamrec.model.user_table import load_user_table
from streamrec.model.registry import Registry, sha256_hex
from tests.model.changelog import encoded, event, features, item, user
from tests.support import make_config


def _item(*args, **kwargs) -> bytes:
    return encoded("items", item(*args, **kwargs))


def _user(*args, **kwargs) -> bytes:
    return encoded("users", user(*args, **kwargs))


def _features(*args, **kwargs) -> bytes:
    return encoded("features", features(*args, **kwargs))


def _event(*args, **kwargs) -> bytes:
    return encoded("events", event(*args, **kwargs))


def test_items_features_users_and_order():
    st = ExporterState(dim=2)
    assert not st.changed
    st.apply("items", b"b", _item("b", [1, 2], bias=0.5, popularity=1.0, ts=10))
    st.apply("items", b"a", _item("a", [3, 4], bias=-1, ts=30))
    st.apply("items", b"b", _item("b", [5, 6], bias=0.25, updates=2, popularity=2.0, ts=20))
    st.apply("items", b"c", _item("c", [0, 0], ts=5))
    st.apply("items", b"c", None)  # tombstone
    st.apply("features", b"b", _features("b", 7.0))
    st.apply("features", b"d", _features("d", 4.0))  # an item without a changelog record yet
    st.apply("users", b"u", _user("u", [1, 0], events=3))
    assert st.changed and st.item_changes == 5 and st.feature_changes == 2
    t = st.item_table()
    assert t.item_ids.tolist() == ["a", "b"]  # sorted ids, c deleted
    np.testing.assert_array_equal(t.vectors, [[3, 4], [5, 6]])  # last record of b wins
    np.testing.assert_array_equal(t.bias, np.array([-1, 0.25], np.float32))
    np.testing.assert_array_equal(t.popularity, [0, 2])  # the learner's own count
    assert st.popularity == {"b": 7.0, "d": 4.0}
    assert st.items_watermark == 30
    st.mark_exported()
    assert not st.changed
    st.apply("features", b"b", _features("b", 7.0, window_end=120_000))  # no change
    assert not st.changed
    snapshot = st.user_snapshot()
    st.apply("users", b"u", _user("u", [0, 1], events=4, ts=2))
    assert snapshot["u"].tolist() == [1, 0] and st.users["u"].tolist() == [0, 1]  # the snapshot stays


def test_bad_records_are_counted_and_skipped():
    """Not the topic's record (decoded strictly, core/records.py), or of another dimension."""
    st = ExporterState(dim=2)
    whole = item("x", [1, 2])
    for raw in [b"{not json", b"[1, 2]", _item("x", [1]), json.dumps({**whole, "vector": [1, float("nan")]}).encode(),
                json.dumps({k: v for k, v in whole.items() if k != "item_id"}).encode(),
                json.dumps({**whole, "bias": "high"}).encode(), json.dumps({**whole, "bias": None}).encode(),
                json.dumps({**whole, "extra": 1}).encode(), _item("x", [1e39, 0])]:  # float32 overflows
        assert st.apply("items", None, raw) is False, raw
    assert st.bad["items"] == 9 and st.items == {}
    assert st.apply("features", b"i", json.dumps({"item_id": "i", "popularity": 1.0}).encode()) is False
    assert st.apply("events", b"u", json.dumps({"user_id": "u"}).encode()) is False
    assert not st.changed


def test_bounded_seen(monkeypatch):
    monkeypatch.setattr(ex, "SEEN_ITEMS_PER_USER", 3)
    monkeypatch.setattr(ex, "SEEN_USERS_MAX", 2)
    st = ExporterState(dim=2)
    for n in range(6):
        st.apply("events", b"u1", _event("u1", f"i{n}", ts=n))
    st.apply("events", b"u2", _event("u2", "j", ts=100))
    assert {u: list(s) for u, s in st.seen.items()} == {"u1": ["i3", "i4", "i5"], "u2": ["j"]}
    st.apply("events", b"u3", _event("u3", "k", ts=5))
    assert list(st.seen) == ["u2", "u3"]  # least recently active user dropped
    assert st.events_watermark == 100 and not st.changed  # events alone do not trigger exports


def _exporter(tmp_path, dim=2, **overrides):
    # the cadence's minimums off: these worlds are tiny (test_the_cadence_waits_until_the_model_can_rank)
    settings = {"learner.dim": dim, "paths.registry_dir": str(tmp_path / "reg"),
                "paths.checkpoint_dir": str(tmp_path / "checkpoints"),
                "exporter.export_min_items": 0, "exporter.export_min_events": 0}
    settings.update({f"exporter.{k}": v for k, v in overrides.items()})
    return Exporter(make_config(tmp_path, 19999, **settings))  # no Kafka needed until poll()


def test_export_triggers(tmp_path):
    exp = _exporter(tmp_path, every_n_changes=3, interval_s=60.0, gate_min_events=0)
    assert not exp._due(0.0)  # nothing changed
    exp.state.apply("items", b"a", _item("a", [1, 2]))
    assert exp._due(0.0)  # never exported: due as soon as something changed
    exp._last_export = 100.0
    assert not exp._due(101.0) and exp._due(160.0)  # interval
    for n in range(2):
        exp.state.apply("items", b"b", _item("b", [1, 2], bias=n))
    assert exp._due(101.0)  # change count
    exp._retry_at = 200.0
    assert not exp._due(150.0) and exp._due(200.0)  # back-off after a failed export
    r = exp.export()  # exports into the registry without Kafka; min 0 events: decided at once
    assert r.version == "v000001" and r.promoted and r.items == 2 and not exp.state.changed
    assert exp.training_position()["watermark"] == 1  # the newest item record's ts


def test_the_cadence_waits_until_the_model_can_rank(tmp_path):
    """No version before 3 items were each learned from 2 events, and then only after 4 clean
    events since the previous one (on top of the interval / change-count triggers)."""
    exp = _exporter(tmp_path, every_n_changes=1, interval_s=60.0, gate_min_events=0,
                    export_min_items=3, export_min_item_updates=2, export_min_events=4)
    st = exp.state
    for n, item_id in enumerate("abc"):
        st.apply("items", item_id.encode(), _item(item_id, [1, 2], updates=1))
        st.apply("events", b"u", _event("u", item_id, ts=n), partition=0, offset=n)
    assert st.trained_items == 0 and not exp._due(0.0)
    assert st.cadence_wait(3, 4) == "0 of 3 items learned from at least 2 events"
    for item_id in "ab":
        st.apply("items", item_id.encode(), _item(item_id, [1, 2], updates=2))
    assert st.trained_items == 2 and not exp._due(0.0)
    st.apply("items", b"c", _item("c", [1, 2], updates=5))
    st.apply("events", b"u", _event("u", "c", ts=3), partition=0, offset=3)
    assert st.trained_items == 3 and st.cadence_wait(3, 4) is None and exp._due(0.0)
    exp.export()
    st.apply("items", b"a", _item("a", [1, 3], updates=3))  # changed, but no events since
    assert st.cadence_wait(3, 4) == "0 of 4 clean events since the last export" and not exp._due(1e9)
    for n in range(4):
        st.apply("events", b"u", _event("u", "a", ts=10 + n), partition=0, offset=10 + n)
    assert exp._due(1e9)
    st.apply("items", b"b", None)  # a deleted item no longer counts
    assert st.trained_items == 2 and not exp._due(1e9)


# --------------------------------------------------------------------------- the gate, end to end
def _world_records():
    from tests.model.test_gate import _world

    items, ids, users, events, seen = _world()
    item_recs = [(i, _item(i, v)) for i, v in zip(ids, items)]
    user_recs = [(u, _user(u, v)) for u, v in users.items()]
    history = [(u, i) for u, s in sorted(seen.items()) for i in sorted(s)]
    return items, ids, item_recs, user_recs, history, [e for e in events if e[0] != "ghost-user"]


def _feed(exp, records, kind="items"):
    for key, value in records:
        exp.state.apply(kind, key.encode(), value)


def _events(exp, pairs, partition, start):
    for n, (u, i) in enumerate(pairs):
        exp.state.apply("events", u.encode(), _event(u, i, ts=1_000 + n, offset=start + n, partition=partition),
                        partition, start + n)
    exp.positions[(exp.topics["events"], partition)] = start + len(pairs)


def test_exporter_gates_each_candidate_on_the_events_after_its_cut(tmp_path):
    items, ids, item_recs, user_recs, history, events = _world_records()
    exp = _exporter(tmp_path, dim=16, gate_min_events=300, gate_events=1000, gate_margin=0.02)
    reg = exp.registry
    _feed(exp, item_recs)
    _feed(exp, user_recs, "users")
    _events(exp, history + events, partition=0, start=0)  # all consumed before the export
    cut = len(history) + len(events)

    r1 = exp.export()
    assert r1.pending and "pending" in r1.line() and reg.current() is None
    tp = reg.read_meta(r1.version)["training_position"]
    assert tp["events_topic"] == exp.topics["events"] and tp["events_offsets"] == {"0": cut}
    _feed(exp, item_recs[:5])  # changes while pending: no new export until the gate decided
    waited = exp._last_export + exp.cfg.exporter.gate_max_wait_s
    assert exp.state.changed and not exp._due(waited - 1)
    assert exp._due(waited)  # a candidate that cannot collect its events is superseded in the end
    assert exp.check_gate() is None  # the events it was trained on do not count
    _events(exp, events, partition=0, start=cut)
    decision = exp.check_gate()
    assert decision.status == "promoted" and reg.current() == r1.version and r1.promoted
    assert decision.figures["evaluated"] == len(events) and decision.figures["skipped_before_cut"] == 0
    assert exp.results[-1].decision is decision and exp.decisions == [decision]

    # a worse candidate: item vectors shuffled between items
    perm = np.random.default_rng(7).permutation(len(ids))
    shuffled = [(ids[n], item_recs[p][1].replace(ids[p].encode(), ids[n].encode(), 1))
                for n, p in enumerate(perm)]
    _feed(exp, shuffled)
    r2 = exp.export()
    assert r2.pending
    _events(exp, events, partition=0, start=cut + len(events))
    assert exp.check_gate().status == "rejected" and reg.current() == r1.version
    assert r2.candidate_recall < 0.2 < 0.4 < r2.current_recall and "rejected" in r2.line()


def test_every_meta_field_of_an_export(tmp_path, monkeypatch):
    secret = "hunter2-never-in-meta"
    exp = _exporter(tmp_path, dim=2, gate_min_events=0)
    exp.cfg = exp.cfg.model_copy(update={"kafka": exp.cfg.kafka.model_copy(update={
        "security": exp.cfg.kafka.security.model_copy(update={"protocol": "SASL_SSL", "sasl_password": secret}),
        "client_properties": {"sasl.password": secret}})})
    # a checkpoint directory as Flink writes it: chk-7 complete, chk-8 still in progress
    job = tmp_path / "checkpoints" / PIPELINE_JOB / "0123abcd"
    (job / "chk-7").mkdir(parents=True)
    (job / "chk-7" / "_metadata").write_bytes(b"flink")
    (job / "chk-8").mkdir()
    exp.state.apply("items", b"a", _item("a", [1, 2]))
    exp.state.apply("items", b"b", _item("b", [2, 1]))
    exp.state.apply("features", b"a", _features("a", 3.0))
    exp.state.apply("users", b"u", _user("u", [1, 1]))
    exp.state.apply("items", b"x", _item("x", [1]))  # skipped: wrong dim
    version = exp.export().version
    reg = exp.registry
    text = (reg.path(version) / "meta.json").read_text()
    assert secret not in text
    meta = json.loads(text)
    from streamrec.runtime.lineage import code_version

    assert meta["learner"] == exp.cfg.learner.model_dump(mode="json") and meta["learner"]["dim"] == 2
    assert meta["code_version"] == code_version() != ""
    assert meta["config_sha256"] == config_sha256(exp.cfg) and len(meta["config_sha256"]) == 64
    changed = exp.cfg.model_copy(update={"learner": exp.cfg.learner.model_copy(update={"negatives": 3})})
    assert config_sha256(changed) != meta["config_sha256"]  # the hash follows the configuration
    other_secret = exp.cfg.model_copy(update={"kafka": exp.cfg.kafka.model_copy(update={
        "security": exp.cfg.kafka.security.model_copy(update={"sasl_password": "other"})})})
    assert config_sha256(other_secret) == meta["config_sha256"]  # secrets are not in what is hashed
    assert meta["checkpoint"]["id"] == 7 and meta["checkpoint"]["name"] == "chk-7"
    assert meta["checkpoint"]["job_id"] == "0123abcd"
    assert meta["checkpoint"]["path"].startswith("file:/") and meta["checkpoint"]["path"].endswith("/chk-7")
    assert meta["counts"] == {"items": 2, "users_with_vectors": 1, "items_with_features": 1}
    assert meta["extra"]["skipped_records"]["items"] == 1
    files = {name: sha256_hex((reg.path(version) / name).read_bytes()) for name in os.listdir(reg.path(version))
             if name != "meta.json"}
    assert meta["files"] == files and set(files) == {"model.onnx", ITEMS_ATTACHMENT, "users.npz"}
    users = load_user_table(reg, version, expected_dim=2)  # the cut's user vectors
    assert len(users) == meta["counts"]["users_with_vectors"] == 1
    assert reg.verify(version)["version"] == version
    assert meta["quality"]["compared_with"] == "popularity baseline"  # decided at once (min 0)
    assert meta["training_position"]["events_offsets"] == {}


def test_no_checkpoint_or_an_unreadable_one_never_fails_an_export(tmp_path):
    exp = _exporter(tmp_path, dim=2, gate_min_events=0)
    exp.state.apply("items", b"a", _item("a", [1, 2]))
    assert exp.registry.read_meta(exp.export().version)["checkpoint"] is None
    blocked = tmp_path / "checkpoints"
    blocked.mkdir(exist_ok=True)
    (blocked / PIPELINE_JOB).write_text("a file where the job directory should be")
    exp.state.apply("items", b"b", _item("b", [1, 2]))
    assert exp.registry.read_meta(exp.export().version)["checkpoint"] is None


def test_the_pipeline_job_name_is_the_pipelines():
    from streamrec.flink_jobs import pipeline  # pyflink: the exporter itself must not import it

    assert PIPELINE_JOB == pipeline.JOB_NAME


def test_registry_settings_come_from_the_exporter_config(tmp_path):
    exp = _exporter(tmp_path, log_max_bytes=4096, log_keep=2)
    assert (exp.registry.log_max_bytes, exp.registry.log_keep) == (4096, 2)
    assert isinstance(exp.registry, Registry)
