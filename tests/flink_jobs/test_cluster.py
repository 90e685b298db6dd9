"""Cluster mode end to end (issue 8): the pipeline job on a standalone cluster (JobManager + 2
TaskManagers) at parallelism 2, then an upgrade through a savepoint.

1. `cluster.up`, `cluster.submit(..., parallelism=2, job_args=["--no-wait"])` (unbounded).
2. Batch 1: 200 users x 3 events (user group u%4 prefers item block u%4), 5 duplicates, 2
   malformed lines -> exactly one committed recommendation per valid unique event, no duplicate
   source_event_id, every job vertex at parallelism 2 (REST), both TaskManagers busy.
3. The exporter (this process) publishes a registry version from model.items into the same
   registry directory the TaskManagers read.
4. Stop with a savepoint; batch 2 (100 seen users x 2 events, a duplicate of a batch-1 event_id,
   a malformed line); resubmit from the savepoint with scoring.top_k changed 10 -> 5.
5. Batch 2's records: `user_events` continues from batch 1 (UserLearner state restored), the
   duplicate is removed (dedup state restored), batch 1 is not re-read (source offsets restored),
   the Scorer serves the exported version with the new top_k, item update counts continue.
"""

from __future__ import annotations

import json
import time
import urllib.request

import pytest

from model.exporter import Exporter
from streamrec import cluster
from streamrec.kafka_io import ensure_topics, producer, read_topic
from tests.support import free_port

pytestmark = pytest.mark.slow

T0 = 1_700_000_000_000
USERS, EVENTS_1, EVENTS_2 = 200, 3, 2
TYPES = ["view", "click", "cart", "purchase"]


def event(eid: str, u: int, k: int, ts: int) -> bytes:
    item = f"i{(u % 4) * 10 + (u * 7 + k) % 10:02d}"  # planted: group u%4 -> items block u%4
    return json.dumps({"event_id": eid, "user_id": f"u{u:03d}", "item_id": item,
                       "event_type": TYPES[(u + k) % 4], "ts": ts}).encode()


def produce(cfg, records: list[tuple[str | None, bytes]]) -> None:
    prod = producer(cfg)
    for key, value in records:
        prod.produce(cfg.kafka.topics.raw, value=value, key=key.encode() if key else None)
    assert prod.flush(30) == 0


def recommendations(cfg) -> list[dict]:
    return [r.json() for r in read_topic(cfg, cfg.kafka.topics.recommendations, read_committed=True,
                                         idle_timeout=2.0)]


def wait_for_count(cfg, job_id: str, expected: int, timeout: float) -> list[dict]:
    deadline = time.monotonic() + timeout
    recs: list[dict] = []
    while time.monotonic() < deadline:
        assert cluster.job_state(cfg, job_id) == "RUNNING"
        recs = recommendations(cfg)
        if len(recs) >= expected:
            # two more checkpoints: nothing beyond the expected count gets committed
            time.sleep(3 * cfg.flink.checkpoint_interval_ms / 1000)
            return recommendations(cfg)
        time.sleep(2)
    raise AssertionError(f"{len(recs)} of {expected} recommendations after {timeout:.0f} s")


def rest(cfg, path: str) -> dict:
    with urllib.request.urlopen(cluster.rest_url(cfg) + path, timeout=5) as resp:
        return json.loads(resp.read())


@pytest.fixture
def ccfg(cfg, tmp_path):
    """The session broker with this test's topics, a tmp state dir and a free REST port; the
    cluster is torn down (by PID) whatever happens."""
    c = cfg.model_copy(update={
        "paths": cfg.paths.model_copy(update={"state_dir": tmp_path / "state"}),
        "flink": cfg.flink.model_copy(update={"rest_port": free_port(), "taskmanagers": 2,
                                              "task_slots": 2}),
    })
    try:
        yield c
    finally:
        cluster.down(c, log=lambda m: None)


def test_cluster_parallelism_2_and_savepoint_upgrade(ccfg):
    cfg = ccfg
    timings = {}
    ensure_topics(cfg)
    t = time.monotonic()
    cluster.up(cfg, log=lambda m: None)
    timings["cluster_up"] = time.monotonic() - t

    # -- batch 1 ------------------------------------------------------------------------------
    batch1 = [(f"u{u:03d}", event(f"a{u}-{k}", u, k, T0 + (k * USERS + u) * 100))
              for k in range(EVENTS_1) for u in range(USERS)]
    dups1 = [(f"u{u:03d}", event(f"a{u}-0", u, 0, T0 + u * 100)) for u in range(5)]
    bad1 = [(None, b"{not json"), ("u001", json.dumps({"event_id": "x1", "user_id": "u001"}).encode())]
    produce(cfg, batch1 + dups1 + bad1)

    t = time.monotonic()
    job1 = cluster.submit(cfg, parallelism=2, job_args=["--no-wait"])
    timings["submit"] = time.monotonic() - t
    t = time.monotonic()
    recs1 = wait_for_count(cfg, job1, len(batch1), timeout=120)
    timings["batch1_to_committed"] = time.monotonic() - t

    ids1 = [r["source_event_id"] for r in recs1]
    assert len(recs1) == len(batch1) == 600
    assert len(set(ids1)) == len(ids1)  # exactly once: no duplicate source_event_id
    assert set(ids1) == {f"a{u}-{k}" for u in range(USERS) for k in range(EVENTS_1)}
    # per user, the learned-event counts are 1..3 (one learner state per user, in order)
    per_user: dict[str, list[int]] = {}
    for r in recs1:
        per_user.setdefault(r["user_id"], []).append(r["user_events"])
    assert all(sorted(v) == [1, 2, 3] for v in per_user.values()) and len(per_user) == USERS

    job = rest(cfg, f"/jobs/{job1}")
    parallelism = {v["name"][:40]: v["parallelism"] for v in job["vertices"]}
    assert set(parallelism.values()) == {2}, parallelism
    # both TaskManagers run subtasks of the UserLearner vertex
    learner = next(v for v in job["vertices"] if "UserLearner" in v["name"])
    tms = rest(cfg, f"/jobs/{job1}/vertices/{learner['id']}/taskmanagers")["taskmanagers"]
    assert len({tm["taskmanager-id"] for tm in tms}) == 2
    # the Kafka source's subtasks both read records (4 partitions spread over 2 subtasks)
    source = job["vertices"][0]
    subtasks = rest(cfg, f"/jobs/{job1}/vertices/{source['id']}")["subtasks"]
    assert [s["metrics"]["write-records"] > 0 for s in subtasks] == [True, True], subtasks

    # -- the exporter publishes a version into the registry the TaskManagers read ----------------
    exporter = Exporter(cfg, force=True)
    try:
        exported = exporter.export_once(timeout_s=60)
    finally:
        exporter.close()
    assert exported is not None

    # -- upgrade: stop with savepoint, change a non-state setting, resume -------------------------
    t = time.monotonic()
    savepoint = cluster.stop_with_savepoint(cfg, job1)
    timings["stop_with_savepoint"] = time.monotonic() - t
    items_before = {}
    for r in read_topic(cfg, cfg.kafka.topics.model_items, idle_timeout=2.0):
        doc = r.json()
        items_before[doc["item_id"]] = max(items_before.get(doc["item_id"], 0), doc["updates"])

    seen = list(range(0, USERS, 2))
    batch2 = [(f"u{u:03d}", event(f"b{u}-{k}", u, k, T0 + 60_000 + (k * USERS + u) * 100))
              for k in range(EVENTS_2) for u in seen]
    dup2 = [("u007", event("a7-1", 7, 1, T0 + (USERS + 7) * 100))]  # a batch-1 event, again
    produce(cfg, batch2 + dup2 + [(None, b"\x00\xff not an event")])

    upgraded = cfg.model_copy(update={"scoring": cfg.scoring.model_copy(update={"top_k": 5})})
    t = time.monotonic()
    job2 = cluster.submit(upgraded, parallelism=2, from_savepoint=savepoint, job_args=["--no-wait"])
    timings["resubmit"] = time.monotonic() - t
    try:
        t = time.monotonic()
        recs = wait_for_count(upgraded, job2, len(batch1) + len(batch2), timeout=120)
        timings["batch2_to_committed"] = time.monotonic() - t
    finally:
        final = cluster.stop_with_savepoint(upgraded, job2)
    print(f"\ncluster timings (s): {json.dumps({k: round(v, 1) for k, v in timings.items()})}")

    assert len(recs) == len(batch1) + len(batch2) == 800
    new = [r for r in recs if not r["source_event_id"].startswith("a")]
    assert len({r["source_event_id"] for r in recs}) == 800  # the duplicate of a7-1 was removed
    assert sorted(r["source_event_id"] for r in new) == sorted(f"b{u}-{k}" for u in seen for k in range(EVENTS_2))
    for r in new:  # UserLearner state carried over: counts continue at 4, 5
        k = int(r["source_event_id"].split("-")[1])
        assert r["user_events"] == EVENTS_1 + 1 + k, r
    # the Scorer serves the exported version (shared registry path) with the new top_k
    assert {r["model_version"] for r in new} == {exported.version}
    assert all(r["strategy"] == "model" and len(r["items"]) == 5 for r in new)
    # ItemLearner state carried over: update counts continue
    items_after = {}
    for r in read_topic(cfg, cfg.kafka.topics.model_items, idle_timeout=2.0):
        doc = r.json()
        items_after[doc["item_id"]] = max(items_after.get(doc["item_id"], 0), doc["updates"])
    grown = [i for i in items_before if items_after[i] > items_before[i]]
    assert grown and all(items_after[i] >= items_before[i] for i in items_before)
    assert final.startswith("file:")
