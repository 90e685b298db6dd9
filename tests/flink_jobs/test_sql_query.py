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


@pytest.mark.parametrize("statement", [
    "INSERT INTO recommendations SELECT * FROM recommendations",
    "insert into events_raw values ('x')",
    "CREATE TABLE t (a INT) WITH ('connector' = 'kafka', 'topic' = 'recommendations')",
    "DROP TABLE recommendations",
    "SELECT 1; INSERT INTO events_raw VALUES ('x')",
    "SELECT * FROM recommendations /*+ OPTIONS('properties.bootstrap.servers'='other:9092') */",
    "EXECUTE STATEMENT SET BEGIN INSERT INTO a SELECT 1; END",
    "SET 'table.exec.sink.not-null-enforcer' = 'DROP'",
])
def test_sql_is_read_only_by_default(statement, capsys):
    """Refused before anything connects: no broker is needed to be told no."""
    from streamrec.cli import main

    assert main(["sql", statement]) == 1
    err = capsys.readouterr().err
    assert "read-only" in err or "one statement" in err, err
    assert "--allow-write" in err or "one statement" in err


@pytest.mark.parametrize("statement", [
    "SELECT 'INSERT INTO x' AS s", "WITH a AS (SELECT 1 AS x) SELECT * FROM a", "SHOW TABLES",
    "DESCRIBE recommendations", "EXPLAIN SELECT * FROM events_clean", "SELECT 1 -- ; DROP TABLE x",
])
def test_read_only_statements_pass_the_check(statement):
    from flink_jobs.sql_query import check_read_only

    check_read_only(statement)
