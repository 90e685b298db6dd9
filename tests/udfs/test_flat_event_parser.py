"""The JVM fast path of validation (udfs/jvm, FlatEventParser) against validate(), without Flink.

The parser's own command line (``main``) decides thousands of payloads in one JVM: every record
it accepts must be one validate() accepts, with the same cleaned fields, and it must accept the
records ``streamrec replay`` writes (else every event would silently take the slower Python
UDF). The through-the-job test (tests/flink_jobs/test_validation_in_job.py) checks the same
through the running ingestion job.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from streamrec.core.records import CLEAN_EVENT, EVENT_TYPES, RAW_EVENT, VALIDATED_FIELDS
from streamrec.runtime import assets
from streamrec.replay import encode_events
from tests.support import REPO, free_port, make_config, planted_stream
from tests.validation_corpus import FIXED, ID_CASES, NOW, SETTINGS, hypothesis_records, mostly
from streamrec.udfs.validation import CleanEvent, validate


@pytest.fixture(scope="module")
def ingest_cfg(tmp_path_factory):
    cfg = make_config(tmp_path_factory.mktemp("parser"), free_port())  # no broker is started
    return cfg.model_copy(update={"ingest": cfg.ingest.model_copy(update=SETTINGS)})


def java_verdicts(cfg, payloads: list[bytes], now_ms: int) -> list[CleanEvent | None]:
    """FlatEventParser's verdict for each payload: the cleaned event, or None (left to validate())."""
    ing = cfg.ingest
    java = shutil.which("java")
    args = [java, "-cp", str(assets.udf_jar(cfg)), "streamrec.udfs.FlatEventParser",
            str(ing.min_ts_ms), str(ing.max_future_ms), repr(float(ing.rating_min)),
            repr(float(ing.rating_max)), str(ing.max_payload_bytes), str(ing.max_id_chars)]
    lines = "".join(f"{base64.b64encode(p).decode()} {now_ms}\n" for p in payloads)
    out = subprocess.run(args, input=lines, capture_output=True, text=True, check=True, cwd=REPO).stdout
    verdicts = []
    for line in out.splitlines():
        if line == "-":
            verdicts.append(None)
            continue
        fields = dict(zip(VALIDATED_FIELDS, line.split("\t"), strict=True))  # main's order
        fields.update(rating=None if fields["rating"] == "-" else float(fields["rating"]), ts=int(fields["ts"]))
        verdicts.append(CleanEvent(**fields))
    assert len(verdicts) == len(payloads)
    return verdicts


JAVA = REPO / "udfs" / "jvm" / "streamrec" / "udfs"


def java_strings(source: str, array: str) -> list[str]:
    """The elements of ``String[] <array> = {...}`` in a Java source."""
    found = re.search(r"String\[\] %s = \{([^}]*)\}" % array, source)
    assert found, f"no String[] {array} in the source"
    return re.findall(r'"([^"]*)"', found.group(1))


def test_the_java_key_lists_are_the_records():
    """The fast path reads the raw event's keys and returns the clean event's validated fields:
    both as core/records.py declares them, so a field added there cannot be missed here."""
    parser = (JAVA / "FlatEventParser.java").read_text()
    assert java_strings(parser, "KEYS") == list(RAW_EVENT.names)
    assert java_strings(parser, "EVENT_TYPES") == list(EVENT_TYPES)
    # the parser reads the first four keys as strings, the three ids among them
    assert [RAW_EVENT.field(k).type.sql for k in RAW_EVENT.names[:4]] == ["STRING"] * 4
    assert RAW_EVENT.names[:3] == ("event_id", "user_id", "item_id")
    hint = re.search(r'@DataTypeHint\(((?:\s*\+?\s*"[^"]*")+)\)', (JAVA / "AcceptFlatEvent.java").read_text())
    row = "".join(re.findall(r'"([^"]*)"', hint.group(1)))
    assert row == f"ROW<{CLEAN_EVENT.columns(VALIDATED_FIELDS, sep=', ')}, payload_bytes INT>"


def test_it_accepts_only_what_validate_accepts_with_the_same_fields(ingest_cfg):
    payloads = FIXED + hypothesis_records(4000)
    accepted = 0
    for payload, fast in zip(payloads, java_verdicts(ingest_cfg, payloads, NOW)):
        if fast is not None:
            assert validate(payload, 0, 0, NOW, ingest_cfg.ingest) == fast, payload
            accepted += 1
    # the corpus leans to edge cases (most of its valid records hold escapes or non-ASCII text,
    # left to validate()); plain_records below covers acceptance in depth
    assert accepted >= 60, accepted


@st.composite
def plain_record(draw) -> bytes:
    """A flat ASCII record of the kind producers write, valid or not: padded ids, any case of the
    event type, ts and rating around their bounds, extra scalar fields, any key order and spacing."""
    # now and then an id around the length limit (64 here), padded or not
    limit = SETTINGS["max_id_chars"]
    ident = mostly(st.from_regex(r"[A-Za-z0-9_.:-]{1,12}", fullmatch=True),
                   st.integers(limit - 2, limit + 2).map(lambda n: "k" * n), usual_in_10=9)
    pad = st.sampled_from(["", " ", "  "])
    kind = draw(st.sampled_from(["view", "click", "cart", "purchase", "rating", "like"]))
    doc = {"event_id": draw(pad) + draw(ident) + draw(pad), "user_id": draw(pad) + draw(ident) + draw(pad),
           "item_id": draw(ident) + draw(pad),
           "event_type": draw(pad) + draw(st.sampled_from([kind, kind.upper(), kind.title()])) + draw(pad),
           "ts": draw(st.one_of(st.integers(SETTINGS["min_ts_ms"], NOW + SETTINGS["max_future_ms"]),
                                st.integers(SETTINGS["min_ts_ms"] - 10, SETTINGS["min_ts_ms"] + 10),
                                st.integers(NOW + SETTINGS["max_future_ms"] - 10, NOW + SETTINGS["max_future_ms"] + 10)))}
    if draw(st.booleans()):
        doc["rating"] = draw(st.one_of(st.floats(0, 6), st.integers(0, 6), st.sampled_from([0.5, 5.0, 4.999999]),
                                       st.none()))
    for key in draw(st.lists(st.sampled_from(["x", "source", "n"]), max_size=2, unique=True)):
        doc[key] = draw(st.one_of(st.integers(-10**6, 10**6), st.floats(allow_nan=False, allow_infinity=False),
                                  st.booleans(), st.none(), st.from_regex(r"[ -!#-\[\]-~]{0,8}", fullmatch=True)))
    order = draw(st.permutations(list(doc)))
    sep = draw(st.sampled_from([(",", ":"), (", ", ": "), (" ,\t", " :\n")]))
    return json.dumps({k: doc[k] for k in order}, separators=sep).encode()


def test_plain_records_are_decided_in_the_jvm_exactly_when_validate_accepts(ingest_cfg):
    drawn: list[bytes] = []

    @settings(max_examples=3000, derandomize=True, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(plain_record())
    def collect(record: bytes) -> None:
        drawn.append(record)

    collect()
    verdicts = java_verdicts(ingest_cfg, drawn, NOW)
    expected = [validate(p, 0, 0, NOW, ingest_cfg.ingest) for p in drawn]
    for payload, fast, verdict in zip(drawn, verdicts, expected):
        assert fast == (verdict if isinstance(verdict, CleanEvent) else None), (payload, verdict)
    assert sum(v is not None for v in verdicts) >= 1000  # and both outcomes in numbers
    assert sum(v is None for v in verdicts) >= 300


def test_hand_made_cases(ingest_cfg):
    ts = 1_700_000_000_000
    cases = {
        b'{"event_id":" e1 ","user_id":"u 1","item_id":"i","event_type":" VIEW ","ts":%d}' % ts:
            CleanEvent("e1", "u 1", "i", "view", None, ts),
        b'{"event_id":"e2","user_id":"u","item_id":"i","event_type":"rating","rating":4,"ts":%d}' % ts:
            CleanEvent("e2", "u", "i", "rating", 4.0, ts),
        b'{"event_id":"e3","user_id":"u","item_id":"i","event_type":"click","rating":1e999,"ts":%d}' % ts:
            CleanEvent("e3", "u", "i", "click", None, ts),  # a non-rating event's rating is dropped
        b' {"x":[1],"event_id":"e4","user_id":"u","item_id":"i","event_type":"cart","ts":%d}' % ts: None,
        b'{"event_id":"e5","user_id":"u","item_id":"i","event_type":"rating","rating":-0,"ts":%d}' % ts: None,
        b'{"event_id":"e6","user_id":"u","item_id":"i","event_type":"view","ts":%d,"ts":1}' % ts: None,
        b'{"event_id":"e7","user_id":"\\u0075","item_id":"i","event_type":"view","ts":%d}' % ts: None,
        b'{"event_id":"e8","user_id":"u","item_id":"i","event_type":"view","ts":%d,"n":1%s}' % (ts, b"0" * 80): None,
        b'{"event_id":"e9","user_id":"u","item_id":"i","event_type":"view","ts":%d.0}' % ts: None,
        b'{"event_id":"e10","user_id":"u","item_id":"i","event_type":"view","ts":%d}' % (NOW + 10**9): None,
    }
    verdicts = java_verdicts(ingest_cfg, list(cases), NOW)
    assert verdicts == list(cases.values())
    for payload, fast in cases.items():  # and each accepted one is validate()'s verdict
        if fast is not None:
            assert validate(payload, 0, 0, NOW, ingest_cfg.ingest) == fast


def test_the_records_replay_writes_all_take_the_fast_path(ingest_cfg):
    events = planted_stream(3000)
    events += [dict(e, event_type="rating", rating=r) for e, r in zip(events[:50], [0.5, 1, 2.5, 5] * 13)]
    payloads = [record.value for record in encode_events(events)]
    verdicts = java_verdicts(ingest_cfg, payloads, NOW)
    assert all(v is not None for v in verdicts), payloads[verdicts.index(None)]
    assert verdicts == [validate(p, 0, 0, NOW, ingest_cfg.ingest) for p in payloads]


def test_the_id_contract_holds_on_the_fast_path(ingest_cfg):
    """The JVM takes a plain id of exactly the limit and leaves every id case validate() rejects
    (too long, controls, 16,000 characters, non-BMP emoji counted in code points) to it."""
    verdicts = java_verdicts(ingest_cfg, [p for p, _ in ID_CASES], NOW)
    for (payload, reason), fast in zip(ID_CASES, verdicts):
        if reason is not None:
            assert fast is None, payload[:80]
        elif fast is not None:
            assert validate(payload, 0, 0, NOW, ingest_cfg.ingest) == fast
    taken = {fast.event_id for fast in verdicts if fast is not None}
    assert taken == {"d12", "d14"}  # the plain ASCII ones at the limit, padded or not; others escape
