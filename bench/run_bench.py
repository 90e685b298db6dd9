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
   **Serving modes** (``--modes``; docs/registry.md, "Serving"): the job above runs in the
   configured ``scoring.serve`` (``live`` by default: the live table, guarded by the registry);
   each other mode of :data:`MODES` named (by default ``registry``: the registry's CURRENT ONNX
   version, the exporter exporting on its cadence) adds one run of the same job with the exporter
   on the same events and settings, only ``scoring.serve`` changed, right after it, on
   ``bench.serve-<mode>.*`` topics (:func:`.phases.serve_mode_phase`; no features job after it),
   its recommendations evaluated without baselines. The report shows the modes side by side
   (``modes``: report.py ``mode_comparison``): recall@10 and throughput, each also as a ratio to
   the sequential reference of the same run, CPU per event, versions exported / promoted and the
   share of records each kind of model scored (``model_version``: ``live``, ``live+vN``, ``vN``).
2. **quality**: :func:`streamrec.evaluate.evaluate_topics` on the throughput run's topics
   (pipeline vs windowed popularity vs the sequential reference: recall, NDCG, precision@10,
   catalogue coverage, novelty, cold-start lists) and rolling recall@10 series; then the other
   quality streams ``streams`` names (:data:`STREAMS`, ``--streams``): bench/synthetic.py's
   second stream through the in-process learner core, and bench/bursty.py's bursty stream and
   ML-100k's ratings of 5 (hits on the last 70 %) each through the real job on topics of their
   own (:func:`.phases.stream_phase`), every one against popularity and the sequential reference.
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

from streamrec.bench.phases import (JOB_STREAMS, capacity_phase, latency_phase, peer_phase, quality_phase,
                                    reference_phase, serve_mode_phase, stream_events, stream_phase,
                                    throughput_phase)
from streamrec.bench.report import mode_comparison, new_result, table, write_result


#: The quality streams (``--streams``, comma-separated): ``ml100k``: the throughput run's own
#: topics evaluated (with the sequential reference timed and the River peer); ``second``:
#: bench/synthetic.py's stream through the in-process learner core; ``bursty``: bench/bursty.py's
#: stream and ``ml100k-5star``: ML-100k's ratings of 5, hits on the last 70 %, each through the
#: real job (phases.py ``stream_phase``). The default leaves ``ml100k-5star`` out to keep
#: ``make bench`` near 10 minutes on the project's 2 cores (``bursty`` adds ~3 of them, most of it
#: the sequential reference over a 9k-item catalogue; ``ml100k-5star`` ~1): ``--streams all``.
STREAMS = ("ml100k", "second", "bursty", "ml100k-5star")
DEFAULT_STREAMS = ("ml100k", "second", "bursty")


def parse_streams(streams: tuple[str, ...] | str) -> tuple[str, ...]:
    """``streams`` as a tuple of known names, in :data:`STREAMS`'s order (``all``: every one).

    >>> parse_streams("bursty, ml100k")
    ('ml100k', 'bursty')
    >>> parse_streams("all") == STREAMS
    True
    >>> parse_streams("ml100k,nope")
    Traceback (most recent call last):
    ...
    ValueError: unknown stream(s) nope; choose from ml100k, second, bursty, ml100k-5star
    """
    return _parse_names(streams, STREAMS, "stream(s)")


def _parse_names(value: tuple[str, ...] | str, known: tuple[str, ...], what: str,
                 always: str | None = None) -> tuple[str, ...]:
    """``value`` (a tuple, or comma-separated) as names of ``known`` in its order, ``always``
    among them; ``all``: every one; an unknown name is a ValueError naming the choices."""
    names = [n.strip() for n in value.split(",")] if isinstance(value, str) else list(value)
    if "all" in names:
        return known
    unknown = [n for n in names if n and n not in known]
    if unknown:
        raise ValueError(f"unknown {what} {', '.join(unknown)}; choose from {', '.join(known)}")
    return tuple(n for n in known if n in names or n == always)


#: The serving modes (``scoring.serve``, udfs/learner_core.py ``SERVE_MODES``) the throughput
#: measurement runs in (``--modes``, comma-separated): the configured one is the throughput phase
#: itself (always run); each other one named adds one job run (~1 minute on ML-100k on the
#: project's 2 cores). ``--modes live`` (the default configuration's own): no extra run.
MODES = ("live", "registry")
DEFAULT_MODES = MODES


def parse_modes(modes: tuple[str, ...] | str, configured: str = "live") -> tuple[str, ...]:
    """``modes`` as a tuple of known serving modes in :data:`MODES`'s order, ``configured`` (the
    throughput phase's own ``scoring.serve``) always among them (``all``: every one).

    >>> parse_modes("registry, live"), parse_modes("live"), parse_modes("", configured="registry")
    (('live', 'registry'), ('live',), ('registry',))
    >>> parse_modes("registry")  # the throughput phase runs the configured mode anyway
    ('live', 'registry')
    >>> parse_modes("all") == MODES
    True
    >>> parse_modes("live,shadow")
    Traceback (most recent call last):
    ...
    ValueError: unknown serving mode(s) shadow; choose from live, registry
    """
    return _parse_names(modes, MODES, "serving mode(s)", always=configured)


def run_bench(cfg, name: str | None = None, limit: int | None = None, latency_seconds: float = 60.0,
              latency_rate: float | None = None, skip_latency: bool = False, skip_quality: bool = False,
              progress: bool = True, sample_s: float = 2.0, out_dir: Path | None = None,
              command: str | None = None, peer_events: int = 5_000,
              latency_checkpoint_ms: int | None = None, latency_with_features: bool = True,
              streams: tuple[str, ...] | str = DEFAULT_STREAMS,
              modes: tuple[str, ...] | str = DEFAULT_MODES) -> dict:
    """Run the benchmark and write ``<out_dir>/<date>-<name>.json`` and ``.png``; returns the result.
    ``streams``: the quality streams (:data:`STREAMS`), a tuple or a comma-separated string;
    ``modes``: the serving modes measured side by side (:data:`MODES`, :func:`parse_modes`)."""
    from streamrec.runtime import assets, broker
    from streamrec import replay

    def say(msg: str) -> None:
        print(f"[bench] {msg}", flush=True)

    streams = parse_streams(streams)
    modes = parse_modes(modes, cfg.scoring.serve)
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
        "quality_streams": list(streams),
        "serve_modes_measured": list(modes),
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
        # the other serving modes: the same job on the same events, right after it
        for mode in (m for m in modes if m != cfg.scoring.serve):
            result.setdefault("serve_modes", {})[mode] = serve_mode_phase(
                cfg, mode, events, say, progress, sample_s,
                evaluate_quality=not skip_quality and "ml100k" in streams)
            write_result(result, stem)
        if not skip_quality and "ml100k" in streams:
            result["quality"] = quality_phase(tcfg, say)
            write_result(result, stem)
            result["throughput"].update(reference_phase(cfg, events, say))
            write_result(result, stem)
            result["peer"] = peer_phase(cfg, events, say, peer_events)
            write_result(result, stem)
        if not skip_quality and "second" in streams:
            from streamrec.bench.synthetic import quality, synthetic_stream

            say("second stream: synthetic, 10k items, heavy users, 3 years (bench/synthetic.py) ...")
            result["second_stream"] = quality(cfg, synthetic_stream(100_000), say=say)
            write_result(result, stem)
        for stream in (s for s in streams if s in JOB_STREAMS and not skip_quality):
            stream_events_, evaluate_from = stream_events(stream, events)
            result.setdefault("streams", {})[stream] = stream_phase(cfg, stream, stream_events_, say, progress,
                                                                    evaluate_from)
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
    result["modes"] = mode_comparison(result)
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
