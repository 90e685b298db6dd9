"""`streamrec sql`: exact rows for a known stream in events.clean; a bad statement is one line;
read-only is Flink's parser and planner, so no spelling of a write or an OPTIONS hint gets by."""

import time

import pytest

from streamrec.flink_jobs.sql_query import (DYNAMIC_OPTIONS, QueryError, check_read_only, query_environment,
                                  run_query)
from streamrec.core.config import to_env
from streamrec.core.records import CLEAN_EVENT, RECOMMENDATION
from streamrec.runtime.kafka_io import ensure_topics, producer
from tests.support import free_port, make_config

pytestmark = pytest.mark.slow

# Nothing listens there: a statement that reached it would hang in Kafka's retries, not fail fast.
UNREACHABLE = "127.0.0.1:1"
HINT = f"'properties.bootstrap.servers'='{UNREACHABLE}'"

# Every one is an OPTIONS hint Calcite applies (test_hint_spellings_are_real_hints): the lexical
# check let the first one through.
HINT_BYPASSES = [
    f"SELECT * FROM events_raw /*+ `OPTIONS`({HINT}) */",
    f"select * from events_raw /*+ options({HINT}) */",
    f"SELECT * FROM events_raw /*+OPTIONS({HINT})*/",
    "SELECT * FROM events_raw /*+ OPTIONS(\n  -- a comment\n  'properties.bootstrap.servers' "
    f"/* another */\n  = '{UNREACHABLE}') */",
    f"SELECT * FROM events_raw /*+ BROADCAST(events_raw), OPTIONS({HINT}) */",
    f"SELECT * FROM (SELECT payload FROM events_raw /*+ OPTIONS({HINT}) */) AS s",
    f"SELECT c.user_id FROM events_clean AS c JOIN events_raw /*+ OPTIONS({HINT}) */ AS r "
    "ON c.event_id = r.payload",
    f"WITH r AS (SELECT * FROM events_raw /*+ OPTIONS({HINT}) */) SELECT * FROM r",
    f"SELECT (SELECT COUNT(*) FROM features_item_log /*+ OPTIONS({HINT}) */) AS n",
    "EXPLAIN SELECT * FROM `events_raw` /*+ OPTIONS(`properties.bootstrap.servers`="
    f"'{UNREACHABLE}') */",
]

READ_ONLY = "pass --allow-write to run it"
REFUSED = [(s, "OPTIONS hints are refused") for s in HINT_BYPASSES] + [
    ("SELECT 1; INSERT INTO events_raw VALUES ('x')", "one statement at a time"),
    ("SELECT 1; SELECT 2", "one statement at a time"),
    (f"SET '{DYNAMIC_OPTIONS}' = 'true'", "as SetOperation"),
    ("RESET", "as ResetOperation"),
    ("CREATE TEMPORARY TABLE t (a INT) WITH ('connector' = 'kafka', 'topic' = 'recommendations')",
     "as CreateTableOperation"),
    ("CREATE TABLE t AS SELECT * FROM events_raw", "as CreateTableASOperation"),
    ("DROP TEMPORARY VIEW features_user", "as DropViewOperation"),
    (f"ALTER TABLE events_raw SET ({HINT})", "as AlterTableChangeOperation"),
    ("INSERT INTO events_raw VALUES ('x')", "as SinkModifyOperation"),
    ("insert into recommendations select * from recommendations", "as SinkModifyOperation"),
    ("EXECUTE STATEMENT SET BEGIN INSERT INTO events_raw VALUES ('x'); END",
     "as StatementSetOperation"),
    ("EXPLAIN INSERT INTO events_raw VALUES ('x')", "as ExplainOperation of SinkModifyOperation"),
    ("COMPILE PLAN 'plan.json' FOR INSERT INTO events_raw VALUES ('x')", "as CompilePlanOperation"),
    ("ADD JAR 'evil.jar'", "as AddJarOperation"),
    ("LOAD MODULE hive", "as LoadModuleOperation"),
    ("USE CATALOG default_catalog", "as UseCatalogOperation"),
    # the in-memory catalog has no procedures: the parser refuses it before classification would
    ("CALL `default_catalog`.`system`.`p`(1)", "getProcedure is not implemented"),
]


@pytest.fixture(scope="module")
def unreachable_cfg(tmp_path_factory):
    """A config whose tables point where nothing listens: no test here needs a broker."""
    return make_config(tmp_path_factory.mktemp("sql-state"), free_port(),
                       **{"kafka.bootstrap_servers": UNREACHABLE})


@pytest.fixture(scope="module")
def query_env(unreachable_cfg):
    """One TableEnvironment for every classification (starting one costs seconds)."""
    return query_environment(unreachable_cfg)


def test_sql_front_door_exact_rows_and_clean_errors(cfg, capsys):
    ensure_topics(cfg, [cfg.kafka.topics.clean])
    prod = producer(cfg)
    for i in range(12):
        prod.produce(cfg.kafka.topics.clean, key=f"u{i % 3}".encode(), value=CLEAN_EVENT.encode(
            event_id=f"e{i}", user_id=f"u{i % 3}", item_id=f"i{i % 4}", event_type="view", rating=None,
            weight=0.25, ts=1_000 + i, src_partition=0, src_offset=i, late=i == 11, ingest_watermark_ms=None))
    assert prod.flush(30) == 0
    columns, rows = run_query(cfg, "SELECT user_id, COUNT(*) AS n, SUM(weight) AS w FROM events_clean "
                                   "GROUP BY user_id ORDER BY user_id")
    assert columns == ["user_id", "n", "w"]
    assert rows == [("u0", 4, 1.0), ("u1", 4, 1.0), ("u2", 4, 1.0)]
    _, rows = run_query(cfg, "SELECT event_id FROM events_clean WHERE late")  # every column of the record
    assert rows == [("e11",)]
    _, rows = run_query(cfg, "SHOW TABLES;")  # not a query: read-only runs it all the same
    assert ("events_clean",) in rows and ("features_item",) in rows
    with pytest.raises(QueryError) as err:
        run_query(cfg, "SELECT nope FROM events_clean")
    assert "Column 'nope' not found" in str(err.value) and "\tat " not in str(err.value)


def test_the_recommendations_table_reads_the_shards_records(cfg):
    from streamrec.udfs.online_mf import LearnerParams
    from streamrec.udfs.shard_model import Event, ShardModel, ShardSettings

    # the stream's first event has nothing to recommend (a `none` record), the second gets a list
    shard = ShardModel(LearnerParams.of(None, dim=4, seed=1), ShardSettings(top_k=3))
    out = shard.process([Event("e0", "u1", "i0", 1.0, 0, 0, 0), Event("e1", "u2", "i1", 1.0, 1, 0, 1)], {}, now_ms=1)
    ensure_topics(cfg, [cfg.kafka.topics.recommendations])
    prod = producer(cfg)
    for rec in out.recommendations:
        prod.produce(cfg.kafka.topics.recommendations, key=rec["user_id"].encode(), value=RECOMMENDATION.encode(rec))
    assert prod.flush(30) == 0
    _, rows = run_query(cfg, "SELECT source_event_id, strategy, reason, CARDINALITY(items) AS n, batch_size "
                             "FROM recommendations ORDER BY source_offset")
    assert rows == [("e0", "none", "user_had_every_item", 0, 1), ("e1", "model", None, 1, 1)]


def test_a_record_that_drifted_from_its_declaration_is_an_error_not_a_skipped_row(cfg):
    """The query tables no longer skip what does not parse ('json.ignore-parse-errors' is gone):
    every writer encodes through core/records.py, so such a record is a bug to show."""
    ensure_topics(cfg, [cfg.kafka.topics.recommendations])
    prod = producer(cfg)
    prod.produce(cfg.kafka.topics.recommendations, key=b"u9", value=b'{"user_id": "u9", "batch_size": "many"}')
    assert prod.flush(30) == 0
    with pytest.raises(QueryError):
        run_query(cfg, "SELECT user_id, batch_size FROM recommendations")


@pytest.mark.parametrize("statement, why", REFUSED)
def test_writes_and_hints_are_refused_before_anything_connects(query_env, statement, why):
    started = time.monotonic()
    with pytest.raises(QueryError) as err:
        check_read_only(query_env, statement)
    assert why in str(err.value), err.value
    if "getProcedure" not in why:
        assert READ_ONLY in str(err.value) or "one statement" in why, err.value
    assert "\n" not in str(err.value)
    assert time.monotonic() - started < 10, "a refusal is a parse, not a connection attempt"


@pytest.mark.parametrize("statement", [
    "SELECT 'INSERT INTO x; DROP TABLE y' AS s",
    f"SELECT '/*+ OPTIONS({HINT.replace(chr(39), chr(39) * 2)}) */' AS hint_in_a_literal",
    "WITH a AS (SELECT 1 AS x) SELECT * FROM a",
    "VALUES (1, 'a'), (2, 'b')",
    "SELECT 1 -- ; DROP TABLE x",
    "SELECT /*+ BROADCAST(r) */ c.user_id FROM events_clean AS c JOIN events_raw AS r "
    "ON c.event_id = r.payload",
    "SELECT * FROM features_item ORDER BY popularity DESC LIMIT 10",
    "SHOW TABLES", "SHOW CREATE TABLE recommendations", "DESCRIBE events_clean",
    "DESC features_user",
    "EXPLAIN SELECT * FROM events_clean",
])
def test_read_only_statements_pass_the_check(query_env, statement):
    check_read_only(query_env, statement)


@pytest.mark.parametrize("statement", HINT_BYPASSES)
def test_hint_spellings_are_real_hints(query_env, statement):
    """The control: with hints allowed, Flink plans each spelling with the hinted address."""
    query_env.get_config().set(DYNAMIC_OPTIONS, "true")
    try:
        plan = query_env.explain_sql(statement.removeprefix("EXPLAIN "))
    finally:
        query_env.get_config().set(DYNAMIC_OPTIONS, "false")
    assert UNREACHABLE in plan


@pytest.mark.parametrize("statement, why", [
    (HINT_BYPASSES[0], "OPTIONS hints are refused"),
    ("INSERT INTO events_raw VALUES ('x')", "as SinkModifyOperation"),
])
def test_cli_refuses_before_starting_or_reaching_a_broker(unreachable_cfg, monkeypatch, capsys,
                                                          statement, why):
    """`streamrec sql` checks before it reaches Kafka: here a broker it reached would not answer,
    and the refusal is still ours and prompt."""
    from streamrec.cli import main

    for key, value in to_env(unreachable_cfg).items():
        monkeypatch.setenv(key, value)
    started = time.monotonic()
    assert main(["sql", statement]) == 1
    err = capsys.readouterr().err
    assert why in err and "--allow-write" in err, err
    assert time.monotonic() - started < 60
