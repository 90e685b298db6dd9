"""The changelog state's byte format: any id survives it, and nothing but its own format is read
(a pickle above all: restoring a checkpoint must not run code)."""

import builtins
import json
import pickle

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streamrec.udfs.state_codec import CHANGELOG_FORMAT, decode_changelog, encode_changelog, refuse_unknown_format

HOSTILE_IDS = {"", "a,b", ",", "nul\x00id", "\x00", "😀", "emoji 😀 id", '"quoted"', "back\\slash", "[1]",
               "new\nline", "\t", "lone \ud800 surrogate", "\udfff", "\x01[[],[],0]", "\u2028", "é" * 300}


def test_hostile_ids_and_empty_sets_round_trip():
    for items, users, ts in [(HOSTILE_IDS, HOSTILE_IDS, 1_700_000_000_000), (set(), set(), 0),
                             (HOSTILE_IDS, set(), 2**62), (set(), {"", "u"}, -1)]:
        raw = encode_changelog(items, users, ts)
        assert raw[0] == CHANGELOG_FORMAT
        assert decode_changelog(raw) == (items, users, ts)


@given(st.sets(st.text()), st.sets(st.text()), st.integers(-(2**63), 2**63 - 1))
def test_any_ids_round_trip(items, users, ts):
    assert decode_changelog(encode_changelog(items, users, ts)) == (items, users, ts)


class _Evil:
    def __reduce__(self):
        return exec, ("import builtins; builtins._streamrec_unpickled = True",)


@pytest.mark.parametrize("protocol", [0, 2, pickle.HIGHEST_PROTOCOL])
def test_a_pickle_is_refused_without_being_unpickled(protocol):
    payload = pickle.dumps((_Evil(), set(), 0), protocol=protocol)
    expected = "is a pickle .* never unpickles state.*--fresh" if protocol >= 2 else "format byte 0x"
    with pytest.raises(ValueError, match=expected):
        decode_changelog(payload)
    assert not hasattr(builtins, "_streamrec_unpickled")


def test_what_the_old_operator_stored_is_refused_with_the_way_out():
    old = pickle.dumps(({"i1"}, {"u1"}, 1_700_000_000_000))  # Types.PICKLED_BYTE_ARRAY's bytes
    with pytest.raises(ValueError, match=r"changelog state is a pickle .*`streamrec run --fresh`"):
        decode_changelog(old)


@pytest.mark.parametrize("raw, message", [
    (b"", "is empty"),
    (b"\x02[[],[],0]", "format byte 0x02; this code reads format 1"),
    (b"\xff", "format byte 0xff"),
    (b"\x01", "malformed"),
    (b"\x01[[],[],0", "malformed"),
    (b"\x01[[],[]]", "malformed"),
    (b"\x01[[],[],0,1]", "malformed"),
    (b"\x01{}", "malformed"),
    (b"\x01[\"ab\",[],0]", "malformed"),  # a string is not a list of ids
    (b"\x01[[],[],1.5]", "malformed"),
    (b"\x01[[],[],true]", "malformed"),
    (b"\x01[[[1]],[],0]", "malformed"),  # an unhashable id
    (b"\x01\xff\xfe", "malformed"),  # not UTF-8
])
def test_anything_else_is_refused_by_name(raw, message):
    with pytest.raises(ValueError, match=message):
        decode_changelog(raw)


def test_the_encoding_is_plain_json_after_the_format_byte():
    raw = encode_changelog({"i,1"}, {"u\x00"}, 5)
    assert json.loads(raw[1:]) == [["i,1"], ["u\x00"], 5]
    assert raw[1:].isascii()  # ensure_ascii: lone surrogates too


def test_refuse_unknown_format_accepts_its_own():
    refuse_unknown_format(b"\x03rest", 3, "a record")
    with pytest.raises(ValueError, match="a record has format byte 0x04; this code reads format 3"):
        refuse_unknown_format(b"\x04", 3, "a record")
