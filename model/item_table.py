"""The exporter's item snapshot, attached to every registry version as ``items.npz``.

The ONNX graph holds only ``item_bias + prior_weight * prior``; the learner (read-only negative
sampling snapshot) and the scorer's cold-start path (most popular items) need the raw arrays, so
the exporter stores them next to the model, sha256-checked like the model itself
(:meth:`model.registry.Registry.load_attachment`).

``items.npz`` is a plain ``numpy.savez`` archive (no pickles; load with ``allow_pickle=False``):

==============  =================  =====================================================
``item_ids``    str ``[N]``        sorted ascending; row *i* of every array, and index *i*
                                   of the model's graph / meta.json ``item_ids``
``vectors``     float32 ``[N, D]`` item factors from ``model.items`` (core.records.ITEM_RECORD)
``bias``        float32 ``[N]``    item biases from ``model.items``
``popularity``  float32 ``[N]``    the learner's count from ``model.items``, else ``features.item``'s
                                   (core.records.FEATURES_ITEM), else 0
==============  =================  =====================================================

>>> import numpy as np
>>> t = ItemTable(np.array(["a", "b"]), np.ones((2, 3), np.float32), np.zeros(2, np.float32),
...               np.array([5, 0], np.float32))
>>> back = ItemTable.from_npz_bytes(t.to_npz_bytes())
>>> back.item_ids.tolist(), back.dim, back.popularity.tolist(), back.top_popular(1)
(['a', 'b'], 3, [5.0, 0.0], ['a'])
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

import numpy as np

#: The attachment's file name in a registry version directory.
ITEMS_ATTACHMENT = "items.npz"
_FIELDS = ("item_ids", "vectors", "bias", "popularity")


@dataclass(frozen=True)
class ItemTable:
    """Item arrays of one exported model version, row-aligned with its ``item_ids``."""

    item_ids: np.ndarray    # str [N]
    vectors: np.ndarray     # float32 [N, D]
    bias: np.ndarray        # float32 [N]
    popularity: np.ndarray  # float32 [N]

    def __post_init__(self) -> None:
        n = len(self.item_ids)
        if self.vectors.ndim != 2 or self.vectors.shape[0] != n:
            raise ValueError(f"vectors has shape {self.vectors.shape}, expected [{n}, D]")
        for name in ("bias", "popularity"):
            if getattr(self, name).shape != (n,):
                raise ValueError(f"{name} has shape {getattr(self, name).shape}, expected [{n}]")

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    def __len__(self) -> int:
        return len(self.item_ids)

    def index(self) -> dict[str, int]:
        """``item_id -> row``."""
        return {str(item_id): n for n, item_id in enumerate(self.item_ids.tolist())}

    def top_popular(self, k: int) -> list[str]:
        """The ``k`` most popular item ids (ties: lower row, i.e. smaller id, first)."""
        order = np.argsort(-self.popularity.astype(np.float64), kind="stable")[: max(0, int(k))]
        return [str(self.item_ids[i]) for i in order]

    def to_npz_bytes(self) -> bytes:
        buf = io.BytesIO()
        np.savez(
            buf,
            item_ids=np.asarray(self.item_ids, dtype=str),
            vectors=np.ascontiguousarray(self.vectors, dtype=np.float32),
            bias=np.ascontiguousarray(self.bias, dtype=np.float32),
            popularity=np.ascontiguousarray(self.popularity, dtype=np.float32),
        )
        return buf.getvalue()

    @classmethod
    def from_npz_bytes(cls, data: bytes) -> "ItemTable":
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            missing = [f for f in _FIELDS if f not in npz.files]
            if missing:
                raise ValueError(f"{ITEMS_ATTACHMENT} lacks {', '.join(missing)}")
            ids = npz["item_ids"]
            if ids.dtype.kind != "U":
                raise ValueError(f"{ITEMS_ATTACHMENT}: item_ids has dtype {ids.dtype}, expected str")
            return cls(
                item_ids=ids,
                vectors=npz["vectors"].astype(np.float32, copy=False),
                bias=npz["bias"].astype(np.float32, copy=False),
                popularity=npz["popularity"].astype(np.float32, copy=False),
            )


def load_item_table(registry: Any, version: str, expected_dim: int | None = None) -> ItemTable:
    """The ``items.npz`` of ``version`` (sha256-checked, :class:`CorruptModelError` otherwise),
    checked against the version's meta.json ``item_ids`` and ``dim``, against ``expected_dim``
    (the learner's: a version of another dimension is never served) and for NaN / Inf weights."""
    from streamrec.model.registry import CorruptModelError

    data = registry.load_attachment(version, ITEMS_ATTACHMENT)
    try:
        table = ItemTable.from_npz_bytes(data)
    except (ValueError, OSError, KeyError) as exc:
        raise CorruptModelError(f"model {version}: {ITEMS_ATTACHMENT} is unreadable: {exc}") from None
    meta = registry.read_meta(version)
    if table.item_ids.tolist() != list(meta.get("item_ids", [])):
        raise CorruptModelError(f"model {version}: {ITEMS_ATTACHMENT} item_ids differ from meta.json")
    if "dim" in meta and int(meta["dim"]) != table.dim:
        raise CorruptModelError(f"model {version}: {ITEMS_ATTACHMENT} dim {table.dim}, meta.json {meta['dim']}")
    if expected_dim is not None and table.dim != expected_dim:
        raise CorruptModelError(f"model {version}: dim {table.dim}, but the learner's is {expected_dim} "
                                "(learner.dim changed, or an old version was promoted)")
    for name in ("vectors", "bias", "popularity"):
        bad = int(np.count_nonzero(~np.isfinite(getattr(table, name))))
        if bad:
            raise CorruptModelError(f"model {version}: {bad} non-finite (NaN/Inf) values in {name}")
    return table
