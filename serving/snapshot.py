"""The store on disk: a restarted service starts from its last snapshot and reads the topics on
from the offsets it holds, instead of rereading them from the beginning.

One ``numpy.savez`` archive (no pickles: read with ``allow_pickle=False``), written to a temporary
file beside the target, fsynced and renamed over it, so a reader sees the old snapshot or the new
one, never a torn one:

====================  ==========================================================================
``header``            uint8: UTF-8 JSON ``{"format", "format_version", "written_ms", "rows",
                      "width", "dim", "lists", "vectors", "offsets": {topic: {partition: next}},
                      "versions": [...], "strategies": [...], "source": {...}}``
``user_ids``          uint8: the user ids' UTF-8 bytes, row order, back to back
``user_id_ends``      int64 ``[rows]``: where each id ends in ``user_ids``
``item_ids``,         the same for the interned item ids
``item_id_ends``
``item_counts``       int64: how many lists hold each item
every store column    its first ``rows`` rows (``store.COLUMNS``)
====================  ==========================================================================

``source`` is what the snapshot was read from (bootstrap servers, topic names, dimension): the
caller refuses a snapshot of other topics.

>>> import tempfile, pathlib
>>> from streamrec.serving.store import ServingStore
>>> store = ServingStore(width=2, dim=2)
>>> store.apply_user_vector("ü", [1.0, 2.0]); store.advance("t", 0, 7)
True
>>> path = pathlib.Path(tempfile.mkdtemp()) / "snap.npz"
>>> write_snapshot(path, store, source={"topics": ["t"]})
>>> back, source = read_snapshot(path)
>>> back.vector("ü").tolist(), back.offsets, source
([1.0, 2.0], {'t': {0: 7}}, {'topics': ['t']})
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from streamrec.serving.store import COLUMNS, Interner, ServingStore

FORMAT = "streamrec-serving-snapshot"
FORMAT_VERSION = 1


class SnapshotError(ValueError):
    """The file is not a snapshot this code can read (another format or version, damaged)."""


def _pack(names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    encoded = [name.encode("utf-8") for name in names]
    ends = np.cumsum([len(e) for e in encoded], dtype=np.int64) if encoded else np.zeros(0, np.int64)
    return np.frombuffer(b"".join(encoded), np.uint8), ends


def _unpack(blob: np.ndarray, ends: np.ndarray) -> list[str]:
    data = blob.tobytes()
    starts = [0, *ends[:-1].tolist()]
    return [data[s:e].decode("utf-8") for s, e in zip(starts, ends.tolist())]


def write_snapshot(path: Path, store: ServingStore, source: dict[str, Any]) -> None:
    """Write ``store`` (copied under its lock, so rows and offsets agree) to ``path`` atomically."""
    with store.lock:
        rows = len(store.users)
        arrays = {name: column[:rows].copy() for name, column in store.columns.items()}
        user_ids, user_ends = _pack(store.users.names)
        item_ids, item_ends = _pack(store.items.names)
        item_counts = np.zeros(len(store.items), np.int64)
        counted = min(len(store.items), len(store.item_counts))
        item_counts[:counted] = store.item_counts[:counted]
        header = {
            "format": FORMAT, "format_version": FORMAT_VERSION, "written_ms": int(time.time() * 1000),
            "rows": rows, "width": store.width, "dim": store.dim, "lists": store.lists,
            "vectors": store.vectors,
            "offsets": {t: {str(p): o for p, o in parts.items()} for t, parts in store.offsets.items()},
            "versions": list(store.versions.names), "strategies": list(store.strategies.names),
            "source": source,
        }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            np.savez(fh, header=np.frombuffer(json.dumps(header).encode(), np.uint8),
                     user_ids=user_ids, user_id_ends=user_ends, item_ids=item_ids,
                     item_id_ends=item_ends, item_counts=item_counts, **arrays)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)  # the rename itself survives a crash
    finally:
        os.close(fd)


def read_snapshot(path: Path) -> tuple[ServingStore, dict[str, Any]]:
    """The store in ``path`` and its ``source``; :class:`SnapshotError` if it cannot be read."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            header = json.loads(npz["header"].tobytes())
            if header.get("format") != FORMAT or header.get("format_version") != FORMAT_VERSION:
                raise SnapshotError(f"{path}: format {header.get('format')!r} version "
                                    f"{header.get('format_version')!r}, this code reads {FORMAT!r} "
                                    f"version {FORMAT_VERSION}")
            rows = int(header["rows"])
            store = ServingStore(width=int(header["width"]), dim=int(header["dim"]), capacity=rows + rows // 2)
            for name, (dtype, shape) in COLUMNS.items():
                column = npz[name]
                expected = (rows, *shape(store.width, store.dim))
                if column.shape != expected or column.dtype != dtype:
                    raise SnapshotError(f"{path}: column {name} is {column.dtype}{list(column.shape)}, "
                                        f"expected {np.dtype(dtype)}{list(expected)}")
                store.columns[name][:rows] = column
            store.users = Interner(_unpack(npz["user_ids"], npz["user_id_ends"]))
            store.items = Interner(_unpack(npz["item_ids"], npz["item_id_ends"]))
            counts = npz["item_counts"]
    except SnapshotError:
        raise
    except (OSError, ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
        raise SnapshotError(f"{path}: unreadable snapshot: {exc}") from None
    if len(store.users) != rows or len(counts) != len(store.items):
        raise SnapshotError(f"{path}: {len(store.users)} user ids for {rows} rows, "
                            f"{len(counts)} item counts for {len(store.items)} items")
    store.item_counts = np.zeros(max(64, len(counts)), np.int64)
    store.item_counts[: len(counts)] = counts
    store.versions = Interner(header["versions"])
    store.strategies = Interner(header["strategies"])
    store.lists, store.vectors = int(header["lists"]), int(header["vectors"])
    store.offsets = {t: {int(p): int(o) for p, o in parts.items()} for t, parts in header["offsets"].items()}
    return store, header.get("source", {})
