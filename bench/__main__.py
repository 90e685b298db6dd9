"""``python -m streamrec.bench``: the ML-100k benchmark (:func:`streamrec.bench.run_bench.run_bench`)
with the configuration ``streamrec`` loads. ``streamrec bench`` runs the same, beside the scale
and sharding benchmarks (``python -m streamrec.bench.scale``, ``python -m streamrec.bench.sharded``).
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    from streamrec.bench.run_bench import DEFAULT_MODES, DEFAULT_STREAMS, MODES, STREAMS, run_bench
    from streamrec.core.config import load_config

    parser = argparse.ArgumentParser(prog="python -m streamrec.bench",
                                     description="ML-100k through the whole pipeline, measured.")
    parser.add_argument("--name")
    parser.add_argument("--limit", type=int)
    parser.add_argument("--latency-seconds", type=float, default=60.0)
    parser.add_argument("--latency-rate", type=float)
    parser.add_argument("--skip-latency", action="store_true")
    parser.add_argument("--skip-quality", action="store_true")
    parser.add_argument("--peer-events", type=int, default=5_000)
    parser.add_argument("--latency-checkpoint-ms", type=int)
    parser.add_argument("--latency-without-features", action="store_true")
    parser.add_argument("--streams", default=",".join(DEFAULT_STREAMS),
                        help=f"quality streams, comma-separated, of {', '.join(STREAMS)}, or all (default: "
                             f"{','.join(DEFAULT_STREAMS)}; run_bench.py's STREAMS says what each is)")
    parser.add_argument("--modes", default=",".join(DEFAULT_MODES),
                        help=f"serving modes (scoring.serve) measured side by side, comma-separated, of "
                             f"{', '.join(MODES)}, or all (default: {','.join(DEFAULT_MODES)}): the configured "
                             "one is the throughput phase itself; each other adds one job run on the same "
                             "events (`--modes live`: none)")
    parser.add_argument("--out", help="results folder (default: bench/results under the working directory)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    run_bench(load_config(), args.name, args.limit, args.latency_seconds, args.latency_rate,
              args.skip_latency, args.skip_quality, progress=not args.quiet, out_dir=args.out,
              peer_events=args.peer_events, latency_checkpoint_ms=args.latency_checkpoint_ms,
              latency_with_features=not args.latency_without_features, streams=args.streams,
              modes=args.modes,
              command=" ".join(["python -m streamrec.bench", *(argv if argv is not None else sys.argv[1:])]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
