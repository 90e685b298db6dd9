"""Registry attachments and the exporter's items.npz item table: round trip, sha check."""

import json
import os

import numpy as np
import pytest

from streamrec.model.item_table import ITEMS_ATTACHMENT, ItemTable, load_item_table
from streamrec.model.onnx_model import export_model_bytes
from streamrec.model.registry import CorruptModelError, Registry, sha256_hex


def _table(n=5, d=3, seed=0):
    rng = np.random.default_rng(seed)
    return ItemTable(
        item_ids=np.array(sorted(f"item-{i:02d}" for i in range(n))),
        vectors=rng.normal(size=(n, d)).astype(np.float32),
        bias=rng.normal(size=n).astype(np.float32),
        popularity=rng.integers(0, 50, size=n).astype(np.float32),
    )


def _publish(reg, table, extra_attachments=None):
    data = export_model_bytes(table.vectors, table.bias, np.zeros(len(table)), 0.0)
    attachments = {ITEMS_ATTACHMENT: table.to_npz_bytes(), **(extra_attachments or {})}
    return reg.publish(data, {"item_ids": table.item_ids.tolist(), "dim": table.dim}, attachments)


def test_attachment_round_trip_and_item_table(tmp_path):
    reg = Registry(tmp_path / "registry")
    table = _table()
    v = _publish(reg, table, {"notes.txt": b"hello"})
    meta = reg.read_meta(v)
    assert set(meta["attachments"]) == {ITEMS_ATTACHMENT, "notes.txt"}
    assert meta["attachments"]["notes.txt"] == sha256_hex(b"hello")
    assert set(os.listdir(reg.path(v))) == {"model.onnx", "meta.json", ITEMS_ATTACHMENT, "notes.txt"}
    assert reg.load_attachment(v, "notes.txt") == b"hello"
    assert [e for e in os.listdir(reg.root) if e.startswith(".staging")] == []

    back = load_item_table(reg, v)
    assert back.item_ids.tolist() == table.item_ids.tolist() and back.item_ids.dtype.kind == "U"
    assert back.vectors.dtype == back.bias.dtype == back.popularity.dtype == np.float32
    np.testing.assert_array_equal(back.vectors, table.vectors)
    np.testing.assert_array_equal(back.bias, table.bias)
    np.testing.assert_array_equal(back.popularity, table.popularity)
    assert back.dim == 3 and len(back) == 5
    assert back.top_popular(2) == [table.item_ids[i] for i in np.argsort(-table.popularity, kind="stable")[:2]]
    # a plain numpy reader (e.g. the Flink learner) needs no pickles
    with np.load(reg.path(v) / ITEMS_ATTACHMENT, allow_pickle=False) as npz:
        assert sorted(npz.files) == ["bias", "item_ids", "popularity", "vectors"]
    # a version without attachments records an empty mapping
    v2 = reg.publish(b"x", {"item_ids": ["a"], "dim": 2})
    assert reg.read_meta(v2)["attachments"] == {}
    with pytest.raises(CorruptModelError, match="no attachment"):
        reg.load_attachment(v2, ITEMS_ATTACHMENT)


def test_corrupt_or_missing_attachment_is_refused(tmp_path):
    reg = Registry(tmp_path)
    v = _publish(reg, _table())
    path = reg.path(v) / ITEMS_ATTACHMENT
    blob = bytearray(path.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    path.write_bytes(bytes(blob))
    with pytest.raises(CorruptModelError, match="sha256 of attachment items.npz"):
        load_item_table(reg, v)
    path.write_bytes(bytes(blob[: len(blob) // 2]))  # partial
    with pytest.raises(CorruptModelError, match="corrupt or partial"):
        reg.load_attachment(v, ITEMS_ATTACHMENT)
    path.unlink()
    with pytest.raises(CorruptModelError, match="missing"):
        reg.load_attachment(v, ITEMS_ATTACHMENT)
    reg.load(v)  # the model itself is still fine


def test_item_table_must_match_meta(tmp_path):
    reg = Registry(tmp_path)
    table = _table()
    other = ItemTable(np.array(["x", "y", "z", "w", "v"]), table.vectors, table.bias, table.popularity)
    data = export_model_bytes(table.vectors, table.bias, np.zeros(5), 0.0)
    v = reg.publish(data, {"item_ids": table.item_ids.tolist(), "dim": 3},
                    {ITEMS_ATTACHMENT: other.to_npz_bytes()})
    with pytest.raises(CorruptModelError, match="item_ids differ"):
        load_item_table(reg, v)


@pytest.mark.parametrize("name", ["model.onnx", "meta.json", "../x", ".hidden", "a/b", ""])
def test_bad_attachment_names(tmp_path, name):
    reg = Registry(tmp_path)
    with pytest.raises(ValueError, match="invalid attachment name"):
        reg.publish(b"x", {"item_ids": ["a"], "dim": 2}, {name: b"y"})
    assert reg.list_versions() == []


@pytest.mark.parametrize("poison, field", [(np.nan, "vectors"), (np.inf, "bias"), (-np.inf, "popularity")])
def test_non_finite_weights_are_refused(tmp_path, poison, field):
    reg = Registry(tmp_path)
    table = _table()
    values = getattr(table, field).copy()
    values.flat[1] = poison
    bad = ItemTable(**{**{f: getattr(table, f) for f in ("item_ids", "vectors", "bias", "popularity")},
                       field: values})
    data = export_model_bytes(table.vectors, table.bias, np.zeros(5), 0.0)  # a finite graph
    v = reg.publish(data, {"item_ids": table.item_ids.tolist(), "dim": 3},
                    {ITEMS_ATTACHMENT: bad.to_npz_bytes()})
    with pytest.raises(CorruptModelError, match=f"1 non-finite .* in {field}"):
        load_item_table(reg, v)


def test_a_version_of_another_dimension_is_refused(tmp_path):
    reg = Registry(tmp_path)
    v = _publish(reg, _table())  # dim 3
    assert load_item_table(reg, v, expected_dim=3).dim == 3
    with pytest.raises(CorruptModelError, match="dim 3, but the learner's is 32"):
        load_item_table(reg, v, expected_dim=32)
