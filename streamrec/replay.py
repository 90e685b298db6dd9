"""Replay a dataset into the raw events topic.

Two sources:
- ``ml-100k``: MovieLens-100k ratings as events, in timestamp order (stable, so rows with equal
  timestamps keep file order). ``event_id`` is ``ml100k-<row>`` (row = 0-based data row in the file),
  so a replay is deterministic and a second replay is recognisable as duplicates.
- a JSONL file: every line is sent verbatim (malformed lines included, so the pipeline's
  validation and dead-letter path see them).

Records are keyed by ``user_id`` (partition affinity for per-user state); a line whose user_id
cannot be read is sent without a key.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

from streamrec.core.config import Config


@dataclass(frozen=True)
class ReplayItem:
    key: bytes | None
    value: bytes
    ts_ms: int | None  # event time when known (for --speedup pacing)


def ml100k_events(data_dir: Path) -> list[dict]:
    """ML-100k ratings as event dicts in timestamp order.

    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (d / "ml-100k.inter").write_text(
    ...     "user_id:token\\titem_id:token\\trating:float\\ttimestamp:float\\n"
    ...     "196\\t242\\t3\\t881250949\\n186\\t302\\t3\\t881250940\\n")
    >>> [e["event_id"] for e in ml100k_events(d)]
    ['ml100k-1', 'ml100k-0']
    >>> ml100k_events(d)[0]
    {'event_id': 'ml100k-1', 'user_id': '186', 'item_id': '302', 'event_type': 'rating', 'rating': 3.0, 'ts': 881250940000}
    """
    rows = []
    with open(data_dir / "ml-100k.inter", encoding="utf-8") as fh:
        header = fh.readline()
        if not header.startswith("user_id"):
            raise ValueError(f"{data_dir / 'ml-100k.inter'} does not look like ML-100k (header {header!r})")
        for row, line in enumerate(fh):
            user, item, rating, ts = line.rstrip("\n").split("\t")
            rows.append({
                "event_id": f"ml100k-{row}",
                "user_id": user,
                "item_id": item,
                "event_type": "rating",
                "rating": float(rating),
                "ts": int(float(ts)) * 1000,
            })
    rows.sort(key=lambda e: e["ts"])  # sort is stable
    return rows


def ml100k_titles(data_dir: Path) -> dict[str, str]:
    titles = {}
    path = data_dir / "ml-100k.item"
    if path.is_file():
        with open(path, encoding="utf-8", errors="replace") as fh:
            fh.readline()
            for line in fh:
                parts = line.rstrip("\n").split("\t")
                if len(parts) >= 2:
                    titles[parts[0]] = parts[1]
    return titles


def encode_events(events: Iterable[dict]) -> Iterator[ReplayItem]:
    for event in events:
        yield ReplayItem(str(event["user_id"]).encode(), json.dumps(event, separators=(",", ":")).encode(),
                         int(event["ts"]))


def jsonl_items(path: Path) -> Iterator[ReplayItem]:
    """Each line of a JSONL file, verbatim (without its line ending)."""
    with open(path, "rb") as fh:
        for raw in fh:
            line = raw.rstrip(b"\r\n")
            if not line:
                continue
            key = ts = None
            try:
                obj = json.loads(line)
                if isinstance(obj, dict):
                    if isinstance(obj.get("user_id"), (str, int)):
                        key = str(obj["user_id"]).strip().encode()
                    if isinstance(obj.get("ts"), int):
                        ts = obj["ts"]
            except (ValueError, UnicodeDecodeError):
                pass
            yield ReplayItem(key, line, ts)


@dataclass
class ReplayResult:
    sent: int
    delivered: int
    failed: int
    seconds: float
    first_error: str | None = None

    @property
    def rate(self) -> float:
        return self.delivered / self.seconds if self.seconds > 0 else 0.0


class _Pacer:
    """Sleeps to hold either a fixed rate or event-time pacing scaled by ``speedup``."""

    def __init__(self, rate: float | None, speedup: float | None):
        if rate is not None and speedup is not None:
            raise ValueError("use either --rate or --speedup, not both")
        if rate is not None and rate <= 0 or speedup is not None and speedup <= 0:
            raise ValueError("--rate and --speedup must be positive")
        self.rate, self.speedup = rate, speedup
        self.start = time.monotonic()
        self.first_ts: int | None = None

    def wait(self, index: int, ts_ms: int | None) -> None:
        if self.rate is not None:
            target = self.start + index / self.rate
        elif self.speedup is not None and ts_ms is not None:
            if self.first_ts is None:
                self.first_ts = ts_ms
            target = self.start + (ts_ms - self.first_ts) / 1000.0 / self.speedup
        else:
            return
        delay = target - time.monotonic()
        if delay > 0:
            time.sleep(delay)


def produce(cfg: Config, topic: str, items: Iterable[ReplayItem], total: int | None = None,
            limit: int | None = None, rate: float | None = None, speedup: float | None = None,
            progress: bool = True) -> ReplayResult:
    """Send items to ``topic``; every record's delivery is confirmed before returning."""
    from confluent_kafka import KafkaException
    from tqdm import tqdm

    from streamrec.runtime.kafka_io import producer

    prod = producer(cfg)
    # connected before the clock starts: records produced while the client still connects (and
    # gets its idempotent producer id) wait in its queue with their timestamps already taken,
    # which a paced replay would count as the pipeline's latency
    try:
        prod.list_topics(topic, timeout=10)
    except KafkaException:
        pass  # no broker reachable: the records below fail through their delivery reports, counted
    pacer = _Pacer(rate, speedup)
    state = {"delivered": 0, "failed": 0, "first_error": None}

    def on_delivery(err, _msg):
        if err is None:
            state["delivered"] += 1
        else:
            state["failed"] += 1
            state["first_error"] = state["first_error"] or str(err)

    if limit is not None and total is not None:
        total = min(total, limit)
    bar = tqdm(total=total, unit="ev", desc=f"replay -> {topic}", disable=not progress,
               file=sys.stderr, mininterval=0.5)
    start = time.monotonic()
    sent = 0
    for item in items:
        if limit is not None and sent >= limit:
            break
        pacer.wait(sent, item.ts_ms)
        while True:
            try:
                prod.produce(topic, value=item.value, key=item.key, on_delivery=on_delivery)
                break
            except BufferError:  # local queue full: let librdkafka drain it
                prod.poll(0.1)
            except KafkaException as exc:  # refused before sending (e.g. larger than message.max.bytes)
                on_delivery(exc.args[0] if exc.args else exc, None)
                break
        sent += 1
        if sent % 1000 == 0:
            prod.poll(0)
            bar.update(1000)
    remaining = prod.flush(60)
    bar.update(sent - bar.n)
    bar.close()
    seconds = time.monotonic() - start
    failed = state["failed"] + remaining
    if remaining and state["first_error"] is None:
        state["first_error"] = f"{remaining} records still undelivered after 60 s"
    return ReplayResult(sent, state["delivered"], failed, seconds, state["first_error"])
