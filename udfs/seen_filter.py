"""A user's whole history in fixed memory: a Bloom filter of the items the user has had.

Recommendations exclude everything a user already interacted with, not only the last
``learner.recent_items``. An exact set grows with the history (a heavy user of a 10k-item stream
has thousands of items); a Bloom filter of ``bits`` bits and ``hashes`` hash functions never grows:
it answers "seen" for every item really added (never shows an item the user had) and, for an
item not added, wrongly answers "seen" with probability about ``(1 - exp(-hashes * n / bits))^hashes``
after ``n`` distinct items (:func:`false_positive_rate`). With the defaults (32,768 bits = 4 KiB,
4 hashes): 0.017 % at 1,000 items, 0.88 % at 3,000: those unseen items are left out of the list,
which costs at most that share of the candidates, never a repeat.

Bit positions are double hashing of the item id's BLAKE2b digest, a pure function of the id, so
every process (a Flink TaskManager after a restore, a test) computes the same filter.

>>> f = SeenFilter.empty(bits=1024, hashes=3)
>>> f = f.add("i1").add("i2").add("i1")
>>> f.count, "i1" in f, "i2" in f, "i3" in f
(2, True, True, False)
>>> SeenFilter.from_bytes(f.to_bytes()) == f
True
>>> positions = item_positions(["i1", "i3"], bits=1024, hashes=3)
>>> f.contains_positions(positions).tolist()
[True, False]
"""

from __future__ import annotations

import hashlib
import math
import struct
from dataclasses import dataclass
from typing import Sequence

import numpy as np

_HEAD = struct.Struct("<BIBI")  # format version, bits, hashes, count
_FORMAT = 1


def item_positions(item_ids: Sequence[str], bits: int, hashes: int) -> np.ndarray:
    """Bit positions ``int64 [len(item_ids), hashes]`` of each id (double hashing)."""
    out = np.empty((len(item_ids), hashes), dtype=np.int64)
    steps = np.arange(hashes, dtype=np.uint64)
    for n, item in enumerate(item_ids):
        digest = hashlib.blake2b(str(item).encode("utf-8"), digest_size=16, person=b"streamrec-seen").digest()
        h1, h2 = struct.unpack("<QQ", digest)
        h2 |= 1  # odd: the probe sequence visits distinct positions
        out[n] = ((np.uint64(h1) + steps * np.uint64(h2)) % np.uint64(bits)).astype(np.int64)
    return out


def false_positive_rate(distinct_items: int, bits: int, hashes: int) -> float:
    """Expected share of unseen items reported seen after ``distinct_items`` additions.

    >>> round(false_positive_rate(1000, 32768, 4), 5), round(false_positive_rate(3000, 32768, 4), 4)
    (0.00017, 0.0088)
    """
    return (1.0 - math.exp(-hashes * distinct_items / bits)) ** hashes


@dataclass(frozen=True)
class SeenFilter:
    """Immutable: :meth:`add` returns a new filter (a recommendation keeps the filter of its time)."""

    bits: int
    hashes: int
    words: bytes  #: the bit array, ``bits / 8`` bytes
    count: int = 0  #: distinct items added (an id already present, or a false positive, is not counted)

    @classmethod
    def empty(cls, bits: int, hashes: int) -> "SeenFilter":
        if bits < 64 or bits % 8:
            raise ValueError(f"a seen filter needs a multiple of 8 bits, at least 64; got {bits}")
        if not 1 <= hashes <= 16:
            raise ValueError(f"a seen filter needs 1 to 16 hashes, got {hashes}")
        return cls(bits, hashes, bytes(bits // 8), 0)

    def add(self, item_id: str) -> "SeenFilter":
        return self.add_positions(item_positions([item_id], self.bits, self.hashes)[0])

    def add_positions(self, positions: np.ndarray) -> "SeenFilter":
        words = bytearray(self.words)
        new = False
        for pos in positions.tolist():
            byte, bit = pos >> 3, 1 << (pos & 7)
            if not words[byte] & bit:
                words[byte] |= bit
                new = True
        return SeenFilter(self.bits, self.hashes, bytes(words), self.count + (1 if new else 0))

    def __contains__(self, item_id: object) -> bool:
        return bool(self.contains_positions(item_positions([str(item_id)], self.bits, self.hashes))[0])

    def contains_positions(self, positions: np.ndarray) -> np.ndarray:
        """Membership of each row of ``positions`` (from :func:`item_positions`), vectorised."""
        words = np.frombuffer(self.words, dtype=np.uint8)
        hit = (words[positions >> 3] >> (positions & 7).astype(np.uint8)) & 1
        return hit.all(axis=-1)

    def to_bytes(self) -> bytes:
        return _HEAD.pack(_FORMAT, self.bits, self.hashes, self.count) + self.words

    @classmethod
    def from_bytes(cls, data: bytes) -> "SeenFilter":
        version, bits, hashes, count = _HEAD.unpack_from(data, 0)
        if version != _FORMAT:
            raise ValueError(f"unknown seen-filter format version {version} (this code reads {_FORMAT})")
        words = bytes(data[_HEAD.size:])
        if len(words) * 8 != bits:
            raise ValueError(f"seen filter record has {len(words)} bytes of bits, expected {bits // 8}")
        return cls(bits, hashes, words, count)
