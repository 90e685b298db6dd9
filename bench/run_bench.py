"""``streamrec bench`` / ``make bench``: ML-100k through the whole pipeline, measured.

Four phases, each on fresh ``bench.*`` topics, a fresh registry and fresh checkpoints under
``<state_dir>/bench/`` (nothing of the user's own is touched):

1. **throughput**: the events are replayed into ``bench.events.raw`` first, then the exporter
   sidecar (a subprocess) and the pipeline job (bounded) run together, as in ``streamrec demo``.
   Throughput = events / (last - first ``emitted_ts`` of the recommendations), i.e. from the first
   to the last event through the whole graph (the wall time including job start-up is reported
   too). While the job runs a monitor thread samples, every 2 seconds, the Flink
   mini-cluster's REST API (per-vertex busy / back-pressured time, checkpoints) and ``/proc``
   (RSS and peak RSS of the Flink JVM, which hosts the thread-mode Python operators, and of the
   exporter). Then the features job runs over the clean events the pipeline wrote, as
   ``streamrec run --bounded`` runs it, timed and measured on its own (``throughput.features_job``;
   the feature rows are checked against the plain-Python reference).
2. **quality**: :func:`streamrec.evaluate.evaluate_topics` on the throughput run's topics
   (pipeline vs windowed popularity vs the sequential reference) and rolling recall@10 series.
3. **capacity** (unless ``--latency-rate`` is given): the jobs of the latency phase (the
   unbounded pipeline, the features job beside it, the exporter), at its checkpoint interval, over
   a backlog of the same events on ``bench.cap.*`` topics: events / (first recommendation -> the
   later of the last recommendation and the features job having read every clean event). The
   throughput phase measures the recommendations' path alone; the latency phase's jobs share the
   cores with the features job and checkpoint more often, so it runs at half of this figure.
4. **latency**: the pipeline is started unbounded on ``bench.lat.*`` topics with the exporter
   and the features job beside it (as ``streamrec run`` starts them);
   warm-up events are sent at the target rate for 20 s (at least 500) and scored first (the
   fresh job's JIT and Python operator warm-up, first model export), then events are replayed at
   a fixed rate (half the capacity of phase 3) for
   ``--latency-seconds``; latency = ``emitted_ts`` - the Kafka timestamp of the source record in
   ``events.raw`` (found by ``(source_partition, source_offset)``), over the measured records
   only. ``emitted_ts`` is when the learner's operator (ShardLearner) produced the record; a
   ``read_committed`` consumer sees it only when the checkpoint commits the sink's transaction
   (up to one checkpoint interval later). The job is cancelled at the end.

Writes ``<out_dir>/<YYYY-MM-DD>-<name>.json`` and ``.png`` (``out_dir``: ``bench/results`` under
the working directory unless given) and prints a table. This module runs the phases in order;
the rest is in its neighbours: :mod:`.phases` (each phase), :mod:`.jobs` (the phases' topics,
jobs and waits), :mod:`.monitor` (the threads sampling a running job), :mod:`.probes` (``/proc``),
:mod:`.stats` (percentiles, series), :mod:`.report` (the result's files and table);
``python -m streamrec.bench`` is the command line (``streamrec bench`` the CLI's). The pure
helpers are unit-tested in ``tests/bench/test_bench_helpers.py``.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from streamrec.bench.phases import (capacity_phase, latency_phase, peer_phase, quality_phase, reference_phase,
                                    throughput_phase)
from streamrec.bench.report import new_result, table, write_result


def run_bench(cfg, name: str | None = None, limit: int | None = None, latency_seconds: float = 60.0,
              latency_rate: float | None = None, skip_latency: bool = False, skip_quality: bool = False,
              progress: bool = True, sample_s: float = 2.0, out_dir: Path | None = None,
              command: str | None = None, peer_events: int = 5_000,
              latency_checkpoint_ms: int | None = None, latency_with_features: bool = True) -> dict:
    """Run the benchmark and write ``<out_dir>/<date>-<name>.json`` and ``.png``; returns the result."""
    from streamrec.runtime import assets, broker
    from streamrec import replay

    def say(msg: str) -> None:
        print(f"[bench] {msg}", flush=True)

    started = time.time()
    name = name or (f"ml100k-{limit}" if limit else "ml100k")
    stem, head = new_result(name, command, out_dir)
    say(assets.check_java())
    data_dir = assets.ml100k_dir(cfg)
    assets.connector_jars(cfg)
    assets.kafka_broker_jars(cfg)
    events = replay.ml100k_events(data_dir)
    if limit:
        events = events[:limit]
    result: dict = {
        **head,
        "settings": {
            "parallelism": cfg.flink.parallelism, "execution_mode": cfg.flink.execution_mode,
            "state_backend": cfg.flink.state_backend, "checkpoint_interval_ms": cfg.flink.checkpoint_interval_ms,
            "exactly_once": True, "python_bundle_size": cfg.flink.python_bundle_size,
            "python_bundle_time_ms": cfg.flink.python_bundle_time_ms,
            "buffer_timeout_ms": cfg.flink.buffer_timeout_ms,
            "batch_interval_ms": cfg.scoring.batch_interval_ms, "serve": cfg.scoring.serve,
            "changelog_interval_ms": cfg.learner.changelog_interval_ms, "dim": cfg.learner.dim,
            "negatives": cfg.learner.negatives, "window_slide_ms": cfg.ingest.window_slide_ms,
            "exporter_interval_s": min(cfg.exporter.interval_s, 5.0),
        },
    }
    status = broker.up(cfg, log=say)
    try:
        result["throughput"], tcfg = throughput_phase(cfg, events, say, progress, sample_s)
        write_result(result, stem)
        if not skip_quality:
            result["quality"] = quality_phase(tcfg, say)
            write_result(result, stem)
            result["throughput"].update(reference_phase(cfg, events, say))
            write_result(result, stem)
            result["peer"] = peer_phase(cfg, events, say, peer_events)
            write_result(result, stem)
            from streamrec.bench.synthetic import quality, synthetic_stream

            say("second stream: synthetic, 10k items, heavy users, 3 years (bench/synthetic.py) ...")
            result["second_stream"] = quality(cfg, synthetic_stream(100_000), say=say)
            write_result(result, stem)
        if not skip_latency:
            # half the capacity of what the latency phase runs (its jobs, its checkpoint interval),
            # measured here unless a rate is given (capacity_phase says why not the throughput's)
            rate_basis = "given (--latency-rate)"
            if not latency_rate:
                result["capacity"] = capacity_phase(cfg, events, say, progress, sample_s,
                                                    checkpoint_interval_ms=latency_checkpoint_ms,
                                                    with_features=latency_with_features)
                write_result(result, stem)
                capacity, rate_basis = result["capacity"].get("events_per_s"), "capacity.events_per_s / 2"
                if not capacity:
                    capacity, rate_basis = result["throughput"].get("events_per_s"), "throughput.events_per_s / 2"
                latency_rate = max(1.0, (capacity or 100.0) / 2)
            full = replay.ml100k_events(data_dir)
            result["latency"] = latency_phase(cfg, full, latency_rate, latency_seconds, say, progress, sample_s,
                                              checkpoint_interval_ms=latency_checkpoint_ms,
                                              with_features=latency_with_features)
            result["latency"]["rate_basis"] = rate_basis
    finally:
        if status.started:
            broker.down(cfg, log=say)
    result["load_after"] = os.getloadavg()
    result["total_s"] = round(time.time() - started, 1)
    write_result(result, stem)
    try:
        from streamrec.bench.plots import plot_result

        plot_result(result, stem.with_suffix(".png"))
        say(f"plot: {stem.with_suffix('.png')}")
    except Exception as exc:  # noqa: BLE001 - the figures matter more than the picture
        say(f"plot failed: {exc!r}")
    print(table(result), flush=True)
    say(f"results: {stem.with_suffix('.json')} (load average before {result['load_before'][0]:.1f}, "
        f"after {result['load_after'][0]:.1f}); {result['total_s']:.0f} s in all")
    return result
