package streamrec.udfs;

import java.io.BufferedReader;
import java.io.InputStreamReader;
import java.nio.charset.StandardCharsets;
import java.util.Base64;

/**
 * The JVM fast path of event validation: accepts the common, plain records and leaves every other
 * one to the Python definition, {@code udfs/validation.py validate()}.
 *
 * <p>{@link #parse} returns the cleaned event only for a record {@code validate()} accepts with
 * exactly these cleaned fields, and {@code null} for every other record (never a verdict of its
 * own: each rejection and its reason stays {@code validate()}'s). It takes a payload that is one
 * flat JSON object (scalar values only) of printable ASCII, with no backslash anywhere (so no key
 * or value hides behind an escape), each of the six keys it reads at most once, ids that are
 * non-empty after trimming spaces and at most {@code maxIdChars} code points long (printable ASCII
 * holds no control character, so validate()'s control_char rule holds too), a known event type
 * (trimmed, lower-cased), an integer {@code ts} of at most 18 digits inside the bounds, and for a
 * rating event a non-negative rating inside the bounds. Inside such strings the only whitespace is a space, so trimming spaces is
 * Python's {@code str.strip()}; {@code Double.parseDouble} rounds a decimal literal as Python's
 * {@code float()} does.
 *
 * <p>{@code main} reads {@code <base64 payload> <now_ms>} lines and prints one verdict per line, so
 * a test can compare this parser with {@code validate()} on many payloads without a Flink job.
 */
public final class FlatEventParser {

    /** A record the fast path accepts: {@code validate()}'s CleanEvent. */
    public static final class Event {
        public final String eventId, userId, itemId, eventType;
        public final Double rating; // null unless a rating event
        public final long ts;

        Event(String eventId, String userId, String itemId, String eventType, Double rating, long ts) {
            this.eventId = eventId;
            this.userId = userId;
            this.itemId = itemId;
            this.eventType = eventType;
            this.rating = rating;
            this.ts = ts;
        }
    }

    // The raw event's keys and event types as core/records.py declares them (RAW_EVENT, in its
    // order: the three ids and the event type first; EVENT_TYPES); tests/udfs/test_flat_event_parser.py
    // holds these lists to the declaration.
    private static final String[] KEYS = {"event_id", "user_id", "item_id", "event_type", "ts", "rating"};
    private static final String[] EVENT_TYPES = {"view", "click", "cart", "purchase", "rating"};
    private static final int TS = java.util.Arrays.asList(KEYS).indexOf("ts");
    private static final int RATING = java.util.Arrays.asList(KEYS).indexOf("rating");
    private static final byte NONE = 0, STRING = 1, INTEGER = 2, DECIMAL = 3, NULL = 4, OTHER = 5;

    private FlatEventParser() {
    }

    /** The cleaned event, or null: {@code validate()} decides this record. */
    public static Event parse(byte[] p, long nowMs, long minTsMs, long maxFutureMs,
                              double ratingMin, double ratingMax, int maxPayloadBytes, int maxIdChars) {
        if (p == null || p.length == 0 || p.length > maxPayloadBytes) {
            return null;
        }
        int n = p.length;
        byte[] kinds = new byte[KEYS.length];
        int[] starts = new int[KEYS.length], ends = new int[KEYS.length];
        int i = skipSpace(p, 0);
        if (i >= n || p[i] != '{') {
            return null;
        }
        i = skipSpace(p, i + 1);
        if (i < n && p[i] == '}') {
            return null; // no fields: validate() names the first missing one
        }
        while (true) {
            if (i >= n || p[i] != '"') {
                return null;
            }
            int keyEnd = stringEnd(p, i + 1);
            if (keyEnd < 0) {
                return null;
            }
            int key = keyIndex(p, i + 1, keyEnd);
            i = skipSpace(p, keyEnd + 1);
            if (i >= n || p[i] != ':') {
                return null;
            }
            i = skipSpace(p, i + 1);
            if (i >= n) {
                return null;
            }
            int start = i;
            byte kind;
            byte c = p[i];
            if (c == '"') {
                int end = stringEnd(p, i + 1);
                if (end < 0) {
                    return null;
                }
                kind = STRING;
                start = i + 1;
                i = end; // the closing quote: [start, end) is the text
            } else if (c == '-' || (c >= '0' && c <= '9')) {
                int end = numberEnd(p, i);
                if (end < 0) {
                    return null;
                }
                kind = isInteger(p, i, end) ? INTEGER : DECIMAL;
                i = end;
            } else if (literal(p, i, "null")) {
                kind = NULL;
                i += 4;
            } else if (literal(p, i, "true")) {
                kind = OTHER;
                i += 4;
            } else if (literal(p, i, "false")) {
                kind = OTHER;
                i += 5;
            } else {
                return null; // a nested value, NaN, or not JSON
            }
            if (key >= 0) {
                if (kinds[key] != NONE) {
                    return null; // a repeated key: validate() would take the last one
                }
                kinds[key] = kind;
                starts[key] = start;
                ends[key] = i;
            }
            if (kind == STRING) {
                i++;
            }
            i = skipSpace(p, i);
            if (i < n && p[i] == ',') {
                i = skipSpace(p, i + 1);
                continue;
            }
            if (i < n && p[i] == '}') {
                if (skipSpace(p, i + 1) != n) {
                    return null;
                }
                break;
            }
            return null;
        }
        String[] text = new String[4];
        for (int k = 0; k < 4; k++) {
            if (kinds[k] != STRING) {
                return null;
            }
            int s = starts[k], e = ends[k];
            while (s < e && p[s] == ' ') {
                s++;
            }
            while (e > s && p[e - 1] == ' ') {
                e--;
            }
            if (s == e) {
                return null;
            }
            text[k] = new String(p, s, e - s, StandardCharsets.US_ASCII);
            // code points, as Python's len(): one per byte here, but not UTF-16 units if the
            // accepted alphabet ever grows past ASCII (an emoji outside the BMP is two of those)
            if (k < 3 && text[k].codePointCount(0, text[k].length()) > maxIdChars) {
                return null; // id_too_long
            }
        }
        String eventType = knownEventType(text[3]);
        if (eventType == null || kinds[TS] != INTEGER || ends[TS] - starts[TS] > 18) {
            return null;
        }
        long ts = Long.parseLong(new String(p, starts[TS], ends[TS] - starts[TS], StandardCharsets.US_ASCII));
        if (ts < minTsMs || ts > nowMs + maxFutureMs) {
            return null;
        }
        byte ratingKind = kinds[RATING];
        if (ratingKind != NONE && ratingKind != NULL && ratingKind != INTEGER && ratingKind != DECIMAL) {
            return null; // a string or a boolean rating: wrong_type:rating, whatever the event type
        }
        Double rating = null;
        if (eventType.equals("rating")) {
            if (ratingKind == NONE || ratingKind == NULL || p[starts[RATING]] == '-') {
                return null; // missing, or negative (a JSON -0 is 0 to Python, -0.0 to Java)
            }
            double value = Double.parseDouble(
                new String(p, starts[RATING], ends[RATING] - starts[RATING], StandardCharsets.US_ASCII));
            if (!(value >= ratingMin && value <= ratingMax)) {
                return null;
            }
            rating = value;
        }
        return new Event(text[0], text[1], text[2], eventType, rating, ts);
    }

    private static int skipSpace(byte[] p, int i) {
        while (i < p.length && (p[i] == ' ' || p[i] == '\t' || p[i] == '\n' || p[i] == '\r')) {
            i++;
        }
        return i;
    }

    /** Index of the closing quote of a string starting at i, or -1 for an escape, a control or a
     * non-ASCII character, or no end. */
    private static int stringEnd(byte[] p, int i) {
        for (; i < p.length; i++) {
            byte c = p[i];
            if (c == '"') {
                return i;
            }
            if (c == '\\' || c < 0x20 || c == 0x7f) { // bytes >= 0x80 are negative
                return -1;
            }
        }
        return -1;
    }

    /** End of a JSON number starting at i (the grammar of RFC 8259), or -1; also -1 for one of
     * more than 64 characters (Python refuses an integer of over 4,300 digits as malformed). */
    private static int numberEnd(byte[] p, int start) {
        int end = numberEndAnyLength(p, start);
        return end - start > 64 ? -1 : end;
    }

    private static int numberEndAnyLength(byte[] p, int i) {
        int n = p.length;
        if (i < n && p[i] == '-') {
            i++;
        }
        if (i >= n) {
            return -1;
        }
        if (p[i] == '0') {
            i++;
        } else if (p[i] >= '1' && p[i] <= '9') {
            while (i < n && p[i] >= '0' && p[i] <= '9') {
                i++;
            }
        } else {
            return -1;
        }
        if (i < n && p[i] == '.') {
            int digits = ++i;
            while (i < n && p[i] >= '0' && p[i] <= '9') {
                i++;
            }
            if (i == digits) {
                return -1;
            }
        }
        if (i < n && (p[i] == 'e' || p[i] == 'E')) {
            i++;
            if (i < n && (p[i] == '+' || p[i] == '-')) {
                i++;
            }
            int digits = i;
            while (i < n && p[i] >= '0' && p[i] <= '9') {
                i++;
            }
            if (i == digits) {
                return -1;
            }
        }
        return i;
    }

    private static boolean isInteger(byte[] p, int start, int end) {
        for (int i = start; i < end; i++) {
            if (p[i] == '.' || p[i] == 'e' || p[i] == 'E') {
                return false;
            }
        }
        return true;
    }

    private static boolean literal(byte[] p, int i, String word) {
        if (i + word.length() > p.length) {
            return false;
        }
        for (int k = 0; k < word.length(); k++) {
            if (p[i + k] != word.charAt(k)) {
                return false;
            }
        }
        return true;
    }

    private static int keyIndex(byte[] p, int start, int end) {
        for (int k = 0; k < KEYS.length; k++) {
            if (literal(p, start, KEYS[k]) && end - start == KEYS[k].length()) {
                return k;
            }
        }
        return -1;
    }

    private static String knownEventType(String raw) {
        String lower = raw.toLowerCase(java.util.Locale.ROOT); // ASCII only here: Python's lower()
        for (String type : EVENT_TYPES) {
            if (type.equals(lower)) {
                return type;
            }
        }
        return null;
    }

    /**
     * Verdicts for a differential test: arguments min_ts_ms max_future_ms rating_min rating_max
     * max_payload_bytes max_id_chars; stdin lines {@code <base64 payload> <now_ms>}; stdout one
     * line each, "-" (left to validate()) or the tab-separated event_id, user_id, item_id, event_type, rating
     * ("-" for none, else Java's Double.toString), ts.
     */
    public static void main(String[] args) throws Exception {
        long minTs = Long.parseLong(args[0]), maxFuture = Long.parseLong(args[1]);
        double ratingMin = Double.parseDouble(args[2]), ratingMax = Double.parseDouble(args[3]);
        int maxBytes = Integer.parseInt(args[4]), maxIdChars = Integer.parseInt(args[5]);
        BufferedReader in = new BufferedReader(new InputStreamReader(System.in, StandardCharsets.US_ASCII));
        StringBuilder out = new StringBuilder();
        for (String line; (line = in.readLine()) != null; ) {
            String[] parts = line.split(" ");
            byte[] payload = Base64.getDecoder().decode(parts[0]);
            Event e = parse(payload, Long.parseLong(parts[1]), minTs, maxFuture, ratingMin, ratingMax, maxBytes,
                maxIdChars);
            if (e == null) {
                out.append("-\n");
            } else {
                out.append(e.eventId).append('\t').append(e.userId).append('\t').append(e.itemId).append('\t')
                    .append(e.eventType).append('\t').append(e.rating == null ? "-" : e.rating.toString())
                    .append('\t').append(e.ts).append('\n');
            }
        }
        System.out.print(out);
    }
}
