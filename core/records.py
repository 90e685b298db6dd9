"""Every record streamrec writes to or reads from a topic, declared once: its fields, in order,
with their Flink SQL types; the JSON codec and the SQL column lists come from the declaration.

Records (the topic's key in ``kafka.topics`` and its default name; the writer):

- :data:`RAW_EVENT`: ``raw`` (events.raw); producers. The contract ``validate()`` enforces
  (udfs/validation.py), published as a JSON Schema (:func:`raw_event_schema`,
  docs/schemas/event.schema.json).
- :data:`CLEAN_EVENT`: ``clean`` (events.clean); ingestion (sql/ingest_sinks.sql).
- :data:`DLQ_RECORD`: ``dlq`` (events.dlq); ingestion: a rejected payload and its reason.
- :data:`RECOMMENDATION`: ``recommendations``; the shard learner, one per event. Its ``items``
  are :data:`ITEM_SCORE` rows.
- :data:`ITEM_RECORD`: ``model_items`` (model.items); the shard learner, an item's changelog.
- :data:`USER_RECORD`: ``model_users`` (model.users); the shard learner, a user's changelog.
- :data:`ITEM_DELTA`: ``item_deltas`` (model.item_deltas); the shards to each other
  (udfs/item_exchange.py).
- :data:`FEATURES_USER`, :data:`FEATURES_ITEM`: ``features_user`` / ``features_item``
  (features.user / features.item); the features job (sql/features_windows.sql).
- :data:`LEARNER_EVENT`: no topic; the clean event as the learner's micro-batches carry it, a
  JSON array of its fields in order (sql/learner.sql, udfs.shard_model.Event).

A :class:`Record` is a tuple of :class:`Field` s. ``encode`` writes the topic's JSON text (keys in
declared order, compact, no NaN); ``decode`` reads it strictly: a missing or unknown key, a null
where the field is not nullable, or a value of the wrong type raises a :class:`ValueError` naming
the record and the field. ``columns()`` is the record's SQL column list (``render_sql`` fills the
``${*_columns}`` placeholders of sql/*.sql with it).

>>> CLEAN_EVENT.names[:4]
('event_id', 'user_id', 'item_id', 'event_type')
>>> text = USER_RECORD.encode(user_id="u1", vector=[0.5, -1.0], events=3, ts=None)
>>> text
'{"user_id":"u1","vector":[0.5,-1.0],"events":3,"ts":null}'
>>> USER_RECORD.decode(text.encode())["vector"]
[0.5, -1.0]
>>> USER_RECORD.decode('{"user_id":"u1","vector":[0.5],"events":"3","ts":null}')
Traceback (most recent call last):
...
ValueError: user record: field 'events': expected BIGINT, got str '3'
>>> print(RECOMMENDATION.field("items").type.sql)
ARRAY<ROW<item_id STRING, score DOUBLE>>
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass, field as dataclass_field
from typing import Any, Mapping, Sequence

import orjson

__all__ = [
    "Type", "Field", "Record", "SqlScalar", "SqlArray", "SqlRow",
    "STRING", "BOOLEAN", "INT", "BIGINT", "DOUBLE",
    "RAW_EVENT", "CLEAN_EVENT", "DLQ_RECORD", "ITEM_SCORE", "RECOMMENDATION", "ITEM_RECORD",
    "USER_RECORD", "ITEM_DELTA", "FEATURES_USER", "FEATURES_ITEM", "LEARNER_EVENT", "RECORDS",
    "EVENT_TYPES", "VALIDATED_FIELDS", "raw_event_schema", "schema_text",
]


# --- types -------------------------------------------------------------------------------------

class Type:
    """A Flink SQL type and what a JSON value of it is."""

    sql: str

    def problem(self, value: Any) -> str | None:
        """Why ``value`` (parsed JSON, not null) is not of this type; None when it is."""
        raise NotImplementedError

    def json_schema(self) -> dict:
        raise NotImplementedError


def _describe(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 40 else text[:37] + '...'}"


@dataclass(frozen=True)
class SqlScalar(Type):
    sql: str

    def problem(self, value: Any) -> str | None:
        ok = _SCALAR_CHECKS[self.sql](value)
        return None if ok else f"expected {self.sql}, got {_describe(value)}"

    def json_schema(self) -> dict:
        return dict(_SCALAR_SCHEMAS[self.sql])


def _is_int(value: Any, bits: int) -> bool:
    return type(value) is int and -(1 << (bits - 1)) <= value < (1 << (bits - 1))


_SCALAR_CHECKS = {
    "STRING": lambda v: type(v) is str,
    "BOOLEAN": lambda v: type(v) is bool,
    "INT": lambda v: _is_int(v, 32),
    "BIGINT": lambda v: _is_int(v, 64),
    # JSON has one number type: an integral DOUBLE may be written without a fraction
    "DOUBLE": lambda v: (type(v) is float and math.isfinite(v)) or type(v) is int,
}
_SCALAR_SCHEMAS = {
    "STRING": {"type": "string"},
    "BOOLEAN": {"type": "boolean"},
    "INT": {"type": "integer", "minimum": -(1 << 31), "maximum": (1 << 31) - 1},
    "BIGINT": {"type": "integer", "minimum": -(1 << 63), "maximum": (1 << 63) - 1},
    "DOUBLE": {"type": "number"},
}

STRING, BOOLEAN, INT, BIGINT, DOUBLE = (SqlScalar(t) for t in ("STRING", "BOOLEAN", "INT", "BIGINT", "DOUBLE"))


@dataclass(frozen=True)
class SqlArray(Type):
    element: Type

    @property
    def sql(self) -> str:  # type: ignore[override]
        return f"ARRAY<{self.element.sql}>"

    def problem(self, value: Any) -> str | None:
        if type(value) is not list:
            return f"expected {self.sql}, got {_describe(value)}"
        for n, item in enumerate(value):
            why = "null" if item is None else self.element.problem(item)
            if why:
                return f"[{n}]: {why}"
        return None

    def json_schema(self) -> dict:
        return {"type": "array", "items": self.element.json_schema()}


@dataclass(frozen=True)
class SqlRow(Type):
    """A nested row (a JSON object): the fields of a :class:`Record`."""

    record: "Record"

    @property
    def sql(self) -> str:  # type: ignore[override]
        return f"ROW<{', '.join(f'{f.name} {f.type.sql}' for f in self.record.fields)}>"

    def problem(self, value: Any) -> str | None:
        try:
            self.record.check(value)
        except ValueError as exc:
            return str(exc).split(": ", 1)[1]
        return None

    def json_schema(self) -> dict:
        return self.record.json_schema()


# --- fields and records -------------------------------------------------------------------------

@dataclass(frozen=True)
class Field:
    name: str
    type: Type
    #: JSON null is a value of this field (SQL NULL).
    nullable: bool = False
    #: The key may be absent (only where a writer leaves it out: the raw event's rating, the
    #: item delta's all-zero columns).
    optional: bool = False
    doc: str = ""

    def column(self) -> str:
        """The field as a SQL column declaration."""
        return f"{self.name} {self.type.sql}"


#: The strict encoder: compact, and NaN / Infinity (not JSON) are an error, never written.
_ENCODER = json.JSONEncoder(separators=(",", ":"), allow_nan=False)


def _holds_nulls(doc: Mapping[str, Any], n: int) -> bool:
    """Whether ``doc`` holds exactly ``n`` None values, at its top level and in lists of objects
    one level down (those are looked at only when the top level holds fewer)."""
    top = sum(value is None for value in doc.values())
    if top >= n:
        return top == n
    nested = sum(v is None for value in doc.values() if type(value) is list and value and type(value[0]) is dict
                 for row in value for v in row.values())
    return top + nested == n


def _dumps(doc: Mapping[str, Any]) -> str:
    """``doc`` as compact JSON text; NaN / Infinity raise a ValueError.

    orjson writes a record ~10x faster than the json module (the learner encodes one per event:
    docs/hot-path.md), but writes NaN / Infinity as ``null`` and refuses some values the json module
    takes (ints beyond 64 bits, lone surrogates): a ``null`` more than ``doc`` holds, or a refusal,
    sends it through the strict encoder, which raises or writes it (non-ASCII then as \\u escapes).

    >>> _dumps({"a": 1.5, "b": None, "c": [{"x": "é"}]})
    '{"a":1.5,"b":null,"c":[{"x":"é"}]}'
    >>> _dumps({"a": [{"score": float("nan")}]})
    Traceback (most recent call last):
    ...
    ValueError: Out of range float values are not JSON compliant
    >>> _dumps({"big": 2 ** 70})
    '{"big":1180591620717411303424}'
    """
    try:
        out = orjson.dumps(doc)
    except TypeError:  # orjson.JSONEncodeError: a value it does not take
        return _ENCODER.encode(doc)
    if b"null" in out and not _holds_nulls(doc, out.count(b"null")):
        return _ENCODER.encode(doc)
    return out.decode()


def _reject_constant(name: str):
    raise ValueError(f"non-standard JSON constant {name}")


_DECODER = json.JSONDecoder(parse_constant=_reject_constant)


@dataclass(frozen=True)
class Record:
    """A record's declaration: its ``name`` (in error messages), its topic's config key in
    ``topics`` (None for a nested row), its fields in order, and whether keys it does not declare
    are allowed (only the raw event: producers may send more, ``validate()`` ignores them)."""

    name: str
    topic: str | None
    fields: tuple[Field, ...]
    open: bool = False
    _by_name: dict = dataclass_field(init=False, repr=False, compare=False)
    _required: frozenset = dataclass_field(init=False, repr=False, compare=False)
    _names: tuple = dataclass_field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        by_name = {f.name: f for f in self.fields}
        if len(by_name) != len(self.fields):
            raise ValueError(f"{self.name}: a field is declared twice")
        object.__setattr__(self, "_by_name", by_name)
        object.__setattr__(self, "_names", tuple(by_name))
        object.__setattr__(self, "_required", frozenset(f.name for f in self.fields if not f.optional))

    def __str__(self) -> str:
        return self.name

    # -- the declaration ------------------------------------------------------------------------
    @property
    def names(self) -> tuple[str, ...]:
        return self._names

    def field(self, name: str) -> Field:
        try:
            return self._by_name[name]
        except KeyError:
            raise KeyError(f"{self.name} has no field {name!r} (it has {', '.join(self.names)})") from None

    def columns(self, names: Sequence[str] | None = None, sep: str = ",\n  ") -> str:
        """SQL column declarations (``name TYPE``) of every field, or of ``names`` in that order.

        >>> print(USER_RECORD.columns())
        user_id STRING,
          vector ARRAY<DOUBLE>,
          events BIGINT,
          ts BIGINT
        """
        return sep.join(self.field(n).column() for n in (names or self.names))

    def column_names(self, names: Sequence[str] | None = None, sep: str = ", ") -> str:
        """The field names as a SQL projection (``a, b, c``).

        >>> USER_RECORD.column_names()
        'user_id, vector, events, ts'
        """
        return sep.join(self.field(n).name for n in (names or self.names))

    def project(self, names: Sequence[str], name: str | None = None) -> "Record":
        """A record of ``names`` of these fields, in that order (a view of this record that
        another stage carries: no topic of its own).

        >>> CLEAN_EVENT.project(("user_id", "ts")).names
        ('user_id', 'ts')
        """
        return Record(name or f"{self.name} ({', '.join(names)})", None,
                      tuple(self.field(n) for n in names))

    # -- the codec ------------------------------------------------------------------------------
    def encode(self, values: Mapping[str, Any] | None = None, /, **fields: Any) -> str:
        """The record as its topic's JSON text, keys in declared order. Takes a mapping, keyword
        arguments, or both; every field must be given (an optional one may be left out) and no
        other: a wrong key set is a :class:`ValueError`. Values are not type-checked here (the
        writers build them; :meth:`decode` checks); NaN / Infinity raise a ValueError.

        >>> DLQ_RECORD.encode(payload="{", payload_bytes=1, truncated=False, reason="malformed_json",
        ...                   src_partition=0, src_offset=7, ingest_ts=5)
        '{"payload":"{","payload_bytes":1,"truncated":false,"reason":"malformed_json","src_partition":0,"src_offset":7,"ingest_ts":5}'
        >>> USER_RECORD.encode(user_id="u1", vector=[], events=0)
        Traceback (most recent call last):
        ...
        ValueError: user record: missing field 'ts'
        """
        doc = fields if values is None else ({**values, **fields} if fields else values)
        if tuple(doc) != self._names:  # not the declared keys in the declared order
            if doc.keys() != self._by_name.keys():
                self._check_keys(doc)
            doc = {n: doc[n] for n in self._names if n in doc}
        return _dumps(doc)

    def decode(self, data: bytes | bytearray | str) -> dict[str, Any]:
        """The record of a topic's JSON text (or bytes), checked strictly (:meth:`check`)."""
        if data is None:
            raise ValueError(f"{self}: no value (a tombstone?)")
        try:
            doc = _DECODER.decode(data.decode("utf-8") if isinstance(data, (bytes, bytearray)) else data)
        except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            raise ValueError(f"{self}: not JSON: {exc}") from None
        return self.check(doc)

    def check(self, doc: Any) -> dict[str, Any]:
        """``doc`` (parsed JSON) if it is this record: an object with every field (an optional
        one may be absent) and, unless the record is open, no other key; each value of its
        field's type, null only where the field is nullable. Returns a dict in declared order
        (an open record's other keys dropped)."""
        if type(doc) is not dict:
            raise ValueError(f"{self}: expected a JSON object, got {_describe(doc)}")
        self._check_keys(doc)
        for name, value in doc.items():
            spec = self._by_name.get(name)
            if spec is None:
                continue
            if value is None:
                if not spec.nullable:
                    raise ValueError(f"{self}: field {name!r}: null, but it is not nullable")
                continue
            why = spec.type.problem(value)
            if why:
                raise ValueError(f"{self}: field {name!r}: {why}")
        return {n: doc[n] for n in self.names if n in doc}

    def _check_keys(self, doc: Mapping[str, Any]) -> None:
        missing = [n for n in self.names if n in self._required and n not in doc]
        if missing:
            raise ValueError(f"{self}: missing field {missing[0]!r}")
        if not self.open:
            unknown = [k for k in doc if k not in self._by_name]
            if unknown:
                raise ValueError(f"{self}: unknown field {unknown[0]!r} (it has {', '.join(self.names)})")

    # -- JSON Schema ----------------------------------------------------------------------------
    def json_schema(self) -> dict:
        """The record as a JSON Schema object (draft 2020-12 keywords)."""
        props = {}
        for f in self.fields:
            schema = f.type.json_schema()
            if f.nullable:
                schema = {"anyOf": [schema, {"type": "null"}]}
            if f.doc:
                schema = {"description": f.doc, **schema}
            props[f.name] = schema
        return {"type": "object", "properties": props,
                "required": [f.name for f in self.fields if not f.optional],
                "additionalProperties": self.open}


# --- the records -------------------------------------------------------------------------------

#: The event types a raw event may name (``validate()`` trims and lower-cases them first).
EVENT_TYPES = ("view", "click", "cart", "purchase", "rating")

#: What producers send to events.raw. Key order is the JVM fast path's (FlatEventParser.KEYS):
#: required keys first, then ``rating`` (required only for a rating event; on another event it is
#: dropped). :func:`raw_event_schema` adds the rules of ``validate()`` that JSON Schema can say.
RAW_EVENT = Record("raw event", "raw", (
    Field("event_id", STRING, doc="unique per event: a repeat within ingest.dedup_horizon_ms is dropped"),
    Field("user_id", STRING),
    Field("item_id", STRING),
    Field("event_type", STRING, doc="one of " + ", ".join(EVENT_TYPES) + " (trimmed, case-insensitive)"),
    Field("ts", BIGINT, doc="event time, epoch milliseconds"),
    Field("rating", DOUBLE, nullable=True, optional=True,
          doc="required for a rating event, in [ingest.rating_min, ingest.rating_max]; ignored otherwise"),
), open=True)

#: A validated, deduplicated event (events.clean, keyed by user_id).
CLEAN_EVENT = Record("clean event", "clean", (
    Field("event_id", STRING),
    Field("user_id", STRING),
    Field("item_id", STRING),
    Field("event_type", STRING),
    Field("rating", DOUBLE, nullable=True, doc="a rating event's rating; null on every other"),
    Field("weight", DOUBLE, doc="the event's implicit-feedback weight (ingest.weights)"),
    Field("ts", BIGINT),
    Field("src_partition", INT, doc="the raw record's partition of events.raw"),
    Field("src_offset", BIGINT, doc="... and offset"),
    Field("late", BOOLEAN, doc="behind the ingestion's watermark: learned, not in windowed features"),
    Field("ingest_watermark_ms", BIGINT, nullable=True,
          doc="the ingestion's event-time watermark as the event passed (null before the first)"),
))

#: The fields ``validate()`` (and the JVM fast path) decide of a raw event, in CLEAN_EVENT's order.
VALIDATED_FIELDS = tuple(n for n in CLEAN_EVENT.names if n in RAW_EVENT.names)

#: The clean event as the learner's micro-batch carries it: a JSON array of these fields, in this
#: order (sql/learner.sql writes it, udfs.shard_model.Event reads it).
LEARNER_EVENT = CLEAN_EVENT.project(
    ("event_id", "user_id", "item_id", "weight", "ts", "src_partition", "src_offset"), "learner event")

#: A rejected raw record (events.dlq).
DLQ_RECORD = Record("dlq record", "dlq", (
    Field("payload", STRING, nullable=True,
          doc="the payload as UTF-8 text, cut to ingest.dlq_payload_max_bytes (null for a null value)"),
    Field("payload_bytes", INT, doc="the payload's size before any cut"),
    Field("truncated", BOOLEAN),
    Field("reason", STRING, doc="validate()'s reason code (udfs/validation.py REASONS)"),
    Field("src_partition", INT),
    Field("src_offset", BIGINT),
    Field("ingest_ts", BIGINT, doc="the raw record's Kafka timestamp, epoch milliseconds"),
))

#: One entry of a recommendation's list.
ITEM_SCORE = Record("recommended item", None, (
    Field("item_id", STRING),
    Field("score", DOUBLE, nullable=True, doc="null for a popular item filling up a short list"),
))

#: The recommendation of one event (recommendations, keyed by user_id).
RECOMMENDATION = Record("recommendation", "recommendations", (
    Field("user_id", STRING),
    Field("items", SqlArray(SqlRow(ITEM_SCORE))),
    Field("model_version", STRING, doc="what scored it: a registry version ('v000012'), or the live table "
          "with the CURRENT it was last checked against ('live+v000012'; 'live' before any CURRENT); never empty"),
    Field("strategy", STRING, doc="model, popularity or none"),
    Field("cold_start", BOOLEAN),
    Field("user_events", BIGINT, doc="the user's learned events, this one included"),
    Field("source_event_id", STRING),
    Field("source_partition", INT),
    Field("source_offset", BIGINT),
    Field("event_ts", BIGINT),
    Field("emitted_ts", BIGINT),
    Field("batch_size", INT),
    Field("reason", STRING, nullable=True, doc="why a 'none' record has no items; null on every other"),
))

#: An item's changelog record (model.items, compacted, keyed by item_id; a tombstone deletes).
ITEM_RECORD = Record("item record", "model_items", (
    Field("item_id", STRING),
    Field("vector", SqlArray(DOUBLE)),
    Field("bias", DOUBLE),
    Field("updates", BIGINT),
    Field("popularity", DOUBLE, doc="the learner's decayed popularity count"),
    Field("ts", BIGINT, nullable=True, doc="the newest event time the learner had seen"),
))

#: A user's changelog record (model.users, compacted, keyed by user_id).
USER_RECORD = Record("user record", "model_users", (
    Field("user_id", STRING),
    Field("vector", SqlArray(DOUBLE)),
    Field("events", BIGINT),
    Field("ts", BIGINT, nullable=True),
))

#: A shard's item deltas to the other shards (model.item_deltas, udfs/item_exchange.py): the
#: steps as base64 columns, one per learned quantity; an all-zero column is left out.
ITEM_DELTA = Record("item delta", "item_deltas", (
    Field("delta", INT, doc="the record's format"),
    Field("origin", INT, doc="the sending shard's key"),
    Field("since_ms", BIGINT),
    Field("emitted_ms", BIGINT),
    Field("items", SqlArray(STRING)),
    *(Field(column, STRING, optional=True, doc="base64 column") for column in
      ("vectors", "accum", "bias", "bias_accum", "updates", "popularity")),
))


def _window_fields(distinct: str) -> tuple[Field, ...]:
    """A feature row's counts over its short and its long window (sql/features_windows.sql)."""
    return tuple(
        field for span in ("short", "long") for field in (
            *(Field(f"{span}_{count}", BIGINT) for count in
              ("events", "views", "clicks", "carts", "purchases", "ratings")),
            Field(f"{span}_weight", DOUBLE),
            Field(f"{span}_distinct_{distinct}", BIGINT)))


#: A user's features of one sliding window (features.user, keyed by user_id; upserts).
FEATURES_USER = Record("user features", "features_user", (
    Field("user_id", STRING),
    Field("window_start", BIGINT),
    Field("window_end", BIGINT),
    *_window_fields("items"),
    Field("last_seen_ts", BIGINT),
    Field("events_per_minute", DOUBLE, doc="in the short window"),
    Field("is_bot", BOOLEAN),
))

#: An item's features of one sliding window (features.item, keyed by item_id; upserts).
FEATURES_ITEM = Record("item features", "features_item", (
    Field("item_id", STRING),
    Field("window_start", BIGINT),
    Field("window_end", BIGINT),
    *_window_fields("users"),
    Field("last_seen_ts", BIGINT),
    Field("popularity", DOUBLE, doc="the long window's weight"),
    Field("trend", DOUBLE, nullable=True, doc="short over long weight, per unit of time; null without weight"),
))

#: Every topic record, by its topic's config key.
RECORDS: dict[str, Record] = {r.topic: r for r in
                              (RAW_EVENT, CLEAN_EVENT, DLQ_RECORD, RECOMMENDATION, ITEM_RECORD, USER_RECORD,
                               ITEM_DELTA, FEATURES_USER, FEATURES_ITEM)}


# --- the raw event's contract as JSON Schema ------------------------------------------------------

@functools.cache
def _python_text_classes() -> tuple[str, dict[str, str]]:
    """What ``validate()`` trims (``str.isspace``) and, per letter, the characters ``str.lower``
    makes that letter (the Kelvin sign is a k): spelled out, as regex classes differ between
    languages."""
    space, lower_to = [], {}
    for code in range(0x110000):
        char = chr(code)
        if char.isspace():
            space.append(char)
        low = char.lower()
        if len(low) == 1 and low != char and low.isascii():
            lower_to.setdefault(low, []).append(char)
    return "".join(map(_class_char, space)), {k: "".join(v) for k, v in lower_to.items()}


def _class_char(char: str) -> str:
    """``char`` inside a regex character class: a control or non-ASCII one as ``\\uXXXX``."""
    return char if char.isalnum() and char.isascii() else f"\\u{ord(char):04x}"


def _any_case(word: str) -> str:
    """A regex of ``word`` in any case that ``str.lower`` maps back to it."""
    uppers = _python_text_classes()[1]
    return "".join(f"[{c}{''.join(map(_class_char, uppers.get(c, '')))}]" for c in word)


def raw_event_schema(ingest: Any = None) -> dict:
    """The JSON Schema of a raw event (draft 2020-12): :data:`RAW_EVENT` with the rules of
    ``validate()`` (udfs/validation.py) that a schema can state, at the settings of ``ingest``
    (an ``IngestConfig``; its defaults when None). What it cannot state stays ``validate()``'s
    alone: the ``ts`` upper bound (processing time + ingest.max_future_ms), that ``ts`` has no
    fraction (JSON Schema's integer admits ``5.0``), that strings are valid Unicode (no lone
    surrogates), the payload's size and nesting depth, and that it is UTF-8 JSON at all.

    >>> schema = raw_event_schema()
    >>> schema["required"], schema["properties"]["ts"]["minimum"]
    (['event_id', 'user_id', 'item_id', 'event_type', 'ts'], 0)
    """
    if ingest is None:
        from streamrec.core.config import IngestConfig

        ingest = IngestConfig()
    schema = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "streamrec raw event (events.raw)",
        "description": ("Generated from core/records.py RAW_EVENT (python -m streamrec.core.records); "
                        "udfs/validation.py validate() is the full contract."),
        **RAW_EVENT.json_schema(),
    }
    props = schema["properties"]
    space = f"[{_python_text_classes()[0]}]*"
    # an id trimmed of whitespace: 1 to max_id_chars code points, no control character (Unicode
    # Cc); the pattern says it, as maxLength would count the whitespace around it too
    control = r"\u0000-\u001f\u007f-\u009f"
    edge, inner = f"[^{_python_text_classes()[0]}{control}]", f"[^{control}]"
    id_pattern = f"^{space}{edge}(?:{inner}{{0,{max(0, ingest.max_id_chars - 2)}}}{edge})?{space}$"
    for name in ("event_id", "user_id", "item_id"):
        props[name]["pattern"] = id_pattern
    props["event_type"]["pattern"] = f"^{space}(?:{'|'.join(map(_any_case, EVENT_TYPES))}){space}$"
    props["ts"]["minimum"] = ingest.min_ts_ms
    schema["if"] = {"properties": {"event_type": {"pattern": f"^{space}{_any_case('rating')}{space}$"}}}
    schema["then"] = {"required": ["rating"], "properties": {"rating": {
        "type": "number", "minimum": ingest.rating_min, "maximum": ingest.rating_max}}}
    return schema


def schema_text(ingest: Any = None) -> str:
    """docs/schemas/event.schema.json's text: :func:`raw_event_schema`, indented, newline-ended."""
    return json.dumps(raw_event_schema(ingest), indent=2, ensure_ascii=True) + "\n"


if __name__ == "__main__":  # python -m streamrec.core.records > docs/schemas/event.schema.json
    print(schema_text(), end="")
