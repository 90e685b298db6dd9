"""Plain-Python reference of the windowed features that the features job computes
(flink_jobs/features.py: sql/features.sql, then sql/features_windows.sql).

Input: cleaned, deduplicated, non-late events (dicts with user_id, item_id, event_type, weight,
ts). Output: one row per (id, sliding window) holding at least one event, exactly the columns of
``features.user`` / ``features.item``. Windows are ``[end - long_window_ms, end)`` for every
``end`` that is a multiple of ``window_slide_ms``; the short window is ``[end - short_window_ms,
end)`` of the same row.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Iterable

from streamrec.core.config import IngestConfig

TYPES = (("views", "view"), ("clicks", "click"), ("carts", "cart"), ("purchases", "purchase"),
         ("ratings", "rating"))


def _windows(ts: int, slide: int, size: int) -> Iterable[int]:
    """Window ends of every sliding window containing ts."""
    first_end = (ts // slide) * slide + slide
    return range(first_end, first_end + size, slide)


def _block(events: list[dict], counterpart: str) -> dict:
    out = {"events": len(events)}
    for name, kind in TYPES:
        out[name] = sum(1 for e in events if e["event_type"] == kind)
    out["weight"] = sum(e["weight"] for e in events)
    out[f"distinct_{counterpart}"] = len({e[counterpart[:-1] + "_id"] for e in events})
    return out


def window_features(events: Iterable[dict], cfg: IngestConfig, key: str) -> list[dict]:
    """Rows for ``key`` = ``"user_id"`` (features.user) or ``"item_id"`` (features.item)."""
    counterpart = "items" if key == "user_id" else "users"
    groups: dict[tuple[str, int], list[dict]] = defaultdict(list)
    for e in events:
        for end in _windows(e["ts"], cfg.window_slide_ms, cfg.long_window_ms):
            groups[(e[key], end)].append(e)
    rows = []
    for (ident, end), evs in sorted(groups.items()):
        short = [e for e in evs if e["ts"] >= end - cfg.short_window_ms]
        row = {key: ident, "window_start": end - cfg.long_window_ms, "window_end": end}
        row.update({f"short_{k}": v for k, v in _block(short, counterpart).items()})
        row.update({f"long_{k}": v for k, v in _block(evs, counterpart).items()})
        row["last_seen_ts"] = max(e["ts"] for e in evs)
        if key == "user_id":
            epm = len(short) / (cfg.short_window_ms / 60_000)
            row["events_per_minute"] = epm
            row["is_bot"] = epm > cfg.bot_events_per_minute
        else:
            row["popularity"] = row["long_weight"]
            row["trend"] = (row["short_weight"] / row["long_weight"]
                            * (cfg.long_window_ms / cfg.short_window_ms)) if row["long_weight"] > 0 else None
        rows.append(row)
    return rows


def event_weight(event_type: str, rating: float | None, cfg: IngestConfig) -> float:
    w = cfg.weights
    if event_type == "rating":
        return w.rating_base + w.rating_scale * float(rating)
    return getattr(w, event_type)
