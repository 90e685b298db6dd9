"""The dedup reference: first occurrence kept, duplicates inside the horizon dropped, state bounded."""

from udfs.dedup import Deduplicator


def test_duplicate_inside_horizon_dropped_across_window_boundaries():
    d = Deduplicator(horizon_ms=1_000)
    assert d.offer("a", 100)
    d.advance_watermark(1_099)  # still remembered: expiry = 1_100
    assert not d.offer("a", 5_000)  # a later copy with any ts is a duplicate
    d.advance_watermark(1_100)
    assert d.offer("a", 5_000)  # beyond the horizon: kept again


def test_late_first_occurrence_is_remembered_for_a_full_horizon_from_the_watermark():
    d = Deduplicator(horizon_ms=1_000)
    d.advance_watermark(10_000)
    assert d.offer("old", 10)  # expiry = max(10, 10_000) + 1_000
    d.advance_watermark(10_999)
    assert not d.offer("old", 10)


def test_state_is_bounded_by_the_horizon_on_unique_ids():
    d = Deduplicator(horizon_ms=1_000)
    peak = 0
    for i in range(20_000):  # 10 ids per ms of event time, 20 s of event time
        ts = i // 10
        assert d.offer(f"id-{i}", ts)
        d.advance_watermark(ts - 1)
        peak = max(peak, len(d.state))
    assert peak <= 10 * 1_001 + 10  # rate x horizon, independent of the stream length
