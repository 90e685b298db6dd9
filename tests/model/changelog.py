"""The exporter's input records for tests, whole and checked by their declaration
(core/records.py), as the pipeline writes them: a test cannot feed a record no writer makes.

>>> ITEM_RECORD.encode(item("a", [1, 2], popularity=3.0))
'{"item_id":"a","vector":[1.0,2.0],"bias":0.0,"updates":1,"popularity":3.0,"ts":1}'
"""

from __future__ import annotations

from typing import Iterable

from streamrec.core.records import CLEAN_EVENT, FEATURES_ITEM, ITEM_RECORD, USER_RECORD


def _floats(values: Iterable) -> list[float]:
    return [float(v) for v in values]


def item(item_id: str, vector: Iterable, bias: float = 0.0, updates: int = 1, popularity: float = 0.0,
         ts: int | None = 1) -> dict:
    """A model.items record."""
    return ITEM_RECORD.check({"item_id": item_id, "vector": _floats(vector), "bias": float(bias),
                              "updates": updates, "popularity": float(popularity), "ts": ts})


def user(user_id: str, vector: Iterable, events: int = 1, ts: int | None = 1) -> dict:
    """A model.users record."""
    return USER_RECORD.check({"user_id": user_id, "vector": _floats(vector), "events": events, "ts": ts})


def features(item_id: str, popularity: float, window_end: int = 60_000) -> dict:
    """A features.item row whose long window's weight (its popularity) is ``popularity``."""
    counts = {f.name: 0 for f in FEATURES_ITEM.fields if f.type.sql == "BIGINT"}
    return FEATURES_ITEM.check({**counts, "item_id": item_id, "window_start": window_end - 60_000,
                                "window_end": window_end, "short_weight": 0.0, "long_weight": float(popularity),
                                "last_seen_ts": window_end, "popularity": float(popularity), "trend": None})


def event(user_id: str, item_id: str, ts: int, offset: int = 0, partition: int = 0) -> dict:
    """An events.clean record (a click)."""
    return CLEAN_EVENT.check({"event_id": f"e{partition}-{offset}-{ts}", "user_id": user_id, "item_id": item_id,
                              "event_type": "click", "rating": None, "weight": 0.5, "ts": ts,
                              "src_partition": partition, "src_offset": offset, "late": False,
                              "ingest_watermark_ms": None})


def encoded(kind: str, record: dict) -> bytes:
    """``record`` as the value of an exporter input of ``kind``."""
    from streamrec.model.exporter import INPUT_RECORDS

    return INPUT_RECORDS[kind].encode(record).encode()
