"""Hostile input through the whole pipeline: ingestion, dedup, learner, scoring, exporter, registry.

A stream drawn afresh on every run (the seed is printed and named in every assertion message;
``STREAMREC_TEST_SEED=N`` replays one) mixes valid events whose ids are hostile but valid (emoji,
ZWJ sequences, RTL overrides, combining marks, normalisation twins, private use, noncharacters,
ids of exactly ``ingest.max_id_chars`` code points) with every kind of invalid record (control
characters anywhere in an id, 16 KB ids, null Kafka values and keys, empty and malformed
payloads, payloads at and over ``ingest.max_payload_bytes``, one near the broker's maximum
message size, timestamps at the int64 edges and at ``ingest.min_ts_ms`` / ``max_future_ms``),
duplicates of one event id sent to other partitions under other keys, a hot user with ~10 % of
the events and a hot item in most of them. One bounded pipeline run (no restart allowed), then:

- every raw record, by partition and offset, is in exactly one of events.clean / events.dlq, or
  is a duplicate of an event id that is in events.clean exactly once (the SQL dedup keeps the
  first occurrence by processing time: within a partition the lowest offset);
- the verdict of each is ``udfs.validation.validate()``'s for its payload (same config), a DLQ
  record carries that reason, the payload cut as documented, its size and its Kafka timestamp;
- every clean event has exactly one recommendation record (``tests.support.account_recommendations``),
  never one for anything else, each naming the clean event's coordinates and user, with known
  items only; an empty one only as ``strategy: none``, ``reason: user_had_every_item``;
- the learner's changelogs hold exactly the clean events' items and users, finite;
- one forced export: the version passes every check a reader makes (``check_servable``), its
  ``items.npz`` / ``meta.json`` / ONNX graph / ``users.npz`` hold exactly the learned ids, byte
  for byte, and the graph's top-K over the whole catalogue maps back onto them.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
import unicodedata
import zlib
from collections import Counter, defaultdict
from dataclasses import dataclass

import numpy as np
import pytest

from streamrec.flink_jobs import pipeline
from streamrec.model.item_table import load_item_table
from streamrec.model.registry import Registry
from streamrec.model.scoring import CPU, ScoringModel, check_servable
from streamrec.model.user_table import load_user_table
from streamrec.runtime.kafka_io import ensure_topics, producer, read_topic
from streamrec.core.records import VALIDATED_FIELDS
from tests.support import account_recommendations, export_forced, read_records, topic_record
from streamrec.udfs.validation import REASONS, CleanEvent, Rejection, payload_size, truncate_payload, validate

pytestmark = pytest.mark.slow

SEED_ENV = "STREAMREC_TEST_SEED"
N_EVENTS = 2_400  #: valid-looking base events; invalid records and duplicates come on top
#: The ts bounds are exercised on both sides: 2000-01-01 as the lower one.
INGEST = {"min_ts_ms": 946_684_800_000, "max_future_ms": 3_600_000}
#: The broker's default message.max.bytes (1 MiB + 12): one record not far below it.
BROKER_MAX_MESSAGE = 1_048_588
NEAR_BROKER_MAX = 1_040_000
#: Any ts bound case keeps this far from the bound, so the verdict cannot change while the test runs.
MARGIN_MS = 15 * 60_000
#: Variants of each kind of invalid record sent whatever the seed (no kind has more).
VARIANTS = 16


def draw_seed() -> int:
    value = os.environ.get(SEED_ENV)
    return int(value) if value else int.from_bytes(os.urandom(4), "big")


# --- the generator ---------------------------------------------------------------------------

#: Valid code point ranges for random id text: no Cc (C0, DEL, C1), no surrogates.
RANGES = [(0x21, 0x7E), (0xA0, 0xFF), (0x300, 0x36F), (0x590, 0x6FF), (0x200B, 0x200F), (0x202A, 0x202E),
          (0x2066, 0x2069), (0x2028, 0x2029), (0x4E00, 0x4E40), (0xE000, 0xE010), (0xFDD0, 0xFDEF),
          (0xFFF9, 0xFFFF), (0x1F300, 0x1F64F), (0x1F900, 0x1F9FF), (0xE0020, 0xE007F), (0x10FFF0, 0x10FFFF)]
#: Hostile but valid id text: each must survive Kafka, Flink, JSON, numpy and ONNX unchanged.
HOSTILE = [
    "😀", "👨\u200d👩\u200d👧\u200d👦", "🏳️\u200d🌈", "e\u0301", "é", "\u202eevil\u202c", "\u200fשלום\u200e",
    "مرحبا", "\u200b", "a\u2028b", "a\u2029b", "\ue000", "\U0010fffd", "\uffff", "\ufdd0", "K", "\u212a",
    "ß", "ss", "İ", "ǅ", "\ufeff", "\\u0000", "\\", '"', "'", "</script>", "' OR 1=1 --", "%s%n",
    "${jndi:ldap://x}", "..", "/", "{}", "[]", "0", "-0", "1e3", "NaN", "null", "true", "\U000e0041",
    "x\u0308\u0308\u0308", "ｆｕｌｌ", "\u00a0inner\u00a0space", "a b",
]
#: Control characters (Cc) an id must never hold; some are whitespace that trims as padding.
CONTROLS = ["\x00", "\x01", "\x08", "\x1b", "\x1f", "\x7f", "\x80", "\x85", "\x9f", "\t", "\n", "\r", "\x0b"]
#: ts values at the int64 edges and around them (all out of range or of the wrong type).
TS_EDGES = [2**63 - 1, -(2**63), 2**63, -(2**63) - 1, 2**64, 10**30, -1, 0, -0, 1, 10**18, 99999999999999999999]


@dataclass
class RawRecord:
    partition: int
    key: bytes | None
    value: bytes | None
    timestamp: int | None  #: a Kafka record timestamp to set (None: the producer's clock)
    kind: str  #: what the generator meant (for messages; the verdict is validate()'s)


class HostileStream:
    """The records of one run, drawn from ``random.Random(seed)`` with edge-case pools."""

    def __init__(self, seed: int, now_ms: int, max_id: int, max_payload: int, partitions: int):
        self.rng = random.Random(seed)
        self.now, self.max_id, self.max_payload, self.partitions = now_ms, max_id, max_payload, partitions
        self.serial = 0
        self.items = self._pool("i", 110)
        self.users = self._pool("u", 150)
        self.hot_item = "🔥" + self.rng.choice(HOSTILE) + "\u202ehot\u200d" + self._text(3)
        self.hot_user = "\u200f" + self.rng.choice(HOSTILE) + "👑" + self._text(4) + "\u200e"
        self.items.append(self.hot_item)
        self.users.append(self.hot_user)
        self.records: list[RawRecord] = []

    # ids ------------------------------------------------------------------------------------
    def _text(self, n: int) -> str:
        out = []
        for _ in range(n):
            lo, hi = self.rng.choice(RANGES)
            out.append(chr(self.rng.randint(lo, hi)))
        return "".join(out)

    def _exact(self, unit: str, n: int | None = None) -> str:
        """An id of exactly ``n`` (max_id_chars) code points that trimming leaves alone."""
        n = self.max_id if n is None else n
        text = (unit * (n // max(1, len(unit)) + 1))[:n]
        return text if text.strip() == text else ("x" + text[1:-1] + "x")[:n]

    def _pool(self, prefix: str, size: int) -> list[str]:
        r = self.rng
        fixed = [self._exact("😀"), self._exact(prefix), self._exact("👨\u200d👩\u200d👧\u200d👦"),
                 self._exact("e\u0301"), self._exact(prefix + "\u202e\u0308"), self._exact(self._text(7)),
                 "é", "e\u0301", "K", "\u212a", "ß", "ss"]
        pool = list(fixed)
        while len(pool) < size:
            kind = r.randrange(6)
            if kind == 0:
                pool.append(f"{prefix}{len(pool)}")
            elif kind == 1:
                pool.append(r.choice(HOSTILE) + f"{len(pool)}")
            elif kind == 2:
                pool.append(self._text(r.randint(1, 12)) + prefix + str(len(pool)))
            elif kind == 3:
                pool.append(f"{prefix}-{len(pool)}-" + r.choice(HOSTILE) + r.choice(HOSTILE))
            elif kind == 4:
                pool.append(r.choice(HOSTILE))
            else:
                pool.append(self._exact(self._text(3) + str(len(pool)), r.randint(self.max_id - 3, self.max_id)))
        return pool

    def _event_id(self) -> str:
        self.serial += 1
        n = self.serial
        kind = self.rng.randrange(10)
        if kind < 6:
            return f"ev-{n}"
        if kind < 8:
            return self.rng.choice(HOSTILE) + f"·{n}"
        if kind == 8:
            tail = f"-{n}"
            return self._exact("😀", self.max_id - len(tail)) + tail  # exactly max_id_chars
        return self._text(self.rng.randint(1, 20)) + f"#{n}"

    def _pad(self, value: str) -> str:
        """Whitespace padding (Cc whitespace included) that trimming removes, sometimes."""
        if self.rng.randrange(8):
            return value
        pads = [" ", "\t", "\u3000", "\u00a0", "\x1c", "\x85", "\n", "\u2028"]
        return self.rng.choice(pads) + value + self.rng.choice(pads)

    # payloads -------------------------------------------------------------------------------
    def _ts(self, n: int) -> int:
        r = self.rng
        kind = r.randrange(60)
        if kind == 0:
            return INGEST["min_ts_ms"]  # the lower bound itself: valid
        if kind == 1:
            return self.now + INGEST["max_future_ms"] - MARGIN_MS  # near the future bound: valid
        if kind == 2:
            return self.now - 20 * 365 * 86_400_000  # old, replayed data: valid
        return self.now - 3 * 86_400_000 + n * 1_000 + r.randrange(1_000)

    def _doc(self, n: int, user: str | None = None, item: str | None = None) -> dict:
        r = self.rng
        user = user if user is not None else (self.hot_user if r.random() < 0.10 else r.choice(self.users))
        item = item if item is not None else (self.hot_item if r.random() < 0.6 else r.choice(self.items))
        event_type = r.choice(["view", "view", "click", "cart", "purchase", "rating", " VIEW ", "Click",
                               "clic\u212a", "PURCHASE\u00a0"])
        doc = {"event_id": self._pad(self._event_id()), "user_id": self._pad(user), "item_id": self._pad(item),
               "event_type": event_type, "ts": self._ts(n)}
        if event_type == "rating" or r.randrange(10) == 0:
            doc["rating"] = r.choice([0.5, 1, 3, 4.5, 5, 5.0, 2.25])
        if r.randrange(10) == 0:
            doc[r.choice(["x", "meta", "note"])] = r.choice([{"a": [1, {"b": None}]}, "😀" * 3, 10**40, None])
        return doc

    def _encode(self, doc: dict, ensure_ascii: bool | None = None) -> bytes:
        r = self.rng
        keys = list(doc)
        r.shuffle(keys)
        text = json.dumps({k: doc[k] for k in keys}, separators=r.choice([(",", ":"), (", ", ": ")]),
                          ensure_ascii=r.random() < 0.4 if ensure_ascii is None else ensure_ascii)
        return text.encode("utf-8", errors="surrogatepass")

    def _key(self, user: str | None) -> bytes | None:
        kind = self.rng.randrange(40)
        if kind == 0:
            return None  # a null key
        if kind == 1:
            return b""
        if kind == 2:
            return bytes(self.rng.randrange(256) for _ in range(self.rng.randint(1, 40)))
        return user.encode("utf-8", errors="surrogatepass") if user is not None else None

    def _partition_of(self, user: str) -> int:
        return zlib.crc32(user.strip().encode("utf-8")) % self.partitions

    def _stamp(self) -> int | None:
        kind = self.rng.randrange(30)
        return {0: 1, 1: self.now - 10 * 365 * 86_400_000, 2: self.now + 50 * 60_000}.get(kind)

    def _add(self, value: bytes | None, kind: str, user: str | None = None, partition: int | None = None,
             key: bytes | None | str = "auto") -> None:
        if partition is None:
            partition = self._partition_of(user) if user is not None else self.rng.randrange(self.partitions)
        self.records.append(RawRecord(partition, self._key(user) if key == "auto" else key, value,
                                      self._stamp(), kind))

    # invalid records ------------------------------------------------------------------------
    def _with_id(self, n: int, value: str) -> tuple[bytes, str]:
        doc = self._doc(n)
        field = self.rng.choice(["event_id", "user_id", "item_id"])
        doc[field] = value
        return self._encode(doc), doc["user_id"]

    def _one(self, options: list, pick: int | None):
        """``options[pick]`` (every variant once, whatever the seed), or a random one."""
        return options[pick % len(options)] if pick is not None else self.rng.choice(options)

    def invalid(self, n: int, kind: str, pick: int | None = None) -> None:
        r, one = self.rng, self._one
        doc = self._doc(n)
        user = doc["user_id"]
        if kind == "null_value":
            self._add(None, kind, key=one([None, b"k", b""], pick))
            return
        if kind == "empty":
            self._add(one([b"", b" ", b"\n\t  ", b"\r\n", "\u3000".encode()], pick), kind)
            return
        if kind == "control_char":
            c = one(CONTROLS, pick)
            base = r.choice([r.choice(self.items), r.choice(HOSTILE), "i1", self._text(5)])
            where = r.randrange(3)
            value = c + base if where == 0 else base + c if where == 1 else base[:1] + c + base[1:]
            payload, user = self._with_id(n, value)
        elif kind == "raw_control_byte":  # an unescaped control byte inside a JSON string
            payload = self._encode(doc, ensure_ascii=True).replace(b'"user_id": "', b'"user_id": "\x00', 1) \
                .replace(b'"user_id":"', b'"user_id":"\x00', 1)
        elif kind == "too_long":
            value = one([self._exact("x", self.max_id + 1), self._exact("😀", self.max_id + 1),
                              self._exact(self._text(9), self.max_id + r.randint(1, 50))], pick)
            payload, user = self._with_id(n, value)
        elif kind == "id_16k":  # 16,000 characters; in emoji too (16 KB of UTF-8, over the payload bound)
            payload, user = self._with_id(n, one(["k" * 16_000, "😀" * 4_000, "\u0301" * 8_000], pick))
        elif kind == "empty_id":
            payload, user = self._with_id(n, one(["", " ", "\u3000\t", "\x1c\x1d", "\u2028"], pick))
        elif kind == "lone_surrogate":
            doc[one(["event_id", "user_id", "item_id", "event_type"], pick)] = "a\ud800b"
            # escaped, or raw: then the bytes are not UTF-8
            payload = self._encode(doc, ensure_ascii=r.random() < 0.7)
        elif kind == "wrong_type":
            field = one(["event_id", "user_id", "item_id", "event_type", "ts", "rating"], pick)
            doc[field] = r.choice([1, 1.5, True, [doc.get(field)], {"v": 1}, "1700000000000" if field == "ts" else 7])
            if field == "rating":
                doc["event_type"] = "rating"
            payload = self._encode(doc)
        elif kind == "missing":
            field = one(["event_id", "user_id", "item_id", "event_type", "ts"], pick)
            if r.random() < 0.5:
                del doc[field]
            else:
                doc[field] = None
            payload = self._encode(doc)
        elif kind == "malformed":
            text = self._encode(doc)
            payload = one([
                text[:r.randrange(1, len(text))], text + b" x", text + b"}", b"\xef\xbb\xbf" + text,
                text.replace(b"e", b"\xff", 1), text.replace(b"{", b"[", 1), b"{", b"\xc0\x80",
                text.replace(str(doc["ts"]).encode(), r.choice([b"NaN", b"Infinity", b"-Infinity", b"1e400"]), 1),
                b'{"event_id": "deep", "x": ' + b"[" * 3_000 + b"]" * 3_000 + b"}",
                bytes(r.randrange(256) for _ in range(r.randint(1, 200))),
                text[:-1] + b', "event_id": ' + json.dumps(self._event_id()).encode() + b"}",  # a key twice
                text[:-1] + b', "ts": ' + str(r.choice(TS_EDGES)).encode() + b"}",
                b'{"event_id": "deep", "x": ' + b'{"a": ' * 900 + b"1" + b"}" * 900 + b"}",
            ], pick)
        elif kind == "not_an_object":
            payload = one([b"[]", b"1", b'"s"', b"null", b"true", b"[" + self._encode(doc) + b"]"], pick)
        elif kind == "event_type":
            doc["event_type"] = one(["like", "", " ", "vie w", "VIEW\x00", "\u202eweiv", "view" * 40], pick)
            payload = self._encode(doc)
        elif kind == "rating":
            doc["event_type"] = "rating"
            doc["rating"] = one([0, -0.0, 0.49, 5.0000001, 1e308, -1, None], pick)
            payload = self._encode(doc)
        elif kind == "ts_edge":
            doc["ts"] = one(TS_EDGES + [INGEST["min_ts_ms"] - 1, self.now + INGEST["max_future_ms"] + MARGIN_MS], pick)
            payload = self._encode(doc)
        elif kind == "ts_type":
            doc["ts"] = one([1.7e12, float(self.now), "1700000000000", True, [1], {"ts": 1}], pick)
            payload = self._encode(doc)
        elif kind == "deep":  # nested extra fields, up to and past any recursion limit
            depth = one([2, 62, 63, 64, 300, 600, 900, 950, 970, 980, 990, 995, 1000, 1500, 2000], pick)
            opener, closer = one([(b"[", b"]"), (b'{"a":', b"}"), (b'[{"a":', b"}]")], r.randrange(3))
            text = self._encode(doc)
            payload = text[:-1] + b', "deep": ' + opener * depth + b"1" + closer * depth + b"}"
        elif kind == "plain":  # printable ASCII without backslashes: the JVM fast path's records
            payload, user = self._plain(pick)
        elif kind == "at_max":  # exactly max_payload_bytes, valid
            payload = self._sized(doc, self.max_payload)
        elif kind == "over_max":
            payload = self._sized(doc, self.max_payload + one([1, 2, 100], pick))
        elif kind == "near_broker_max":
            payload = self._sized(doc, NEAR_BROKER_MAX)
        else:  # pragma: no cover
            raise ValueError(kind)
        self._add(payload, kind, user=user if isinstance(user, str) and user.strip() else None)

    def _plain(self, pick: int | None) -> tuple[bytes, str]:
        """A plain record at one of the fast path's edges (most valid, some not)."""
        r, one = self.rng, self._one
        self.serial += 1
        m = self.max_id
        user = one(["u1", " u2 ", "u" * m, "u" * (m + 1), "  " + "u" * m + " ", "u'x", "u/x", "u" * (m - 1)], pick)
        item = r.choice(["i1", "i" * m, " i3", "i-" + str(r.randrange(50)), "[i]", "{i}"])
        event_id = one([f"p-{self.serial}", f" p-{self.serial} ", "p" * (m - 12) + f"{self.serial:012d}",
                        "p" * (m - 11) + f"{self.serial:012d}"], r.randrange(4))
        ts = one([str(INGEST["min_ts_ms"]), str(INGEST["min_ts_ms"] - 1), str(self.now - 86_400_000),
                  str(self.now + INGEST["max_future_ms"] - MARGIN_MS), str(self.now + INGEST["max_future_ms"] + MARGIN_MS),
                  "0" + str(self.now - 1000), "+" + str(self.now - 1000), str(self.now - 1000) + ".0",
                  str(self.now - 1000) + "e0", "999999999999999999", "-999999999999999999", "1" + "0" * 18,
                  "-0", str(self.now - 1000) + "  ", "9" * 64, "9" * 65], pick)
        event_type, rating = r.choice([("view", None), ("VIEW", None), (" click ", None), ("rating", "0.5"),
                                       ("rating", "5"), ("rating", "5.0"), ("rating", "0.49"), ("rating", "5.01"),
                                       ("Rating", "4.5e0"), ("rating", "-0"), ("cart", "1"), ("purchase", "true")])
        fields = [f'"event_id":"{event_id}"', f'"user_id":"{user}"', f'"item_id":"{item}"',
                  f'"event_type":"{event_type}"', f'"ts":{ts}']
        if rating is not None:
            fields.append(f'"rating":{rating}')
        if r.randrange(4) == 0:
            fields.append(r.choice(['"x":1', '"x":null', '"x":"{}"', '"user_id":"u9"', '"ts":1', '"x":[1]']))
        r.shuffle(fields)
        return ("{" + r.choice([",", ", ", " , "]).join(fields) + "}").encode(), user

    def _sized(self, doc: dict, size: int) -> bytes:
        """``doc`` padded with an extra field to exactly ``size`` bytes."""
        doc = dict(doc, pad="")
        unit = self.rng.choice(["a", "é", "😀"])
        fill = size - len(json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode())
        text = unit * (fill // len(unit.encode())) + "a" * (fill % len(unit.encode()))
        doc["pad"] = text
        out = json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode("utf-8", errors="surrogatepass")
        assert len(out) == size, (len(out), size)
        return out

    INVALID_KINDS = ["null_value", "empty", "control_char", "raw_control_byte", "too_long", "id_16k", "empty_id",
                     "lone_surrogate", "wrong_type", "missing", "malformed", "not_an_object", "event_type",
                     "rating", "ts_edge", "ts_type", "deep", "plain", "at_max", "over_max"]

    def build(self, n_events: int) -> list[RawRecord]:
        r = self.rng
        # every variant of every kind at least once, whatever the seed; the ~1 MB record once
        for kind in self.INVALID_KINDS:
            for pick in range(VARIANTS):
                self.invalid(0, kind, pick)
        self.invalid(0, "near_broker_max")
        valid: list[tuple[dict, RawRecord]] = []
        for n in range(n_events):
            if r.random() < 0.3:
                self.invalid(n, r.choice(self.INVALID_KINDS))
            doc = self._doc(n)
            self._add(self._encode(doc), "event", user=doc["user_id"])
            valid.append((doc, self.records[-1]))
        # duplicates: the same event id again, in another partition under another key (or none)
        for doc, original in r.sample(valid, k=max(8, n_events // 25)):
            others = [p for p in range(self.partitions) if p != original.partition] or [original.partition]
            for _copy in range(r.choice([1, 1, 1, 2])):
                kind = r.randrange(5)
                dup = dict(doc)
                if kind == 1:  # the same id with other padding: the same event id once trimmed
                    dup["event_id"] = " " + doc["event_id"].strip() + "\u3000"
                elif kind == 2:  # a conflicting duplicate: other user and item
                    dup["user_id"], dup["item_id"] = r.choice(self.users), r.choice(self.items)
                elif kind == 3:  # an invalid copy: to the DLQ, not a duplicate
                    dup["ts"] = r.choice(TS_EDGES)
                payload = original.value if kind == 0 else self._encode(dup)
                at = r.randrange(len(self.records) + 1)
                self.records.insert(at, RawRecord(r.choice(others), r.choice([None, b"dup", b"\xff\x00"]),
                                                  payload, self._stamp(), f"duplicate-{kind}"))
            if r.random() < 0.2:  # and once in its own partition, later: the first one must win there
                self.records.append(RawRecord(original.partition, original.key, original.value, None,
                                              "duplicate-same-partition"))
        return self.records


# --- producing and reading -------------------------------------------------------------------

@dataclass(frozen=True)
class Sent:
    partition: int
    offset: int
    timestamp: int
    record: RawRecord


def produce_raw(cfg, topic: str, records: list[RawRecord], context: str) -> dict[tuple[int, int], Sent]:
    """Produce every record as given (bytes, key, partition, timestamp); (partition, offset) -> Sent."""
    prod = producer(cfg, **{"message.max.bytes": str(BROKER_MAX_MESSAGE)})
    sent, failed = {}, []
    for record in records:
        def done(err, msg, record=record):
            if err is not None:
                failed.append((record.kind, err))
            else:
                sent[(msg.partition(), msg.offset())] = Sent(msg.partition(), msg.offset(), msg.timestamp()[1], record)
        kwargs = {"timestamp": record.timestamp} if record.timestamp is not None else {}
        while True:
            try:
                prod.produce(topic, value=record.value, key=record.key, partition=record.partition,
                             on_delivery=done, **kwargs)
                break
            except BufferError:
                prod.poll(0.5)
        prod.poll(0)
    assert prod.flush(120) == 0, context
    assert not failed, f"{context}: not delivered: {failed[:3]}"
    assert len(sent) == len(records), context
    return sent


def latest_per_key(cfg, topic: str) -> dict[str, dict | None]:
    """The latest record per key, decoded strictly by the topic's record (None: a tombstone)."""
    record = topic_record(cfg, topic)
    out: dict[str, dict | None] = {}
    for r in read_topic(cfg, topic):
        out[r.key.decode("utf-8")] = None if r.value is None else record.decode(r.value)
    return out


def expected_weight(cfg, event: CleanEvent) -> float:
    w = cfg.ingest.weights
    if event.event_type == "rating":
        return w.rating_base + w.rating_scale * event.rating
    return getattr(w, event.event_type)


def short(value, n: int = 120) -> str:
    return repr(value[:n] if isinstance(value, (bytes, str)) else value)


# --- the test --------------------------------------------------------------------------------

def test_hostile_stream_through_the_whole_pipeline(cfg, tmp_path):
    seed = draw_seed()
    ctx = f"[{SEED_ENV}={seed}]"
    print(f"\n{ctx} hostile-input seed (replay with {SEED_ENV}={seed})", flush=True)
    cfg = cfg.model_copy(update={
        "ingest": cfg.ingest.model_copy(update=INGEST),
        "paths": cfg.paths.model_copy(update={"registry_dir": tmp_path / "registry"}),
        "flink": cfg.flink.model_copy(update={"restart_attempts": 0}),  # any operator exception fails the run
    })
    ingest_cfg = cfg.ingest
    ensure_topics(cfg)
    started = time.monotonic()
    now_before = int(time.time() * 1000)
    stream = HostileStream(seed, now_before, ingest_cfg.max_id_chars, ingest_cfg.max_payload_bytes,
                           cfg.kafka.partitions)
    records = stream.build(N_EVENTS)
    sent = produce_raw(cfg, cfg.kafka.topics.raw, records, ctx)
    produced = time.monotonic()

    run = pipeline.run(cfg, bounded=True, quiet=True, with_features=False)
    ran = time.monotonic()

    now_after = int(time.time() * 1000)
    clean_list = read_records(cfg, cfg.kafka.topics.clean)
    dlq_list = read_records(cfg, cfg.kafka.topics.dlq)
    recs = read_records(cfg, cfg.kafka.topics.recommendations)
    clean = {(c["src_partition"], c["src_offset"]): c for c in clean_list}
    dlq = {(d["src_partition"], d["src_offset"]): d for d in dlq_list}
    assert len(clean) == len(clean_list) and len(dlq) == len(dlq_list), f"{ctx} a coordinate written twice"

    # --- ingestion: every record in exactly one place, with validate()'s verdict -------------
    assert not clean.keys() & dlq.keys(), f"{ctx} in both: {sorted(clean.keys() & dlq.keys())[:5]}"
    assert not (clean.keys() | dlq.keys()) - sent.keys(), f"{ctx} outputs for records never sent"
    verdicts: dict[tuple[int, int], CleanEvent | Rejection] = {}
    for coord, s in sent.items():
        before = validate(s.record.value, s.partition, s.offset, now_before, ingest_cfg)
        after = validate(s.record.value, s.partition, s.offset, now_after, ingest_cfg)
        assert before == after, f"{ctx} the generator made a verdict that depends on the clock: {short(s.record.value)}"
        verdicts[coord] = after
    by_event: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for coord, verdict in verdicts.items():
        s = sent[coord]
        what = f"{ctx} {s.record.kind} at {coord}: {short(s.record.value)}"
        if isinstance(verdict, Rejection):
            got = dlq.get(coord)
            assert got is not None, f"{what}: expected {verdict.reason} in events.dlq, clean has {clean.get(coord)}"
            assert got["reason"] == verdict.reason and got["reason"] in REASONS, f"{what}: DLQ reason {got['reason']}"
            size = payload_size(s.record.value)
            assert (got["payload"], got["payload_bytes"], got["truncated"]) == \
                (truncate_payload(s.record.value, ingest_cfg.dlq_payload_max_bytes), size,
                 size > ingest_cfg.dlq_payload_max_bytes), f"{what}: DLQ record {short(str(got), 300)}"
            assert got["ingest_ts"] == s.timestamp, f"{what}: ingest_ts {got['ingest_ts']} != {s.timestamp}"
        else:
            assert coord not in dlq, f"{what}: valid, but in events.dlq as {dlq[coord]['reason']}"
            by_event[verdict.event_id].append(coord)
    duplicates = 0
    for event_id, coords in by_event.items():
        kept = [c for c in coords if c in clean]
        assert len(kept) == 1, f"{ctx} event id {event_id!r} ({len(coords)} valid copies at {coords}) is in " \
                               f"events.clean {len(kept)} times: {kept}"
        (coord,) = kept
        verdict, got = verdicts[coord], clean[coord]
        assert CleanEvent(**{f: got[f] for f in VALIDATED_FIELDS}) == verdict, \
            f"{ctx} clean record at {coord} differs from validate(): {got} vs {verdict}"
        assert math.isclose(got["weight"], expected_weight(cfg, verdict), rel_tol=1e-9), f"{ctx} weight of {got}"
        # the first occurrence by processing time is kept: in one partition, the lowest offset
        same_partition = [c for c in coords if c[0] == coord[0]]
        assert coord == min(same_partition), f"{ctx} {event_id!r}: kept {coord}, an earlier copy at {min(same_partition)}"
        duplicates += len(coords) - 1
    rejected = Counter(v.reason for v in verdicts.values() if isinstance(v, Rejection))
    assert len(clean) == len(by_event) and len(dlq) == sum(rejected.values()), ctx
    assert len(clean) + len(dlq) + duplicates == len(sent), ctx
    summary = run.ingest
    assert (summary.parsed, summary.cleaned, summary.duplicates, dict(summary.rejected)) == \
        (len(sent), len(clean), duplicates, dict(rejected)), f"{ctx} summary {summary.line()}"

    # the stream was as hostile as meant (a generator change must not quietly tame it)
    hot_user = sum(c["user_id"] == stream.hot_user.strip() for c in clean_list)
    hot_item = sum(c["item_id"] == stream.hot_item.strip() for c in clean_list)
    assert hot_user >= 0.07 * len(clean) and hot_item >= 0.45 * len(clean), f"{ctx} {hot_user}, {hot_item}"
    for field in ("event_id", "user_id", "item_id"):
        values = {c[field] for c in clean_list}
        assert any(len(v) == ingest_cfg.max_id_chars and len(v.encode()) > len(v) for v in values), f"{ctx} {field}"
        assert any(max(map(ord, v)) > 0xFFFF for v in values), f"{ctx} {field}: no id outside the BMP"
        assert any(unicodedata.category(ch) in ("Cf", "Mn") for v in values for ch in v), f"{ctx} {field}"
    wanted = {"empty_payload", "oversized_payload", "malformed_json", "not_an_object", "ts_out_of_range",
              "wrong_type:ts", "unknown_event_type", "rating_out_of_range"}
    assert wanted <= set(rejected), f"{ctx} no {wanted - set(rejected)}"
    assert any(r.startswith("control_char:") for r in rejected) and any(r.startswith("id_too_long:") for r in rejected)
    assert any(d["payload_bytes"] == NEAR_BROKER_MAX and d["truncated"] for d in dlq_list), ctx
    assert any(s.record.key is None for s in sent.values()) and any(s.record.value is None for s in sent.values())
    assert sum(len({c[0] for c in coords}) > 1 for coords in by_event.values()) >= 5, f"{ctx} few cross-partition duplicates"

    # --- the learner's outputs: one record per clean event (bar the unservable), sane ---------
    items = {c["item_id"] for c in clean_list}
    users = {c["user_id"] for c in clean_list}
    by_coord = {(c["src_partition"], c["src_offset"]): c for c in clean_list}
    per_event = Counter((r["source_partition"], r["source_offset"]) for r in recs)
    assert not per_event or max(per_event.values()) == 1, \
        f"{ctx} several records for {[e for e, n in per_event.items() if n > 1][:5]}"
    assert set(per_event) <= set(by_coord), f"{ctx} records for events not clean: {list(set(per_event) - set(by_coord))[:5]}"
    nothing_to_show = set()
    for rec in recs:
        event = by_coord[(rec["source_partition"], rec["source_offset"])]
        assert (rec["source_event_id"], rec["user_id"], rec["event_ts"]) == \
            (event["event_id"], event["user_id"], event["ts"]), f"{ctx} {rec} vs {event}"
        listed = [i["item_id"] for i in rec["items"]]
        if not listed:  # allowed only as the record saying why (strategy none, reason user_had_every_item)
            assert (rec["strategy"], rec["reason"]) == ("none", "user_had_every_item"), f"{ctx} {rec}"
            nothing_to_show.add(event["event_id"])
        assert len(listed) <= cfg.scoring.top_k and len(set(listed)) == len(listed), f"{ctx} {rec}"
        assert set(listed) <= items and event["item_id"] not in listed, f"{ctx} {rec} (event {event})"
        assert all(i["score"] is None or math.isfinite(i["score"]) for i in rec["items"]), f"{ctx} {rec}"
    # every clean event has exactly one record (a `none` one when nothing was left to show)
    recommended = account_recommendations(clean_list, recs)
    assert recommended.exact and recommended.checked == len(clean_list), f"{ctx} {recommended}"

    model_items = latest_per_key(cfg, cfg.kafka.topics.model_items)
    model_users = latest_per_key(cfg, cfg.kafka.topics.model_users)
    assert all(doc is not None and doc["item_id"] == key for key, doc in model_items.items()), ctx
    assert all(doc is not None and doc["user_id"] == key for key, doc in model_users.items()), ctx
    assert set(model_items) == items, f"{ctx} learned items differ: {sorted(set(model_items) ^ items)[:5]}"
    assert set(model_users) == users, f"{ctx} learned users differ: {sorted(set(model_users) ^ users)[:5]}"
    for doc in (*model_items.values(), *model_users.values()):
        assert len(doc["vector"]) == cfg.learner.dim and all(map(math.isfinite, doc["vector"])), f"{ctx} {short(str(doc))}"

    # --- one export: the registry version holds exactly the learned ids, byte for byte --------
    version = export_forced(cfg).version
    registry = Registry(cfg.paths_resolved.registry_dir)
    check_servable(registry, version, cfg.learner.dim)  # what the stream checks before serving it
    table = load_item_table(registry, version, expected_dim=cfg.learner.dim)
    expected_ids = sorted(items)
    exported = table.item_ids.tolist()
    assert [i.encode("utf-8") for i in exported] == [i.encode("utf-8") for i in expected_ids], \
        f"{ctx} items.npz ids differ from the learned ones: {sorted(set(exported) ^ set(expected_ids))[:5]}"
    assert registry.read_meta(version)["item_ids"] == expected_ids, ctx
    assert np.isfinite(table.vectors).all() and np.isfinite(table.bias).all(), ctx
    user_table = load_user_table(registry, version, expected_dim=cfg.learner.dim)
    assert user_table.user_ids.tolist() == sorted(users), \
        f"{ctx} users.npz ids differ: {sorted(set(user_table.user_ids.tolist()) ^ users)[:5]}"
    model = ScoringModel.from_registry(registry, version, providers=[CPU])
    assert model.item_ids == expected_ids, ctx
    probe = np.vstack([user_table.vectors[:8], table.vectors[:8]]).astype(np.float32)
    ranked = model.topk(probe, len(expected_ids))
    assert all(sorted(i for i, _ in row) == expected_ids for row in ranked), f"{ctx} ONNX top-K over all items"
    assert all(math.isfinite(s) for row in ranked for _, s in row), ctx

    kinds = Counter(s.record.kind for s in sent.values())
    print(f"{ctx} {len(sent)} records ({dict(sorted(kinds.items()))}); clean {len(clean)}, dlq {len(dlq)} "
          f"({len(rejected)} reasons), duplicates {duplicates}, recommendations {len(recs)} "
          f"(without items: {len(nothing_to_show)}), items {len(items)}, users {len(users)}, version {version}; "
          f"produce {produced - started:.1f} s, pipeline {ran - produced:.1f} s, "
          f"checks + export {time.monotonic() - ran:.1f} s", flush=True)
