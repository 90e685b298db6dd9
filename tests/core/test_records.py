"""core/records.py: every record's codec is strict both ways, the SQL the jobs run declares the
records' columns, and the published raw-event schema is the one the code generates and agrees
with validate() on the validation corpus."""

from __future__ import annotations

import json
import math
import re

import jsonschema
import pytest

from streamrec.core.config import IngestConfig, TopicsConfig
from streamrec.core.records import (CLEAN_EVENT, DLQ_RECORD, FEATURES_ITEM, FEATURES_USER, ITEM_DELTA, ITEM_RECORD,
                                    LEARNER_EVENT, RAW_EVENT, RECOMMENDATION, RECORDS, USER_RECORD, raw_event_schema,
                                    schema_text)
from streamrec.udfs.validation import CleanEvent, Rejection, validate
from tests.support import REPO
from tests.validation_corpus import FIXED, ID_CASES, NOW, SETTINGS, hypothesis_records

SCHEMA_FILE = REPO / "docs" / "schemas" / "event.schema.json"

#: One record of each kind, as its writer makes it.
SAMPLES = {
    "raw": {"event_id": "e1", "user_id": "u1", "item_id": "i1", "event_type": "rating", "ts": 5, "rating": 4.5},
    "clean": {"event_id": "e1", "user_id": "u1", "item_id": "i1", "event_type": "view", "rating": None,
              "weight": 1.0, "ts": 5, "src_partition": 0, "src_offset": 7, "late": False,
              "ingest_watermark_ms": None},
    "dlq": {"payload": "{", "payload_bytes": 1, "truncated": False, "reason": "malformed_json",
            "src_partition": 2, "src_offset": 9, "ingest_ts": 1_700_000_000_000},
    "recommendations": {"user_id": "u1", "items": [{"item_id": "i2", "score": 0.5}, {"item_id": "i3", "score": None}],
                        "model_version": "live", "strategy": "model", "cold_start": False, "user_events": 3,
                        "source_event_id": "e1", "source_partition": 0, "source_offset": 7, "event_ts": 5,
                        "emitted_ts": 6, "batch_size": 1, "reason": None},
    "model_items": {"item_id": "i1", "vector": [0.25, -1.0], "bias": 0.0, "updates": 2, "popularity": 1.5,
                    "ts": 5},
    "model_users": {"user_id": "u1", "vector": [0.25, -1.0], "events": 2, "ts": None},
    "item_deltas": {"delta": 1, "origin": 0, "since_ms": 1, "emitted_ms": 2, "items": ["a"], "vectors": "AAA="},
    "features_user": {"user_id": "u1", "window_start": 0, "window_end": 60_000,
                      **{f.name: 1 for f in FEATURES_USER.fields[3:-3]}, "short_weight": 1.0, "long_weight": 2.0,
                      "last_seen_ts": 5, "events_per_minute": 0.5, "is_bot": False},
    "features_item": {"item_id": "i1", "window_start": 0, "window_end": 60_000,
                      **{f.name: 1 for f in FEATURES_ITEM.fields[3:-3]}, "short_weight": 1.0, "long_weight": 2.0,
                      "last_seen_ts": 5, "popularity": 2.0, "trend": None},
}


def test_every_topic_has_its_record_and_a_sample():
    assert set(RECORDS) <= set(TopicsConfig.model_fields)
    assert set(SAMPLES) == set(RECORDS)


@pytest.mark.parametrize("topic", sorted(SAMPLES))
def test_encode_then_decode_is_the_record(topic):
    record, sample = RECORDS[topic], SAMPLES[topic]
    text = record.encode(sample)
    assert list(json.loads(text)) == [n for n in record.names if n in sample]  # declared order
    assert record.decode(text) == sample
    assert record.decode(text.encode()) == sample
    assert record.encode(**sample) == text


@pytest.mark.parametrize("topic", sorted(SAMPLES))
def test_decode_names_the_record_and_field_of_every_drift(topic):
    record, sample = RECORDS[topic], SAMPLES[topic]
    required = next(f.name for f in record.fields if not f.optional)
    with pytest.raises(ValueError, match=rf"^{re.escape(record.name)}: missing field '{required}'$"):
        record.decode(json.dumps({k: v for k, v in sample.items() if k != required}))
    if not record.open:
        with pytest.raises(ValueError, match=rf"^{re.escape(record.name)}: unknown field 'surprise'"):
            record.decode(json.dumps({**sample, "surprise": 1}))
    for field in record.fields:
        if field.name not in sample:
            continue
        wrong = "text" if field.type.sql != "STRING" else 5
        with pytest.raises(ValueError, match=rf"^{re.escape(record.name)}: field '{field.name}': "):
            record.decode(json.dumps({**sample, field.name: wrong}))
        if not field.nullable:
            with pytest.raises(ValueError, match=rf"field '{field.name}': null, but it is not nullable"):
                record.decode(json.dumps({**sample, field.name: None}))
    with pytest.raises(ValueError, match=rf"^{re.escape(record.name)}: expected a JSON object"):
        record.decode("[]")
    with pytest.raises(ValueError, match=rf"^{re.escape(record.name)}: not JSON"):
        record.decode(b"{\xff")


def test_types_are_checked_as_flink_reads_them():
    rec = SAMPLES["recommendations"]
    with pytest.raises(ValueError, match=r"field 'items': \[1\]: field 'score': expected DOUBLE, got str"):
        RECOMMENDATION.decode(json.dumps({**rec, "items": [rec["items"][0], {"item_id": "i", "score": "1"}]}))
    with pytest.raises(ValueError, match=r"field 'items': \[0\]: unknown field 'rank'"):
        RECOMMENDATION.decode(json.dumps({**rec, "items": [{"item_id": "i", "score": 1.0, "rank": 1}]}))
    with pytest.raises(ValueError, match=r"field 'source_partition': expected INT, got int 2147483648"):
        RECOMMENDATION.decode(json.dumps({**rec, "source_partition": 2**31}))
    with pytest.raises(ValueError, match=r"field 'cold_start': expected BOOLEAN, got int 0"):
        RECOMMENDATION.decode(json.dumps({**rec, "cold_start": 0}))
    with pytest.raises(ValueError, match=r"field 'user_events': expected BIGINT, got bool True"):
        RECOMMENDATION.decode(json.dumps({**rec, "user_events": True}))
    with pytest.raises(ValueError, match=r"field 'vector': \[1\]: null"):
        USER_RECORD.decode(json.dumps({**SAMPLES["model_users"], "vector": [1.0, None]}))
    with pytest.raises(ValueError, match="not JSON: non-standard JSON constant NaN"):
        USER_RECORD.decode('{"user_id":"u","vector":[NaN],"events":1,"ts":null}')
    # JSON has one number type: an integral DOUBLE may come without a fraction
    assert ITEM_RECORD.decode(json.dumps({**SAMPLES["model_items"], "bias": 0}))["bias"] == 0
    # an optional key may be absent, a required one never
    assert "vectors" not in ITEM_DELTA.decode(json.dumps({k: v for k, v in SAMPLES["item_deltas"].items()
                                                          if k != "vectors"}))


def test_encode_refuses_a_wrong_key_set_and_non_json_numbers():
    with pytest.raises(ValueError, match="^user record: missing field 'ts'$"):
        USER_RECORD.encode(user_id="u", vector=[], events=0)
    with pytest.raises(ValueError, match="^user record: unknown field 'extra'"):
        USER_RECORD.encode({**SAMPLES["model_users"], "extra": 1})
    with pytest.raises(ValueError, match="Out of range float"):
        USER_RECORD.encode({**SAMPLES["model_users"], "vector": [math.nan]})
    # an open record (the raw event) keeps its declared order and passes other keys by
    assert RAW_EVENT.check({**SAMPLES["raw"], "note": "x"}) == SAMPLES["raw"]


def test_sql_types_and_columns():
    assert RECOMMENDATION.field("items").type.sql == "ARRAY<ROW<item_id STRING, score DOUBLE>>"
    assert CLEAN_EVENT.columns(sep=", ") == (
        "event_id STRING, user_id STRING, item_id STRING, event_type STRING, rating DOUBLE, weight DOUBLE, "
        "ts BIGINT, src_partition INT, src_offset BIGINT, late BOOLEAN, ingest_watermark_ms BIGINT")
    assert set(LEARNER_EVENT.names) <= set(CLEAN_EVENT.names)


def test_the_learner_reads_the_fields_sql_learner_writes():
    """sql/learner.sql writes each event as a JSON array of LEARNER_EVENT's fields; the shard
    learner reads it positionally as udfs.shard_model.Event."""
    from streamrec.flink_jobs.env import render_sql
    from streamrec.udfs.shard_model import Event

    assert Event._fields == LEARNER_EVENT.names
    [view] = render_sql("learner", shards=1, shard_key_cases="WHEN 0 THEN 0")
    assert f"JSON_ARRAY({', '.join(LEARNER_EVENT.names)} NULL ON NULL)" in view
    with pytest.raises(KeyError, match="clean event has no field 'nope'"):
        CLEAN_EVENT.field("nope")


# --- the SQL the jobs run --------------------------------------------------------------------------

def _table_columns(statement: str) -> str:
    """The column declarations of a rendered CREATE TABLE, one line, computed columns and keys
    left out."""
    body = " ".join(statement[statement.index("(") + 1: statement.index(") WITH")].split())
    parts, depth, start = [], 0, 0
    for n, char in enumerate(body):  # split at the commas outside brackets
        depth += (char in "(<") - (char in ")>")
        if char == "," and depth == 0:
            parts.append(body[start:n].strip())
            start = n + 1
    parts.append(body[start:].strip())
    return ", ".join(p for p in parts if " AS " not in p and not p.startswith(("WATERMARK", "PRIMARY")))


@pytest.mark.parametrize("sql_name, table, record", [
    ("ingest", "dlq_out", DLQ_RECORD),
    ("ingest_sinks", "clean_out", CLEAN_EVENT),
    ("features", "clean_in", CLEAN_EVENT),
    ("features", "features_user_out", FEATURES_USER),
    ("features", "features_item_out", FEATURES_ITEM),
    ("query_tables", "events_clean", CLEAN_EVENT),
    ("query_tables", "features_user_log", FEATURES_USER),
    ("query_tables", "features_item_log", FEATURES_ITEM),
    ("query_tables", "recommendations", RECOMMENDATION),
])
def test_the_jobs_tables_are_the_records(sql_name, table, record):
    from streamrec.flink_jobs.env import SQL_DIR, render_sql

    names = set(re.findall(r"\$\{(\w+)\}", (SQL_DIR / f"{sql_name}.sql").read_text()))
    statements = render_sql(sql_name, **{n: "'x' = 'y'" for n in names if not n.endswith(("_columns", "_names"))})
    [ddl] = [s for s in statements if re.match(rf"CREATE (TEMPORARY )?TABLE {table} \(", s)]
    assert _table_columns(ddl) == record.columns(sep=", ")


def test_no_sql_file_lists_a_records_columns_by_hand():
    """A record's column list is generated (flink_jobs.env.RECORD_PLACEHOLDERS), never written:
    a run of three or more of its declarations in a row in a sql/*.sql file is a copy."""
    from streamrec.flink_jobs.env import SQL_DIR

    for path in sorted(SQL_DIR.glob("*.sql")):
        text = " ".join(ln for ln in path.read_text().splitlines() if not ln.strip().startswith("--"))
        text = " ".join(text.split())
        for record in RECORDS.values():
            for n in range(len(record.fields) - 2):
                run = record.columns(record.names[n:n + 3], sep=", ")
                assert run not in text, f"{path.name} declares {record.name}'s {run} by hand"


# --- the raw event's JSON Schema ------------------------------------------------------------------

def test_the_published_schema_is_the_generated_one():
    assert SCHEMA_FILE.read_text() == schema_text(), (
        "docs/schemas/event.schema.json is stale: python -m streamrec.core.records > docs/schemas/event.schema.json")
    jsonschema.Draft202012Validator.check_schema(json.loads(SCHEMA_FILE.read_text()))


#: Rejections the schema states too (the rest: not JSON, size, depth, surrogates, the future bound).
STATED = re.compile(r"not_an_object|missing_field:|wrong_type:|empty_id:|id_too_long:|control_char:|"
                    r"unknown_event_type|rating_out_of_range")


def test_the_schema_agrees_with_validate_on_the_corpus():
    ingest = IngestConfig().model_copy(update=SETTINGS)
    validator = jsonschema.Draft202012Validator(raw_event_schema(ingest))
    accepted = stated = 0
    for payload in FIXED + [p for p, _ in ID_CASES] + hypothesis_records(3000):
        verdict = validate(payload, 0, 0, NOW, ingest)
        try:
            doc = json.loads(payload)
        except ValueError:
            assert isinstance(verdict, Rejection)
            continue
        valid = validator.is_valid(doc)
        if isinstance(verdict, CleanEvent):
            assert valid, (payload, list(validator.iter_errors(doc))[:1])
            accepted += 1
            continue
        ts = doc.get("ts") if isinstance(doc, dict) else None
        fraction_ts = verdict.reason == "wrong_type:ts" and isinstance(ts, float) and ts.is_integer()
        too_early = verdict.reason == "ts_out_of_range" and isinstance(ts, int) and ts < ingest.min_ts_ms
        if (STATED.match(verdict.reason) and not fraction_ts) or too_early:
            assert not valid, (payload, verdict.reason)
            stated += 1
    assert accepted >= 200 and stated >= 500, (accepted, stated)
