"""`streamrec sql`: exact rows for a known stream in events.clean; a bad statement is one line."""

import json

import pytest

from flink_jobs.sql_query import QueryError, run_query
from streamrec import cli
from streamrec.kafka_io import ensure_topics, producer

pytestmark = pytest.mark.slow


def test_sql_front_door_exact_rows_and_clean_errors(cfg, capsys):
    ensure_topics(cfg, [cfg.kafka.topics.clean])
    prod = producer(cfg)
    for i in range(12):
        prod.produce(cfg.kafka.topics.clean, key=f"u{i % 3}".encode(), value=json.dumps({
            "event_id": f"e{i}", "user_id": f"u{i % 3}", "item_id": f"i{i % 4}", "event_type": "view",
            "rating": None, "weight": 0.25, "ts": 1_000 + i, "src_partition": 0, "src_offset": i}).encode())
    assert prod.flush(30) == 0
    columns, rows = run_query(cfg, "SELECT user_id, COUNT(*) AS n, SUM(weight) AS w FROM events_clean "
                                   "GROUP BY user_id ORDER BY user_id")
    assert columns == ["user_id", "n", "w"]
    assert rows == [("u0", 4, 1.0), ("u1", 4, 1.0), ("u2", 4, 1.0)]
    with pytest.raises(QueryError) as err:
        run_query(cfg, "SELECT nope FROM events_clean")
    assert "Column 'nope' not found" in str(err.value) and "\tat " not in str(err.value)
