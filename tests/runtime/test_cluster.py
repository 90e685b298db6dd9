"""Cluster mode end to end (issues 8 and 30): the pipeline job on a standalone cluster (JobManager
+ 2 TaskManagers) at parallelism 2, then an upgrade through a savepoint, then rollbacks on a live
stream. Serving is the default (``scoring.serve = live``), so a pinned version ``vN`` and the
live table checked against it (``live+vN``) are told apart in every record.

1. `streamrec cluster up|status`, `streamrec submit --parallelism 2` (unbounded, detached: prints
   the job id and the web UI URL), through the CLI in-process with the config as STREAMREC_* env.
2. Batch 1: 200 users x 3 events (user group u%4 prefers item block u%4), 5 duplicates, 2
   malformed lines -> exactly one committed recommendation per valid unique event, no duplicate
   source_event_id, every job vertex at parallelism 2 (REST), both TaskManagers busy.
3. The exporter (this process) publishes a registry version v1 from model.items into the same
   registry directory the TaskManagers read; `streamrec model rollback v1` pins it.
4. `streamrec stop --savepoint`; batch 2 (100 seen users x 2 events, a duplicate of a batch-1 event_id,
   a malformed line); `streamrec submit --from-savepoint` with scoring.top_k changed 10 -> 5.
5. Batch 2's records: `user_events` continues from batch 1 (shard learner state restored), the
   duplicate is removed (dedup state restored), batch 1 is not re-read (source offsets restored),
   the shards serve the pinned version (a job resumed from a savepoint honours a pin) with the
   new top_k, item update counts continue.
6. Rollback on a live stream (100 events/s): `model unpin` -> the live table within the bound; a
   forced export v2 (CURRENT, ``live+v2``); `model rollback v1` -> ``v1``; `model unpin` ->
   ``live+v1``: the first record of what serves next within one swap check + one micro-batch (+
   a margin for the loaded machine) and every record from then on names it, on both shards
   (docs/registry.md, "Serving"), every stream event with exactly one committed record.

Every event is accounted for exactly (tests.support.account_*): each raw record is in
``events.clean`` or ``events.dlq`` or is a planted duplicate, and each clean event has exactly one
recommendation record (``none`` when its user had every item its shard knew: a shard's first
events).
"""

from __future__ import annotations

import json
import re
import threading
import time
import urllib.parse
import urllib.request

import pytest

from streamrec import replay
from streamrec.runtime import broker, cluster
from streamrec.cli import main
from streamrec.core.config import to_env
from streamrec.model.registry import Registry
from streamrec.runtime.kafka_io import ensure_topics, producer, read_topic
from streamrec.udfs.shard_model import shard_of
from tests.support import (
    SERVED_BOUND_S,
    SERVED_HOLD_S,
    SERVED_MARGIN_S,
    account_ingestion,
    account_recommendations,
    committed,
    delay_ms,
    export_forced,
    free_port,
    iso_ms,
    make_config,
    read_records,
    wait_until,
)

pytestmark = pytest.mark.slow

T0 = 1_700_000_000_000
USERS, EVENTS_1, EVENTS_2 = 200, 3, 2
#: The live stream of the rollback phase (events/s): a few events per shard and micro-batch.
STREAM_RATE = 100
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
    return read_records(cfg, cfg.kafka.topics.recommendations, read_committed=True, idle_timeout=2.0)




def wait_for_count(cfg, job_id: str, n_clean: int, timeout: float) -> tuple[list[dict], list[dict]]:
    """Wait until ``events.clean`` holds ``n_clean`` events and ``recommendations`` has a record
    for each (read_committed); then the clean events and the records, read again two checkpoints
    later (a duplicate would be committed by then)."""
    deadline = time.monotonic() + timeout
    recommended = None
    while time.monotonic() < deadline:
        state = cluster.job_state(cfg, job_id)
        if state != "RUNNING":
            root = rest(cfg, f"/jobs/{job_id}/exceptions").get("exceptionHistory", {}).get("entries", [])
            raise AssertionError(f"job {job_id} is {state}: " + (root[0]["stacktrace"][:1500] if root else ""))
        clean = read_records(cfg, cfg.kafka.topics.clean, idle_timeout=2.0)
        recommended = account_recommendations(clean, recommendations(cfg))
        if len(clean) >= n_clean and not recommended.lost:
            time.sleep(3 * cfg.flink.checkpoint_interval_ms / 1000)
            return read_records(cfg, cfg.kafka.topics.clean, idle_timeout=2.0), recommendations(cfg)
        time.sleep(2)
    raise AssertionError(f"after {timeout:.0f} s: {recommended}")


def subtask_metrics(cfg, job_id: str, vertex_id: str, metric: str, timeout: float = 30.0) -> list[int]:
    """Each subtask's ``metric`` from the REST API, once every subtask reports more than 0 or after
    ``timeout`` (the REST API serves metrics fetched from the TaskManagers every ~10 s)."""
    deadline = time.monotonic() + timeout
    while True:
        values = [s["metrics"][metric] for s in rest(cfg, f"/jobs/{job_id}/vertices/{vertex_id}")["subtasks"]]
        if all(v > 0 for v in values) or time.monotonic() > deadline:
            return values
        time.sleep(2)


def operator_metric(cfg, job_id: str, vertex_id: str, subtasks: int, name: str, timeout: float = 60.0) -> list[float]:
    """Each subtask's user metric ``name`` (its REST id is prefixed by the operator's name), once
    every subtask reports more than 0 or after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        values = []
        for n in range(subtasks):
            path = f"/jobs/{job_id}/vertices/{vertex_id}/subtasks/{n}/metrics"
            ids = [m["id"] for m in rest(cfg, path) if m["id"].endswith("." + name)]
            got = rest(cfg, f"{path}?get={urllib.parse.quote(ids[0])}") if ids else []
            values.append(float(got[0]["value"]) if got else 0.0)
        if all(v > 0 for v in values) or time.monotonic() > deadline:
            return values
        time.sleep(2)


def rest(cfg, path: str) -> dict:
    with urllib.request.urlopen(cluster.rest_url(cfg) + path, timeout=10) as resp:
        return json.loads(resp.read())


@pytest.fixture
def ccfg(tmp_path):
    """An embedded broker of its own (so the CLI's `ensure_kafka` finds it in the state dir), a
    tmp state dir and a free REST port; the cluster and the broker are torn down (by PID)
    whatever happens."""
    c = make_config(tmp_path / "state", free_port(), **{"flink.rest_port": free_port(),
                                                        "flink.taskmanagers": 2, "flink.task_slots": 2})
    try:
        broker.up(c, log=lambda m: None)
        yield c
    finally:
        try:
            cluster.down(c, log=lambda m: None)
        finally:
            broker.down(c, log=lambda m: None)


def cli(monkeypatch, capsys, cfg, *argv: str) -> str:
    """Run `streamrec ARGV` in-process with ``cfg`` as STREAMREC_* environment; returns stdout."""
    for key, value in to_env(cfg).items():
        monkeypatch.setenv(key, value)
    capsys.readouterr()
    code = main(list(argv))
    out = capsys.readouterr()
    assert code == 0, out.err
    return out.out


def submitted(out: str, cfg) -> str:
    job_id = re.search(r"^submitted job ([0-9a-f]{32})$", out, re.M).group(1)
    assert f"web UI: {cluster.rest_url(cfg)}/#/job/running/{job_id}/overview" in out
    return job_id


def test_cluster_parallelism_2_and_savepoint_upgrade(ccfg, monkeypatch, capsys):
    cfg = ccfg
    timings = {}
    ensure_topics(cfg)
    t = time.monotonic()
    cli(monkeypatch, capsys, cfg, "cluster", "up")
    timings["cluster_up"] = time.monotonic() - t
    assert "2 TaskManagers, 4/4 slots free" in cli(monkeypatch, capsys, cfg, "cluster", "status")

    # -- batch 1 ------------------------------------------------------------------------------
    batch1 = [(f"u{u:03d}", event(f"a{u}-{k}", u, k, T0 + (k * USERS + u) * 100))
              for k in range(EVENTS_1) for u in range(USERS)]
    dups1 = [(f"u{u:03d}", event(f"a{u}-0", u, 0, T0 + u * 100)) for u in range(5)]
    bad1 = [(None, b"{not json"), ("u001", json.dumps({"event_id": "x1", "user_id": "u001"}).encode())]
    produce(cfg, batch1 + dups1 + bad1)

    t = time.monotonic()
    job1 = submitted(cli(monkeypatch, capsys, cfg, "submit", "--parallelism", "2"), cfg)
    timings["submit"] = time.monotonic() - t
    t = time.monotonic()
    cluster.wait_for_state(cfg, job1, {"RUNNING"}, timeout=60)
    timings["job_running"] = time.monotonic() - t
    # a second pipeline on this lineage is refused before anything is submitted (--fresh would
    # have deleted the live job's checkpoints)
    capsys.readouterr()
    assert main(["submit", "--parallelism", "2", "--fresh"]) == 1
    assert f"pipeline job {job1} is already running" in capsys.readouterr().err
    assert cluster.running_jobs(cfg, "streamrec-pipeline") == [job1]
    t = time.monotonic()
    ids_batch1 = {f"a{u}-{k}" for u in range(USERS) for k in range(EVENTS_1)}
    clean1, recs1 = wait_for_count(cfg, job1, len(batch1), timeout=180)
    timings["batch1_to_committed"] = time.monotonic() - t

    # exactly once, counted exactly: one record per clean event, the clean events are batch 1
    recommended = account_recommendations(clean1, recs1)
    assert recommended.exact and recommended.checked == len(batch1) == 600, recommended
    assert sorted(r["source_event_id"] for r in recs1) == sorted(ids_batch1)
    # per user, the learned-event counts are 1..3 (one learner state per user; at parallelism 2
    # a user's events may reach it out of event-time order, see docs/cluster.md "Limits found")
    per_user: dict[str, list[int]] = {}
    for r in recs1:
        per_user.setdefault(r["user_id"], []).append(r["user_events"])
    assert all(len(set(v)) == len(v) and max(v) == 3 for v in per_user.values()), per_user

    job = rest(cfg, f"/jobs/{job1}")
    parallelism = {v["name"][:40]: v["parallelism"] for v in job["vertices"]}
    assert set(parallelism.values()) == {2}, parallelism
    # both TaskManagers run subtasks of the ShardLearner vertex, and both shards learned
    learner = next(v for v in job["vertices"] if "ShardLearner" in v["name"])
    tms = rest(cfg, f"/jobs/{job1}/vertices/{learner['id']}/taskmanagers")["taskmanagers"]
    assert len({tm["taskmanager-id"] for tm in tms}) == 2
    # (the REST API serves metrics fetched from the TaskManagers every ~10 s: a count read right
    # after the records were committed may predate them, so these wait for a fresh fetch)
    shard_subtasks = subtask_metrics(cfg, job1, learner["id"], "read-records")
    assert all(n > 0 for n in shard_subtasks), shard_subtasks
    # the Kafka source's subtasks both read records (4 partitions spread over 2 subtasks)
    source = job["vertices"][0]
    assert all(n > 0 for n in subtask_metrics(cfg, job1, source["id"], "write-records"))

    # both shards added the other's item steps (udfs/item_exchange.py), at a bounded staleness:
    # an exchange interval, a checkpoint interval and a micro-batch, plus this loaded machine's
    # queueing (the figures: docs/hot-path.md, "Parallelism > 1")
    applied = operator_metric(cfg, job1, learner["id"], 2, "item_deltas_applied")
    sent = operator_metric(cfg, job1, learner["id"], 2, "item_deltas_sent", timeout=0)
    assert all(n > 0 for n in applied) and all(n > 0 for n in sent), (applied, sent)
    staleness = operator_metric(cfg, job1, learner["id"], 2, "item_staleness_max_ms")
    bound = cfg.learner.exchange_interval_ms + cfg.flink.checkpoint_interval_ms + cfg.scoring.batch_interval_ms
    assert all(0 < s < bound + 20_000 for s in staleness), (staleness, bound)
    timings["item_staleness_max_s"] = max(staleness) / 1000

    # -- the exporter publishes a version into the registry the TaskManagers read; an operator
    # pins it, and the job resumed from the savepoint below must serve the pin ----------------------
    assert cfg.scoring.serve == "live" and cfg.scoring.swap_check_interval_s == 2.0  # the defaults
    registry = Registry(cfg.paths_resolved.registry_dir)
    exported = export_forced(cfg)
    v1 = exported.version
    assert f"CURRENT: {v1}" in cli(monkeypatch, capsys, cfg, "model", "rollback", v1,
                                   "--reason", "pinned across the savepoint")

    # -- upgrade: stop with savepoint, change a non-state setting, resume -------------------------
    t = time.monotonic()
    savepoint = cli(monkeypatch, capsys, cfg, "stop", "--savepoint", job1).strip()
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
    job2 = submitted(cli(monkeypatch, capsys, upgraded, "submit", "--parallelism", "2",
                         "--from-savepoint", savepoint), upgraded)
    timings["resubmit_from_savepoint"] = time.monotonic() - t
    t = time.monotonic()
    cluster.wait_for_state(upgraded, job2, {"RUNNING"}, timeout=60)
    timings["restored_job_running"] = time.monotonic() - t
    t = time.monotonic()
    ids_batch2 = {f"b{u}-{k}" for u in seen for k in range(EVENTS_2)}
    clean, recs = wait_for_count(upgraded, job2, len(batch1) + len(batch2), timeout=120)
    timings["batch2_to_committed"] = time.monotonic() - t
    with capsys.disabled():
        print(f"\ncluster timings (s): {json.dumps({k: round(v, 1) for k, v in timings.items()})}")

    # across the savepoint: every raw record in events.clean or events.dlq or one of the six
    # planted duplicates, and every clean event exactly one recommendation record
    raw = list(read_topic(cfg, cfg.kafka.topics.raw, idle_timeout=2.0))
    dlq = read_records(cfg, cfg.kafka.topics.dlq, idle_timeout=2.0)
    ingested = account_ingestion(raw, clean, dlq)
    assert ingested.exact and ingested.checked == len(batch1) + len(dups1) + len(bad1) + len(batch2) + len(dup2) + 1, \
        ingested
    assert len(ingested.dropped) == len(dups1) + len(dup2) and len(dlq) == len(bad1) + 1, ingested
    recommended = account_recommendations(clean, recs)
    assert recommended.exact and recommended.checked == len(batch1) + len(batch2), recommended
    assert len(recs) == len(recs1) + len(batch2)
    new = [r for r in recs if not r["source_event_id"].startswith("a")]
    assert len({r["source_event_id"] for r in recs}) == len(recs)  # the duplicate of a7-1 was removed
    assert sorted(r["source_event_id"] for r in new) == sorted(ids_batch2)
    assert cluster.job_state(cfg, job1) == "FINISHED" and savepoint.startswith("file:")
    per_user2: dict[str, list[int]] = {}
    for r in new:
        per_user2.setdefault(r["user_id"], []).append(r["user_events"])
    # learner state carried over: each user's counts continue at 4, 5
    assert len(per_user2) == len(seen) and all(sorted(v) == [4, 5] for v in per_user2.values()), per_user2
    # the restored shards serve the pinned version (not live+v1: the pin, read from the shared
    # registry path by both TaskManagers, holds across the savepoint), with the new top_k
    assert {r["model_version"] for r in new} == {v1}
    assert all(r["strategy"] == "model" and len(r["items"]) == 5 for r in new)
    # item state carried over: update counts continue
    items_after = {}
    for r in read_topic(cfg, cfg.kafka.topics.model_items, idle_timeout=2.0):
        doc = r.json()
        items_after[doc["item_id"]] = max(items_after.get(doc["item_id"], 0), doc["updates"])
    grown = [i for i in items_before if items_after[i] > items_before[i]]
    assert grown and all(items_after[i] >= items_before[i] for i in items_before)

    # -- rollback and unpin on a live stream, parallelism 2 ---------------------------------------
    t = time.monotonic()
    stop = threading.Event()
    produced = {}

    def stream():  # the batches' users, on: each user's next items of its block
        n = 0
        while not stop.is_set():
            u, ts = n % USERS, T0 + 120_000 + n * 10
            yield replay.ReplayItem(f"u{u:03d}".encode(), event(f"c{n}", u, EVENTS_1 + EVENTS_2 + n // USERS, ts), ts)
            n += 1

    def produce_stream():
        produced["result"] = replay.produce(cfg, cfg.kafka.topics.raw, stream(), rate=STREAM_RATE,
                                            progress=False)

    n_clean = len(clean)
    recs_before = committed(cfg, cfg.kafka.topics.recommendations)
    producing = threading.Thread(target=produce_stream, daemon=True)
    producing.start()
    try:
        wait_until(lambda: committed(cfg, cfg.kafka.topics.recommendations) >= recs_before + 50, 60,
                   "the stream's first recommendations")
        cli(monkeypatch, capsys, upgraded, "model", "unpin", "--reason", "cluster test: resumed, unpinned")
        unpinned_0 = iso_ms([e for e in registry.read_log() if e["action"] == "unpin"][-1]["ts"])
        v2 = export_forced(upgraded).version  # promoted at once: CURRENT v2, live+v2 served
        promoted_2 = iso_ms([e for e in registry.read_log() if e["action"] == "promote"][-1]["ts"])
        time.sleep(SERVED_BOUND_S + 0.5)  # a swap check: live+v2 serves, the rollback below goes back
        assert f"CURRENT: {v1}" in cli(monkeypatch, capsys, upgraded, "model", "rollback", v1,
                                       "--reason", "cluster test: rollback")
        pinned = iso_ms(registry.pinned()["ts"])
        time.sleep(SERVED_HOLD_S)
        cli(monkeypatch, capsys, upgraded, "model", "unpin", "--reason", "cluster test: fixed")
        unpinned = iso_ms([e for e in registry.read_log() if e["action"] == "unpin"][-1]["ts"])
        time.sleep(SERVED_HOLD_S)
    finally:
        stop.set()
        producing.join(30)
    ended = int(time.time() * 1000)
    delivered = produced["result"].delivered
    assert produced["result"].failed == 0 and delivered > 0, produced["result"]
    clean, recs = wait_for_count(upgraded, job2, n_clean + delivered, timeout=60)
    timings["rollback_phases"] = time.monotonic() - t
    recommended = account_recommendations(clean, recs)  # the stream too: exactly once
    assert recommended.exact and recommended.checked == n_clean + delivered, recommended

    streamed = [r for r in recs if r["source_event_id"].startswith("c")]
    assert {r["model_version"] for r in streamed} <= {v1, f"live+{v1}", f"live+{v2}"}, \
        {r["model_version"] for r in streamed}
    bound_ms = int((SERVED_BOUND_S + SERVED_MARGIN_S) * 1000)
    served = {}
    # the resumed job's pin ends: the live table serves within the bound (until v2's export, which
    # takes a few seconds, is promoted: the whole bound is checked after the second unpin)
    first, all_served = delay_ms(streamed, unpinned_0, promoted_2, lambda name: name.startswith("live+"))
    served["unpin (the resumed job's pin)"] = (first, all_served)
    assert first <= bound_ms, first
    for what, since, until, expected in (("rollback", pinned, unpinned, v1),
                                         ("unpin", unpinned, ended, f"live+{v1}")):
        late = [r for r in streamed if since + bound_ms <= r["emitted_ts"] < until]
        assert {r["model_version"] for r in late} == {expected}, (what, {r["model_version"] for r in late})
        assert {shard_of(r["user_id"], 2) for r in late} == {0, 1}, what  # both TaskManagers' shards
        first, all_served = delay_ms(streamed, since, until, lambda name: name == expected)
        served[what] = (first, all_served)
        assert first <= bound_ms and all_served <= bound_ms, (what, first, all_served)
    with capsys.disabled():
        for what, (first, all_served) in served.items():
            print(f"cluster {what}: first record of what serves next {first} ms after it, "
                  f"every record from {all_served} ms")
        print(f"cluster timings with the rollback phases (s): "
              f"{json.dumps({k: round(v, 1) for k, v in timings.items()})}")
    # the TaskManagers keep their state changelog in files, not inside the checkpoints' metadata
    # (Flink's default storage for a TaskManager is memory: runtime/cluster.py sets it)
    checkpoints = cfg.paths_resolved.checkpoint_dir
    assert [f for f in checkpoints.rglob("*") if f.is_file() and "changelog" in f.parts], "no changelog files"
    metadata = max(f.stat().st_size for f in checkpoints.rglob("_metadata"))
    assert metadata < 2**20, f"a checkpoint's _metadata of {metadata:,} bytes: the changelog is inline"
    # job2 is left running: the fixture kills the cluster (by PID) and the broker
