"""Plots of a ``streamrec bench`` result (matplotlib, Agg backend: no display needed).

    python -m streamrec.bench.plots bench/results/2025-01-01-ml100k.json   # re-draws the .png next to it

One PNG, six panels: rolling recall@10 over the stream (pipeline, popularity, sequential
reference); recommendations per second over the throughput run; latency p50/p99 per second of
the fixed-rate run; RSS of the Flink JVM and the exporter over the throughput run; the Flink
JVM's cores used by thread group (JIT, each operator chain's task thread, ...) over that run;
the capacity run: events recommended and read by the features job over time.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def plot_result(result: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(19, 8.5))
    (ax_q, ax_t, ax_c), (ax_l, ax_m, ax_cap) = axes
    title = f"streamrec bench {result.get('name')} ({result.get('date')})"
    fig.suptitle(title)

    q = result.get("quality") or {}
    for name, pts in (q.get("rolling_recall") or {}).items():
        if pts:
            ax_q.plot([p[0] for p in pts], [p[1] for p in pts], label=f"{name} ({(q.get(name) or {}).get('recall', 0):.3f})")
    ax_q.set_title(f"rolling recall@{q.get('k', 10)} (window {q.get('rolling_window', '?')} evaluated events)")
    ax_q.set_xlabel("evaluated event (stream order)")
    ax_q.set_ylabel("recall")
    if q.get("rolling_recall"):
        ax_q.legend()

    t = result.get("throughput") or {}
    series = (t.get("series") or {}).get("recommendations_per_s") or []
    if series:
        ax_t.plot([p[0] for p in series], [p[1] for p in series], lw=0.8, label="recommendations/s")
        if t.get("events_per_s"):
            ax_t.axhline(t["events_per_s"], color="k", ls="--", lw=0.8,
                         label=f"mean {t['events_per_s']:,.0f} events/s")
        ax_t.legend()
    ax_t.set_title("throughput run (bounded replay): records out per second")
    ax_t.set_xlabel("seconds since the first recommendation")

    lat = result.get("latency") or {}
    ls = (lat.get("series") or {}).get("latency") or []
    if ls:
        ax_l.plot([p["t_s"] for p in ls], [p["p50"] for p in ls], label="p50")
        ax_l.plot([p["t_s"] for p in ls], [p["p99"] for p in ls], label="p99")
        rc = (lat.get("series") or {}).get("read_committed_latency") or []
        if rc:
            ax_l.plot([p["t_s"] for p in rc], [p["p99"] for p in rc], label="read_committed p99")
        cps = (lat.get("series") or {}).get("checkpoints") or []
        if cps:
            ax_l.scatter([c[0] for c in cps], [c[1] for c in cps], s=4, color="k",
                         label="checkpoint duration (at its trigger)")
        ax_l.set_yscale("log")
        ax_l.legend()
    ax_l.set_title(f"latency ingest → recommendation at {lat.get('target_rate', 0):,.0f} events/s (ms)")
    ax_l.set_xlabel("seconds since the first replayed event")

    cap = result.get("capacity") or {}
    cap_series = cap.get("series") or {}
    if cap_series.get("recommendations_per_s"):
        # cumulative: the features job reads the clean events in bursts, as the pipeline commits them
        pts, total = [], 0.0
        for t_s, per_s in cap_series["recommendations_per_s"]:
            total += per_s
            pts.append((t_s + 1.0, total))
        ax_cap.plot([0.0] + [p[0] for p in pts], [0.0] + [p[1] for p in pts], label="events recommended")
        read = cap_series.get("features_job_read") or []
        if read:
            ax_cap.plot([p[0] for p in read], [p[1] for p in read], label="clean events the features job read")
        if cap.get("events_per_s"):
            ax_cap.axline((0.0, 0.0), slope=cap["events_per_s"], color="k", ls="--", lw=0.8,
                          label=f"capacity {cap['events_per_s']:,.0f} events/s")
        ax_cap.set_ylim(0, (cap.get("events") or total) * 1.05)
        ax_cap.legend()
        ax_cap.set_title(f"capacity: the latency run's jobs over a backlog "
                         f"({cap.get('checkpoint_interval_ms', 0):,} ms checkpoints)")
        ax_cap.set_xlabel("seconds since the first recommendation")
    else:
        ax_cap.axis("off")

    mem = t.get("series") or {}
    for key, label in (("jvm_rss_mib", "Flink JVM (incl. thread-mode Python)"), ("exporter_rss_mib", "exporter")):
        pts = mem.get(key) or []
        if pts:
            ax_m.plot([p[0] for p in pts], [p[1] for p in pts], label=label)
    ax_m.set_title("RSS during the throughput run (MiB)")
    ax_m.set_xlabel("seconds since the job was started")
    if mem.get("jvm_rss_mib") or mem.get("exporter_rss_mib"):
        ax_m.legend()

    by_thread = mem.get("jvm_cores_by_thread") or {}
    if by_thread:
        names = list(by_thread)
        xs = [p[0] for p in by_thread[names[0]]]
        ax_c.stackplot(xs, *[[p[1] for p in by_thread[n]] for n in names],
                       labels=[n if len(n) <= 45 else n[:44] + "…" for n in names])
        ax_c.legend(fontsize=7, loc="upper left")
    ax_c.set_title("Flink JVM: cores used by thread (throughput run)")
    ax_c.set_xlabel("seconds since the job was started")

    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_scale(result: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result.get("scoring") or []
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for batch, threads in sorted({(r["batch"], r.get("ort_intra_op_threads", "default")) for r in rows}):
        pts = sorted((r["items"], r.get("records_per_s_at_p50", r["records_per_s"])) for r in rows
                     if r["batch"] == batch and r.get("ort_intra_op_threads", "default") == threads)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=f"batch {batch}, ORT threads {threads}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("items in the model")
    ax.set_ylabel("users scored per second at the median call")
    ax.set_title("scoring cost as items grow")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


if __name__ == "__main__":
    for arg in sys.argv[1:]:
        data = json.loads(Path(arg).read_text())
        out = Path(arg).with_suffix(".png")
        (plot_scale if "scoring" in data else plot_result)(data, out)
        print(out)
