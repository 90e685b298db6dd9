"""The streamrec pipeline job: one checkpointed Flink graph from ``events.raw`` to recommendations.

Stages (see README, "Architecture"): SQL ingestion -> online learning in keyed state -> ONNX
scoring. Stages that are not built yet are reported at start; today the job is the pass-through
stage only, copying ``events.raw`` to ``events.clean`` exactly once.

    python -m flink_jobs.pipeline [--bounded]
"""

from __future__ import annotations

import argparse
import sys

from flink_jobs import passthrough
from streamrec.config import Config, describe, load_config

JOB_NAME = "streamrec-pipeline"


def run(cfg: Config, bounded: bool = False, restore_from: str | None = None, wait: bool = True) -> None:
    print(f"[{JOB_NAME}] configuration:\n{describe(cfg)}", file=sys.stderr)
    print(f"[{JOB_NAME}] stages: pass-through only (ingestion, learning and scoring are not built yet)",
          file=sys.stderr)
    passthrough.run(cfg, cfg.kafka.topics.clean, bounded=bounded, wait=wait)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bounded", action="store_true")
    parser.add_argument("--restore-from")
    parser.add_argument("--no-wait", action="store_true", help="return once submitted (cluster mode)")
    args = parser.parse_args(argv)
    run(load_config(), bounded=args.bounded, restore_from=args.restore_from, wait=not args.no_wait)


if __name__ == "__main__":
    main()
