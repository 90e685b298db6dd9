"""`streamrec serve` beside a running pipeline: request latency and freshness, pipeline idle and fed.

    python -m streamrec.bench.serving_live [--pipeline-rate 1500] [--lookup-rate 5000]
                                           [--score-rate 1000] [--seconds 10] [--warmup-s 30]

1. The broker (the embedded one unless configured), fresh ``bench.live.*`` topics, the unbounded
   pipeline job with the features job and the exporter beside it (as ``streamrec run`` starts
   them), and ``streamrec serve`` as its own process on the same topics and registry.
2. Warm-up: ML-100k events at ``--pipeline-rate`` for ``--warmup-s`` seconds, until the service is
   ready (caught up) and the registry has a CURRENT version for ``/v1/score``.
3. **idle**: nothing produced; lookups of the stream's users at ``--lookup-rate``, then scores at
   ``--score-rate`` (vegeta, an open-model load generator: bench/serving_bench.py ``vegeta_run``).
4. **fed**: events at ``--pipeline-rate`` the whole time (the default, 1,500 events/s, is about
   half of the pipeline's capacity in the latest ``make bench``): first ``--seconds`` with no
   requests, then the same lookups and scores; the **freshness** of the lists (the learner's ``emitted_ts`` → answerable
   by the service: the read_committed wait for a checkpoint plus the service's read) from the
   service's own histogram, ``streamrec_serving_freshness_seconds``, over the phase.

Every row prints the load average before and after it; the machine's other work moves the figures.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request

import numpy as np

from streamrec.bench.jobs import all_running, cancel_job, fresh_topics, records_written, start_unbounded, \
    unbounded_config, wait_until
from streamrec.bench.monitor import Monitor
from streamrec.bench.phases import cycled_events
from streamrec.bench.serving_bench import load_average, print_paced, vegeta_lookups, vegeta_run, vegeta_scores
from streamrec.core.config import load_config, to_env
from streamrec.serving.stats import Freshness


def say(msg: str) -> None:
    print(f"[serving-live] {msg}", flush=True)


def get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except OSError:
        return 0, b""


def freshness_counts(url: str) -> np.ndarray:
    """The service's freshness histogram as per-bucket counts (not cumulative)."""
    _, text = get(f"{url}/metrics")
    cumulative = [int(float(n)) for n in re.findall(
        rb'^streamrec_serving_freshness_seconds_bucket\{le="[^"]+"\} (\S+)$', text, re.M)]
    if len(cumulative) != len(Freshness.BOUNDS_MS) + 1:
        raise RuntimeError(f"{url}/metrics has no complete streamrec_serving_freshness_seconds histogram")
    return np.diff(np.asarray(cumulative), prepend=0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pipeline-rate", type=float, default=1_500.0, help="events/s fed in the fed phase")
    parser.add_argument("--lookup-rate", type=float, default=5_000.0)
    parser.add_argument("--score-rate", type=float, default=1_000.0)
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each load test")
    parser.add_argument("--warmup-s", type=float, default=30.0)
    parser.add_argument("--exclude", type=int, default=20, help="items each score request excludes")
    parser.add_argument("--checkpoint-ms", type=int, default=None,
                        help="the pipeline's checkpoint interval (default: the configured one, "
                             "flink.checkpoint_interval_ms; freshness waits for the checkpoint that commits a record)")
    args = parser.parse_args(argv)
    if shutil.which("vegeta") is None:
        raise SystemExit("vegeta is not on the PATH (go install github.com/tsenart/vegeta/v12@v12.13.0)")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    from streamrec import replay
    from streamrec.demo import stop_process
    from streamrec.runtime import assets, broker

    cfg = load_config()
    events = replay.ml100k_events(assets.ml100k_dir(cfg))
    assets.connector_jars(cfg)
    assets.kafka_broker_jars(cfg)
    users = sorted({e["user_id"] for e in events})
    items = sorted({e["item_id"] for e in events})
    status = broker.up(cfg, log=say)
    lcfg = unbounded_config(cfg, "bench.live", "serving-live", args.checkpoint_ms)
    say(f"checkpoints every {lcfg.flink.checkpoint_interval_ms} ms")
    root = fresh_topics(lcfg)
    per_phase = int(args.pipeline_rate * (3 * args.seconds + 15))
    warm = int(args.pipeline_rate * args.warmup_s)
    stream = cycled_events(events, warm + per_phase)
    warm_stream, fed_stream = stream[:warm], stream[warm:]

    exporter = client = features_client = server = monitor = None
    try:
        exporter, client, features_client = start_unbounded(lcfg, root, with_features=True)
        monitor = Monitor(say, exporter.pid, interval_s=2.0)
        monitor.start()
        if not wait_until(lambda: all_running(monitor, str(client.get_job_id())), 180):
            say("warning: the job's tasks were not all RUNNING after 180 s; going on")
        time.sleep(3.0)  # the Kafka source discovers its partitions

        scfg = lcfg.model_copy(update={"serving": lcfg.serving.model_copy(update={
            "port": 0, "snapshot_interval_s": 0, "snapshot_file": root / "serving" / "snapshot.npz"})})
        env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMREC_")} | to_env(scfg)
        log_path = root / "serve.log"
        with open(log_path, "w") as log:
            server = subprocess.Popen([sys.executable, "-m", "streamrec.cli", "serve"], env=env, stdout=log,
                                      stderr=subprocess.STDOUT, start_new_session=True)
        if not wait_until(lambda: "serving on http://" in log_path.read_text() or server.poll() is not None, 120):
            raise SystemExit(f"the service did not start:\n{log_path.read_text()[-3000:]}")
        if server.poll() is not None:
            raise SystemExit(f"the service stopped:\n{log_path.read_text()[-3000:]}")
        url = "http://" + log_path.read_text().split("serving on http://", 1)[1].split()[0]

        say(f"warm-up: {warm:,} events at {args.pipeline_rate:,.0f}/s")
        replay.produce(lcfg, lcfg.kafka.topics.raw, replay.encode_events(warm_stream), total=warm,
                       rate=args.pipeline_rate, progress=False)

        def recs() -> int:
            return records_written(lcfg, lcfg.kafka.topics.recommendations)

        wait_until(lambda: recs() >= warm * 0.99, 120)
        if not wait_until(lambda: get(f"{url}/readyz")[0] == 200, 120):
            say(f"warning: the service is not ready: {get(f'{url}/readyz')[1][:300]!r}")
        if not wait_until(lambda: b'"current":"v' in get(f"{url}/v1/models")[1].replace(b" ", b""), 120):
            say("warning: no CURRENT version yet: scores will fail")
        say(f"warm: {recs():,} recommendations; serving {url}; load average {load_average()}")

        lookups = vegeta_lookups(url, users)
        scores = vegeta_scores(url, users, items, args.exclude)
        vegeta_run("warm-up", lookups[:5_000] + scores[:1_000], server.pid, 2_000, 3.0, str(root))

        for phase in ("idle", "fed"):
            feeder = None
            if phase == "fed":
                feeder = threading.Thread(target=replay.produce, args=(
                    lcfg, lcfg.kafka.topics.raw, replay.encode_events(fed_stream)),
                    kwargs={"total": len(fed_stream), "rate": args.pipeline_rate, "progress": False}, daemon=True)
                feeder.start()
                time.sleep(5.0)  # the job at its rate before measuring
                fresh0 = freshness_counts(url)
                time.sleep(args.seconds)  # freshness with no request load first
                fresh = freshness_counts(url) - fresh0
                say(f"fed, no requests: freshness (emitted -> answerable) over {int(fresh.sum()):,} records: "
                    f"p50 {Freshness.quantile_ms(0.5, fresh):,.0f} ms, p99 {Freshness.quantile_ms(0.99, fresh):,.0f} ms; "
                    f"load average {load_average()}")
            fresh0, recs0, t0 = freshness_counts(url), recs(), time.time()
            for name, targets, rate in (("lookups", lookups, args.lookup_rate), ("scores", scores, args.score_rate)):
                before = load_average()
                print_paced(f"{phase}: {name}", vegeta_run(name, targets, server.pid, rate, args.seconds, str(root)),
                            before)
            fresh = freshness_counts(url) - fresh0
            elapsed = time.time() - t0
            if phase == "fed":
                p50, p99 = Freshness.quantile_ms(0.5, fresh), Freshness.quantile_ms(0.99, fresh)
                say(f"fed, under the request load: {(recs() - recs0) / elapsed:,.0f} recommendations/s committed; "
                    f"freshness (emitted -> answerable) over {int(fresh.sum()):,} records: p50 {p50:,.0f} ms, "
                    f"p99 {p99:,.0f} ms (interpolated in the histogram's buckets)")
                feeder.join()
    finally:
        if server is not None:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(30)
            except subprocess.TimeoutExpired:
                server.kill()
        cancel_job(client)
        cancel_job(features_client)
        if monitor is not None:
            monitor.stop()
        if exporter is not None:
            stop_process(exporter)
        if status.started:
            broker.down(cfg, log=say)
    return 0


if __name__ == "__main__":
    sys.exit(main())
