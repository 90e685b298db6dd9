"""The SQL front door: run one Flink SQL statement over bounded reads of the streamrec topics.

    streamrec sql "SELECT item_id, popularity FROM features_item ORDER BY popularity DESC LIMIT 10"
    streamrec sql -f query.sql

Tables (sql/query_tables.sql): ``events_raw``, ``events_clean``, ``features_user``,
``features_item`` (latest row per id; ``features_user_log`` / ``features_item_log`` hold every
window row) and ``recommendations``. Reads are bounded at the end offsets present at start and
read_committed; the statement runs in BATCH mode. It is read-only unless ``allow_write``: Flink's
own parser reads the statement, which must be one query (SELECT / WITH / VALUES), SHOW, DESCRIBE
or EXPLAIN of a query, and Flink itself refuses ``OPTIONS`` hints (which could point a table at
another cluster or topic), all before anything connects anywhere.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pyflink.java_gateway import get_gateway
from pyflink.table import EnvironmentSettings, TableEnvironment

from streamrec.flink_jobs.env import flink_configuration, kafka_source_options, render_sql
from streamrec.core.config import Config
from streamrec.runtime.kafka_io import ensure_topics

JOB_NAME = "streamrec-sql"
# Off, Flink refuses every OPTIONS hint at validation, however it is spelled or wherever it sits
# (`OPTIONS`, options, inside a subquery, a join or a CTE): no lexical check can see them all.
DYNAMIC_OPTIONS = "table.dynamic-table-options.enabled"
# What read-only runs, as Flink's operation types (org.apache.flink.table.operations): reads of
# the topics, the catalog or the cluster's jobs. An allowlist: INSERT / UPDATE / DELETE, DDL,
# SET / RESET, USE, ADD JAR, LOAD MODULE, STATEMENT SET, COMPILE / EXECUTE PLAN, STOP JOB, and
# whatever a later Flink adds, are refused. USE too: one statement per run leaves it no effect.
READ_ONLY_OPERATIONS = (
    "QueryOperation", "ShowOperation", "DescribeTableOperation", "DescribeFunctionOperation",
    "DescribeCatalogOperation", "DescribeModelOperation", "command.DescribeJobOperation")


class QueryError(RuntimeError):
    """Flink rejected the statement (its message, without the Java stack trace) or read-only did."""


def _flink_message(exc: Exception) -> str:
    text = str(exc)
    found = re.findall(r"(?:org\.apache\.[\w.]+\.)?(\w+(?:Exception|Error)): (.+)", text)
    if found:
        name, msg = found[0]
        return f"{name}: {msg.strip()}"
    return text.strip().splitlines()[0] if text.strip() else type(exc).__name__


def _query_error(exc: Exception) -> QueryError:
    """Flink's failure in one line, or our sentence where Flink's is a read-only refusal.

    >>> print(_query_error(RuntimeError("An error occurred while calling o7.parse.\\n: "
    ...     "org.apache.flink.table.api.ValidationException: The 'OPTIONS' hint is allowed only "
    ...     "when the config option 'table.dynamic-table-options.enabled' is set to true.\\n\\tat x")))
    streamrec sql is read-only: OPTIONS hints are refused (they can point a table at another cluster or topic); pass --allow-write to run it
    >>> print(_query_error(RuntimeError(": java.lang.IllegalArgumentException: only single "
    ...                                 "statement supported\\n\\tat org.apache.flink.util.x")))
    streamrec sql runs one statement at a time; found several
    >>> print(_query_error(RuntimeError(": org.apache.flink.table.api.ValidationException: SQL "
    ...                                 "validation failed. Column 'nope' not found\\n\\tat x")))
    ValidationException: SQL validation failed. Column 'nope' not found
    """
    message = _flink_message(exc)
    if f"'{DYNAMIC_OPTIONS}'" in message:
        return QueryError("streamrec sql is read-only: OPTIONS hints are refused (they can point a "
                          "table at another cluster or topic); pass --allow-write to run it")
    if "only single statement supported" in message:
        return QueryError("streamrec sql runs one statement at a time; found several")
    return QueryError(message)


def query_environment(cfg: Config) -> TableEnvironment:
    """A BATCH TableEnvironment with the query tables registered. It connects nowhere: CREATE
    TABLE / VIEW only record the tables, and a Kafka source is first reached by a running job."""
    t = cfg.kafka.topics
    conf = flink_configuration(cfg, JOB_NAME)
    t_env = TableEnvironment.create(
        EnvironmentSettings.new_instance().in_batch_mode().with_configuration(conf).build())
    t_env.get_config().set("table.local-time-zone", "UTC")
    opts = {name: kafka_source_options(cfg, topic, JOB_NAME, bounded=True) for name, topic in (
        ("raw_options", t.raw), ("clean_options", t.clean), ("user_options", t.features_user),
        ("item_options", t.features_item), ("recs_options", t.recommendations))}
    for ddl in render_sql("query_tables", **opts):
        t_env.execute_sql(ddl)
    return t_env


def _operation_type(name: str):
    """The Java class of an org.apache.flink.table.operations type (isInstance follows subtypes,
    such as the planner's own PlannerQueryOperation)."""
    return get_gateway().jvm.java.lang.Class.forName(f"org.apache.flink.table.operations.{name}")


def check_read_only(t_env: TableEnvironment, statement: str) -> None:
    """Raise QueryError unless Flink's planner reads ``statement`` as one read-only operation.

    ``t_env`` needs the tables registered (``query_environment``): the parser validates a query
    against them. This turns OPTIONS hints off on ``t_env`` for good, so that the statement, run
    on it next, is planned as it was checked. Parsing (validation, conversion to a logical plan)
    runs no job and connects nowhere.
    """
    t_env.get_config().set(DYNAMIC_OPTIONS, "false")
    try:
        operations = list(t_env._j_tenv.getParser().parse(statement))
    except Exception as exc:  # Py4JJavaError: Flink refused to parse or validate it
        raise _query_error(exc) from None
    if len(operations) != 1:  # the parser refuses several already; its API is a list
        raise QueryError("streamrec sql runs one statement at a time; found several")
    op = operations[0]
    if _operation_type("ExplainOperation").isInstance(op):
        # EXPLAIN runs nothing, but explaining a write builds the table's sink connector in this
        # process, which read-only never needs; --allow-write explains it (still without running).
        child = op.getChild()
        allowed = _operation_type("QueryOperation").isInstance(child)
        kind = f"ExplainOperation of {child.getClass().getSimpleName()}"
    else:
        allowed = any(_operation_type(name).isInstance(op) for name in READ_ONLY_OPERATIONS)
        kind = op.getClass().getSimpleName()
    if not allowed:
        raise QueryError(f"streamrec sql is read-only: Flink parses this statement as {kind}, not "
                         "as a query (SELECT, WITH, VALUES), SHOW, DESCRIBE or EXPLAIN of a query; "
                         "pass --allow-write to run it")


@dataclass
class PreparedQuery:
    """A statement on its own TableEnvironment, checked unless writes are allowed; nothing has
    connected anywhere yet."""

    cfg: Config
    t_env: TableEnvironment
    statement: str

    def run(self) -> tuple[list[str], list[tuple]]:
        t = self.cfg.kafka.topics
        ensure_topics(self.cfg, [t.raw, t.clean, t.features_user, t.features_item, t.recommendations])
        try:
            result = self.t_env.execute_sql(self.statement)
            columns = list(result.get_table_schema().get_field_names())
            with result.collect() as rows:
                return columns, [tuple(r) for r in rows]
        except Exception as exc:  # Py4JJavaError and friends: one line of Flink's message
            raise _query_error(exc) from None


def prepare_query(cfg: Config, statement: str, allow_write: bool = False) -> PreparedQuery:
    """Build the statement's environment and, read-only, check the statement: a refusal comes
    before the broker (or anything the statement names) is reached."""
    statement = statement.strip().rstrip(";").strip()
    if not statement:  # no need to start a JVM to say so
        raise QueryError("streamrec sql got an empty statement")
    t_env = query_environment(cfg)
    if not allow_write:
        check_read_only(t_env, statement)
    return PreparedQuery(cfg, t_env, statement)


def run_query(cfg: Config, statement: str, allow_write: bool = False) -> tuple[list[str], list[tuple]]:
    return prepare_query(cfg, statement, allow_write).run()


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
