import random

import numpy as np
import pytest

from streamrec.model.item_table import ItemTable as RegistryItems
from streamrec.model.onnx_model import export_model_bytes, popularity_prior
from streamrec.model.scoring import ScoringModel
from streamrec.udfs.online_mf import LearnerParams
from streamrec.udfs.popularity import Popularity
from streamrec.udfs.shard_model import Event, ShardModel, ShardSettings, decode_user, encode_user, shard_of


def _stream(n, users=30, items=60, seed=5, weight=1.0):
    """Users of group g mostly take items of block g."""
    rng = random.Random(seed)
    out = []
    for k in range(n):
        u = rng.randrange(users)
        item = (u % 3) * (items // 3) + rng.randrange(items // 3) if rng.random() < 0.9 else rng.randrange(items)
        out.append(Event(f"e{k}", f"u{u}", f"i{item}", weight, 1_700_000_000_000 + k * 1000, 0, k))
    return out


def _run(shard, events, batch):
    users, recs = {}, []
    for lo in range(0, len(events), batch):
        out = shard.process(events[lo:lo + batch], users, now_ms=1)
        users.update(out.user_records)
        recs += out.recommendations
    return users, recs


def _shard(**kw):
    return ShardModel(LearnerParams.of(None, dim=16, seed=2), ShardSettings(**{"top_k": 5, **kw}))


def test_one_record_per_event_never_a_seen_item_and_popularity_before_the_model():
    events = _stream(1500)
    _, recs = _run(_shard(cold_start_min_events=3), events, 64)
    assert sorted(r["source_offset"] for r in recs) == [ev.src_offset for ev in events]
    # only the first event has nothing to show: its record says so instead of being left out
    assert [(r["source_offset"], r["items"], r["reason"]) for r in recs if r["strategy"] == "none"] == \
        [(0, [], "user_had_every_item")]
    history: dict[str, set] = {}
    by_offset = {r["source_offset"]: r for r in recs}
    for ev in events[1:]:
        history.setdefault(ev.user_id, set()).add(ev.item_id)
        rec = by_offset[ev.src_offset]
        assert rec["items"] and rec["reason"] is None, rec
        assert not {i["item_id"] for i in rec["items"]} & history[ev.user_id]  # the whole history
        assert rec["strategy"] == ("model" if rec["user_events"] >= 3 else "popularity")


@pytest.mark.parametrize("cold_start", [0, 1, 3])
def test_a_user_who_had_every_known_item_gets_a_none_record(cold_start):
    # one at a time (a young catalogue): u1 has every item known before each of its events
    events = [Event(f"e{n}", "u1", f"i{n}", 1.0, n, 0, n) for n in range(3)]
    events.append(Event("e3", "u2", "i0", 1.0, 3, 0, 3))  # u2 lacks i1, i2
    shard = _shard(cold_start_min_events=cold_start)
    out = shard.process(events, {}, now_ms=1)
    none = [r for r in out.recommendations if r["strategy"] == "none"]
    assert [r["source_event_id"] for r in none] == ["e0", "e1", "e2"] and out.unservable == 3
    assert all(r["items"] == [] and r["reason"] == "user_had_every_item" and r["model_version"] == "live"
               and r["cold_start"] for r in none)
    assert [r["user_events"] for r in none] == [1, 2, 3]  # learned all the same
    (served,) = [r for r in out.recommendations if r["user_id"] == "u2"]
    assert {i["item_id"] for i in served["items"]} == {"i1", "i2"} and served["reason"] is None
    assert set(served) == set(none[0])  # the same fields on every record


def test_a_heavy_users_whole_history_is_excluded_not_just_the_recent_items():
    items = [f"i{n}" for n in range(400)]
    # another user's events first make every item known (alone, the heavy user would always have
    # had every known item: nothing but `none` records, and the checks below would pass vacuously)
    known = [Event(f"o{n}", "other", items[n], 1.0, n, 0, n) for n in range(400)]
    events = [Event(f"h{n}", "heavy", items[n], 1.0, 400 + n, 0, 400 + n) for n in range(300)]
    _, recs = _run(_shard(), known + events, 50)
    heavy = [r for r in recs if r["user_id"] == "heavy"]
    assert len(heavy) == 300
    assert all(not {i["item_id"] for i in r["items"]} & set(items[:r["source_offset"] - 400 + 1]) for r in heavy)
    assert all(len(r["items"]) == 5 for r in heavy)


def test_a_recommendation_never_sees_a_later_event_of_its_batch():
    events = _stream(400)
    changed = events[:300] + [ev._replace(item_id="i59") for ev in events[300:]]
    _, a = _run(_shard(), events, 400)
    _, b = _run(_shard(), changed, 400)
    early = [r for r in a if r["source_offset"] < 300]
    assert early == [r for r in b if r["source_offset"] < 300]


def test_state_written_out_restores_the_same_shard():
    events = _stream(900)
    whole = _shard()
    users_whole, recs_whole = _run(whole, events, 100)
    first = _shard()
    users, recs = _run(first, events[:500], 100)
    restored = _shard()
    # keyed state hands the items back in its own order (RocksDB: by key bytes), not insertion order
    restored.restore_items(reversed(list(first.items.encode(range(len(first.items))).items())))
    for lo in range(500, 900, 100):
        out = restored.process(events[lo:lo + 100], users, now_ms=1)
        users.update(out.user_records)
        recs += out.recommendations
    assert [r["items"] for r in recs] == [r["items"] for r in recs_whole]
    for user, raw in users_whole.items():
        np.testing.assert_array_equal(decode_user(users[user]).vector, decode_user(raw).vector)


def _hit_rates(events, recs) -> tuple[float, float]:
    """Prequential hit rates of the records' lists and of popularity (top 5, seen items excluded)."""
    by_offset = {r["source_offset"]: [i["item_id"] for i in r["items"]] for r in recs}
    last: dict[str, list] = {}
    pop, hits_model, hits_pop, n = Popularity(), 0, 0, 0
    seen: dict[str, set] = {}
    for ev in events:
        had = seen.setdefault(ev.user_id, set())
        if ev.item_id not in had and ev.user_id in last:
            n += 1
            hits_model += ev.item_id in last[ev.user_id]
            hits_pop += ev.item_id in pop.recommend(ev.user_id, 5, exclude_seen=False, exclude=had)
        pop.learn_one(ev.user_id, ev.item_id)
        had.add(ev.item_id)
        if ev.src_offset in by_offset:
            last[ev.user_id] = by_offset[ev.src_offset]
    return hits_model / n, hits_pop / n


def test_learns_the_planted_structure_better_than_popularity():
    events = _stream(3000)
    _, recs = _run(_shard(), events, 128)
    model, pop = _hit_rates(events, recs)
    assert model > 1.5 * pop, (model, pop)


@pytest.mark.parametrize("weight", [2.5, 4.0])
def test_heavy_event_weights_keep_the_shard_finite_bounded_and_learning(weight):
    """All events of weight 2.5 grew the vectors to ~1e5, of 4.0 to NaN, and a NaN score made
    Record.encode (strict JSON) fail the job, which then failed again after every restart."""
    events = _stream(3000, weight=weight)
    shard = _shard()
    users, recs = _run(shard, events, 64)
    norms = np.r_[[np.linalg.norm(decode_user(raw).vector) for raw in users.values()],
                  np.linalg.norm(shard.items.vectors[:len(shard.items)], axis=1)]
    assert np.isfinite(norms).all() and norms.max() < 5, norms.max()
    assert shard.take_rows_reset() == 0
    assert all(it["score"] is None or np.isfinite(it["score"]) for r in recs for it in r["items"])
    model, pop = _hit_rates(events, recs)
    assert model > 1.5 * pop, (model, pop)


@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning", "ignore:overflow:RuntimeWarning")
def test_a_row_that_is_not_finite_is_reset_and_counted_never_scored():
    """A guard behind the bounded steps: a NaN user record (state of older code) and an
    infinite item vector go back to their initial vectors, and the batch's lists stay finite."""
    events = _stream(600)
    shard = _shard()
    users, _ = _run(shard, events[:300], 100)
    bad = decode_user(users["u1"])
    bad.vector[:] = np.nan
    users["u1"] = encode_user(bad)
    shard.items.vectors[shard.items.index["i0"]] = np.inf  # as if a step had overflowed
    batch = [Event("e-i0", "u0", "i0", 1.0, events[299].ts + 1, 0, 300), *events[301:340]]
    out = shard.process(batch, users, now_ms=1)
    assert out.rows_reset >= 3 and shard.take_rows_reset() == out.rows_reset  # u1, i0, u0 (and more)
    assert np.isfinite(shard.items.vectors[:len(shard.items)]).all()
    assert all(np.isfinite(decode_user(raw).vector).all() for raw in out.user_records.values())
    assert all(it["score"] is None or np.isfinite(it["score"]) for r in out.recommendations for it in r["items"])
    # items restored from such state are reset (and vectors longer than max_norm shortened)
    records = shard.items.encode(range(len(shard.items)))
    restored = _shard()
    raw = bytearray(records["i3"])
    raw[-8 * 16 - 8:-4 * 16 - 8] = np.full(16, np.nan, "<f4").tobytes()  # its vector
    records["i3"] = bytes(raw)
    restored.restore_items(records.items())
    assert restored.take_rows_reset() == 1 and np.isfinite(restored.items.vectors[:len(restored.items)]).all()


def _serve_version_7(shard) -> list[str]:
    """Make ``shard`` serve a registry version "v000007" of six items (i6 the most popular)."""
    ids = ["i1", "i2", "i3", "i4", "i5", "i6"]
    vectors = np.eye(6, 16, dtype=np.float32)
    table = RegistryItems(np.array(ids), vectors, np.zeros(6, np.float32), np.arange(6, dtype=np.float32))
    model = ScoringModel.from_bytes(export_model_bytes(vectors, table.bias, popularity_prior(table.popularity), 0.5),
                                    {"version": "v000007", "item_ids": ids, "dim": 16}, ["CPUExecutionProvider"])
    shard.serving = shard.registry_catalogue(model, table.popularity)
    return ids


def test_serving_a_registry_version_reports_it():
    shard = _shard(cold_start_min_events=0)
    _run(shard, _stream(300), 100)
    ids = _serve_version_7(shard)
    out = shard.process([Event("x1", "new", "i1", 1.0, 5, 0, 9_999)], {}, now_ms=1)
    (rec,) = out.recommendations
    assert rec["model_version"] == "v000007" and rec["strategy"] == "model"
    assert {i["item_id"] for i in rec["items"]} <= set(ids) - {"i1"}


def test_a_served_version_makes_every_list_of_the_batch_and_the_live_table_fills_what_it_cannot():
    shard = _shard(cold_start_min_events=2)
    _run(shard, _stream(300), 100)
    ids = _serve_version_7(shard)
    shard.live_name = "live+v000007"  # (what the learner sets; not used while a version serves)
    (rec,) = shard.process([Event("x1", "new", "i1", 1.0, 5, 0, 9_999)], {}, now_ms=1).recommendations
    # a cold start: the version's popularity (i6 the most popular), named after the version
    assert (rec["strategy"], rec["model_version"]) == ("popularity", "v000007")
    assert [(i["item_id"], i["score"]) for i in rec["items"]] == [("i6", 5.0), ("i5", 4.0), ("i4", 3.0),
                                                                 ("i3", 2.0), ("i2", 1.0)]
    # a user who had every item of the version: its list is filled up from the live table
    had = [Event(f"h{n}", "heavy", item, 1.0, 10 + n, 0, 10_000 + n) for n, item in enumerate(ids)]
    last = shard.process(had, {}, now_ms=2).recommendations[-1]
    assert last["model_version"] == "v000007" and len(last["items"]) == 5
    assert not {i["item_id"] for i in last["items"]} & set(ids)
    shard.serving = None
    (rec,) = shard.process([Event("x2", "new2", "i1", 1.0, 5, 0, 10_999)], {}, now_ms=3).recommendations
    assert rec["model_version"] == "live+v000007"


def test_bot_events_are_scored_but_not_learned():
    shard = _shard(bot_events_per_minute=5)
    events = [Event(f"b{n}", "bot", f"i{n % 20}", 1.0, 1000 + n, 0, n) for n in range(50)]
    out = shard.process(events, {}, now_ms=1)
    assert out.learned == 5 and out.bot_events == 45
    assert decode_user(out.user_records["bot"]).events == 5


@pytest.mark.parametrize("user, shards", [("u1", 4), ("", 3), ("ünï", 7)])
def test_shard_of_is_javas_string_hash(user, shards):
    h = 0
    for ch in user.encode("utf-16-le").decode("utf-16-le"):
        h = (31 * h + ord(ch)) % 2**32
    signed = h - 2**32 if h >= 2**31 else h
    assert shard_of(user, shards) == signed % shards


def test_items_keyed_state_expired_leave_the_shard():
    shard = _shard(cold_start_min_events=1, warmup_items=0, item_ttl_ms=1_000)
    events = _stream(300)
    users = {}
    out = shard.process(events[:200], users, now_ms=10_000)
    users.update(out.user_records)
    before = set(shard.items.ids)
    late = shard.process(events[200:210], users, now_ms=10_900)  # rewrites only what it touched
    users.update(late.user_records)
    assert shard.expire_items(now_ms=10_950) == []  # nothing is older than the TTL yet
    expired = shard.expire_items(now_ms=11_500)
    assert expired and set(expired) == before - set(late.item_records)
    assert set(shard.items.ids) == set(late.item_records) and not set(expired) & set(shard.live.ids)
    out = shard.process(events[210:300], users, now_ms=11_600)  # the shard goes on
    assert len(out.recommendations) == 90
