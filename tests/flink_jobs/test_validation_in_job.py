"""Validation through the running job equals validate(), record by record.

The job validates plain records in the JVM (the fast path, accept_flat_event, sql/ingest.sql)
and hands every other one to validate() through the UDF. This test sends records of every kind
(tests/validation_corpus.py: types, sizes, unicode, whitespace, escapes, NaN, huge numbers,
duplicate keys, nesting, broken bytes) with
Kafka record timestamps of every kind, and checks each record's outcome by its offset: in
events.clean with validate()'s cleaned fields, or in events.dlq with validate()'s reason. The
job runs with no restarts allowed, so a record that made any operator throw would fail it.
"""

import time

import pytest

from streamrec.flink_jobs import ingest
from streamrec.core.records import VALIDATED_FIELDS
from streamrec.runtime.kafka_io import ensure_topics, producer
from tests.support import read_records
from tests.validation_corpus import FIXED, ID_CASES, RECORD_TIMESTAMPS, SETTINGS, bound_cases, hypothesis_records
from streamrec.udfs.validation import CleanEvent, validate

pytestmark = pytest.mark.slow


def produce_recorded(cfg, topic: str, records: list[tuple[bytes, int | None]]) -> dict[int, bytes]:
    """Produce to partition 0 with the given record timestamps; returns offset -> payload."""
    delivered, failed = {}, []
    prod = producer(cfg)
    for payload, ts in records:
        def done(err, msg, payload=payload):
            (failed.append(err) if err is not None else delivered.__setitem__(msg.offset(), payload))
        kwargs = {"timestamp": ts} if ts is not None else {}
        prod.produce(topic, value=payload, key=b"k", partition=0, on_delivery=done, **kwargs)
    assert prod.flush(60) == 0
    assert not failed, failed[:3]
    return delivered


def test_every_record_gets_the_verdict_of_validate(cfg):
    cfg = cfg.model_copy(update={"ingest": cfg.ingest.model_copy(update=SETTINGS),
                                 "flink": cfg.flink.model_copy(update={"restart_attempts": 0})})
    ensure_topics(cfg, ingest.ingestion_topics(cfg))
    payloads = FIXED + hypothesis_records(600)
    stamps = [RECORD_TIMESTAMPS[n % len(RECORD_TIMESTAMPS)] for n in range(len(payloads))]
    bounds = bound_cases(int(time.time() * 1000))
    sent = produce_recorded(cfg, cfg.kafka.topics.raw, list(zip(payloads, stamps)) + bounds)
    assert len(sent) == len(payloads) + len(bounds)

    ingest.run(cfg, bounded=True)  # no restart allowed: any exception in an operator fails this

    clean = {c["src_offset"]: c for c in read_records(cfg, cfg.kafka.topics.clean)}
    dlq_records = {d["src_offset"]: d for d in read_records(cfg, cfg.kafka.topics.dlq)}
    dlq = {o: d["reason"] for o, d in dlq_records.items()}
    assert not clean.keys() & dlq.keys()
    lost = {o: p for o, p in sent.items() if o not in clean and o not in dlq}
    assert not lost and len(clean) + len(dlq) == len(sent), \
        {o: (p, validate(p, 0, o, int(time.time() * 1000), cfg.ingest)) for o, p in lost.items()}
    now = int(time.time() * 1000)
    valid = 0
    for offset, payload in sent.items():
        verdict = validate(payload, 0, offset, now, cfg.ingest)
        if isinstance(verdict, CleanEvent):
            got = clean.get(offset)
            assert got is not None, (payload, dlq.get(offset))
            assert CleanEvent(**{f: got[f] for f in VALIDATED_FIELDS}) == verdict, payload
            valid += 1
        else:
            assert dlq.get(offset) == verdict.reason, (payload, clean.get(offset))
    verdicts = {p: (clean[o]["event_id"] if o in clean else dlq[o]) for o, p in sent.items()}
    assert [verdicts[p] for p, _ in bounds] == ["ts_out_of_range", "b2"]
    # the id contract by the reasons it names, not only validate()'s verdict: through either route,
    # a NUL-terminated item id (once accepted) and a 16,000-character one reach events.dlq
    offsets = {p: o for o, p in sent.items()}
    for payload, reason in ID_CASES:
        offset = offsets[payload]
        assert (None if offset in clean else dlq.get(offset)) == reason, (payload[:80], clean.get(offset))
    huge = dlq_records[offsets[next(p for p, r in ID_CASES if len(p) > 16_000)]]
    assert huge["reason"] == "id_too_long:item_id" and huge["truncated"] and huge["payload_bytes"] > 16_000
    # the stream exercises both outcomes in numbers
    assert valid >= 50 and len(dlq) >= 200, (valid, len(dlq))
