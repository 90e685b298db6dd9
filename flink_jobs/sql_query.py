"""The SQL front door: run one Flink SQL statement over bounded reads of the streamrec topics.

    streamrec sql "SELECT item_id, popularity FROM features_item ORDER BY popularity DESC LIMIT 10"
    streamrec sql -f query.sql

Tables (sql/query_tables.sql): ``events_raw``, ``events_clean``, ``features_user``,
``features_item`` (latest row per id; ``features_user_log`` / ``features_item_log`` hold every
window row) and ``recommendations``. Reads are bounded at the end offsets present at start and
read_committed; the statement runs in BATCH mode. It is read-only unless ``allow_write``: only
SELECT / WITH / VALUES / SHOW / DESCRIBE / EXPLAIN, one statement, no ``OPTIONS`` hints (which
could point a table at another cluster or topic).
"""

from __future__ import annotations

import re

from flink_jobs.env import flink_configuration, kafka_source_options, render_sql
from streamrec.config import Config
from streamrec.kafka_io import ensure_topics

JOB_NAME = "streamrec-sql"


class QueryError(RuntimeError):
    """Flink rejected the statement; the message is Flink's, without the Java stack trace."""


def _flink_message(exc: Exception) -> str:
    text = str(exc)
    found = re.findall(r"(?:org\.apache\.[\w.]+\.)?(\w+Exception): (.+)", text)
    if found:
        name, msg = found[0]
        return f"{name}: {msg.strip()}"
    return text.strip().splitlines()[0] if text.strip() else type(exc).__name__


READ_ONLY_KEYWORDS = ("SELECT", "WITH", "VALUES", "SHOW", "DESCRIBE", "DESC", "EXPLAIN")


def _code_only(statement: str) -> str:
    """The statement with string literals, quoted identifiers and comments blanked out (hints
    ``/*+ ... */`` are kept: they change what a statement does)."""
    out, i, n = [], 0, len(statement)
    while i < n:
        ch, two = statement[i], statement[i:i + 2]
        if ch in "'`\"":
            end = i + 1
            while end < n:
                if statement[end] == ch:
                    if statement[end + 1:end + 2] == ch:  # doubled quote inside the literal
                        end += 2
                        continue
                    break
                end += 1
            out.append(" ")
            i = end + 1
        elif two == "--":
            end = statement.find("\n", i)
            i = n if end < 0 else end
        elif two == "/*" and statement[i + 2:i + 3] != "+":
            end = statement.find("*/", i + 2)
            i = n if end < 0 else end + 2
        else:
            out.append(ch)
            i += 1
    return "".join(out)


def check_read_only(statement: str) -> None:
    """Raise QueryError unless ``statement`` is one read-only statement.

    >>> check_read_only("SELECT 'a; DROP TABLE x' AS s -- ; INSERT")
    >>> check_read_only("  show tables")
    >>> check_read_only("INSERT INTO recommendations SELECT * FROM recommendations")
    Traceback (most recent call last):
    ...
    flink_jobs.sql_query.QueryError: streamrec sql is read-only: INSERT statements are refused (only SELECT, WITH, VALUES, SHOW, DESCRIBE, DESC, EXPLAIN); pass --allow-write to run it
    >>> check_read_only("SELECT * FROM events_raw /*+ OPTIONS('properties.bootstrap.servers'='evil:9092') */")
    Traceback (most recent call last):
    ...
    flink_jobs.sql_query.QueryError: streamrec sql is read-only: OPTIONS hints are refused (they can point a table at another cluster or topic); pass --allow-write to run it
    """
    code = _code_only(statement).strip().rstrip(";").strip()
    if ";" in code:
        raise QueryError("streamrec sql runs one statement at a time; found several (separated by ';')")
    words = code.split(None, 1)
    first = words[0].upper() if words else ""
    if first not in READ_ONLY_KEYWORDS:
        raise QueryError(f"streamrec sql is read-only: {first or 'empty'} statements are refused "
                         f"(only {', '.join(READ_ONLY_KEYWORDS)}); pass --allow-write to run it")
    if re.search(r"/\*\+.*\bOPTIONS\s*\(", code, re.I | re.S):
        raise QueryError("streamrec sql is read-only: OPTIONS hints are refused (they can point a "
                         "table at another cluster or topic); pass --allow-write to run it")
    if re.search(r"\b(INSERT|EXECUTE|CREATE|DROP|ALTER)\b", code, re.I) and first != "EXPLAIN":
        raise QueryError("streamrec sql is read-only: the statement contains a writing clause "
                         "(INSERT / CREATE / DROP / ALTER / EXECUTE); pass --allow-write to run it")


def run_query(cfg: Config, statement: str, allow_write: bool = False) -> tuple[list[str], list[tuple]]:
    from pyflink.table import EnvironmentSettings, TableEnvironment

    if not allow_write:
        check_read_only(statement)  # before anything connects anywhere

    t = cfg.kafka.topics
    ensure_topics(cfg, [t.raw, t.clean, t.features_user, t.features_item, t.recommendations])
    conf = flink_configuration(cfg, JOB_NAME)
    t_env = TableEnvironment.create(
        EnvironmentSettings.new_instance().in_batch_mode().with_configuration(conf).build())
    t_env.get_config().set("table.local-time-zone", "UTC")
    opts = {name: kafka_source_options(cfg, topic, JOB_NAME, bounded=True) for name, topic in (
        ("raw_options", t.raw), ("clean_options", t.clean), ("user_options", t.features_user),
        ("item_options", t.features_item), ("recs_options", t.recommendations))}
    for ddl in render_sql("query_tables", **opts):
        t_env.execute_sql(ddl)
    statement = statement.strip().rstrip(";").strip()
    try:
        result = t_env.execute_sql(statement)
        columns = list(result.get_table_schema().get_field_names())
        with result.collect() as rows:
            return columns, [tuple(r) for r in rows]
    except Exception as exc:  # Py4JJavaError and friends: one line of Flink's message
        raise QueryError(_flink_message(exc)) from None


def format_table(columns: list[str], rows: list[tuple]) -> str:
    """An aligned text table.

    >>> print(format_table(["id", "n"], [("a", 1), ("bb", None)]))
    id | n
    ---+-----
    a  | 1
    bb | NULL
    (2 rows)
    """
    cells = [[("NULL" if v is None else str(v)) for v in row] for row in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    line = lambda vals: " | ".join(v.ljust(w) for v, w in zip(vals, widths)).rstrip()  # noqa: E731
    out = [line(columns), "-+-".join("-" * w for w in widths)]
    out += [line(r) for r in cells]
    out.append(f"({len(rows)} row{'s' if len(rows) != 1 else ''})")
    return "\n".join(out)
