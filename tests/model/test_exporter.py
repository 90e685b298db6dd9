"""The exporter sidecar against the embedded broker: synthetic changelogs with planted structure
(user groups prefer item groups), exports into a tmp registry, the held-out quality gate (events
after each candidate's cut), --force, the run loop's triggers and a clean stop on SIGTERM."""

import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from streamrec.model.exporter import FORCE_ACTOR, Exporter
from streamrec.model.item_table import ITEMS_ATTACHMENT, load_item_table
from streamrec.model.user_table import USERS_ATTACHMENT
from streamrec.model.registry import Registry
from streamrec.runtime import kafka_io
from streamrec.core.config import to_env
from tests.model.changelog import event, features, item, user
from tests.support import REPO, topic_record

pytestmark = pytest.mark.slow

GROUPS, PER_GROUP, USERS, DIM, EVENTS_PER_USER = 6, 15, 60, 8, 6


def _cfg(cfg, tmp_path, **exporter):
    # gate_min_events 0: tests not about the gate get a decision at export (on no events); the
    # cadence's minimums off: these worlds are small (tests/model/test_exporter_state.py tests them)
    settings = {"top_k": 10, "gate_margin": 0.05, "retention": 10, "gate_events": 2000,
                "gate_min_events": 0, "interval_s": 3600.0, "every_n_changes": 1_000_000,
                "export_min_items": 0, "export_min_events": 0}
    settings.update(exporter)
    return cfg.model_copy(update={
        "paths": cfg.paths.model_copy(update={"registry_dir": tmp_path / "registry"}),
        "learner": cfg.learner.model_copy(update={"dim": DIM}),
        "exporter": cfg.exporter.model_copy(update=settings),
    })


class World:
    """Item groups around centroids; each user belongs to one group and interacts inside it."""

    def __init__(self, seed=0):
        rng = self.rng = np.random.default_rng(seed)
        self.centroids = rng.normal(size=(GROUPS, DIM)) * 2.0
        self.group_of = {f"item-{g}-{j:02d}": g for g in range(GROUPS) for j in range(PER_GROUP)}
        self.items = {i: (self.centroids[g] + 0.5 * rng.normal(size=DIM)).astype(np.float32)
                      for i, g in self.group_of.items()}
        self.users = {f"user-{u:03d}": (self.centroids[u % GROUPS] + 0.3 * rng.normal(size=DIM))
                      .astype(np.float32) for u in range(USERS)}
        self.ts = 1_700_000_000_000

    def item_records(self, vectors=None):
        vectors = vectors or self.items
        out = []
        for n, (item_id, vec) in enumerate(sorted(vectors.items())):
            self.ts += 1
            out.append((item_id, item(item_id, vec, bias=0.01 * (n % 5), updates=3, popularity=n % 7,
                                      ts=self.ts)))
        return out

    def user_records(self):
        return [(u, user(u, v, events=EVENTS_PER_USER, ts=self.ts)) for u, v in self.users.items()]

    def feature_records(self):
        return [(i, features(i, float(self.rng.integers(0, 20)), window_end=self.ts)) for i in self.items]

    def event_records(self):
        out = []
        for u, (user_id, _) in enumerate(sorted(self.users.items())):
            group = [i for i, g in self.group_of.items() if g == u % GROUPS]
            for item_id in self.rng.choice(group, size=EVENTS_PER_USER, replace=False):
                self.ts += 1
                out.append((user_id, event(user_id, str(item_id), ts=self.ts, offset=self.ts)))
        return out

    def shuffled(self):
        ids = sorted(self.items)
        perm = self.rng.permutation(len(ids))
        return {ids[n]: self.items[ids[p]] for n, p in enumerate(perm)}


def produce(cfg, topic, records, transactional=False):
    kafka_io.ensure_topics(cfg, [topic])
    extra = {"transactional.id": f"test-{topic}-{time.time_ns()}"} if transactional else {}
    prod = kafka_io.producer(cfg, **extra)
    if transactional:
        prod.init_transactions(30)
        prod.begin_transaction()
    record = topic_record(cfg, topic)
    for key, value in records:
        prod.produce(topic, key=key.encode(), value=None if value is None else record.encode(value))
    if transactional:
        prod.commit_transaction(30)
    assert prod.flush(30) == 0


def produce_world(cfg, world):
    t = cfg.kafka.topics
    produced = {"items": world.item_records(), "users": world.user_records(),
                "features": world.feature_records(), "events": world.event_records()}
    produce(cfg, t.model_items, produced["items"], transactional=True)
    produce(cfg, t.model_users, produced["users"])
    produce(cfg, t.features_item, produced["features"])
    produce(cfg, t.clean, produced["events"])
    return produced


def test_exports_are_gated_on_held_out_events_and_force(cfg, tmp_path, monkeypatch, capsys):
    cfg = _cfg(cfg, tmp_path, gate_min_events=200)
    world = World()
    produced = produce_world(cfg, world)  # these events precede the first export: never held out
    reg = Registry(cfg.paths_resolved.registry_dir)
    held_out = USERS * EVENTS_PER_USER
    exp = Exporter(cfg)
    try:
        # 1. first export: pending (no event after its cut yet); full meta + attachment + position
        r1 = exp.export_once()
        assert r1.version == "v000001" and r1.pending and r1.items == GROUPS * PER_GROUP
        assert reg.current() is None and reg.read_meta("v000001")["status"] == "candidate"
        meta = reg.read_meta("v000001")
        assert meta["item_ids"] == sorted(world.items) and meta["dim"] == DIM
        assert set(meta["attachments"]) == {ITEMS_ATTACHMENT, USERS_ATTACHMENT}
        assert set(meta["files"]) == {"model.onnx", ITEMS_ATTACHMENT, USERS_ATTACHMENT}
        ends = kafka_io.end_offsets(cfg, cfg.kafka.topics.model_items)
        tp = meta["training_position"]
        assert tp["topic"] == cfg.kafka.topics.model_items
        assert tp["offsets"] == {str(p): end for p, end in ends.items()}  # incl. the txn markers
        assert tp["watermark"] == max(v["ts"] for _, v in produced["items"])
        assert tp["events_watermark"] == max(v["ts"] for _, v in produced["events"])
        clean_ends = kafka_io.end_offsets(cfg, cfg.kafka.topics.clean)
        assert tp["events_topic"] == cfg.kafka.topics.clean
        assert tp["events_offsets"] == {str(p): end for p, end in clean_ends.items()}
        assert meta["exporter_config"]["top_k"] == 10 and meta["exporter_config"]["gate_min_events"] == 200
        table = load_item_table(reg, "v000001")
        assert table.item_ids.tolist() == sorted(world.items)
        np.testing.assert_array_equal(table.vectors, np.stack([world.items[i] for i in sorted(world.items)]))
        assert (table.popularity >= 0).all() and table.popularity.sum() > 0
        assert exp.export_once() is None  # nothing changed, and v000001 waits

        # 2. held-out events arrive (committed like the job's sink): the first model is compared
        #    with its popularity baseline on exactly those, and promoted
        produce(cfg, cfg.kafka.topics.clean, world.event_records(), transactional=True)
        assert exp.export_once() is None and reg.current() == "v000001" and r1.promoted
        d1 = exp.decisions[-1]
        assert d1.figures["evaluated"] == held_out and d1.figures["skipped_before_cut"] == 0
        assert d1.figures["compared_with"] == "popularity baseline"
        assert d1.figures["candidate"] > 0.4 > d1.figures["baseline"]
        assert d1.figures["events_cut"] == tp["events_offsets"]
        assert reg.read_meta("v000001")["quality"]["evaluated"] == held_out

        # 3. a degraded candidate (vectors shuffled across groups) waits, then is rejected
        produce(cfg, cfg.kafka.topics.model_items, world.item_records(world.shuffled()), transactional=True)
        r3 = exp.export_once()
        assert r3.version == "v000002" and r3.pending
        produce(cfg, cfg.kafka.topics.clean, world.event_records(), transactional=True)
        exp.export_once()
        assert not r3.promoted and r3.status == "rejected" and reg.current() == "v000001"
        assert r3.candidate_recall < 0.25 < 0.4 < r3.current_recall and r3.evaluated == held_out
        m3 = reg.read_meta("v000002")
        assert m3["status"] == "rejected" and m3["quality"]["current_version"] == "v000001"
        assert reg.read_log()[-1]["action"] == "reject"

        # 4. the true vectors again plus 10 new items in group 0: better than v000001, promoted
        new = {f"item-0-new{j}": (world.centroids[0] + 0.5 * world.rng.normal(size=DIM)).astype(np.float32)
               for j in range(10)}
        world.items.update(new)
        world.group_of.update({i: 0 for i in new})
        produce(cfg, cfg.kafka.topics.model_items, world.item_records(), transactional=True)
        r4 = exp.export_once()
        assert r4.version == "v000003" and r4.pending and r4.items == GROUPS * PER_GROUP + 10
        produce(cfg, cfg.kafka.topics.clean, world.event_records(), transactional=True)
        exp.export_once()
        assert r4.promoted and reg.current() == "v000003" and r4.current_version == "v000001"

        # 5. one more export is left pending when this exporter stops
        produce(cfg, cfg.kafka.topics.model_items, world.item_records(dict(sorted(world.items.items())[:5])),
                transactional=True)
        assert exp.export_once().pending
    finally:
        exp.close()

    # 6. `streamrec exporter --once --force` (a fresh process): promoted at once, actor cli/force;
    #    it records the earlier exporter's undecided v000004 as superseded
    for name in [n for n in os.environ if n.startswith("STREAMREC_")]:
        monkeypatch.delenv(name)
    for name, value in to_env(cfg).items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(tmp_path)
    from streamrec.cli import main

    capsys.readouterr()
    assert main(["exporter", "--once", "--force"]) == 0
    out = capsys.readouterr().out
    assert "export v000005" in out and "promoted (forced)" in out
    assert reg.current() == "v000005"
    last = reg.read_log()[-1]
    assert (last["action"], last["version"], last["actor"], last["from"]) == ("promote", "v000005", FORCE_ACTOR, "v000003")
    assert "forced" in last["reason"]
    m5 = reg.read_meta("v000005")
    assert m5["status"] == "promoted" and m5["quality"]["forced"] is True
    m4 = reg.read_meta("v000004")
    assert m4["status"] == "superseded" and "left undecided by an earlier exporter" in m4["history"][-1]["reason"]
    assert reg.read_meta("v000002")["status"] == "rejected"


def test_run_loop_triggers_on_change_count(cfg, tmp_path):
    cfg = _cfg(cfg, tmp_path, every_n_changes=20, interval_s=3600.0, retention=2)
    world = World(seed=1)
    produce_world(cfg, world)
    reg = Registry(cfg.paths_resolved.registry_dir)
    exp = Exporter(cfg)
    out = {}
    thread = threading.Thread(target=lambda: out.update(results=exp.run(stop_after_exports=3, idle_exit_s=30)))
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while reg.current() != "v000001" and time.monotonic() < deadline:
            time.sleep(0.1)
        assert reg.current() == "v000001", "no export after catching up"
        # 25 item changes >= every_n_changes -> a second export, long before interval_s
        some = dict(sorted(world.items.items())[:25])
        produce(cfg, cfg.kafka.topics.model_items, world.item_records(some))
        while len(reg.list_versions()) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        # user vectors and events alone do not make an export; item changes do
        produce(cfg, cfg.kafka.topics.model_users, world.user_records())
        time.sleep(1.0)
        assert reg.list_versions() == ["v000001", "v000002"]
        produce(cfg, cfg.kafka.topics.model_items, world.item_records(some))
        thread.join(30)
        assert not thread.is_alive()
    finally:
        exp.stop()
        thread.join(10)
    results = out["results"]
    assert [r.version for r in results] == ["v000001", "v000002", "v000003"]
    assert all(r.promoted for r in results)
    assert reg.current() == "v000003"
    # retention 2: v000001 deleted (neither CURRENT nor the rollback target v000002)
    assert reg.list_versions() == ["v000002", "v000003"] and results[-1].deleted == ["v000001"]


def test_run_loop_waits_for_the_gate_before_the_next_export(cfg, tmp_path):
    cfg = _cfg(cfg, tmp_path, every_n_changes=20, gate_min_events=100)
    world = World(seed=3)
    produce_world(cfg, world)
    reg = Registry(cfg.paths_resolved.registry_dir)
    exp = Exporter(cfg)
    out = {}
    thread = threading.Thread(target=lambda: out.update(results=exp.run(stop_after_exports=2, idle_exit_s=30)))
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while reg.list_versions() != ["v000001"] and time.monotonic() < deadline:
            time.sleep(0.1)
        assert reg.list_versions() == ["v000001"], "no export after catching up"
        produce(cfg, cfg.kafka.topics.model_items, world.item_records(dict(sorted(world.items.items())[:25])))
        time.sleep(2.0)  # 25 changes >= every_n_changes, but v000001 is pending: no export
        assert reg.list_versions() == ["v000001"] and reg.current() is None
        produce(cfg, cfg.kafka.topics.clean, world.event_records(), transactional=True)
        thread.join(60)
        assert not thread.is_alive()
    finally:
        exp.stop()
        thread.join(10)
    first, second = out["results"]
    assert first.promoted and reg.current() == "v000001" and second.pending
    promoted_at = reg.read_meta("v000001")["history"][-1]["ts"]
    assert reg.read_meta("v000002")["created_at"] > promoted_at  # exported after the decision
    assert reg.read_meta("v000002")["status"] == "candidate"  # left pending at the stop


def test_sigterm_stops_cleanly(cfg, tmp_path):
    cfg = _cfg(cfg, tmp_path)
    produce_world(cfg, World(seed=2))
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMREC_")}
    env.update(to_env(cfg))
    env["PYTHONPATH"] = str(REPO)
    proc = subprocess.Popen([sys.executable, "-m", "streamrec.cli", "exporter"], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    reg = Registry(cfg.paths_resolved.registry_dir)
    try:
        deadline = time.monotonic() + 60
        while reg.current() is None and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)
        assert reg.current() == "v000001"
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert "SIGTERM received" in err and "exporter stopped after 1 exports" in err
    assert "export v000001:" in err


def test_a_pin_holds_every_export_until_unpinned(cfg, tmp_path):
    """After a rollback the exporter keeps exporting, but promotes nothing (not even with
    --force) until the pin ends; then promotion resumes."""
    cfg = _cfg(cfg, tmp_path)
    produce_world(cfg, World(seed=4))
    reg = Registry(cfg.paths_resolved.registry_dir)
    exp = Exporter(cfg, force=True)
    try:
        assert exp.export_once().promoted and reg.current() == "v000001"
        reg.rollback(to="v000001", actor="alice", reason="hold still")  # pins CURRENT where it is
        held = [exp.export() for _ in range(2)]
        assert [r.promoted for r in held] == [False, False] and all(r.held for r in held)
        assert "held (CURRENT is pinned)" in held[0].line()
        assert reg.current() == "v000001"
        assert reg.read_meta(held[0].version)["status"] == "candidate"
        assert "pinned to v000001 by alice" in reg.read_meta(held[0].version)["history"][-1]["reason"]
        reg.unpin(actor="alice", reason="done")
        resumed = exp.export()
        assert resumed.promoted and reg.current() == resumed.version
    finally:
        exp.close()
