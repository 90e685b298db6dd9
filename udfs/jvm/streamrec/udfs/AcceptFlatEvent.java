package streamrec.udfs;

import org.apache.flink.table.annotation.DataTypeHint;
import org.apache.flink.table.functions.ScalarFunction;
import org.apache.flink.types.Row;

/**
 * {@code accept_flat_event(payload, now_ms, min_ts_ms, max_future_ms, rating_min, rating_max,
 * max_payload_bytes, max_id_chars)}: the cleaned event of a plain record (and its size in bytes),
 * or NULL when the Python UDF {@code validate_event} must decide it ({@link FlatEventParser}; sql/ingest.sql
 * routes by it). Deterministic: the clock is an argument, so both routes see the same one. The row
 * is the clean event's fields that validation decides (core/records.py VALIDATED_FIELDS, with
 * their types; tests/udfs/test_flat_event_parser.py checks) and the payload's size.
 */
public final class AcceptFlatEvent extends ScalarFunction {

    @DataTypeHint("ROW<event_id STRING, user_id STRING, item_id STRING, event_type STRING, rating DOUBLE, "
        + "ts BIGINT, payload_bytes INT>")
    public Row eval(byte[] payload, Long nowMs, Long minTsMs, Long maxFutureMs,
                    Double ratingMin, Double ratingMax, Integer maxPayloadBytes, Integer maxIdChars) {
        if (nowMs == null) {
            return null;
        }
        FlatEventParser.Event e = FlatEventParser.parse(payload, nowMs, minTsMs, maxFutureMs,
            ratingMin, ratingMax, maxPayloadBytes, maxIdChars);
        return e == null ? null : Row.of(e.eventId, e.userId, e.itemId, e.eventType, e.rating, e.ts, payload.length);
    }
}
