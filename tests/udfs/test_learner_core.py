"""The shard learner's logic without Flink (udfs/learner_core.py), over dict-backed keyed state:
what the operator emits and keeps per batch and timer, restores, TTL expiry, the item exchange.
tests/flink_jobs/test_learning_equivalence.py checks the Flink job against the same core."""

import json
import pickle

import pytest

from streamrec.core.records import ITEM_DELTA, ITEM_RECORD, RECOMMENDATION, USER_RECORD
from streamrec.udfs.learner_core import LearnerCore, LearnerSettings, ShardState
from streamrec.udfs.online_mf import LearnerParams
from streamrec.udfs.shard_model import Event, ShardModel, ShardSettings

T0 = 1_800_000_000_000
DAY = 86_400_000


def _settings(**kw) -> LearnerSettings:
    shard = ShardSettings(top_k=3, warmup_items=5, item_ttl_ms=kw.get("state_ttl_ms", DAY),
                          exchange_items=bool(kw.get("exchange_interval_ms")))
    return LearnerSettings(LearnerParams.of(None, dim=8, seed=4), shard, **{
        "state_ttl_ms": DAY, "changelog_interval_ms": 5_000, "provider": "cpu", **kw})


def _events(n: int, start: int = 0, users: int = 5, items: int = 12) -> list[Event]:
    return [Event(f"e{k}", f"u{k % users}", f"i{(k * 7) % items}", 1.0, 1_000 + k, 0, k)
            for k in range(start, start + n)]


def _line(events) -> str:
    return ",".join(json.dumps(list(e)) for e in events)


def _kinds(out) -> list[str]:
    return [kind for kind, _, _ in out.records]


def test_a_batch_emits_a_recommendation_per_event_and_keeps_the_changelog_for_its_timer():
    core, state = LearnerCore(_settings()), ShardState.in_memory()
    events = _events(20)
    out = core.on_batch(0, state, _line(events), now_ms=T0)
    # the first batch flushes (nothing flushed before): the changed items and users
    assert _kinds(out)[:20] == ["recommendation"] * 20
    assert {RECOMMENDATION.decode(v)["source_event_id"] for k, _, v in out.records[:20]} == {e.event_id for e in events}
    assert set(_kinds(out)[20:]) == {"item", "user"} and out.timers == []
    assert out.counts["events_learned"] == 20 and out.counts["batches"] == 1
    assert set(state.users) == {e.user_id for e in events} and set(state.items) == {e.item_id for e in events}

    out = core.on_batch(0, state, _line(_events(5, start=20)), now_ms=T0 + 1_000)
    assert _kinds(out) == ["recommendation"] * 5 and out.timers == [T0 + 5_000]  # pending until then
    assert core.on_timer(0, state, T0 + 4_000, now_ms=T0 + 4_000).records == []  # an older timer
    flushed = core.on_timer(0, state, T0 + 5_000, now_ms=T0 + 5_000)
    items = [ITEM_RECORD.decode(v) for k, _, v in flushed.records if k == "item"]
    users = [USER_RECORD.decode(v) for k, _, v in flushed.records if k == "user"]
    assert {i["item_id"] for i in items} >= {e.item_id for e in _events(5, start=20)}  # (and negatives)
    assert {u["user_id"] for u in users} == {e.user_id for e in _events(5, start=20)}
    assert all(r["ts"] is None for r in items + users)  # a timer's flush knows no event time
    assert core.on_timer(0, state, T0 + 10_000, now_ms=T0 + 10_000).records == []  # nothing pending


def test_the_end_of_input_flushes_what_is_pending():
    core, state = LearnerCore(_settings()), ShardState.in_memory()
    core.on_batch(0, state, _line(_events(10)), now_ms=T0)
    core.on_batch(0, state, _line(_events(3, start=10)), now_ms=T0 + 100)
    out = core.on_timer(0, state, 2**63 - 2, now_ms=T0 + 200, end_of_input=True)
    assert {key for kind, key, _ in out.records if kind == "user"} == {"u0", "u1", "u2"}


def test_the_core_learns_and_scores_as_the_shard_model():
    core, state = LearnerCore(_settings()), ShardState.in_memory()
    shard, users = ShardModel(_settings().params, _settings().shard), {}
    for n, lo in enumerate(range(0, 60, 15)):
        batch = _events(15, start=lo)
        out = core.on_batch(0, state, _line(batch), now_ms=T0 + n)
        expected = shard.process(batch, users, now_ms=T0 + n)
        users.update(expected.user_records)
        assert [RECOMMENDATION.decode(v) for k, _, v in out.records if k == "recommendation"] == \
            [RECOMMENDATION.decode(RECOMMENDATION.encode(r)) for r in expected.recommendations]
    assert dict(state.users) == users


def test_a_restarted_core_goes_on_from_the_state_alone():
    settings = _settings(changelog_interval_ms=0)
    first, state = LearnerCore(settings), ShardState.in_memory()
    other, other_state = LearnerCore(settings), ShardState.in_memory()
    for core, st in ((first, state), (other, other_state)):
        core.on_batch(0, st, _line(_events(30)), now_ms=T0)
    restarted = LearnerCore(settings)  # a restore: the Python cache is gone, the state is not
    after = _line(_events(10, start=30))
    assert restarted.on_batch(0, state, after, now_ms=T0 + 1).records == \
        other.on_batch(0, other_state, after, now_ms=T0 + 1).records


def test_expired_items_leave_the_table_and_the_state_with_a_tombstone():
    core, state = LearnerCore(_settings(state_ttl_ms=60_000)), ShardState.in_memory()
    core.on_batch(0, state, _line([Event("e0", "u0", "old", 1.0, 1, 0, 0)]), now_ms=T0)
    out = core.on_batch(0, state, _line([Event("e1", "u1", "new", 1.0, 2, 0, 1)]), now_ms=T0 + 60_001)
    assert ("item", "old", None) in out.records and "old" not in state.items and "new" in state.items
    assert "old" not in core.shards[0].items.index


def test_shards_exchange_their_item_steps():
    settings = _settings(exchange_interval_ms=500, changelog_interval_ms=0)
    a, b = LearnerCore(settings), LearnerCore(settings)
    a_state, b_state = ShardState.in_memory(), ShardState.in_memory()
    a.on_batch(0, a_state, _line(_events(10)), now_ms=T0)  # sends at once: nothing sent before
    out = a.on_batch(0, a_state, _line(_events(5, start=10)), now_ms=T0 + 100)
    assert "item_delta" not in _kinds(out) and out.timers == [T0 + 500]
    out = a.on_timer(0, a_state, T0 + 500, now_ms=T0 + 500)
    deltas = [v for kind, key, v in out.records if kind == "item_delta"]
    assert deltas and out.counts["item_deltas_sent"] == len(deltas)
    assert {ITEM_DELTA.decode(v)["origin"] for v in deltas} == {0}
    learned = {e.item_id for e in _events(5, start=10)}
    assert learned <= {i for v in deltas for i in json.loads(v)["items"]}

    out = b.on_batch(2, b_state, ",".join(deltas), now_ms=T0 + 600)  # deltas alone: applied, written
    assert out.gauges["item_exchange_lag_ms"] == 100 and out.counts["item_deltas_applied"] == len(deltas)
    assert learned <= set(b_state.items) and out.records == []


def test_a_pickled_changelog_state_is_refused_with_its_sentence():
    core, state = LearnerCore(_settings()), ShardState.in_memory()
    state.changelog.update(pickle.dumps((set(), set(), 0)))
    with pytest.raises(ValueError, match="is a pickle"):
        core.on_batch(0, state, _line(_events(1)), now_ms=T0)


def test_a_row_that_is_not_finite_is_counted_and_never_reaches_a_record():
    """Rows the bounded steps should never produce (here: restored state with NaN vectors)
    go back to their initial vectors, counted in ``nonfinite_rows_reset``; before, the NaN
    reached Record.encode, whose strict JSON raised inside the job, after every restart again."""
    import numpy as np

    from streamrec.udfs.shard_model import decode_user, encode_user

    core, state = LearnerCore(_settings(changelog_interval_ms=0)), ShardState.in_memory()
    core.on_batch(0, state, _line(_events(20)), now_ms=T0)
    user = decode_user(state.users["u1"])
    user.vector[:] = np.nan
    state.users.put_all({"u1": encode_user(user)})
    item = bytearray(state.items["i7"])
    item[-8 - 2 * 4 * 8:-8 - 4 * 8] = np.full(8, np.inf, "<f4").tobytes()  # its vector (dim 8)
    state.items.put_all({"i7": bytes(item)})
    restarted = LearnerCore(_settings(changelog_interval_ms=0))  # restores the items from state
    out = restarted.on_batch(0, state, _line(_events(10, start=20)), now_ms=T0 + 1_000)
    assert out.counts["nonfinite_rows_reset"] == 2
    for kind, _, text in out.records:  # every record encoded, and back: finite numbers only
        decoded = {"recommendation": RECOMMENDATION, "item": ITEM_RECORD, "user": USER_RECORD}[kind].decode(text)
        assert all(np.isfinite(v) for v in decoded.get("vector", [])), (kind, decoded)
    assert "nonfinite_rows_reset" not in restarted.on_batch(0, state, _line(_events(5, start=30)), now_ms=T0 + 2_000).counts
