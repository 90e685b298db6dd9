"""What sharding costs the model, with and without the item exchange between shards.

At parallelism P the pipeline's shards each learn their users' events against their own copy of
the item table; with the exchange (udfs/item_exchange.py) each copy also gets the other shards'
steps, late by an exchange interval plus the delivery (a checkpoint interval and a micro-batch in
the job). This replays a stream through P :class:`udfs.shard_model.ShardModel` objects (the
Flink operator's code) on a simulated clock, in one process, so the recall of the variants is
compared on the same events, free of the machine's noise:

* the stream arrives at ``rate`` events/s; every ``batch_ms`` each shard learns and scores its
  users' events of that window (``shard_of``, the pipeline's routing);
* every ``exchange_ms`` each shard takes its pending steps; they are encoded and decoded as the
  job sends them, and added by every other shard ``delivery_ms`` later, before its next batch.

Staleness between shards is then at most ``exchange_ms + delivery_ms + batch_ms`` of simulated
time, i.e. that many seconds times ``rate`` events.

    python -m streamrec.bench.sharded [EVENTS]   (ML-100k; prints the figures)
    streamrec bench --shards                     (both streams; writes the JSON and a PNG: run_sharded)
"""

from __future__ import annotations

import json
import sys
import time

from streamrec.evaluate import evaluate
from streamrec.udfs import item_exchange
from streamrec.udfs.online_mf import LearnerParams
from streamrec.udfs.shard_model import Event, ShardModel, ShardSettings, shard_of


def run_shards(cfg, events: list[dict], shards: int, exchange_ms: int | None, rate: float = 5_000.0,
               batch_ms: int = 100, delivery_ms: int = 5_100) -> tuple[list[dict], dict]:
    """The recommendations of ``shards`` shards over ``events`` (dicts with ``weight`` and
    ``src_offset``); ``exchange_ms`` None: no exchange. Returns them and the exchange's figures."""
    dim = cfg.learner.dim
    settings = ShardSettings.from_config(cfg, exchange_items=exchange_ms is not None)
    params = LearnerParams.of(cfg.learner)
    models = [ShardModel(params, settings) for _ in range(shards)]
    users: list[dict] = [{} for _ in range(shards)]
    in_flight: list[tuple[int, int, str]] = []  # (arrives at ms, origin, record)
    recs: list[dict] = []
    per_window = max(1, round(rate * batch_ms / 1000))
    last_exchange, sent_bytes, records, staleness = 0, 0, 0, []
    cpu = time.process_time()
    for n, lo in enumerate(range(0, len(events), per_window)):
        now = n * batch_ms
        due = [d for d in in_flight if d[0] <= now]
        in_flight = [d for d in in_flight if d[0] > now]
        by_shard: list[list[Event]] = [[] for _ in range(shards)]
        for e in events[lo:lo + per_window]:
            by_shard[shard_of(e["user_id"], shards)].append(
                Event(e["event_id"], e["user_id"], e["item_id"], e["weight"], e["ts"], 0, e["src_offset"]))
        for s, model in enumerate(models):
            deltas = [item_exchange.decode(json.loads(line), dim) for _, origin, line in due if origin != s]
            if deltas:
                model.apply_deltas(deltas, now)
                staleness += [now - d.since_ms for d in deltas]
            if by_shard[s]:
                out = model.process(by_shard[s], users[s], now_ms=now)
                users[s].update(out.user_records)
                recs += out.recommendations
        if exchange_ms is not None and now - last_exchange >= exchange_ms:
            for s, model in enumerate(models):
                delta, _ = model.take_deltas(s, last_exchange, now)
                for line in item_exchange.encode(delta) if delta else []:
                    in_flight.append((now + delivery_ms, s, line))
                    sent_bytes += len(line)
                    records += 1
            last_exchange = now
    seconds = len(events) / rate
    return recs, {"cpu_us_per_event": round((time.process_time() - cpu) / len(events) * 1e6, 1),
                  "delta_records_per_s": round(records / seconds, 1) if exchange_ms is not None else None,
                  "delta_kib_per_s": round(sent_bytes / 1024 / seconds, 1) if exchange_ms is not None else None,
                  "staleness_max_ms": max(staleness, default=None),
                  "staleness_max_events": round(max(staleness) * rate / 1000) if staleness else None}


def sharded_quality(cfg, events: list[dict], shard_counts=(2, 4), rate: float = 5_000.0,
                    exchange_ms: int = 1_000, deliveries_ms=(400, 5_100), say=print) -> dict:
    """Recall@k of one shard, and of ``shard_counts`` shards without the exchange and with it at
    each delivery delay, on the same events."""
    k = cfg.scoring.top_k
    out = {"events": len(events), "rate_events_per_s": rate, "exchange_ms": exchange_ms,
           "deliveries_ms": list(deliveries_ms), "variants": {}}
    runs = [(1, None, None)] + [(p, None, None) for p in shard_counts] + [
        (p, exchange_ms, d) for d in deliveries_ms for p in shard_counts]
    reference = None
    for shards, exchange, delivery in runs:
        name = (f"{shards} shard" if shards == 1 else f"{shards} shards alone" if exchange is None
                else f"{shards} shards exchanging, delivery {delivery} ms")
        recs, figures = run_shards(cfg, events, shards, exchange, rate=rate, delivery_ms=delivery or 0)
        ev = evaluate(events, recs, k=k, baselines=reference is None, learner_cfg=cfg.learner)
        if reference is None:
            reference = ev.reference.recall
            out["reference_recall"] = reference
        out["variants"][name] = {"shards": shards, "exchange": exchange is not None, "delivery_ms": delivery,
                                 "recall": ev.pipeline.recall,
                                 "over_reference": ev.pipeline.recall / reference if reference else None, **figures}
        stale = figures["staleness_max_ms"]
        say(f"{name:<40} recall@{k} {ev.pipeline.recall:.4f} "
            f"({out['variants'][name]['over_reference']:.2f} of the reference)"
            + ("" if stale is None else f"; other shards' steps at most {stale:,} ms late, "
               f"{figures['delta_kib_per_s']:,.0f} KiB/s of deltas"))
    return out


def ml100k(cfg, limit: int | None = None) -> list[dict]:
    """ML-100k as the learner sees it: weights as the ingestion computes them, stream offsets."""
    from streamrec.runtime import assets
    from streamrec import replay

    w = cfg.ingest.weights
    events = replay.ml100k_events(assets.ml100k_dir(cfg))[:limit]
    return [dict(e, weight=w.rating_base + w.rating_scale * e["rating"], src_partition=0, src_offset=n)
            for n, e in enumerate(events)]


def run_sharded(cfg, name: str = "sharded", command: str | None = None, out_dir=None) -> dict:
    """`streamrec bench --shards`: both bench streams, 2 and 4 shards, the exchange delivered
    after the checkpoint interval of the latency phase (300 ms) and after the job's default
    (``flink.checkpoint_interval_ms``); ``<out_dir>/<date>-<name>.json`` and a PNG beside it
    (``out_dir``: ``bench/results`` under the working directory unless given)."""
    import os

    from streamrec.bench.report import new_result, write_result
    from streamrec.bench.synthetic import synthetic_stream

    def say(msg: str) -> None:
        print(f"[sharded] {msg}", flush=True)

    started = time.time()
    stem, result = new_result(name, command, out_dir)
    result["runs"] = {}
    batch = cfg.scoring.batch_interval_ms
    streams = {"ml100k": lambda: ml100k(cfg), "second_stream": lambda: synthetic_stream(100_000)}
    for stream, load in streams.items():
        events = load()
        say(f"{stream}: {len(events):,} events; deltas delivered 300 ms (the latency phase's checkpoint "
            f"interval) or {cfg.flink.checkpoint_interval_ms} ms (the job's) plus a {batch} ms window late ...")
        result["runs"][stream] = sharded_quality(
            cfg, events, exchange_ms=cfg.learner.exchange_interval_ms,
            deliveries_ms=(300 + batch, cfg.flink.checkpoint_interval_ms + batch), say=say)
        write_result(result, stem)
    result["load_after"] = os.getloadavg()
    result["total_s"] = round(time.time() - started, 1)
    write_result(result, stem)
    plot_sharded(result, stem.with_suffix(".png"))
    say(f"results: {stem.with_suffix('.json')} and .png; {result['total_s']:.0f} s")
    return result


def plot_sharded(result: dict, path) -> None:
    """One panel per run: recall@10 over the reference's, per variant."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = result["runs"]
    fig, axes = plt.subplots(1, len(runs), figsize=(7 * len(runs), 4.5), sharey=True, squeeze=False)
    for ax, (key, run) in zip(axes[0], runs.items()):
        names = list(run["variants"])
        ratios = [run["variants"][n]["over_reference"] for n in names]
        colours = ["#555555" if run["variants"][n]["shards"] == 1 else
                   "#2a7ab0" if run["variants"][n]["exchange"] else "#c8553d" for n in names]
        ax.bar(range(len(names)), ratios, color=colours)
        ax.set_xticks(range(len(names)), [n.replace(" shards ", "\n").replace(", delivery ", "\n")
                                          for n in names], fontsize=7)
        ax.axhline(0.9, color="black", linewidth=0.8, linestyle="--")
        ax.set_title(key, fontsize=9)
        for x, r in enumerate(ratios):
            ax.text(x, r + 0.01, f"{r:.2f}", ha="center", fontsize=8)
    axes[0][0].set_ylabel("recall@10 / sequential reference")
    fig.suptitle("Shards without (red) and with (blue) the item exchange; dashed: the issue's 0.9")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    from streamrec.core.config import load_config

    argv = sys.argv[1:] if argv is None else argv
    cfg = load_config()
    result = sharded_quality(cfg, ml100k(cfg, int(argv[0]) if argv else None))
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
