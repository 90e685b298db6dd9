"""Deterministic, coordination-free initialisation of embeddings.

Every process (a Flink TaskManager, the exporter, an in-memory benchmark) must give an id it has
never seen the same starting vector, without asking anybody. The vector is therefore a pure
function of ``(key, dim, seed, scale)``: the bytes of BLAKE2b digests of the key (salted with the
seed and a block counter) read as little-endian uint32, mapped to uniform floats in
``[-scale*sqrt(3), scale*sqrt(3)]`` (standard deviation ``scale``). Only IEEE basic arithmetic is
involved, so the result is bit-identical on every platform.

Users and items live in separate name spaces: :func:`user_key` and :func:`item_key` prefix the
id, so user ``"7"`` and item ``"7"`` get unrelated vectors.

>>> v = init_vector("i:42", dim=4, seed=1, scale=0.1)
>>> v.dtype, v.shape
(dtype('float32'), (4,))
>>> bool((init_vector("i:42", 4, 1, 0.1) == v).all())
True
>>> bool((init_vector("i:43", 4, 1, 0.1) == v).all()), bool((init_vector("i:42", 4, 2, 0.1) == v).all())
(False, False)
>>> bool(abs(v).max() <= 0.1 * 3 ** 0.5)
True
"""

from __future__ import annotations

import hashlib
import math

import numpy as np

_BLOCK_WORDS = 16  # a 64-byte BLAKE2b digest holds 16 uint32 words
_INV_2_32 = 1.0 / 4294967296.0


def user_key(user_id: str) -> str:
    """The hashing key of a user id (name space ``u:``)."""
    return "u:" + str(user_id)


def item_key(item_id: str) -> str:
    """The hashing key of an item id (name space ``i:``)."""
    return "i:" + str(item_id)


def _digest_words(key: str, seed: int, n_words: int) -> np.ndarray:
    raw = bytearray()
    block = 0
    while len(raw) < 4 * n_words:
        h = hashlib.blake2b(digest_size=64, salt=_seed_salt(seed), person=block.to_bytes(16, "little"))
        h.update(key.encode("utf-8"))
        raw += h.digest()
        block += 1
    return np.frombuffer(bytes(raw[: 4 * n_words]), dtype="<u4")


def _seed_salt(seed: int) -> bytes:
    # BLAKE2b salt is at most 16 bytes; negative or big seeds are folded in two's complement.
    return (int(seed) & ((1 << 128) - 1)).to_bytes(16, "little")


def init_vector(key: str, dim: int, seed: int, scale: float) -> np.ndarray:
    """A float32 vector of length ``dim``, uniform with standard deviation ``scale``, fixed by
    ``(key, seed)``.

    >>> init_vector("u:1", 3, 0, 1.0).tolist() == init_vector("u:1", 3, 0, 1.0).tolist()
    True
    """
    if dim <= 0:
        raise ValueError(f"dim must be positive, got {dim}")
    words = _digest_words(key, seed, dim).astype(np.float64)
    unit = (words + 0.5) * _INV_2_32  # in (0, 1), exact in float64
    half_width = float(scale) * math.sqrt(3.0)
    return ((2.0 * unit - 1.0) * half_width).astype(np.float32)


def hash_uniforms(key: str, seed: int, n: int) -> np.ndarray:
    """``n`` deterministic floats in ``[0, 1)`` from ``(key, seed)`` (the per-event "RNG").

    Used for negative sampling: a Flink run and an in-memory run that see the same event id and
    the same item snapshot draw the same negatives.

    >>> a = hash_uniforms("event-1", 42, 5)
    >>> bool(((a >= 0) & (a < 1)).all()), a.tolist() == hash_uniforms("event-1", 42, 5).tolist()
    (True, True)
    >>> len(hash_uniforms("event-1", 42, 0))
    0
    """
    if n <= 0:
        return np.zeros(0, dtype=np.float64)
    words = _digest_words("neg:" + key, seed, 2 * n)
    hi = words[1::2].astype(np.uint64) << np.uint64(32)
    full = hi | words[0::2].astype(np.uint64)
    # top 53 bits -> exactly representable double in [0, 1)
    return (full >> np.uint64(11)).astype(np.float64) * (1.0 / 9007199254740992.0)
