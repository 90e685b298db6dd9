"""The directory-tree model registry: round trip, atomicity, retention, promote/rollback, log,
corrupt models and the CURRENT watcher. Real ONNX models, real files, no mocks."""

import json
import logging
import os
import threading

import numpy as np
import onnx
import pytest

from streamrec.model.onnx_model import export_model_bytes
from streamrec.model.registry import (
    CorruptModelError,
    CurrentModelWatcher,
    NotARollbackTargetError,
    Registry,
    RegistryError,
    RegistryState,
    sha256_hex,
)
from streamrec.model.scoring import ScoringModel

CPU = ["CPUExecutionProvider"]


def _model(n=6, d=4, seed=0):
    rng = np.random.default_rng(seed)
    items = rng.normal(size=(n, d)).astype(np.float32)
    data = export_model_bytes(items, np.zeros(n), np.zeros(n), 0.0)
    meta = {
        "item_ids": [f"item-{seed}-{i}" for i in range(n)],
        "dim": d,
        "training_position": {"offsets": {"0": 10 + seed, "1": 7}, "watermark": 1_700_000_000_000},
        "exporter_config": {"top_k": 10, "popularity_prior": 0.0},
        "extra": {"seed": seed},
    }
    return data, meta


def _publish(reg, seed=0, **kw):
    data, meta = _model(seed=seed, **kw)
    return reg.publish(data, meta)


def test_round_trip_and_meta_schema(tmp_path):
    reg = Registry(tmp_path / "registry")
    data, meta = _model(n=7, d=3, seed=1)
    v = reg.publish(data, meta)
    assert v == "v000001" and reg.list_versions() == [v] and reg.current() is None
    loaded, m = reg.load(v)
    assert loaded == data
    assert m["sha256"] == sha256_hex(data)
    assert m["version"] == v and m["status"] == "candidate"
    assert m["item_ids"] == meta["item_ids"] and m["item_count"] == 7 and m["dim"] == 3
    assert m["training_position"] == {"offsets": {"0": 11, "1": 7}, "watermark": 1_700_000_000_000}
    assert m["exporter_config"]["top_k"] == 10 and m["extra"] == {"seed": 1}
    assert m["quality"] == {"candidate": None, "current": None}
    assert "created_at" in m
    assert set(os.listdir(tmp_path / "registry" / v)) == {"model.onnx", "meta.json"}
    onnx.checker.check_model(onnx.load_from_string(loaded))
    sm = ScoringModel.from_registry(reg, v, providers=CPU)
    assert sm.version == v and sm.item_ids == meta["item_ids"]
    # nothing left in staging
    assert [e for e in os.listdir(tmp_path / "registry") if e.startswith(".staging")] == []


def test_publish_validates_meta(tmp_path):
    reg = Registry(tmp_path)
    data, meta = _model()
    with pytest.raises(ValueError):
        reg.publish(data, {**meta, "item_ids": ["a", "a", "b", "c", "d", "e"]})
    with pytest.raises(ValueError):
        reg.publish(data, {**meta, "item_count": 3})
    with pytest.raises(ValueError):
        reg.publish(data, {k: v for k, v in meta.items() if k != "dim"})
    assert reg.list_versions() == []


def test_promote_rollback_and_log(tmp_path):
    reg = Registry(tmp_path)
    v1, v2, v3 = (_publish(reg, seed=s) for s in range(3))
    with pytest.raises(RegistryError):
        reg.rollback(actor="ops", reason="nothing yet")
    reg.promote(v1, actor="gate", reason="first")
    reg.promote(v2, actor="gate", reason="better")
    reg.promote(v3, actor="gate", reason="better again")
    assert reg.current() == v3 and reg.previous_promoted() == v2
    # (pin=False: the walk-back mechanics alone; pinning is tested below)
    assert reg.rollback(actor="alice", reason="bad CTR", pin=False) == v2
    assert reg.current() == v2
    assert reg.rollback(actor="alice", reason="still bad", pin=False) == v1  # walks back, no ping-pong
    with pytest.raises(RegistryError):
        reg.rollback(actor="alice", reason="nothing before v1", pin=False)
    assert reg.rollback(to=v3, actor="bob", reason="fixed upstream", pin=False) == v3
    assert reg.previous_promoted() == v1

    log = reg.read_log()
    assert [e["action"] for e in log] == ["publish"] * 3 + ["promote"] * 3 + ["rollback"] * 3
    for e in log:
        assert set(e) >= {"ts", "action", "version", "from", "actor", "reason"}
    promotes = [(e["version"], e["from"], e["actor"]) for e in log if e["action"] == "promote"]
    assert promotes == [(v1, None, "gate"), (v2, v1, "gate"), (v3, v2, "gate")]
    rollbacks = [(e["version"], e["from"], e["actor"], e["reason"]) for e in log if e["action"] == "rollback"]
    assert rollbacks == [(v2, v3, "alice", "bad CTR"), (v1, v2, "alice", "still bad"),
                         (v3, v1, "bob", "fixed upstream")]
    # the log file is JSON lines
    lines = (tmp_path / "registry.log").read_text().splitlines()
    assert len(lines) == 9 and all(json.loads(line) for line in lines)
    assert reg.read_meta(v2)["status"] == "promoted"
    assert [h["action"] for h in reg.read_meta(v2)["history"]] == ["promote", "rollback"]


def test_reject_and_rollback_refuses_rejected(tmp_path):
    reg = Registry(tmp_path)
    v1, v2 = _publish(reg, seed=1), _publish(reg, seed=2)
    reg.promote(v1, actor="gate", reason="first")
    reg.reject(v2, reason="recall too low", figures={"candidate": 0.1, "current": 0.5})
    meta = reg.read_meta(v2)
    assert meta["status"] == "rejected" and meta["quality"] == {"candidate": 0.1, "current": 0.5}
    assert reg.current() == v1
    with pytest.raises(RegistryError, match="rejected"):
        reg.rollback(to=v2, actor="ops", reason="")
    with pytest.raises(RegistryError, match="CURRENT"):
        reg.reject(v1, reason="cannot reject the serving model")
    assert reg.read_log()[-1]["action"] == "reject"


def test_a_rejection_that_holds_back_the_live_model_guards_until_a_promotion(tmp_path):
    reg = Registry(tmp_path)
    v1, v2, v3, v4 = (_publish(reg, seed=n) for n in range(1, 5))
    reg.reject(v1, reason="before any CURRENT", hold_back_live=True)
    assert reg.guard() is None  # nothing to fall back to: no guard
    reg.promote(v2, actor="gate", reason="first")
    reg.reject(v3, reason="a tie at the cap")  # not shown worse: the live model serves on
    assert reg.guard() is None and reg.state().held_back is None
    reg.reject(v4, reason="shown worse", hold_back_live=True)
    assert reg.state() == RegistryState(v2, held_back=v4)
    assert reg.guard()["current"] == v2 and reg.read_log()[-1]["hold_back_live"] is True
    (tmp_path / "GUARD").write_text("{torn")
    with pytest.raises(RegistryError, match="remove it to end the guard"):
        reg.guard()
    assert reg.state().held_back is None  # serving reads an unreadable guard as none
    reg.reject(v4, reason="shown worse again", hold_back_live=True)
    v5 = _publish(reg, seed=5)
    reg.promote(v5, actor="gate", reason="recovered")
    assert reg.guard() is None and reg.state() == RegistryState(v5)


def test_retention_keeps_last_n_current_and_previous(tmp_path):
    reg = Registry(tmp_path)
    vs = [_publish(reg, seed=s) for s in range(8)]
    reg.promote(vs[0], actor="gate", reason="")
    reg.promote(vs[1], actor="gate", reason="")
    reg.promote(vs[4], actor="gate", reason="")
    reg.reject(vs[5], reason="worse")
    deleted = reg.enforce_retention(2)
    assert sorted(deleted) == [vs[0], vs[2], vs[3], vs[5]]
    assert reg.list_versions() == [vs[1], vs[4], vs[6], vs[7]]  # previous, CURRENT, last 2
    assert reg.current() == vs[4]
    assert reg.read_log()[-1]["action"] == "retention"
    # nothing more to delete; no trash left behind
    assert reg.enforce_retention(2) == []
    assert not [e for e in os.listdir(tmp_path) if e.startswith(".trash")]
    assert reg.rollback(actor="ops", reason="") == vs[1]  # previous promoted survived
    # after the rollback vs[4] is neither CURRENT nor the rollback target: it may go
    assert reg.enforce_retention(2) == [vs[4]]
    # numbers are never reused after deletions
    assert _publish(reg, seed=99) == "v000009"


def test_corrupt_model_refused(tmp_path):
    reg = Registry(tmp_path)
    v = _publish(reg)
    path = tmp_path / v / "model.onnx"
    good = path.read_bytes()
    flipped = bytearray(good)
    flipped[len(flipped) // 2] ^= 0xFF
    path.write_bytes(bytes(flipped))
    with pytest.raises(CorruptModelError, match="sha256"):
        reg.load(v)
    with pytest.raises(CorruptModelError):
        reg.promote(v, actor="gate", reason="")
    assert reg.current() is None
    path.write_bytes(good[: len(good) // 2])  # partial write
    with pytest.raises(CorruptModelError):
        reg.load(v)
    path.unlink()
    with pytest.raises(CorruptModelError, match="missing"):
        reg.load(v)
    (tmp_path / v / "meta.json").write_text("{not json")
    with pytest.raises(CorruptModelError, match="JSON"):
        reg.load(v)
    with pytest.raises(CorruptModelError, match="does not exist"):
        reg.load("v000042")


def _loader(data, meta):
    return ScoringModel.from_bytes(data, meta, CPU)


def test_watcher_keeps_previous_model_when_new_one_is_corrupt(tmp_path, caplog):
    reg = Registry(tmp_path)
    v1 = _publish(reg, seed=1)
    reg.promote(v1, actor="gate", reason="")
    watcher = CurrentModelWatcher(reg, _loader, interval_s=0.01)
    assert watcher.check() and watcher.version == v1
    assert not watcher.check()  # unchanged: nothing loaded
    v2 = _publish(reg, seed=2)
    reg.promote(v2, actor="gate", reason="")
    model_file = tmp_path / v2 / "model.onnx"
    raw = bytearray(model_file.read_bytes())
    raw[100] ^= 0x01
    model_file.write_bytes(bytes(raw))
    with caplog.at_level(logging.ERROR, logger="streamrec.model.registry"):
        assert not watcher.check()
        assert not watcher.check()
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and v2 in errors[0].getMessage() and v1 in errors[0].getMessage()
    # the refusal is in the registry's log once, with who and why (what `model list` shows)
    refused = reg.refusals()
    assert list(refused) == [v2] and len(refused[v2]) == 1 and "sha256" in refused[v2][0]["reason"]
    assert refused[v2][0]["actor"].startswith("scorer@") and refused[v2][0]["from"] == v2
    version, model = watcher.get()
    assert version == v1 and model.version == v1
    assert model.topk(np.ones((1, 4), np.float32), 3)[0][0][0].startswith("item-1-")
    # a good version promoted afterwards is picked up
    v3 = _publish(reg, seed=3)
    reg.promote(v3, actor="gate", reason="")
    assert watcher.check() and watcher.version == v3 and watcher.loads == 2


def test_watcher_thread_and_maybe_check(tmp_path):
    reg = Registry(tmp_path)
    watcher = CurrentModelWatcher(reg, _loader, interval_s=0.02)
    assert not watcher.maybe_check() and watcher.model is None  # none yet
    seen = []
    watcher.on_change = lambda v, m: seen.append(v)
    v1 = _publish(reg, seed=1)
    reg.promote(v1, actor="gate", reason="")
    watcher.start()
    try:
        for _ in range(200):
            if watcher.version == v1:
                break
            threading.Event().wait(0.01)
    finally:
        watcher.stop()
    assert watcher.version == v1 and seen == [v1]


def test_reader_never_sees_partial_model_while_writer_promotes(tmp_path):
    reg = Registry(tmp_path)
    stop = threading.Event()
    stats = {"loads": 0, "none_yet": 0, "failures": [], "versions": set()}

    def reader():
        r = Registry(tmp_path)  # its own instance, as another process would have
        while not stop.is_set():
            try:
                v = r.current()
                if v is None:
                    stats["none_yet"] += 1
                    continue
                data, meta = r.load(v)
                assert sha256_hex(data) == meta["sha256"] and meta["version"] == v
                assert meta["status"] == "promoted"
                assert onnx.load_from_string(data).graph.node[-1].op_type == "TopK"
                for listed in r.list_versions()[-2:]:  # listed versions are always complete
                    r.load(listed)
                stats["loads"] += 1
                stats["versions"].add(v)
            except Exception as exc:  # noqa: BLE001 - counted and reported below
                stats["failures"].append(repr(exc))

    watcher = CurrentModelWatcher(Registry(tmp_path), lambda d, m: m["version"], interval_s=0.001)
    threads = [threading.Thread(target=reader) for _ in range(2)]
    for t in threads:
        t.start()
    writer_data = [_model(n=20, d=8, seed=s) for s in range(100)]
    for data, meta in writer_data:
        v = reg.publish(data, meta)
        reg.promote(v, actor="writer", reason="test")
        watcher.check()
    stop.set()
    for t in threads:
        t.join()
    assert stats["failures"] == []
    assert stats["loads"] > 0
    assert reg.current() == "v000100" and len(reg.list_versions()) == 100
    assert watcher.failures == 0 and watcher.version == "v000100"


def test_two_writers_get_distinct_versions(tmp_path):
    results: list[list[str]] = [[], []]

    def writer(slot):
        r = Registry(tmp_path)
        for s in range(25):
            results[slot].append(_publish(r, seed=slot * 100 + s))

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    reg = Registry(tmp_path)
    allv = results[0] + results[1]
    assert len(set(allv)) == 50 and sorted(allv) == reg.list_versions()
    for v in allv:
        _, meta = reg.load(v)
        assert meta["version"] == v
    assert [e for e in os.listdir(tmp_path) if e.startswith(".staging")] == []
    assert len([e for e in reg.read_log() if e["action"] == "publish"]) == 50


def test_default_rollback_skips_versions_rejected_after_promotion(tmp_path):
    reg = Registry(tmp_path)
    v1, v2, v3 = (_publish(reg, seed=s) for s in range(3))
    for v in (v1, v2, v3):
        reg.promote(v, actor="gate", reason="")
    reg.reject(v2, reason="found bad after the fact", actor="alice")
    assert reg.previous_promoted() == v1
    assert reg.rollback(actor="alice", reason="") == v1


def test_a_rollback_pins_current_until_unpin_or_a_manual_promote(tmp_path):
    from streamrec.model.registry import PinnedError

    reg = Registry(tmp_path)
    v1, v2, v3, v4 = (_publish(reg, seed=s) for s in range(4))
    reg.promote(v1, actor="gate", reason="first")
    reg.promote(v2, actor="gate", reason="better")
    assert reg.rollback(actor="alice", reason="bad CTR", log_extra={"user": "alice"}) == v1
    assert reg.pinned()["version"] == v1 and reg.pinned()["user"] == "alice"
    with pytest.raises(PinnedError, match=f"pinned to {v1} by alice"):
        reg.promote(v3, actor="gate", reason="the gate likes it")
    assert reg.current() == v1
    reg.hold(v3, "held: pinned")
    assert reg.read_meta(v3)["status"] == "candidate"
    assert reg.unpin(actor="alice", reason="fixed") == v1 and reg.pinned() is None
    reg.promote(v3, actor="gate", reason="promotion resumes")
    assert reg.current() == v3
    reg.rollback(to=v2, actor="bob", reason="again")
    reg.promote(v4, actor="cli", reason="manual", operator=True)  # an operator's promote ends it
    assert reg.current() == v4 and reg.pinned() is None
    actions = [e["action"] for e in reg.read_log()]
    assert actions[-8:] == ["rollback", "pin", "hold", "unpin", "promote", "rollback", "pin", "unpin"] or \
        actions[-9:] == ["rollback", "pin", "hold", "unpin", "promote", "rollback", "pin", "unpin", "promote"]


def test_rollback_by_time_takes_the_newest_version_before_it(tmp_path):
    from datetime import datetime, timedelta

    reg = Registry(tmp_path)
    v1, v2, v3 = (_publish(reg, seed=s) for s in range(3))
    for v in (v1, v2, v3):
        reg.promote(v, actor="gate", reason="ok")
    created = {v: datetime.fromisoformat(reg.read_meta(v)["created_at"]) for v in (v1, v2, v3)}
    assert reg.newest_before(created[v3]) == v2
    assert reg.newest_before(created[v3] + timedelta(seconds=1)) == v3
    with pytest.raises(RegistryError, match="no promoted version was created before"):
        reg.newest_before(created[v1])
    # a newer version nobody promoted: not the default target, the forced one
    v4 = _publish(reg, seed=3)
    later = datetime.fromisoformat(reg.read_meta(v4)["created_at"]) + timedelta(seconds=1)
    assert (reg.newest_before(later), reg.newest_before(later, promoted_only=False)) == (v3, v4)


def _created(reg, version, when):
    """Set a version's created_at (a new file: as the registry itself replaces meta.json)."""
    path = reg.path(version) / "meta.json"
    meta = json.loads(path.read_text())
    meta["created_at"] = when.isoformat()
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(meta))
    os.replace(tmp, path)


def test_retention_keeps_the_last_n_plus_hourly_and_daily_representatives(tmp_path):
    from datetime import datetime, timedelta, timezone

    now = datetime(2025, 6, 10, 12, 30, tzinfo=timezone.utc)
    reg = Registry(tmp_path)
    plan = [  # (created_at, rejected?) oldest first
        (datetime(2025, 5, 20, 9, 0), False),    # v1: CURRENT (promoted long ago)
        (datetime(2025, 6, 1, 10, 0), False),    # v2: 9 days ago: outside 7 days -> deleted
        (datetime(2025, 6, 5, 8, 0), False),     # v3: daily (newest of 06-05)
        (datetime(2025, 6, 9, 8, 0), False),     # v4: older on 06-09 -> deleted
        (datetime(2025, 6, 9, 20, 0), False),    # v5: daily (newest of 06-09)
        (datetime(2025, 6, 10, 9, 40), False),   # v6: 09:00 is outside 3 hours, 06-10's newest is v14
        (datetime(2025, 6, 10, 10, 20), False),  # v7: hourly (10:00)
        (datetime(2025, 6, 10, 11, 10), False),  # v8: older in 11:00 -> deleted
        (datetime(2025, 6, 10, 11, 50), False),  # v9: hourly (11:00): newest non-rejected
        (datetime(2025, 6, 10, 11, 55), True),   # v10: rejected: never a representative
        (datetime(2025, 6, 10, 12, 1), False),   # v11..v14: this hour; the last 3 are last_n
        (datetime(2025, 6, 10, 12, 2), False),
        (datetime(2025, 6, 10, 12, 3), False),
        (datetime(2025, 6, 10, 12, 4), False),
    ]
    vs = []
    for n, (when, rejected) in enumerate(plan):
        v = _publish(reg, seed=n)
        _created(reg, v, when.replace(tzinfo=timezone.utc))
        vs.append(v)
        if rejected:
            reg.reject(v, reason="worse")
    reg.promote(vs[0], actor="gate", reason="long ago")
    deleted = reg.enforce_retention(3, hourly_hours=3, daily_days=7, now=now)
    assert deleted == [vs[1], vs[3], vs[5], vs[7], vs[9], vs[10]]
    assert reg.list_versions() == [vs[0], vs[2], vs[4], vs[6], vs[8], vs[11], vs[12], vs[13]]
    entry = reg.read_log()[-1]
    assert entry["action"] == "retention" and entry["deleted"] == deleted
    assert entry["kept"] == {"current": [vs[0]], "last_n": vs[11:], "hourly": [vs[6], vs[8]],
                             "daily": [vs[2], vs[4]]}
    # a day later the hourly ones have aged out; the days still hold their newest
    later = reg.enforce_retention(3, hourly_hours=3, daily_days=7, now=now + timedelta(days=1))
    assert later == [vs[6], vs[8]]
    # the rules disabled: only the last N and CURRENT remain
    assert reg.enforce_retention(3, hourly_hours=0, daily_days=0, now=now) == [vs[2], vs[4]]
    assert reg.list_versions() == [vs[0]] + vs[11:]
    with pytest.raises(ValueError, match="timezone-aware"):
        reg.enforce_retention(3, now=datetime(2025, 1, 1))


def test_retention_keeps_the_pin_the_rollback_target_and_protected_versions(tmp_path):
    from datetime import datetime, timedelta, timezone

    now = datetime(2025, 6, 10, 12, 0, tzinfo=timezone.utc)
    reg = Registry(tmp_path)
    vs = [_publish(reg, seed=s) for s in range(7)]
    for n, v in enumerate(vs):
        _created(reg, v, now - timedelta(days=30 - n))  # all far outside every time window
    reg.promote(vs[0], actor="gate", reason="")
    reg.promote(vs[1], actor="gate", reason="")
    reg.promote(vs[2], actor="gate", reason="")
    reg.rollback(to=vs[1], actor="alice", reason="pin it")  # CURRENT and pin: vs[1]; target vs[0]
    deleted = reg.enforce_retention(2, hourly_hours=24, daily_days=7, now=now, protect=[vs[3]])
    assert deleted == [vs[2], vs[4]]
    kept = reg.read_log()[-1]["kept"]
    assert kept == {"current": [vs[1]], "rollback_target": [vs[0]], "protected": [vs[3]],
                    "last_n": [vs[5], vs[6]]}
    assert "pin" not in kept  # the pinned version is CURRENT: listed once, under the first rule


def test_rollback_by_time_reaches_back_as_far_as_retention_keeps(tmp_path):
    from datetime import datetime, timedelta, timezone

    now = datetime(2025, 6, 10, 12, 0, tzinfo=timezone.utc)
    reg = Registry(tmp_path)
    vs = []
    for n in range(30):  # one version every 5 minutes for 2.5 hours
        v = _publish(reg, seed=n)
        _created(reg, v, now - timedelta(minutes=5 * (29 - n)))
        reg.promote(v, actor="gate", reason="ok")
        vs.append(v)
    reg.enforce_retention(5, hourly_hours=24, daily_days=7, now=now)
    # two hours ago: the newest version of that hour is still there to roll back to
    target = reg.newest_before(now - timedelta(hours=1, minutes=1))
    assert target == vs[16]  # 10:55, the last of the 10:00 hour
    assert reg.rollback(to=target, actor="alice", reason="before the incident") == target


def test_the_log_rotates_and_rollback_still_walks_back(tmp_path):
    reg = Registry(tmp_path, log_max_bytes=1500, log_keep=2)
    vs = [_publish(reg, seed=s) for s in range(4)]
    for v in vs:
        reg.promote(v, actor="gate", reason="better " + "x" * 200)
        for _ in range(6):  # enough other entries to rotate between promotions
            reg.hold(vs[-1], reason="filler " + "y" * 200)
    rotated = sorted(p.name for p in tmp_path.glob("registry.log.*"))
    assert rotated == ["registry.log.1", "registry.log.2"]  # log_keep: older ones deleted
    for name in ("registry.log", "registry.log.1", "registry.log.2"):
        first = json.loads((tmp_path / name).read_text().splitlines()[0])
        assert first["action"] == "snapshot" and first["stack"][0] == vs[0]
        assert (tmp_path / name).stat().st_size <= 1500 + 600  # rotated after the line that crossed it
    promotes = [e for e in reg.read_log(rotated=False) if e["action"] == "promote"]
    assert not any(e["version"] == vs[0] for e in promotes)  # its promote line was rotated away
    assert reg.promotion_stack() == vs
    # rollback walks back through versions whose promote lines live only in a snapshot now
    assert reg.rollback(actor="alice", reason="bad", pin=False) == vs[2]
    assert reg.rollback(actor="alice", reason="still bad", pin=False) == vs[1]
    for _ in range(12):
        reg.hold(vs[3], reason="more filler " + "z" * 200)  # rotate again after the rollbacks
    assert json.loads((tmp_path / "registry.log").read_text().splitlines()[0])["stack"] == vs[:2]
    assert reg.rollback(actor="alice", reason="further", pin=False) == vs[0]
    # read_log reads the rotated files too, oldest first
    entries = reg.read_log()
    assert entries[0]["action"] == "snapshot" and [e["ts"] for e in entries] == sorted(e["ts"] for e in entries)
    assert len(entries) > len(reg.read_log(rotated=False))
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


def test_a_rotated_log_keeps_the_pin_in_its_snapshot(tmp_path):
    reg = Registry(tmp_path, log_max_bytes=800)
    v1, v2 = _publish(reg, seed=1), _publish(reg, seed=2)
    reg.promote(v1, actor="gate", reason="")
    reg.promote(v2, actor="gate", reason="")
    reg.rollback(actor="alice", reason="pinned " + "p" * 300)
    for _ in range(4):
        reg.hold(v2, reason="filler " + "f" * 200)
    snapshot = json.loads((tmp_path / "registry.log").read_text().splitlines()[0])
    assert snapshot["action"] == "snapshot" and snapshot["pin"]["version"] == v1 and snapshot["current"] == v1
    assert reg.promotion_stack() == [v1] and reg.pinned()["version"] == v1


def test_verify_checks_every_file(tmp_path):
    from streamrec.model.item_table import ITEMS_ATTACHMENT

    reg = Registry(tmp_path)
    data, meta = _model()
    v = reg.publish(data, meta, {ITEMS_ATTACHMENT: b"items", "notes.txt": b"hello"})
    m = reg.verify(v)
    assert m["files"] == {"model.onnx": sha256_hex(data), ITEMS_ATTACHMENT: sha256_hex(b"items"),
                          "notes.txt": sha256_hex(b"hello")}
    (tmp_path / v / "notes.txt").write_bytes(b"hellO")
    reg.load(v)  # model.onnx is fine ...
    with pytest.raises(CorruptModelError, match="notes.txt"):
        reg.verify(v)  # ... but not every file
    (tmp_path / v / "notes.txt").unlink()
    with pytest.raises(CorruptModelError, match="missing"):
        reg.verify(v)


def test_rollback_refuses_versions_never_promoted_or_rejected_unless_forced(tmp_path):
    reg = Registry(tmp_path)
    v1, v2, v3, v4, v5 = (_publish(reg, seed=s) for s in range(5))
    reg.promote(v1, actor="gate", reason="first")
    reg.promote(v2, actor="gate", reason="better")
    reg.supersede(v3, reason="a newer candidate")
    reg.reject(v4, reason="worse")
    for version, why in ((v3, "it was never promoted (status superseded)"), (v4, "it was rejected"),
                         (v5, "it was never promoted (status candidate)")):
        with pytest.raises(NotARollbackTargetError) as refused:
            reg.rollback(to=version, actor="alice", reason="")
        assert str(refused.value) == f"cannot roll back to {version}: {why}; `--force` rolls back to it anyway"
    assert reg.state() == RegistryState(v2) and "rollback" not in {e["action"] for e in reg.read_log()}
    assert reg.rollback(to=v5, actor="alice", reason="checked by hand", force=True) == v5
    assert reg.state() == RegistryState(v5, pinned=v5)
    rollback = [e for e in reg.read_log() if e["action"] == "rollback"]
    assert [(e["version"], e["forced"]) for e in rollback] == [(v5, True)]
    assert reg.read_meta(v5)["status"] == "candidate"  # still never promoted: a next rollback needs --force


def test_current_says_whether_an_operator_promoted_it(tmp_path):
    reg = Registry(tmp_path)
    v1, v2, v3 = (_publish(reg, seed=s) for s in range(3))
    reg.promote(v1, actor="gate", reason="first")
    assert reg.state() == RegistryState(v1) and (tmp_path / "CURRENT").read_text() == f"{v1}\n"
    reg.promote(v2, actor="cli", reason="by hand", operator=True)
    assert reg.state() == RegistryState(v2, by_operator=True) and reg.current() == v2
    assert (tmp_path / "CURRENT").read_text() == f"{v2}\noperator\n"
    reg.rollback(to=v1, actor="alice", reason="bad CTR")  # a rollback's choice is the pin
    assert reg.state() == RegistryState(v1, pinned=v1)
    reg.promote(v1, actor="cli", reason="serve it as it is", operator=True)  # already CURRENT
    assert reg.state() == RegistryState(v1, by_operator=True)
    reg.promote(v1, actor="cli", reason="again", operator=True)  # nothing left to change
    reg.promote(v3, actor="gate", reason="better")
    assert reg.state() == RegistryState(v3)
    assert [(e["version"], e.get("operator")) for e in reg.read_log() if e["action"] == "promote"] == \
        [(v1, None), (v2, True), (v1, True), (v3, None)]


def test_the_next_writer_finishes_an_operators_promotion(tmp_path):
    reg = Registry(tmp_path)
    v1, v2, v3 = (_publish(reg, seed=s) for s in range(3))
    reg.promote(v1, actor="gate", reason="first")
    reg.promote(v2, actor="cli", reason="by hand", operator=True)
    # as if the writer died after logging: CURRENT still the old one, older than the log line
    (tmp_path / "CURRENT").write_text(f"{v1}\n")
    os.utime(tmp_path / "CURRENT", (1_000_000_000, 1_000_000_000))
    reg.hold(v3, reason="any locked change")
    assert reg.state() == RegistryState(v2, by_operator=True)
