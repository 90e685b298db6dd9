"""Payloads of every kind for the validation tests: hypothesis-drawn records (types, sizes,
unicode, whitespace, escapes, NaN, huge numbers, duplicate keys, nesting, broken bytes) and
hand-made cases that the JVM fast path must get exactly right. Shared by the through-the-job test
(tests/flink_jobs/test_validation_in_job.py) and the fast path's differential test
(tests/udfs/test_flat_event_parser.py)."""

from __future__ import annotations

import json
import time

from hypothesis import HealthCheck, given, settings, strategies as st

from streamrec.core import records

NOW = int(time.time() * 1000)
#: max_id_chars at its lower bound, the JVM fast path's own cap (sql/ingest.sql), so both routes
#: meet the id limit; payloads up to the default 16 KiB, so a 16,000-character id reaches it.
SETTINGS = {"min_ts_ms": 1_000_000, "max_future_ms": 3_600_000, "max_payload_bytes": 16_384,
            "dlq_payload_max_bytes": 64, "max_id_chars": 64}
#: Kafka record timestamps of every kind (the future bound must not depend on them).
RECORD_TIMESTAMPS = [None, 0, 1, NOW, NOW - 10 * 365 * 86_400_000, NOW + 50 * 60_000]
def bound_cases(now: int) -> list[tuple[bytes, int]]:
    """(payload, record timestamp): the future bound follows the processing time, not the
    record's timestamp (Kafka 4 refuses record timestamps over an hour ahead, hence 50 minutes).
    Built when the test runs: a suite can import this module many minutes before."""
    def view(event_id: str, ts: int) -> bytes:
        return (f'{{"event_id":"{event_id}","user_id":"u","item_id":"i","event_type":"view",'
                f'"ts":{ts}}}').encode()

    return [
        (view("b1", now + 70 * 60_000), now + 50 * 60_000),  # out of range, though within record time + 1 h
        (view("b2", now - 3_600_000), 1),  # an hour ago: valid, though far after a record time of 1 ms + 1 h
    ]

SPACES = ["", " ", "\t", "\u00a0", "\u3000", "\x1c", "\n"]
ODD_TEXT = ["", " ", "é", "ü-1", "a\u2028b", "\\", '"', "\ud800", "x\x00y", "😀", "K\u212a",
            "i1\x00", "a\x7fb", "a\x85b", "a\tb", "\u200fשלום", "k" * 64, "k" * 65, "😀" * 64, "😀" * 65]


#: Replaced by the record's number after generation: event ids stay unique after trimming, so
#: no record is a duplicate (dedup would hide its verdict).
N = "@@N@@"


@st.composite
def ids(draw, event_id: bool = False):
    """An id field's value: mostly a string (padded, unicode, escapes), sometimes another type."""
    if event_id:
        core = draw(st.sampled_from([f"f{N}", f"F{N}é", f"f{N}\u2028x", f"f-{N}"]))
    else:
        core = draw(st.one_of(st.from_regex(r"[a-z0-9]{1,6}", fullmatch=True), st.sampled_from(ODD_TEXT),
                              st.from_regex(r"[a-z0-9]{1,6}", fullmatch=True), st.text(max_size=6)))
    padded = draw(st.integers(0, 3)) == 0
    pad = (draw(st.sampled_from(SPACES)), draw(st.sampled_from(SPACES))) if padded else ("", "")
    value = f"{pad[0]}{core}{pad[1]}"
    kind = draw(st.integers(0, 19))  # mostly a string: the fast path must see plenty of them
    if kind < 17:
        return value
    return draw(st.one_of(st.integers(-5, 10**20), st.none(), st.booleans(), st.just([value])))


def mostly(usual, *others, usual_in_10: int = 8):
    """``usual`` in ``usual_in_10`` of 10 draws, else one of ``others`` (an explicit choice:
    hypothesis' own draws lean to edge cases, and the fast path needs plenty of plain records)."""
    @st.composite
    def pick(draw):
        if draw(st.integers(0, 9)) < usual_in_10:
            return draw(usual)
        return draw(st.one_of(*others))
    return pick()


TS = mostly(st.integers(SETTINGS["min_ts_ms"], NOW - 60_000),
            st.sampled_from([0, -5, SETTINGS["min_ts_ms"] - 1, NOW + 86_400_000 * 365, 10**20, -10**20]),
            st.floats(allow_nan=True, allow_infinity=False), st.text(max_size=4), st.booleans(), st.none())
RATING = mostly(st.sampled_from([0.5, 1, 3, 4.5, 5, 5.0, 4]), st.sampled_from([0, -0.0, 5.5, 7, 1e300, -1]),
                st.floats(0, 6), st.text(max_size=3), st.booleans(), st.none(), usual_in_10=6)
EVENT_TYPES = mostly(st.sampled_from(records.EVENT_TYPES),
                     st.sampled_from(["VIEW", " Click ", "RATING", "like", "", "cli\u212a", "view\u00a0"]),
                     st.text(max_size=5), st.integers(0, 9))


@st.composite
def raw_record(draw) -> bytes:
    doc = {"event_id": draw(ids(event_id=True)), "user_id": draw(ids()), "item_id": draw(ids()),
           "event_type": draw(EVENT_TYPES), "ts": draw(TS)}
    if draw(st.booleans()):
        doc["rating"] = draw(RATING)
    if draw(st.integers(0, 5)) == 0:  # a missing field
        del doc[draw(st.sampled_from(list(doc)))]
    if draw(st.integers(0, 4)) == 0:  # extra fields, nested or not
        doc[draw(st.sampled_from(["x", "meta", "tags", "note"]))] = draw(st.one_of(
            st.integers(), st.text(max_size=8), st.just({"a": [1, {"b": None}]}), st.just([1, 2])))
    order = draw(st.permutations(list(doc)))
    doc = {k: doc[k] for k in order}
    sep = draw(st.sampled_from([(",", ":"), (", ", ": "), (" ,\t", " :\n")]))
    text = json.dumps(doc, separators=sep, ensure_ascii=draw(st.booleans()), allow_nan=True)
    mutation = draw(st.integers(0, 30))
    if mutation == 0 and text.endswith("}") and len(doc) > 0:  # a duplicated key, either value first
        key = draw(st.sampled_from(["event_id", "ts", "rating", "event_type", "user_id"]))
        # (a second event_id is numbered too: a bare "0" could repeat another record's, and the
        # dedup would then hide one verdict)
        value = draw(ids(event_id=True)) if key == "event_id" else draw(st.one_of(TS, ids()))
        text = text[:-1] + f', "{key}": ' + json.dumps(value) + "}"
    elif mutation == 1:
        text = text + draw(st.sampled_from([" x", "}", "\n", " ", "\u00a0"]))
    elif mutation == 2:
        text = draw(st.sampled_from(["\ufeff", " \n\t", "["])) + text
    elif mutation == 3:
        text = text[:draw(st.integers(0, max(0, len(text) - 1)))]
    elif mutation == 4:
        text = text.replace('"ts":', '"ts": 1' + "0" * draw(st.integers(1, 25)) + ", \"old_ts\":", 1)
    elif mutation == 5:
        text = text + " " * draw(st.sampled_from([10, 16_400]))  # over max_payload_bytes
    data = text.encode("utf-8", errors="surrogatepass")  # a lone surrogate: invalid UTF-8 bytes
    if mutation == 6:
        data = data.replace(b"e", b"\xff", 1)
    return data


#: Hand-made cases that the fast path must get exactly right whatever hypothesis draws.
FIXED = [
    b'{"event_id":"h1","user_id":"u","item_id":"i","event_type":"view","ts":1700000000000}',
    b'{"event_id":"h2","user_id":"u","item_id":"i","event_type":"rating","rating":-0,"ts":1700000000000}',
    b'{"event_id":"h3","user_id":"u","item_id":"i","event_type":"rating","rating":4.5,"ts":1700000000000}',
    b'{"event_id":"h4","user_id":"u","item_id":"i","event_type":"view","rating":"4","ts":1700000000000}',
    b'{"event_id":"h5","user_id":"u","item_id":"i","event_type":"view","rating":null,"ts":1700000000000}',
    b'{"event_id":"h6","user_id":"u","item_id":"i","event_type":"view","ts":1700000000000.0}',
    b'{"event_id":"h7","user_id":"u","item_id":"i","event_type":"view","ts":1700000000000,"ts":5}',
    b'{"event_id":"h8","user_id":"u","item_id":"i","event_type":"view","ts":5,"ts":1700000000000}',
    b'{"event_id":"h9","user_id":"u\\u00e9","item_id":"i","event_type":"view","ts":1700000000000}',
    b'{"event_id":"h10","user_id":"u","item_id":"i","event_type":"view","ts":1700000000000} x',
    b'{"event_id":"h11","user_id":"u","item_id":"i","event_type":"view","ts":NaN}',
    b'{"event_id":"h12","user_id":" u\\t","item_id":"i","event_type":"VIEW","ts":1700000000000}',
    b'{"event_id":"h13","user_id":"u","item_id":"i","event_type":"rating","rating":1e400,"ts":1700000000000}',
    b'{"event_id":"h14","user_id":"u","item_id":"i","event_type":"view","ts":99999999999999999999}',
    b'{"event_id":"h15","user_id":"u","item_id":"i","event_type":"view","ts":1700000000000,"x":{"ts":1}}',
    b'{"event_id":"h16","user_id":"\xed\xa0\x80","item_id":"i","event_type":"view","ts":1700000000000}',
    b'{"event_id":"h17","user_id":"u","item_id":"i","event_type":"view","ts":' + str(NOW + 86_400_000).encode() + b'}',
    b'\xef\xbb\xbf{"event_id":"h18","user_id":"u","item_id":"i","event_type":"view","ts":1700000000000}',
    b'{"event_id":"h19","user_id":"\xc3\xa9","item_id":"i\xe2\x80\xa8","event_type":"view","ts":1700000000000}',
    b'{"event_id":"h20","user_id":"u","item_id":"i","event_type":"rating","rating":5.0000001,"ts":1700000000000}',
]


def _id_case(event_id: str, user_id: bytes = b"u", item_id: bytes = b"i") -> bytes:
    return (b'{"event_id":"%s","user_id":"%s","item_id":"%s","event_type":"view","ts":1700000000000}'
            % (event_id.encode(), user_id, item_id))


_LIMIT = SETTINGS["max_id_chars"]
#: The id contract (udfs/validation.py): (payload, the reason it must get, None = valid). Ids are
#: JSON-escaped where raw bytes would be malformed JSON (a raw control byte below 0x20).
ID_CASES: list[tuple[bytes, str | None]] = [
    (_id_case("d1", item_id=b"i1\\u0000"), "control_char:item_id"),  # NUL at the end (numpy drops it)
    (_id_case("d2", user_id=b"u\\u0000x"), "control_char:user_id"),  # NUL inside
    (_id_case("d3\\u0000"), "control_char:event_id"),
    (_id_case("d4", item_id=b"i\x7f"), "control_char:item_id"),  # DEL, a raw byte (valid JSON)
    (_id_case("d5", item_id=b"i\\u007fx"), "control_char:item_id"),
    (_id_case("d6", item_id=b"i\\u0085x"), "control_char:item_id"),  # C1 (NEL) inside
    (_id_case("d7", user_id=b"u\xc2\x9fx"), "control_char:user_id"),  # C1 as raw UTF-8
    (_id_case("d8", item_id=b"a\\tb"), "control_char:item_id"),  # tab inside
    (_id_case("d9", item_id=b"a\\nb"), "control_char:item_id"),  # newline inside
    (_id_case("d10", item_id=b"a\\u001cb"), "control_char:item_id"),  # whitespace to str.strip()
    (_id_case("d11", item_id=b"\\t i \\u0085\\n"), None),  # control whitespace as padding: trimmed
    (_id_case("d12", item_id=b"k" * _LIMIT), None),  # exactly the limit: the fast path takes it
    (_id_case("d13", item_id=b"k" * (_LIMIT + 1)), "id_too_long:item_id"),
    (_id_case("d14", user_id=b"  " + b"u" * _LIMIT + b"  "), None),  # the trimmed length counts
    (_id_case("d15", item_id=b"k" * 16_000), "id_too_long:item_id"),
    (_id_case("d16" + "e" * _LIMIT), "id_too_long:event_id"),
    (_id_case("d17", item_id="😀".encode() * _LIMIT), None),  # code points: 2x the limit in UTF-16
    (_id_case("d18", item_id="😀".encode() * (_LIMIT + 1)), "id_too_long:item_id"),
    (_id_case("d19", item_id=b"\\ud83d\\ude00" * _LIMIT), None),  # the same, as escaped pairs
    (_id_case("d20", item_id="é".encode() * (_LIMIT + 1)), "id_too_long:item_id"),
    (_id_case("d21", user_id="\u200fשלום\u200e-\u202bע\u202c".encode()), None),  # RTL text and marks
    (_id_case("d22", item_id="👨\u200d👩\u200d👧".encode()), None),  # ZWJ emoji sequence
    (_id_case("d23", item_id="a\u2028b\ufeffc\u200bd".encode()), None),  # format / separator chars
    (_id_case("d24", item_id=b"k" * _LIMIT + b"\\u0000"), "id_too_long:item_id"),  # length first
    (_id_case("d25\\u0000", user_id=b"u" * (_LIMIT + 1)), "id_too_long:user_id"),  # then control
    (_id_case("d26\\u0000", user_id=b" "), "empty_id:user_id"),  # empty_id before both
]
FIXED += [payload for payload, _ in ID_CASES]



def hypothesis_records(n: int) -> list[bytes]:
    """``n`` records drawn by hypothesis (derandomized: the same every run), numbered."""
    drawn: list[bytes] = []

    @settings(max_examples=n, derandomize=True, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(raw_record())
    def collect(record: bytes) -> None:
        drawn.append(record)

    collect()
    return [r.replace(N.encode(), str(k).encode()) for k, r in enumerate(drawn)]
