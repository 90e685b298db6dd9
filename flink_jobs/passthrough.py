"""Pass-through job: ``events.raw`` -> another topic, verbatim and exactly once.

The smallest complete streamrec job: it proves the connector jars, RocksDB checkpoints and Kafka
transactions work on the configured cluster. Run it directly::

    python -m flink_jobs.passthrough --to events.copy --bounded
"""

from __future__ import annotations

import argparse

from streamrec.flink_jobs.env import build_runtime, kafka_sink_options, kafka_source_options, render_sql
from streamrec.core.config import Config, load_config
from streamrec.runtime.kafka_io import ensure_topics

JOB_NAME = "streamrec-passthrough"


def run(cfg: Config, target_topic: str, bounded: bool = False, wait: bool = True) -> None:
    ensure_topics(cfg, [cfg.kafka.topics.raw, target_topic])
    rt = build_runtime(cfg, JOB_NAME)
    statements = render_sql(
        "passthrough",
        source_options=kafka_source_options(cfg, cfg.kafka.topics.raw, JOB_NAME, bounded),
        sink_options=kafka_sink_options(cfg, target_topic, rt.transaction_prefix),
    )
    for ddl in statements[:-1]:
        rt.t_env.execute_sql(ddl)
    result = rt.t_env.execute_sql(statements[-1])
    if wait:  # under `flink run -d` the client must not block on the job
        result.wait()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--to", default="events.copy", help="target topic")
    parser.add_argument("--bounded", action="store_true", help="stop at the end offsets present at start")
    parser.add_argument("--no-wait", action="store_true", help="return once submitted (cluster mode)")
    args = parser.parse_args(argv)
    run(load_config(), args.to, args.bounded, wait=not args.no_wait)


if __name__ == "__main__":
    main()
