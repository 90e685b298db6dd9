"""The ingestion job on a crafted stream: exact DLQ counts per reason, exact survivors, exact late
flags, input = cleaned + dlq + duplicates, and a batch of random byte strings that all end in
events.clean or events.dlq; then the features job over its clean events: features equal to a
plain-Python computation."""

import json
import random

import pytest

from streamrec.flink_jobs import features, ingest
from streamrec.runtime.kafka_io import ensure_topics, producer
from streamrec.udfs.features import event_weight, window_features
from streamrec.udfs.validation import CleanEvent, validate
from tests.support import read_records

pytestmark = pytest.mark.slow


T0 = 1_700_000_000_000
SETTINGS = {"watermark_delay_ms": 5_000, "dedup_horizon_ms": 120_000, "min_ts_ms": 1_000_000,
            "short_window_ms": 10_000, "long_window_ms": 60_000, "window_slide_ms": 10_000,
            "max_payload_bytes": 400, "dlq_payload_max_bytes": 64}
TYPES = ["view", "click", "cart", "purchase", "rating"]


def ev(i, ts, etype=None, **extra):
    etype = etype or TYPES[i % 5]
    doc = {"event_id": f"e{i}", "user_id": f"u{i % 4}", "item_id": f"i{i % 5}", "event_type": etype,
           "ts": ts}
    if etype.lower() == "rating":
        doc["rating"] = 1 + i % 5
    doc.update(extra)
    return json.dumps(doc).encode()


def crafted() -> tuple[list[bytes], dict[str, int], dict]:
    """Partition-0 stream, its expected DLQ reason counts, and expected facts."""
    recs = [ev(i, T0 + i * 2_000) for i in range(40)]             # e0..e39, T0 .. T0+78s
    recs[7] = ev(7, T0 + 14_000, etype=" CLICK ", user_id=" u3 ")  # cleaned: trimmed, lower-cased
    recs.append(ev(40, T0 + 77_000))                                # out of order, within the delay
    recs.append(ev(41, T0 + 10_000))                                # late (73 s behind)
    recs.append(ev(42, T0 + 72_000))                                # late: 72 <= 78 - 5 ... -> late
    recs.append(ev(5, T0 + 25_000))                                 # duplicate of e5, other window
    recs.append(ev(3, T0 + 6_000))                                  # duplicate of e3, same ts
    recs.append(ev(41, T0 + 79_000))                                # duplicate of a late event
    bad = {
        b"{not json": "malformed_json",
        b"": "empty_payload",
        b'{"event_id": "x"' + b" " * 400 + b"}": "oversized_payload",
        b"[1,2,3]": "not_an_object",
        json.dumps({"user_id": "u", "item_id": "i", "event_type": "view", "ts": T0}).encode():
            "missing_field:event_id",
        json.dumps({"event_id": "b1", "user_id": "u", "item_id": "i", "event_type": "rating",
                    "ts": T0}).encode(): "missing_field:rating",
        json.dumps({"event_id": "b2", "user_id": 5, "item_id": "i", "event_type": "view",
                    "ts": T0}).encode(): "wrong_type:user_id",
        json.dumps({"event_id": "b3", "user_id": "u", "item_id": "i", "event_type": "view",
                    "ts": "soon"}).encode(): "wrong_type:ts",
        json.dumps({"event_id": "b4", "user_id": "u", "item_id": " ", "event_type": "view",
                    "ts": T0}).encode(): "empty_id:item_id",
        json.dumps({"event_id": "b5", "user_id": "u", "item_id": "i", "event_type": "like",
                    "ts": T0}).encode(): "unknown_event_type",
        json.dumps({"event_id": "b6", "user_id": "u", "item_id": "i", "event_type": "rating",
                    "rating": 9, "ts": T0}).encode(): "rating_out_of_range",
        json.dumps({"event_id": "b7", "user_id": "u", "item_id": "i", "event_type": "view",
                    "ts": 4_000_000_000_000}).encode(): "ts_out_of_range",
        json.dumps({"event_id": "b8", "user_id": "u", "item_id": "i", "event_type": "view",
                    "ts": 5}).encode(): "ts_out_of_range",
    }
    # bad records in the middle; the far-future one must not move the watermark
    stream = recs[:20] + list(bad) + recs[20:]
    # event time jumps 200 s (beyond the 120 s horizon), then e0 comes again: the horizon is
    # processing time (state TTL), so it is still remembered and dropped
    stream += [ev(100, T0 + 200_000), ev(0, T0)]
    reasons: dict[str, int] = {}
    for r in bad.values():
        reasons[r] = reasons.get(r, 0) + 1
    return stream, reasons, {"duplicates": 4}


def produce_to(cfg, topic, partition, values):
    prod = producer(cfg)
    for value in values:
        prod.produce(topic, value=value, key=b"k", partition=partition)
    assert prod.flush(30) == 0


def test_ingest_exact_routing_dedup_late_and_features(cfg):
    cfg = cfg.model_copy(update={"ingest": cfg.ingest.model_copy(update=SETTINGS)})
    ensure_topics(cfg, ingest.ingestion_topics(cfg))
    stream, reasons, facts = crafted()
    rng = random.Random(7)
    fuzz = [bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 120))) for _ in range(150)]
    fuzz += [b'{"event_id":' + bytes(rng.getrandbits(8) for _ in range(20)) for _ in range(50)]
    produce_to(cfg, cfg.kafka.topics.raw, 0, stream)
    produce_to(cfg, cfg.kafka.topics.raw, 1, fuzz)

    summary = ingest.run(cfg, bounded=True)

    dlq = read_records(cfg, cfg.kafka.topics.dlq)
    clean = read_records(cfg, cfg.kafka.topics.clean)
    # -- the crafted partition: exact reasons, survivors, duplicates, late flags
    got_reasons: dict[str, int] = {}
    for d in dlq:
        if d["src_partition"] == 0:
            got_reasons[d["reason"]] = got_reasons.get(d["reason"], 0) + 1
    assert got_reasons == reasons
    clean0 = [c for c in clean if c["src_partition"] == 0]
    survivors = sorted((c["event_id"], c["ts"]) for c in clean0)
    expected = sorted([(f"e{i}", T0 + i * 2_000) for i in range(40) if i != 7] + [("e7", T0 + 14_000)]
                      + [("e40", T0 + 77_000), ("e41", T0 + 10_000), ("e42", T0 + 72_000),
                         ("e100", T0 + 200_000)])
    assert survivors == expected
    assert len(stream) == len(clean0) + sum(reasons.values()) + facts["duplicates"]
    e7 = next(c for c in clean0 if c["event_id"] == "e7")
    assert (e7["user_id"], e7["event_type"], e7["weight"]) == ("u3", "click", 0.5)
    offsets = {c["src_offset"] for c in clean0}
    assert len(offsets) == len(clean0) and all(c["src_partition"] == 0 for c in clean0)
    dl = next(d for d in dlq if d["reason"] == "oversized_payload")
    assert dl["truncated"] and dl["payload_bytes"] > 400 and len(dl["payload"].encode()) <= 64
    assert all(d["ingest_ts"] > T0 for d in dlq)
    # -- the fuzz partition: every random byte string is in exactly one place, as validate() says
    fuzz_dlq = {d["src_offset"]: d["reason"] for d in dlq if d["src_partition"] == 1}
    fuzz_clean = {c["src_offset"] for c in clean if c["src_partition"] == 1}
    assert len(fuzz_dlq) + len(fuzz_clean) == len(fuzz)
    for offset, payload in enumerate(fuzz):
        verdict = validate(payload, 1, offset, None, cfg.ingest)
        assert (offset in fuzz_clean) if isinstance(verdict, CleanEvent) else fuzz_dlq[offset] == verdict.reason
    # -- summary line counts
    assert summary.duplicates == facts["duplicates"]
    assert summary.late == 2  # e41 and e42 (a duplicate of a late event is a duplicate)
    assert {c["event_id"] for c in clean0 if c["late"]} == {"e41", "e42"}
    assert summary.parsed == len(stream) + len(fuzz)
    assert summary.dlq == len(dlq) and summary.cleaned == len(clean)
    # -- features (their own job, over events.clean): equal to the plain-Python computation over
    # the non-late cleaned events
    features.run(cfg, bounded=True)
    late_ids = {("e41", T0 + 10_000), ("e42", T0 + 72_000), ("e0", T0)}
    feature_events = [c for c in clean0 if (c["event_id"], c["ts"]) not in late_ids or
                      (c["event_id"] == "e0" and c["src_offset"] < 5)]
    for c in feature_events:
        assert c["weight"] == pytest.approx(event_weight(c["event_type"], c["rating"], cfg.ingest))
    for topic, key in ((cfg.kafka.topics.features_user, "user_id"),
                       (cfg.kafka.topics.features_item, "item_id")):
        got = sorted(read_records(cfg, topic), key=lambda r: (r[key], r["window_end"]))
        want = window_features(feature_events, cfg.ingest, key)
        assert len(got) == len(want)
        for g, w in zip(got, want):
            assert g.keys() == w.keys()
            assert g == pytest.approx(w), (g, w)


#: Which raw partition holds each quarter of the backlog's time.
QUARTER_PARTITION = (0, 2, 3, 1)


def test_feature_windows_are_complete_under_a_backlog(cfg):
    """A backlog over four partitions: the source reader drains one partition's fetch at a time,
    so the others sit silent for seconds. With source idleness (2 s, as before 2026-12-01) the
    watermark jumped past their queued events and the windows dropped them silently (474 of
    1,890 user rows came out); every row must be there, equal to the reference.

    Each raw partition holds a quarter of the stream's time (out of order: the last quarter in
    partition 1), so each partition of events.clean (keyed by user) holds events of all four quarters in
    the order the ingestion read them, chunk after chunk: a watermark of the features job's own
    from `ts` would jump to the last quarter and make the earlier ones late there (checked: it
    loses rows); the pipeline's watermark the clean events carry must lose none."""
    from streamrec.runtime import assets
    from streamrec import replay

    events = replay.ml100k_events(assets.ml100k_dir(cfg))[:20_000]
    ensure_topics(cfg, ingest.ingestion_topics(cfg))
    prod = producer(cfg)
    for i, e in enumerate(events):
        prod.produce(cfg.kafka.topics.raw, value=json.dumps(e).encode(), key=e["user_id"].encode(),
                     partition=QUARTER_PARTITION[i * 4 // len(events)])
    assert prod.flush(60) == 0

    summary = ingest.run(cfg, bounded=True)
    features.run(cfg, bounded=True)

    assert summary.cleaned == len(events) and summary.late == 0
    weighted = [{**e, "weight": event_weight(e["event_type"], e["rating"], cfg.ingest)} for e in events]
    for topic, key in ((cfg.kafka.topics.features_user, "user_id"),
                       (cfg.kafka.topics.features_item, "item_id")):
        got = sorted(read_records(cfg, topic), key=lambda r: (r[key], r["window_end"]))
        want = window_features(weighted, cfg.ingest, key)
        assert len(got) == len(want), (topic, len(got), len(want))
        for g, w in zip(got, want):
            assert g == pytest.approx(w), (g, w)
