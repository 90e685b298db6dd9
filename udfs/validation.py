"""Validation of raw ``events.raw`` payloads: plain Python first, then the thin Flink UDF wrappers.

``validate(payload, partition, offset, now_ms, cfg)`` returns a :class:`CleanEvent` or a
:class:`Rejection` with exactly one reason code (the first rule that fails, in the order below).
It never raises, whatever the bytes. Reason codes (docs/ingestion.md has the table):

=========================  ==========================================================================
``empty_payload``          null record value, or a payload that is empty / only whitespace
``oversized_payload``      more than ``ingest.max_payload_bytes`` bytes (checked before parsing)
``malformed_json``         not UTF-8, not JSON, NaN/Infinity literals, nesting deeper than :data:`MAX_NESTING`
``not_an_object``          valid JSON whose top level is not an object
``missing_field:<f>``      ``f`` absent or null (``rating`` only required for ``rating`` events)
``wrong_type:<f>``         ids / event_type not strings, ``ts`` not an integer, ``rating`` not a number
``invalid_string:<f>``     a string holding lone surrogates (``"\\ud800"``): not encodable as UTF-8
``empty_id:<f>``           ``event_id`` / ``user_id`` / ``item_id`` empty after trimming whitespace
``id_too_long:<f>``        an id longer than ``ingest.max_id_chars`` code points after trimming
``control_char:<f>``       an id holding a control character (Unicode Cc: C0, DEL, C1) after trimming
``unknown_event_type``     not one of view, click, cart, purchase, rating (after trim + lower-case)
``rating_out_of_range``    a rating event whose rating is outside ``[rating_min, rating_max]`` (or NaN)
``ts_out_of_range``        ``ts < ingest.min_ts_ms`` or ``ts > now_ms + ingest.max_future_ms``
=========================  ==========================================================================

>>> from streamrec.core.config import IngestConfig
>>> cfg = IngestConfig()
>>> validate(b'{"event_id":" e1 ","user_id":"u1","item_id":"i1","event_type":"VIEW","ts":5}', 0, 7, 10, cfg)
CleanEvent(event_id='e1', user_id='u1', item_id='i1', event_type='view', rating=None, ts=5)
>>> validate(b'{"event_id":"e1"', 0, 8, 10, cfg).reason
'malformed_json'
>>> validate(b'{"event_id":"e1","user_id":"u1","event_type":"view","ts":5}', 0, 9, 10, cfg).reason
'missing_field:item_id'
>>> validate(b'{"event_id":"e1","user_id":"u1","item_id":"i1\\u0000","event_type":"view","ts":5}', 0, 9, 10, cfg).reason
'control_char:item_id'
>>> validate(b'{"event_id":"e1","user_id":"u1","item_id":"i1","event_type":"view","ts":5,"x":' + b'[' * 64
...          + b']' * 64 + b'}', 0, 10, 10, cfg).reason
'malformed_json'

Ids are what the model, its registry versions and the serving look items and users up by, so
they must survive every store unchanged: numpy's fixed-width strings drop a trailing NUL (a
registry version's item ids then differ from the model's), and one huge id widens every row of
a fixed-width array. Only control characters (category Cc) are refused: other invisible ones
(ZWJ in emoji sequences, RTL marks, U+2028) belong to real names and stay valid. Length counts
code points, as ``len(str)`` and numpy's ``<U`` do (an emoji outside the BMP is one).
"""

from __future__ import annotations

import json
import math
import re
import time
from collections import namedtuple
from dataclasses import dataclass

from streamrec.core.config import IngestConfig
from streamrec.core.records import CLEAN_EVENT, EVENT_TYPES, RAW_EVENT, VALIDATED_FIELDS

ID_FIELDS = ("event_id", "user_id", "item_id")
#: The raw event's keys that every event must have (``rating`` only a rating event).
REQUIRED_FIELDS = tuple(f.name for f in RAW_EVENT.fields if not f.optional)

#: Every reason code validate() can return (metrics are registered for each of them up front).
REASONS: tuple[str, ...] = (
    "empty_payload", "oversized_payload", "malformed_json", "not_an_object",
    *(f"missing_field:{f}" for f in (*REQUIRED_FIELDS, "rating")),
    *(f"wrong_type:{f}" for f in (*REQUIRED_FIELDS, "rating")),
    *(f"invalid_string:{f}" for f in (*ID_FIELDS, "event_type")),
    *(f"empty_id:{f}" for f in ID_FIELDS),
    *(f"id_too_long:{f}" for f in ID_FIELDS),
    *(f"control_char:{f}" for f in ID_FIELDS),
    "unknown_event_type", "rating_out_of_range", "ts_out_of_range",
)


#: A valid event: the fields ``validate()`` decides, in the clean event's order and of its types
#: (core.records.VALIDATED_FIELDS; ``rating`` is None unless a rating event). A tuple, so the UDF
#: passes its fields on positionally.
CleanEvent = namedtuple("CleanEvent", VALIDATED_FIELDS)


@dataclass(frozen=True)
class Rejection:
    reason: str


def _reject_constant(name: str):
    raise ValueError(f"non-standard JSON constant {name}")


_DECODER = json.JSONDecoder(parse_constant=_reject_constant)

#: The deepest nesting of arrays and objects a valid payload may have (its top-level object is
#: level 1); deeper is ``malformed_json``. An explicit bound, because json's own one is the
#: interpreter's recursion limit less the caller's stack depth: without it a payload nested
#: ~500-990 deep was accepted by the job's worker and rejected by the same validate() called
#: from deeper in a stack (tests/flink_jobs/test_hostile_input.py found the two disagreeing).
MAX_NESTING = 64

#: A JSON string (brackets inside it do not nest) or one bracket.
_NESTING_TOKENS = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]', re.DOTALL)


def _nested_deeper_than(raw: bytes, limit: int) -> bool:
    """Whether the JSON text ``raw`` nests arrays / objects more than ``limit`` deep (exact for
    valid JSON; for invalid JSON either answer leads to ``malformed_json``). Scans only a payload
    with more than ``limit`` opening brackets in all.

    >>> _nested_deeper_than(b'{"a": [[1]], "b": "[[[[[["}', 3), _nested_deeper_than(b'[[[[]]]]', 3)
    (False, True)
    """
    if raw.count(b"[") + raw.count(b"{") <= limit:
        return False
    depth = 0
    for token in _NESTING_TOKENS.findall(raw):
        if token == b"[" or token == b"{":
            depth += 1
            if depth > limit:
                return True
        elif token == b"]" or token == b"}":
            depth -= 1
    return False


#: Unicode category Cc, exactly (fixed by Unicode's stability policy): C0, DEL and C1.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def _utf8_ok(value: str) -> bool:
    try:
        value.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def validate(payload: bytes | str | None, partition: int | None, offset: int | None,
             now_ms: int | None, cfg: IngestConfig) -> CleanEvent | Rejection:
    """Check one raw payload; return the cleaned event or the (first) reason it is rejected.

    ``now_ms`` is the time the future bound is measured from (the job passes its processing
    time, not the producer's record timestamp, which any client sets; ``None`` means the wall
    clock). ``partition``/``offset`` are not used by the
    rules, they are part of the signature so every caller passes the record's coordinates.
    """
    try:
        return _validate(payload, now_ms, cfg)
    except Exception:  # pragma: no cover - defensive: a bug here must not stop the job
        return Rejection("malformed_json")


def _validate(payload: bytes | str | None, now_ms: int | None, cfg: IngestConfig) -> CleanEvent | Rejection:
    if payload is None:
        return Rejection("empty_payload")
    raw = payload.encode("utf-8", errors="surrogatepass") if isinstance(payload, str) else bytes(payload)
    if len(raw) > cfg.max_payload_bytes:
        return Rejection("oversized_payload")
    if not raw.strip():
        return Rejection("empty_payload")
    if _nested_deeper_than(raw, MAX_NESTING):  # before json recurses as deep as the stack allows
        return Rejection("malformed_json")
    try:
        text = raw.decode("utf-8")
        doc = _DECODER.decode(text)
    except (ValueError, RecursionError):  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        return Rejection("malformed_json")
    if not isinstance(doc, dict):
        return Rejection("not_an_object")
    for field in REQUIRED_FIELDS:
        if doc.get(field) is None:
            return Rejection(f"missing_field:{field}")
    for field in (*ID_FIELDS, "event_type"):
        if not isinstance(doc[field], str):
            return Rejection(f"wrong_type:{field}")
        if not _utf8_ok(doc[field]):
            return Rejection(f"invalid_string:{field}")
    ts = doc["ts"]
    if isinstance(ts, bool) or not isinstance(ts, int):
        return Rejection("wrong_type:ts")
    rating = doc.get("rating")
    if rating is not None and (isinstance(rating, bool) or not isinstance(rating, (int, float))):
        return Rejection("wrong_type:rating")
    ids = {}
    for field in ID_FIELDS:
        ids[field] = doc[field].strip()
        if not ids[field]:
            return Rejection(f"empty_id:{field}")
    # on the trimmed ids, the values that are stored (padding of whitespace controls stays valid)
    for field in ID_FIELDS:
        if len(ids[field]) > cfg.max_id_chars:
            return Rejection(f"id_too_long:{field}")
    for field in ID_FIELDS:
        if _CONTROL.search(ids[field]):
            return Rejection(f"control_char:{field}")
    event_type = doc["event_type"].strip().lower()
    if event_type not in EVENT_TYPES:
        return Rejection("unknown_event_type")
    if event_type == "rating":
        if rating is None:
            return Rejection("missing_field:rating")
        rating = float(rating)
        if math.isnan(rating) or not (cfg.rating_min <= rating <= cfg.rating_max):
            return Rejection("rating_out_of_range")
    else:
        rating = None  # a rating on a non-rating event carries no meaning: dropped, not rejected
    now = int(time.time() * 1000) if now_ms is None else int(now_ms)
    if ts < cfg.min_ts_ms or ts > now + cfg.max_future_ms:
        return Rejection("ts_out_of_range")
    return CleanEvent(ids["event_id"], ids["user_id"], ids["item_id"], event_type, rating, ts)


def truncate_payload(payload: bytes | str | None, max_bytes: int) -> str | None:
    """The payload as UTF-8 text (undecodable bytes become U+FFFD), cut to at most ``max_bytes``
    bytes on a character boundary.

    >>> truncate_payload("héllo".encode(), 2)
    'h'
    >>> truncate_payload(b"\\xff{", 100)
    '\\ufffd{'
    """
    if payload is None:
        return None
    text = payload.decode("utf-8", errors="replace") if isinstance(payload, (bytes, bytearray)) \
        else payload.encode("utf-8", errors="replace").decode("utf-8")
    data = text.encode("utf-8")
    if len(data) <= max_bytes:
        return text
    return data[:max_bytes].decode("utf-8", errors="ignore")


def payload_size(payload: bytes | str | None) -> int:
    if payload is None:
        return 0
    return len(payload) if isinstance(payload, (bytes, bytearray)) else len(payload.encode("utf-8", "surrogatepass"))


# --- Flink wrappers ---------------------------------------------------------------------------

#: validate_event's result: the verdict, the cleaned fields (the clean event's, core/records.py),
#: the DLQ text and the payload's size.
VALIDATED_ROW = (f"ROW<reason STRING, {CLEAN_EVENT.columns(VALIDATED_FIELDS, sep=', ')}, "
                 "dlq_text STRING, payload_bytes INT>")
_NO_EVENT = (None,) * len(VALIDATED_FIELDS)


def make_udfs(cfg: IngestConfig):
    """The SQL function ``validate_event(payload BYTES, partition INT, offset BIGINT,
    ingest_ms BIGINT) -> ROW<...>`` (:data:`VALIDATED_ROW`): the verdict, the cleaned fields, and
    for a rejection the DLQ text (:func:`truncate_payload`); the payload's size in bytes always.
    One function, so one Python call per record (three functions made two Python operators)."""
    from pyflink.common import Row
    from pyflink.table.udf import ScalarFunction, udf

    settings = cfg.model_copy()
    max_dlq = settings.dlq_payload_max_bytes

    class ValidateEvent(ScalarFunction):
        def open(self, function_context):
            self.parsed = None
            self.rejected = {}
            try:
                group = function_context.get_metric_group().add_group("streamrec_ingest")
                self.parsed = group.counter("parsed")
                self.rejected = {r: group.add_group("reason", r).counter("rejected") for r in REASONS}
            except Exception:  # metrics unavailable in this execution mode: counting is best effort
                pass

        def eval(self, payload, partition, offset, ingest_ms):
            result = validate(payload, partition, offset, ingest_ms, settings)
            if self.parsed is not None:
                self.parsed.inc()
            if isinstance(result, Rejection):
                counter = self.rejected.get(result.reason)
                if counter is not None:
                    counter.inc()
                return Row(result.reason, *_NO_EVENT, truncate_payload(payload, max_dlq), payload_size(payload))
            return Row(None, *result, None, payload_size(payload))

    return {"validate_event": udf(ValidateEvent(), result_type=VALIDATED_ROW)}
