"""The item exchange between shards (udfs/item_exchange.py) in plain Python: two shards that
swapped their deltas hold the same item table, under SGD and AdaGrad; pending steps survive the
state round trip; bad records are clear errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from streamrec.udfs import item_exchange
from streamrec.udfs.minibatch_mf import ItemTable
from streamrec.udfs.online_mf import LearnerParams
from streamrec.udfs.shard_model import Event, ShardModel, ShardSettings, shard_of


def _events(n: int, seed: int = 5) -> list[Event]:
    rng = np.random.default_rng(seed)
    return [Event(f"e{k}", f"u{int(rng.integers(30))}", f"i{int(rng.integers(80))}", 1.0, 1_000 * k, 0, k)
            for k in range(n)]


def _swap(shards: list[ShardModel], now: int) -> None:
    """Every shard sends its pending steps through the wire format; every other one adds them."""
    sent = []
    for s, shard in enumerate(shards):
        delta, records = shard.take_deltas(s, now - 1, now)
        assert delta is not None and set(records) == set(delta.item_ids)
        sent.append((s, [item_exchange.decode(json.loads(line), shard.params.dim)
                         for line in item_exchange.encode(delta, max_items=25)]))
    for s, shard in enumerate(shards):
        shard.apply_deltas([d for origin, ds in sent if origin != s for d in ds], now)


@pytest.mark.parametrize("optimizer", ["sgd", "adagrad"])
def test_shards_that_swapped_their_deltas_hold_the_same_items(optimizer):
    params = LearnerParams.of(None, dim=8, seed=3, optimizer=optimizer)
    shards = [ShardModel(params, ShardSettings(exchange_items=True, warmup_items=0)) for _ in range(2)]
    users: list[dict] = [{}, {}]
    events = _events(600)
    for lo in range(0, len(events), 100):
        for s, shard in enumerate(shards):
            mine = [e for e in events[lo:lo + 100] if shard_of(e.user_id, 2) == s]
            users[s].update(shard.process(mine, users[s], now_ms=lo).user_records)
        _swap(shards, lo + 1)
    a, b = (shard.items for shard in shards)
    assert sorted(a.ids) == sorted(b.ids)
    rows_b = b.rows(a.ids)
    n = len(a.ids)
    # every copy is the initial vectors plus every step sent, plus its own steps still pending:
    # the float16 rounding error of the vectors' steps (error feedback), nothing else
    for column in ("vectors", "accum", "bias", "bias_accum", "updates", "popularity"):
        ours = getattr(a, column)[:n] - getattr(a, f"pending_{column}")[:n]
        theirs = getattr(b, column)[rows_b] - getattr(b, f"pending_{column}")[rows_b]
        np.testing.assert_allclose(ours, theirs, rtol=0, atol=2e-5, err_msg=column)
    assert not a.pending_updates[:n].any() and not a.pending_bias[:n].any()  # all sent
    assert 0 < np.abs(a.pending_vectors[:n]).max() < 1e-3  # rounding left, small
    assert (a.updates[:n] > 0).all()
    # without the swaps a copy has only its own users' popularity: the swaps made the whole
    assert a.popularity[:n].sum() == pytest.approx(len(events))


def test_a_shard_alone_sends_nothing_and_writes_the_old_record_format():
    params = LearnerParams.of(None, dim=4, seed=1)
    shard = ShardModel(params, ShardSettings())
    out = shard.process(_events(50), {}, now_ms=1)
    assert shard.take_deltas(0, 0, 2) == (None, {})
    assert {raw[0] for raw in out.item_records.values()} == {2}


def test_pending_steps_survive_the_state_round_trip_and_old_records_are_read():
    params = LearnerParams.of(None, dim=4, seed=1)
    shard = ShardModel(params, ShardSettings(exchange_items=True))
    out = shard.process(_events(50), {}, now_ms=1)
    assert {raw[0] for raw in out.item_records.values()} == {3}
    restored = ItemTable(params, track_pending=True)
    restored.restore(out.item_records.items())
    sent_rows, sent = shard.items.take_pending()
    again_rows, again = restored.take_pending()
    assert [shard.items.ids[r] for r in sent_rows] == [restored.ids[r] for r in again_rows]
    for column in sent:
        np.testing.assert_array_equal(sent[column], again[column])
    # a format-2 record (a checkpoint of one shard, or from before the exchange): nothing pending
    old = ItemTable(params)
    old.rows(["x"])
    old.updates[0], old.vectors[0] = 7, 0.5
    table = ItemTable(params, track_pending=True)
    table.restore(old.encode([0]).items())
    assert table.updates[0] == 7 and table.vectors[0].tolist() == [0.5] * 4 and not table.pending_updates[0]


def test_bad_delta_records_are_clear_errors():
    delta = item_exchange.ItemDeltas(0, 0, 1, ["a"], {"vectors": np.ones((1, 4), np.float32)})
    [line] = item_exchange.encode(delta)
    with pytest.raises(ValueError, match="at dim 8"):
        item_exchange.decode(json.loads(line), dim=8)
    with pytest.raises(ValueError, match="format 2"):
        item_exchange.decode(dict(json.loads(line), delta=2), dim=4)
