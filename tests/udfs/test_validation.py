"""validate(): one exact reason code per bad payload, cleaned fields for good ones, never raises."""

import json

import pytest
from hypothesis import given, settings, strategies as st

from streamrec.config import IngestConfig
from udfs.validation import REASONS, CleanEvent, Rejection, payload_size, truncate_payload, validate

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
    assert truncate_payload(payload, CFG.dlq_payload_max_bytes).encode("utf-8") is not None
