"""A benchmark's result record: its files, its head, its table.

Results go to ``<out_dir>/<date>-<name>.json`` (and a PNG beside it); ``out_dir`` defaults to
``bench/results`` under the working directory, so a run from a checkout's root writes into the
repository's own folder and an installed package never writes inside itself.
"""

from __future__ import annotations

import datetime
import json
import os
from collections import Counter
from pathlib import Path
from typing import Iterable

import numpy as np

from streamrec.bench.probes import machine


def results_dir(out_dir: Path | str | None = None) -> Path:
    """``out_dir``, else ``bench/results`` under the working directory.

    >>> results_dir("/tmp/x"), results_dir() == Path.cwd() / "bench" / "results"
    (PosixPath('/tmp/x'), True)
    """
    return Path(out_dir) if out_dir else Path.cwd() / "bench" / "results"


def new_result(name: str, command: str | None, out_dir: Path | None = None) -> tuple[Path, dict]:
    """A benchmark's result files' stem (``<out_dir>/<date>-<name>``, the folder made) and the
    head of its record: name, date, start time, command, machine, load average."""
    out_dir = results_dir(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    date = datetime.date.today().isoformat()
    return out_dir / f"{date}-{name}", {
        "name": name, "date": date, "started_at": datetime.datetime.now().isoformat(timespec="seconds"),
        "command": command, "machine": machine(), "load_before": os.getloadavg()}


def write_result(result: dict, stem: Path) -> None:
    """``<stem>.json``, replaced whole (through a temporary file): a phase's figures are written
    as soon as it ends, so a later phase's failure keeps them."""
    path = stem.with_suffix(".json")
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=1, default=json_default) + "\n")
    tmp.replace(path)


def json_default(obj):
    """numpy numbers and paths as JSON (``json.dumps(default=...)``)."""
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj)}")


def shorten(name: str, n: int = 70) -> str:
    """A vertex or thread name on one line, cut to ``n`` characters.

    >>> shorten("Source: raw<br/>-> Calc", 12)
    'Source: raw…'
    """
    name = " ".join(name.replace("<br/>", " ").split())
    return name if len(name) <= n else name[: n - 1] + "…"


def ratio(a, b) -> float | None:
    return a / b if a and b else None


def mib(x) -> str:
    return f"{x / 2**20:,.0f} MiB" if x else "-"


def fmt(x, spec: str = ",.0f") -> str:
    """``x`` by ``spec``, "-" for a figure not measured.

    >>> fmt(1234.5), fmt(None), fmt(0.1234, ".2f")
    ('1,234', '-', '0.12')
    """
    return "-" if x is None else format(x, spec)


#: The kinds of model a recommendation's ``model_version`` names (docs/registry.md, "Serving"):
#: the live table before the registry has a CURRENT (``live``), the live table named after the
#: CURRENT it was checked against (``live+v000012``), a registry version (``v000012``).
MODEL_KINDS = ("live", "live+vN", "vN")


def model_kind(version: str | None) -> str:
    """The kind (:data:`MODEL_KINDS`) of a record's ``model_version``; ``unknown`` without one.

    >>> [model_kind(v) for v in ("live", "live+v000003", "v000003", None)]
    ['live', 'live+vN', 'vN', 'unknown']
    """
    if not version:
        return "unknown"
    if version == "live":
        return "live"
    return "live+vN" if version.startswith("live+") else "vN"


def served_by(versions: Iterable[str | None]) -> dict:
    """The records by what scored them (their ``model_version``s): counts and shares of all
    records by kind (:data:`MODEL_KINDS`, each listed; ``unknown`` only when some record has
    none), counts by ``model_version``, and the registry versions that served some.

    >>> s = served_by(["live", "live", "v000001", "live+v000001"])
    >>> s["by_kind"], s["share"]["live"], s["registry_versions_served"]
    ({'live': 2, 'live+vN': 1, 'vN': 1}, 0.5, ['v000001'])
    """
    by_version = Counter(versions)
    kinds = Counter()
    for version, count in by_version.items():
        kinds[model_kind(version)] += count
    total = sum(by_version.values())
    names = [*MODEL_KINDS, *(["unknown"] if kinds["unknown"] else [])]
    return {"records": total,
            "by_kind": {k: kinds[k] for k in names},
            "share": {k: kinds[k] / total if total else None for k in names},
            "by_model_version": {str(v): c for v, c in sorted(by_version.items(), key=lambda vc: str(vc[0]))},
            "registry_versions_served": sorted(str(v) for v in by_version if model_kind(v) == "vN")}


def registry_fates(entries: Iterable[dict], undecided: int = 0) -> dict:
    """What the exporter's registry did in a run, from ``Registry.read_log()`` entries: versions
    exported, promoted, rejected by the gate (``guards``: of them, rejections that held the live
    table back, docs/registry.md "The guard"), held (pinned), superseded, and ``undecided``
    (pending when the exporter stopped).

    >>> registry_fates([{"action": "publish"}] * 3 + [{"action": "promote"},
    ...                {"action": "reject", "hold_back_live": True}], undecided=1)
    {'exported': 3, 'promoted': 1, 'rejected': 1, 'guards': 1, 'held': 0, 'superseded': 0, 'undecided': 1}
    """
    entries = list(entries)
    actions = Counter(str(e.get("action")) for e in entries)
    return {"exported": actions["publish"], "promoted": actions["promote"], "rejected": actions["reject"],
            "guards": sum(1 for e in entries if e.get("action") == "reject" and e.get("hold_back_live")),
            "held": actions["hold"], "superseded": actions["supersede"], "undecided": undecided}


def mode_comparison(result: dict) -> list[dict]:
    """One row per serving mode measured (``scoring.serve``): the throughput phase's own mode
    (``settings.serve``) first, then each of ``serve_modes`` (phases.py ``serve_mode_phase``):
    recall@k and its ratio to the sequential reference (the ML-100k quality phase's, on the same
    events), throughput first -> last recommendation and its ratio to the reference's speed in
    the same run, CPU µs per event (Flink JVM; its task threads; the learner's thread; the
    exporter; the broker), what the registry did and what scored the records. Figures not
    measured are None. ``jvm_start_up_included``: the run started the Flink JVM (the bench's
    first job), so its JVM figure includes the JVM's start-up; compare the task threads' figure
    across modes."""
    t, q = result.get("throughput") or {}, result.get("quality") or {}
    ref_recall = (q.get("reference") or {}).get("recall")
    ref_speed = t.get("reference_events_per_s")
    runs = []
    if t:
        runs.append(((result.get("settings") or {}).get("serve") or (t.get("serving") or {}).get("serve"),
                     "throughput", t, q))
    for mode, run in (result.get("serve_modes") or {}).items():
        runs.append((mode, f"serve_modes.{mode}", run, run.get("quality") or {}))
    rows = []
    for mode, where, run, quality in runs:
        pipeline, cpu = quality.get("pipeline") or {}, run.get("cpu_us_per_event") or {}
        serving = run.get("serving") or {}
        recall = pipeline.get("recall")
        rows.append({
            "serve": mode, "run": where, "events": run.get("events"),
            "recall": recall, "evaluated": pipeline.get("evaluated"),
            "recall_over_reference": ratio(recall, ref_recall),
            "events_per_s": run.get("events_per_s"),
            "throughput_over_reference": ratio(run.get("events_per_s"), ref_speed),
            "events_per_s_incl_startup": run.get("events_per_s_incl_startup"),
            # the learner's micro-batches follow the load: a bigger batch is scored on an older table
            "mean_batch": (run.get("batch") or {}).get("mean_batch"),
            "cpu_us_per_event": {k: cpu.get(k) for k in ("flink_jvm", "flink_jvm_task_threads", "learner_thread",
                                                         "exporter", "broker")},
            "jvm_start_up_included": run.get("jvm_started_by_this_run"),
            "registry": serving.get("registry"),
            "served_by": {k: (serving.get("served_by") or {}).get(k) for k in ("by_kind", "share",
                                                                                "registry_versions_served")},
        })
    return rows


def modes_table(rows: list[dict]) -> list[str]:
    """:func:`mode_comparison`'s rows as the lines ``streamrec bench`` prints (one column per mode;
    none without rows).

    >>> print("\\n".join(modes_table([{"serve": "live", "recall": 0.14, "recall_over_reference": 0.94,
    ...                                 "events_per_s": 5000.0, "cpu_us_per_event": {}}])))  # doctest: +ELLIPSIS
    serving modes (scoring.serve; same events and settings, one job run each)  live
      recall@10 (of the reference)                                             0.1400 (0.94)
    ...
    """
    if not rows:
        return []

    def of(x, r, spec=".4f"):
        return f"{fmt(x, spec)} ({fmt(r, '.2f')})" if r is not None else fmt(x, spec)

    def cpu(row, key):
        return fmt((row.get("cpu_us_per_event") or {}).get(key), ".0f")

    def jvm(row):
        return cpu(row, "flink_jvm") + (" (JVM start-up incl.)" if row.get("jvm_start_up_included") else "")

    def fates(row):
        r = row.get("registry") or {}
        return " / ".join(fmt(r.get(k)) for k in ("exported", "promoted", "rejected")) + (
            f" (CURRENT {r['current']})" if r.get("current") else "")

    def shares(row):
        share = (row.get("served_by") or {}).get("share") or {}
        return " / ".join(fmt(None if share.get(k) is None else 100 * share[k], ".1f") for k in MODEL_KINDS) + " %"

    lines = [
        ("recall@10 (of the reference)", lambda r: of(r.get("recall"), r.get("recall_over_reference"))),
        ("events/s first→last recommendation (of the reference)",
         lambda r: of(r.get("events_per_s"), r.get("throughput_over_reference"), ",.0f")),
        ("learner batches: mean events", lambda r: fmt(r.get("mean_batch"), ".1f")),
        ("CPU µs/event: Flink JVM", jvm),
        ("  of it the job's task threads / the learner's thread",
         lambda r: f"{cpu(r, 'flink_jvm_task_threads')} / {cpu(r, 'learner_thread')}"),
        ("  exporter / broker", lambda r: f"{cpu(r, 'exporter')} / {cpu(r, 'broker')}"),
        ("versions exported / promoted / rejected", fates),
        ("records scored by " + " / ".join(MODEL_KINDS), shares),
    ]
    cells = [[fn(row) for row in rows] for _, fn in lines]
    head = "serving modes (scoring.serve; same events and settings, one job run each)"
    width = max(len(head), *(len(name) + 2 for name, _ in lines))
    cols = [max(len(str(row.get("serve"))), *(len(c[i]) for c in cells)) for i, row in enumerate(rows)]
    out = [f"{head:<{width}}  " + "  ".join(f"{str(row.get('serve')):<{w}}" for row, w in zip(rows, cols)).rstrip()]
    for (name, _), values in zip(lines, cells):
        out.append(f"{'  ' + name:<{width}}  " + "  ".join(f"{v:<{w}}" for v, w in zip(values, cols)).rstrip())
    return out


def table(result: dict) -> str:
    """The result as the text table ``streamrec bench`` prints at the end (figures not measured: "-")."""
    t, lat, q = result.get("throughput") or {}, result.get("latency") or {}, result.get("quality") or {}
    cp = t.get("checkpoints") or {}
    latest = cp.get("latest") or {}
    rows = [
        ("events", fmt(t.get("events"))),
        ("throughput, first→last recommendation", f"{fmt(t.get('events_per_s'))} events/s"),
        ("throughput incl. job start-up", f"{fmt(t.get('events_per_s_incl_startup'))} events/s "
                                          f"({fmt(t.get('wall_s'), '.0f')} s wall)"),
        ("sequential reference (same events, top-k each)", f"{fmt(t.get('reference_events_per_s'))} events/s, "
                                                           f"{fmt(t.get('reference_cpu_us_per_event'))} CPU µs/event"),
        ("pipeline / reference throughput", fmt(ratio(t.get("events_per_s"), t.get("reference_events_per_s")), ".2f")),
        ("learner batches (events): mean / max", f"{fmt((t.get('batch') or {}).get('mean_batch'), '.1f')} / "
                                        f"{fmt((t.get('batch') or {}).get('max_batch'))}"),
        ("peak RSS: Flink JVM / exporter / broker", f"{mib((t.get('memory') or {}).get('jvm_peak_rss'))} / "
                                                    f"{mib((t.get('memory') or {}).get('exporter_peak_rss'))} / "
                                                    f"{mib((t.get('memory') or {}).get('broker_peak_rss'))}"),
        ("CPU µs per event: Flink JVM (pipeline) / broker / exporter",
         " / ".join(fmt((t.get("cpu_us_per_event") or {}).get(k), ".0f")
                    for k in ("flink_jvm", "broker", "exporter"))),
        ("features job after it: s / CPU µs per event, JVM / broker",
         f"{fmt((t.get('features_job') or {}).get('run_s'), '.1f')} / "
         + " / ".join(fmt(((t.get("features_job") or {}).get("cpu_us_per_event") or {}).get(k), ".0f")
                      for k in ("flink_jvm", "broker"))),
        ("feature rows equal to the reference: user / item",
         " / ".join(f"{fmt(f.get('equal'))} of {fmt(f.get('expected'))}"
                    for f in ((t.get("features") or {}).get(k) or {} for k in ("user", "item")))),
        ("changelog records: model.items / model.users (per event)",
         f"{fmt((t.get('changelog_records') or {}).get('model_items'))} / "
         f"{fmt((t.get('changelog_records') or {}).get('model_users'))} "
         f"({fmt(t.get('changelog_records_per_event'), '.2f')})"),
        ("checkpoints completed / failed", f"{(cp.get('counts') or {}).get('completed', '-')} / "
                                           f"{(cp.get('counts') or {}).get('failed', '-')}"),
        ("checkpoint duration p50 / max", f"{fmt((cp.get('duration_ms') or {}).get('p50'))} / "
                                          f"{fmt((cp.get('duration_ms') or {}).get('max'))} ms"),
        ("last checkpoint: full / incremental size", f"{mib(latest.get('state_size'))} / "
                                                     f"{mib(latest.get('checkpointed_size'))}"),
    ]
    cap = result.get("capacity") or {}
    if cap:
        jobs = "pipeline + features job" if cap.get("features_job_beside") else "pipeline"
        rows.append((f"capacity of the latency run's jobs ({jobs}, "
                     f"checkpoints every {fmt(cap.get('checkpoint_interval_ms'))} ms)",
                     f"{fmt(cap.get('events_per_s'))} events/s (recommendations alone "
                     f"{fmt(cap.get('pipeline_events_per_s'))})"))
        rows.append(("  its CPU µs per event: Flink JVM / broker / exporter",
                     " / ".join(fmt((cap.get("cpu_us_per_event") or {}).get(k), ".0f")
                                for k in ("flink_jvm", "broker", "exporter"))))
    if lat:
        lm = lat.get("latency_ms") or {}
        rows.append((f"latency at {fmt(lat.get('target_rate'))} ev/s (emitted): p50 / p95 / p99",
                     f"{fmt(lm.get('p50'))} / {fmt(lm.get('p95'))} / {fmt(lm.get('p99'))} ms"))
        rc = lat.get("read_committed_latency_ms") or {}
        rows.append((f"read_committed latency, checkpoints every {fmt(lat.get('checkpoint_interval_ms'))} ms",
                     f"{fmt(rc.get('p50'))} / {fmt(rc.get('p95'))} / {fmt(rc.get('p99'))} ms"))
        ex = lat.get("item_exchange") or {}
        if ex and (lat.get("parallelism") or 1) > 1:
            sampled = ex.get("staleness_sampled_ms") or {}
            rows.append((f"item exchange, {fmt(lat.get('parallelism'))} shards: deltas sent / applied; "
                         "staleness p50 / p99 / max",
                         f"{fmt(ex.get('item_deltas_sent'))} / {fmt(ex.get('item_deltas_applied'))}; "
                         f"{fmt(sampled.get('p50'))} / {fmt(sampled.get('p99'))} / "
                         f"{fmt(ex.get('item_staleness_max_ms'))} ms"))
    second = result.get("second_stream") or {}
    if second:
        rows.append((f"second stream ({fmt(second.get('items'))} items, {fmt(second.get('events'))} events): "
                     "core / reference recall",
                     f"{fmt((second.get('pipeline') or {}).get('recall'), '.4f')} / "
                     f"{fmt((second.get('reference') or {}).get('recall'), '.4f')} "
                     f"(ratio {fmt(second.get('pipeline_over_reference'), '.2f')})"))
    peer = result.get("peer") or {}
    if peer.get("river"):
        r, o = peer["river"], peer["streamrec_core"]
        rows.append((f"peer on the first {fmt(peer.get('events'))} events: River / streamrec core",
                     f"recall {fmt(r.get('recall'), '.4f')} / {fmt(o.get('recall'), '.4f')}, "
                     f"{fmt(r.get('events_per_s'))} / {fmt(o.get('events_per_s'))} events/s"))
    if q:
        rows.append(("recall@10 pipeline / popularity / reference",
                     " / ".join(fmt((q.get(n) or {}).get("recall"), ".4f")
                                for n in ("pipeline", "popularity", "reference"))))
        rows.append(("coverage (first interactions with a prior list)", fmt(q.get("coverage"), ".3f")))
    for name, st in ((result.get("streams") or {}).items()):
        rows.append((f"stream {name} through the job ({fmt(st.get('events'))} events, "
                     f"{fmt(st.get('catalogue'))} items): recall / NDCG@{st.get('k', 10)} "
                     "pipeline; popularity; reference",
                     "; ".join(f"{fmt((st.get(n) or {}).get('recall'), '.4f')} / "
                               f"{fmt((st.get(n) or {}).get('ndcg'), '.4f')}"
                               for n in ("pipeline", "popularity", "reference"))
                     + f" (ratio {fmt(st.get('pipeline_over_reference'), '.2f')})"))
    width = max(len(r[0]) for r in rows)
    lines = [f"{name:<{width}}  {value}" for name, value in rows]
    if result.get("serve_modes"):  # more than the throughput phase's own mode
        lines += modes_table(result.get("modes") or mode_comparison(result))
    threads = (t.get("cpu_us_per_event_flink_jvm_threads") or [])[:8]
    if threads:
        lines.append("Flink JVM CPU µs per event by thread (task threads: one per operator chain):")
        for th in threads:
            waited = (f" (waited for a core {th['waited_for_core_share']:.0%} of the time it wanted one)"
                      if th.get("waited_for_core_share") is not None else "")
            lines.append(f"  {fmt(th['cpu_us_per_event'], '6.0f')}  {shorten(th['threads'], 90)}{waited}")
    busy = (t.get("vertices") or [])[:5]
    if busy:
        lines.append("busiest operators (throughput phase, mean busy / back-pressured ms per s):")
        for v in busy:
            lines.append(f"  {fmt(v['busy_ms_per_s'], '5.0f')} / {fmt(v['backpressured_ms_per_s'], '5.0f')}  "
                         f"{shorten(v['vertex'], 90)}")
    return "\n".join(lines)
