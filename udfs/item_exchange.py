"""Item deltas between shards: what one shard learned of the items, for the others to add.

At parallelism P every shard (flink_jobs/pipeline.py) learns its users' events against its own
copy of the item table. It adds its own steps at once and keeps them as *pending*
(:meth:`udfs.minibatch_mf.ItemTable.take_pending`); every ``learner.exchange_interval_ms`` it
sends them as delta records through Kafka (``model.item_deltas``, exactly-once), and every other
shard adds them at the start of its next micro-batch. Steps are sums, and sums commute: once every
delta has arrived, every copy is the same table (the deterministic initial vectors plus every
shard's steps). A copy lacks only the steps in flight: those of the last exchange interval, the
transaction of the sink until the checkpoint commits it, and the receiver's micro-batch window
(docs/hot-path.md, "Parallelism > 1").

A delta record is a JSON object (so the shard tells it from an event, a JSON array, in the same
micro-batch): the sender's shard key, its time window, the item ids and one base64 column per
learned quantity (float16 vector steps, float32 biases, float64 popularity, int64 update
counts); an all-zero column (AdaGrad sums under SGD) is left out.

>>> import json
>>> d = ItemDeltas(origin=2, since_ms=1_000, emitted_ms=2_000, item_ids=["a", "b"],
...                steps={"vectors": np.ones((2, 3), np.float32), "bias": np.zeros(2, np.float32),
...                       "updates": np.array([1, 4]), "popularity": np.array([1.0, 0.5])})
>>> [back] = [decode(json.loads(line), dim=3) for line in encode(d)]
>>> back.origin, back.item_ids, back.steps["vectors"].tolist()[1], sorted(back.steps)
(2, ['a', 'b'], [1.0, 1.0, 1.0], ['popularity', 'updates', 'vectors'])
>>> len(encode(d, max_items=1))  # a big delta is split into records of at most max_items items
2
"""

from __future__ import annotations

import base64
from dataclasses import dataclass

import numpy as np

from streamrec.core.records import ITEM_DELTA

#: The record's format (its ``delta`` field).
DELTA_FORMAT = 1
#: Each exchanged column and its wire type. The vectors' steps travel as float16 (half the
#: bytes of a delta at dim 32); the sender keeps their rounding error pending and sends it with
#: the item's next steps (:data:`HALF_PRECISION`, ``ItemTable.take_pending``), so nothing is lost.
COLUMNS = {"vectors": "<f2", "accum": "<f2", "bias": "<f4", "bias_accum": "<f4", "updates": "<i8",
           "popularity": "<f8"}
HALF_PRECISION = tuple(column for column, wire in COLUMNS.items() if wire == "<f2")
#: Items per record: ~115 bytes each at dim 32 (base64), so a record stays far below Kafka's 1 MB
#: default.
MAX_ITEMS_PER_RECORD = 2_000


@dataclass
class ItemDeltas:
    origin: int  #: the sending shard's key
    since_ms: int  #: the steps were taken after this processing time (the sender's previous send)
    emitted_ms: int  #: ... and up to this one
    item_ids: list[str]
    steps: dict[str, np.ndarray]  #: column name (:data:`COLUMNS`) -> one row per item


def encode(deltas: ItemDeltas, max_items: int = MAX_ITEMS_PER_RECORD) -> list[str]:
    """The delta as JSON records (:data:`streamrec.core.records.ITEM_DELTA`) of at most
    ``max_items`` items each."""
    out = []
    for lo in range(0, len(deltas.item_ids), max_items):
        doc = {"delta": DELTA_FORMAT, "origin": deltas.origin, "since_ms": deltas.since_ms,
               "emitted_ms": deltas.emitted_ms, "items": deltas.item_ids[lo:lo + max_items]}
        for column, values in deltas.steps.items():
            part = np.ascontiguousarray(values[lo:lo + max_items], COLUMNS[column])
            if part.any():
                doc[column] = base64.b64encode(part.tobytes()).decode("ascii")
        out.append(ITEM_DELTA.encode(doc))
    return out


def decode(doc: dict, dim: int) -> ItemDeltas:
    """A delta record (parsed JSON) of a shard learning vectors of ``dim``; a record of another
    format or dimension is a clear error, never a silent misreading."""
    if doc.get("delta") != DELTA_FORMAT:
        raise ValueError(f"item delta of format {doc.get('delta')!r}: this code reads format {DELTA_FORMAT}")
    ITEM_DELTA.check(doc)  # an unknown or mistyped key: the record and field named
    ids = doc["items"]
    steps = {}
    for column, dtype in COLUMNS.items():
        if column not in doc:
            continue
        values = np.frombuffer(base64.b64decode(doc[column]), dtype).astype(np.float32 if dtype == "<f2" else dtype)
        width = dim if column in ("vectors", "accum") else 1
        if values.size != len(ids) * width:
            raise ValueError(f"item delta from shard {doc.get('origin')}: column {column} holds "
                             f"{values.size} values for {len(ids)} items at dim {dim}")
        steps[column] = values.reshape(len(ids), dim) if width > 1 else values
    return ItemDeltas(int(doc["origin"]), int(doc["since_ms"]), int(doc["emitted_ms"]), list(ids), steps)
