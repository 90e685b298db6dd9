"""validate(): one exact reason code per bad payload, cleaned fields for good ones, never raises."""

import json
import unicodedata

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from pydantic import ValidationError

from streamrec.core.config import IngestConfig, load_config
from tests.validation_corpus import ID_CASES, SETTINGS, NOW as CORPUS_NOW
from streamrec.udfs.validation import ID_FIELDS, REASONS, CleanEvent, Rejection, payload_size, truncate_payload, validate

CFG = IngestConfig(max_payload_bytes=512, dlq_payload_max_bytes=64, max_future_ms=1_000,
                   min_ts_ms=100)
NOW = 1_000_000
GOOD = {"event_id": "e1", "user_id": "u1", "item_id": "i1", "event_type": "view", "ts": 5_000}


def v(doc, now=NOW):
    payload = doc if isinstance(doc, (bytes, str)) or doc is None else json.dumps(doc)
    return validate(payload, 0, 0, now, CFG)


def with_(**changes):
    doc = dict(GOOD)
    for k, val in changes.items():
        if val is ...:
            doc.pop(k)
        else:
            doc[k] = val
    return doc


@pytest.mark.parametrize("payload, reason", [
    (None, "empty_payload"),
    (b"", "empty_payload"),
    (b"  \n", "empty_payload"),
    (b"x" * 513, "oversized_payload"),
    (b"{", "malformed_json"),
    (b"\xff\xfe{}", "malformed_json"),
    (b'{"ts": NaN}', "malformed_json"),
    (b"[" * 5000 + b"]" * 5000, "oversized_payload"),
    (b"[1, 2]", "not_an_object"),
    (b'"text"', "not_an_object"),
    (with_(event_id=...), "missing_field:event_id"),
    (with_(user_id=None), "missing_field:user_id"),
    (with_(item_id=...), "missing_field:item_id"),
    (with_(event_type=...), "missing_field:event_type"),
    (with_(ts=...), "missing_field:ts"),
    (with_(event_type="rating"), "missing_field:rating"),
    (with_(event_id=7), "wrong_type:event_id"),
    (with_(user_id=["u"]), "wrong_type:user_id"),
    (with_(item_id={"a": 1}), "wrong_type:item_id"),
    (with_(event_type=1), "wrong_type:event_type"),
    (with_(ts="5000"), "wrong_type:ts"),
    (with_(ts=5000.0), "wrong_type:ts"),
    (with_(ts=True), "wrong_type:ts"),
    (with_(rating="4"), "wrong_type:rating"),
    (b'{"event_id":"\\ud800","user_id":"u","item_id":"i","event_type":"view","ts":5000}',
     "invalid_string:event_id"),
    (with_(event_id="  "), "empty_id:event_id"),
    (with_(user_id=""), "empty_id:user_id"),
    (with_(item_id="\t"), "empty_id:item_id"),
    (with_(event_id="e" * 129), "id_too_long:event_id"),
    (with_(user_id="u" * 129), "id_too_long:user_id"),
    (with_(item_id="i" * 129), "id_too_long:item_id"),
    (with_(event_id="e1\x00"), "control_char:event_id"),
    (with_(user_id="u\x00x"), "control_char:user_id"),
    (with_(item_id="i\x7f"), "control_char:item_id"),
    (with_(event_type="like"), "unknown_event_type"),
    (with_(event_type="rating", rating=0.4), "rating_out_of_range"),
    (with_(event_type="rating", rating=5.01), "rating_out_of_range"),
    (with_(ts=99), "ts_out_of_range"),
    (with_(ts=NOW + 1_001), "ts_out_of_range"),
    (with_(ts=10**30), "ts_out_of_range"),
])
def test_each_reason_code(payload, reason):
    result = v(payload)
    assert result == Rejection(reason)
    assert reason in REASONS


def test_cleaning_trims_ids_lowercases_type_and_keeps_rating_only_for_ratings():
    assert v(with_(event_id=" e1 ", user_id="\tu1", item_id="i1 ", event_type=" CLICK ", rating=3)) == \
        CleanEvent("e1", "u1", "i1", "click", None, 5_000)
    assert v(with_(event_type="Rating", rating=4)) == CleanEvent("e1", "u1", "i1", "rating", 4.0, 5_000)
    assert v(with_(event_type="rating", rating=0.5)).rating == 0.5  # bounds are inclusive
    # old (replayed) data stays valid; the future bound is relative to the ingest time
    assert isinstance(v(with_(ts=100)), CleanEvent)
    assert isinstance(v(with_(ts=NOW + 1_000)), CleanEvent)


def test_first_failing_rule_wins():
    assert v(with_(event_id=..., user_id=...)).reason == "missing_field:event_id"
    assert v(with_(event_id="", event_type="nope")).reason == "empty_id:event_id"
    # each id rule over all three ids before the next rule: empty, then length, then controls
    assert v(with_(event_id="e\x00", user_id="u" * 129, item_id=" ")).reason == "empty_id:item_id"
    assert v(with_(event_id="e\x00", user_id="u" * 129)).reason == "id_too_long:user_id"
    assert v(with_(item_id="i" * 128 + "\x00")).reason == "id_too_long:item_id"
    assert v(with_(item_id="i\x00", event_type="nope", ts=1)).reason == "control_char:item_id"


DEFAULT = IngestConfig(max_future_ms=1_000, min_ts_ms=100)  # max_id_chars and max_payload_bytes as shipped


@pytest.mark.parametrize("value, reason", [
    ("i1\x00", "control_char:item_id"),  # NUL at the end: numpy's fixed-width strings drop it
    ("\x00i1", "control_char:item_id"),
    ("i\x00x", "control_char:item_id"),
    ("i\x7f", "control_char:item_id"),  # DEL
    ("i\x80x", "control_char:item_id"),  # C1
    ("i\x85x", "control_char:item_id"),  # NEL: whitespace to str.strip(), a control inside
    ("i\x9f", "control_char:item_id"),
    ("a\tb", "control_char:item_id"),
    ("a\nb", "control_char:item_id"),
    ("a\rb", "control_char:item_id"),
    ("a\x1bb", "control_char:item_id"),  # ESC: terminal escapes in logs and the DLQ viewer
    ("\t\x85 i \x1c\n", None),  # control whitespace around an id is padding, trimmed as before
    ("k" * 128, None),  # exactly the limit
    ("k" * 129, "id_too_long:item_id"),
    (" " * 10 + "k" * 128 + " " * 10, None),  # the trimmed (stored) length counts
    ("k" * 16_000, "id_too_long:item_id"),  # under max_payload_bytes: only the id rule stops it
    ("😀" * 128, None),  # code points (as len() and numpy's <U), not UTF-16 units (256 here)
    ("😀" * 129, "id_too_long:item_id"),
    ("é" * 129, "id_too_long:item_id"),
    ("\u200fשלום", None),  # RTL mark and text
    ("a\u202eb\u202c\u2066c\u2069", None),  # bidi overrides / isolates: format chars, not controls
    ("👨\u200d👩\u200d👧", None),  # ZWJ emoji sequence
    ("a\u2028b", None),  # LINE SEPARATOR (Zl), inside
    ("a\ufeffb\u200bc", None),  # BOM / zero-width space (Cf)
    ("\ue000", None),  # private use
])
def test_the_id_contract(value, reason):
    result = validate(json.dumps(with_(item_id=value)), 0, 0, NOW, DEFAULT)
    if reason is None:
        assert result == CleanEvent("e1", "u1", value.strip(), "view", None, 5_000)
        # the point of the contract: a valid id survives a fixed-width numpy array unchanged
        assert np.array([result.item_id]).tolist() == [result.item_id]
    else:
        assert result == Rejection(reason) and reason in REASONS


def test_every_id_field_gets_both_rules():
    for field in ID_FIELDS:
        assert validate(json.dumps(with_(**{field: "x" * 129})), 0, 0, NOW, DEFAULT) == \
            Rejection(f"id_too_long:{field}")
        assert validate(json.dumps(with_(**{field: "x\x00"})), 0, 0, NOW, DEFAULT) == \
            Rejection(f"control_char:{field}")


def test_max_id_chars_is_a_bounded_setting():
    assert IngestConfig().max_id_chars == 128
    wider = DEFAULT.model_copy(update={"max_id_chars": 200})
    assert validate(json.dumps(with_(item_id="k" * 200)), 0, 0, NOW, wider).item_id == "k" * 200
    assert load_config(config_file=None, env={"STREAMREC_INGEST__MAX_ID_CHARS": "256"}).ingest.max_id_chars == 256
    for bad in (0, 1_025):  # no id at all, or rows of unbounded width again
        with pytest.raises(ValidationError):
            IngestConfig(max_id_chars=bad)


def test_the_corpus_id_cases_get_their_reasons():
    cfg = IngestConfig(**SETTINGS)
    for payload, reason in ID_CASES:
        result = validate(payload, 0, 0, CORPUS_NOW, cfg)
        assert (result.reason if isinstance(result, Rejection) else None) == reason, payload[:80]


def test_truncation_on_character_boundary():
    text = "é" * 100  # 200 bytes
    cut = truncate_payload(text.encode(), 64)
    assert cut == "é" * 32 and len(cut.encode()) <= 64
    assert truncate_payload(b"abc", 64) == "abc"
    assert payload_size("é") == 2


@settings(max_examples=400, deadline=None)
@given(st.one_of(st.binary(max_size=700), st.text(max_size=300),
                 st.dictionaries(st.sampled_from(list(GOOD) + ["rating", "x"]),
                                 st.one_of(st.none(), st.booleans(), st.integers(), st.floats(),
                                           st.text(max_size=5)), max_size=7)))
def test_fuzz_any_payload_yields_clean_or_known_rejection(data):
    payload = json.dumps(data) if isinstance(data, dict) else data
    result = validate(payload, 0, 0, NOW, CFG)
    if isinstance(result, Rejection):
        assert result.reason in REASONS
    else:
        assert isinstance(result, CleanEvent)
        assert result.event_id and result.user_id and result.item_id
        assert result.event_id == result.event_id.strip()
        assert CFG.min_ts_ms <= result.ts <= NOW + CFG.max_future_ms
        for s in (result.event_id, result.user_id, result.item_id):
            s.encode("utf-8")  # never hands Flink an unencodable string
            assert len(s) <= CFG.max_id_chars
            assert not any(unicodedata.category(c) == "Cc" for c in s)
            assert np.array([s]).tolist() == [s]
    assert truncate_payload(payload, CFG.dlq_payload_max_bytes).encode("utf-8") is not None
