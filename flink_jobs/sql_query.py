"""The SQL front door: run one Flink SQL statement over bounded reads of the streamrec topics.

    streamrec sql "SELECT item_id, popularity FROM features_item ORDER BY popularity DESC LIMIT 10"
    streamrec sql -f query.sql

Tables (sql/query_tables.sql): ``events_raw``, ``events_clean``, ``features_user``,
``features_item`` (latest row per id; ``features_user_log`` / ``features_item_log`` hold every
window row) and ``recommendations``. Reads are bounded at the end offsets present at start and
read_committed; the statement runs in BATCH mode.
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


def run_query(cfg: Config, statement: str) -> tuple[list[str], list[tuple]]:
    from pyflink.table import EnvironmentSettings, TableEnvironment

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
