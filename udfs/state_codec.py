"""Byte encodings of the learner's small keyed states; the big ones are beside their types
(:func:`udfs.shard_model.encode_user`, :data:`udfs.minibatch_mf.ITEM_FORMAT`).

Keyed state is never pickled (issue 32): restoring a checkpoint must not run code, so every
state value is plain bytes whose first byte names its format, and a decoder refuses a format it
does not know, a pickle included, without looking further.

The ``changelog`` state (what changed since the last changelog flush) is format 1: the format
byte, then the JSON array ``[item ids, user ids, last flush ms]``. JSON because ids are arbitrary
Unicode strings (separators, NUL, lone surrogates: ``ensure_ascii`` escapes them all) and
because CPython's C codec is the cheapest plain encoding of thousands of short strings at hand.

>>> raw = encode_changelog({"i,1", "i\\x002"}, {"u😀"}, 1_700_000_000_000)
>>> raw[:1], decode_changelog(raw) == ({"i,1", "i\\x002"}, {"u😀"}, 1_700_000_000_000)
(b'\\x01', True)
>>> decode_changelog(encode_changelog(set(), set(), 0))
(set(), set(), 0)
>>> import pickle
>>> decode_changelog(pickle.dumps((set(), set(), 0)))
Traceback (most recent call last):
...
ValueError: the learner's changelog state is a pickle (format byte 0x80): written by streamrec before its state formats were plain bytes; this code never unpickles state. Resume with the code that wrote it, or start over with `streamrec run --fresh`
"""

from __future__ import annotations

import json

import orjson

__all__ = ["CHANGELOG_FORMAT", "encode_changelog", "decode_changelog", "refuse_unknown_format"]

CHANGELOG_FORMAT = 1
#: The first byte of a pickle of protocol 2 or later (what ``Types.PICKLED_BYTE_ARRAY`` stored).
PICKLE_PROTOCOL_BYTE = 0x80
_JSON = json.JSONEncoder(separators=(",", ":"))  # ensure_ascii: any str, ASCII out
_FORMAT_BYTE = bytes((CHANGELOG_FORMAT,))


def encode_changelog(items: set[str], users: set[str], last_flush_ms: int) -> bytes:
    """The ``changelog`` state value: the ids changed since the flush at ``last_flush_ms``.

    Written on every batch (the sets grow until the flush), so by orjson (UTF-8); an id orjson
    refuses (a lone surrogate) by the json module (ASCII escapes). Both read back the same.

    >>> lone = "u" + chr(0xD800)
    >>> decode_changelog(encode_changelog({"i1"}, {lone}, 5)) == ({"i1"}, {lone}, 5)
    True
    """
    body = [list(items), list(users), last_flush_ms]
    try:
        return _FORMAT_BYTE + orjson.dumps(body)
    except TypeError:
        return _FORMAT_BYTE + _JSON.encode(body).encode("ascii")


def decode_changelog(data: bytes) -> tuple[set[str], set[str], int]:
    """``(item ids, user ids, last flush ms)`` of :func:`encode_changelog`; a ``ValueError`` that
    says what it found for anything else.

    >>> decode_changelog(b"\\x07[]")
    Traceback (most recent call last):
    ...
    ValueError: the learner's changelog state has format byte 0x07; this code reads format 1
    >>> decode_changelog(b'\\x01[["a"],["b"]]')
    Traceback (most recent call last):
    ...
    ValueError: the learner's changelog state (format 1) is malformed: expected [item ids, user ids, last flush ms]
    """
    refuse_unknown_format(data, CHANGELOG_FORMAT, "the learner's changelog state")
    try:
        try:
            items, users, last_flush_ms = orjson.loads(data[1:])
        except orjson.JSONDecodeError:  # e.g. an escaped lone surrogate, which only json reads
            items, users, last_flush_ms = json.loads(data[1:])
        # the shape only, not each id (this runs on every batch): our encoder wrote strings
        if isinstance(items, list) and isinstance(users, list) and type(last_flush_ms) is int:
            return set(items), set(users), last_flush_ms
    except (ValueError, TypeError):  # not JSON, not three values, an unhashable id
        pass
    raise ValueError(f"the learner's changelog state (format {CHANGELOG_FORMAT}) is malformed: "
                     "expected [item ids, user ids, last flush ms]")


def refuse_unknown_format(data: bytes, expected: int, what: str) -> None:
    """Raise a ``ValueError`` naming ``what`` unless ``data`` starts with the format byte
    ``expected``; a pickle gets the sentence of a checkpoint written by older code.

    >>> refuse_unknown_format(b"", 1, "a state")
    Traceback (most recent call last):
    ...
    ValueError: a state is empty; this code reads format 1
    """
    if data and data[0] == expected:
        return
    if not data:
        raise ValueError(f"{what} is empty; this code reads format {expected}")
    if data[0] == PICKLE_PROTOCOL_BYTE:
        raise ValueError(f"{what} is a pickle (format byte 0x80): written by streamrec before its state "
                         "formats were plain bytes; this code never unpickles state. Resume with the "
                         "code that wrote it, or start over with `streamrec run --fresh`")
    raise ValueError(f"{what} has format byte 0x{data[0]:02x}; this code reads format {expected}")
