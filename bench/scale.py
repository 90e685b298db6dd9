"""Scale benchmark: how the learner's costs grow with the catalogue and the id space (no Flink, no Kafka).

    python -m streamrec.bench.scale [--name NAME] [--events 200000] [--items 1682 10000 100000] [--out DIR]
    streamrec bench --scale                     (the same, from the CLI)

1. **Scoring cost as items grow**: the call that scores a micro-batch against the shard's live item
   table (:class:`model.scoring.LiveScorer`, as :class:`udfs.shard_model.ShardModel` makes it with
   ``scoring.serve = live``), N random item vectors at ``learner.dim``, each user's top K + 16
   (the shard's first fetch, before any fetch by history size); batches of 1, 64 and
   ``scoring.max_batch_events`` users, with ``scoring.ort_threads`` intra-op threads and with
   onnxruntime's default pool: per-call latency and users scored per second.
2. **State bytes per key** as the ShardLearner's keyed state stores them (plain bytes, no pickle:
   udfs/state_codec.py): a user record (:func:`udfs.shard_model.encode_user`: vector, AdaGrad
   sums and the seen filter of ``scoring.seen_filter_bits``, so the same size whatever the
   history) and an item record (:meth:`udfs.minibatch_mf.ItemTable.encode`; with the item
   exchange it also carries the steps not yet sent).
3. **Learner core on a synthetic Zipf stream**: a 1M-user / 100k-item id space, Zipf popularity
   (s = 1.1 for items, 0.8 for users), ``--events`` events through :meth:`ShardModel.process` in
   micro-batches of ``scoring.max_batch_events``, the users' records passed in and out as the
   bytes the operator keeps: the ShardLearner's Python work per event without Flink (no state
   backend, no JVM batching, no sinks), as the catalogue grows towards 100k items.

Writes ``<out_dir>/<date>-<name>.json`` (+ ``.png``; ``out_dir``: ``bench/results`` under the
working directory unless given) and prints a table.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

#: The shard's first fetch beyond K (udfs/shard_model.py fetches K + 16 for every event of a batch).
FIRST_FETCH_MARGIN = 16


def zipf_weights(n: int, s: float) -> np.ndarray:
    """Normalised Zipf weights ``1 / rank**s`` for ranks 1..n.

    >>> zipf_weights(3, 1.0).round(3).tolist()
    [0.545, 0.273, 0.182]
    """
    w = 1.0 / np.arange(1, n + 1, dtype=np.float64) ** s
    return w / w.sum()


def _timed(fn, min_s: float = 2.0, min_calls: int = 5) -> list[float]:
    """Call ``fn`` until ``min_s`` seconds and ``min_calls`` calls have passed; per-call seconds."""
    fn()  # warm-up
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < min_calls or time.perf_counter() - start < min_s:
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return times


def scoring_cost(items_list: list[int], dim: int, k: int, batches: list[int], ort_threads: list[int],
                 seed: int = 7, min_s: float = 2.0, say=print) -> list[dict]:
    """Per catalogue size, batch size and onnxruntime thread count (0: its default pool): the
    live table's top-(K + 16) call, timed."""
    from streamrec.model.onnx_model import popularity_prior
    from streamrec.model.scoring import LiveScorer, choose_providers

    rng = np.random.default_rng(seed)
    scorers = {threads: LiveScorer(dim, choose_providers("cpu"), threads) for threads in ort_threads}
    rows = []
    for n in items_list:
        vectors = (rng.standard_normal((n, dim)) * 0.1).astype(np.float32)
        offsets = (0.5 * popularity_prior(zipf_weights(n, 1.1) * 1e6)).astype(np.float32)
        fetch = min(n, k + FIRST_FETCH_MARGIN)
        for b, threads in [(b, th) for b in batches for th in ort_threads]:
            users = (rng.standard_normal((b, dim)) * 0.3).astype(np.float32)
            scorer = scorers[threads]
            times = _timed(lambda: scorer.topk(users, vectors, offsets, fetch), min_s=min_s)
            per_call = np.asarray(times) * 1000.0
            label = str(threads) if threads else "default"
            row = {"items": n, "batch": b, "ort_intra_op_threads": label, "fetch": fetch, "calls": len(times),
                   "call_ms_p50": round(float(np.percentile(per_call, 50)), 3),
                   "call_ms_p99": round(float(np.percentile(per_call, 99)), 3),
                   "records_per_s": round(b / float(np.mean(times)), 1),
                   "records_per_s_at_p50": round(b / float(np.percentile(times, 50)), 1)}
            rows.append(row)
            say(f"scoring: {n:>7,} items, batch {b:>3}, ORT threads {label:>7}: {row['call_ms_p50']:8.3f} "
                f"ms/call p50, {row['records_per_s']:>10,.0f} users/s (mean), "
                f"{row['records_per_s_at_p50']:>10,.0f} at p50")
    return rows


def state_sizes(cfg) -> dict:
    """Bytes of one user record and one item record at the configured dim and seen filter."""
    from streamrec.udfs.embeddings import init_vector, user_key
    from streamrec.udfs.minibatch_mf import ItemTable
    from streamrec.udfs.online_mf import LearnerParams
    from streamrec.udfs.seen_filter import SeenFilter
    from streamrec.udfs.shard_model import UserRecord, encode_user

    p, sc = LearnerParams.of(cfg.learner), cfg.scoring
    seen = SeenFilter.empty(sc.seen_filter_bits, sc.seen_filter_hashes).add("123456")
    vector = init_vector(user_key("123456"), p.dim, p.seed, p.init_scale)
    user = encode_user(UserRecord(vector, np.zeros(p.dim, np.float32), seen))
    item = {}
    for exchanging in (False, True):
        table = ItemTable(p, track_pending=exchanging)
        item[exchanging] = table.encode(table.rows(["123456"]), now_ms=1_740_000_000_000)["123456"]
    return {"dim": p.dim, "seen_filter_bits": sc.seen_filter_bits, "user_record_bytes": len(user),
            "item_record_bytes": len(item[False]), "item_record_bytes_exchanging": len(item[True])}


def learner_stream(cfg, users: int, items: int, events: int, seed: int = 11, say=print,
                   max_s: float = 150.0) -> dict:
    """Events/s and CPU per event of :meth:`ShardModel.process` on a synthetic Zipf stream."""
    from streamrec.udfs.online_mf import LearnerParams
    from streamrec.udfs.shard_model import Event, ShardModel, ShardSettings

    sc = cfg.scoring
    shard = ShardModel(LearnerParams.of(cfg.learner), ShardSettings.from_config(cfg))
    rng = np.random.default_rng(seed)
    t = time.perf_counter()
    item_idx = rng.choice(items, size=events, p=zipf_weights(items, 1.1))
    user_idx = rng.choice(users, size=events, p=zipf_weights(users, 0.8))
    setup_s = time.perf_counter() - t
    batch = sc.max_batch_events
    records: dict[str, bytes] = {}  # user id -> record, as the operator's MapState holds them
    done = 0
    start, cpu = time.perf_counter(), time.process_time()
    for lo in range(0, events, batch):
        hi = min(events, lo + batch)
        # one event per second of event time: no user comes near the bot limit (events per minute)
        out = shard.process([Event(f"e{n}", f"u{user_idx[n]}", f"i{item_idx[n]}", 1.0, 1_740_000_000_000 + 1_000 * n,
                                   0, n) for n in range(lo, hi)], records, now_ms=0)
        records.update(out.user_records)
        done = hi
        elapsed = time.perf_counter() - start
        if done // 20_000 != lo // 20_000:
            say(f"learner stream: {done:,}/{events:,} events, {done / elapsed:,.0f} events/s, "
                f"{len(shard.items):,} items known")
        if elapsed > max_s:
            say(f"learner stream: stopping after {max_s:.0f} s")
            break
    total, cpu = time.perf_counter() - start, time.process_time() - cpu
    return {
        "id_space": {"users": users, "items": items}, "zipf_s": {"items": 1.1, "users": 0.8},
        "events": done, "batch": batch, "seconds": round(total, 2), "setup_s": round(setup_s, 2),
        "events_per_s": round(done / total, 1), "cpu_us_per_event": round(1e6 * cpu / done, 1),
        "distinct_users": len(records), "distinct_items": len(shard.items),
        "user_records_mib": round(sum(len(v) for v in records.values()) / 2**20, 1),
    }


def run_scale(cfg, name: str = "scale", events: int = 200_000, items_list: list[int] | None = None,
              out_dir: Path | None = None, command: str | None = None) -> dict:
    import os

    from streamrec.bench.report import new_result, write_result

    def say(msg: str) -> None:
        print(f"[scale] {msg}", flush=True)

    items_list = items_list or [1_682, 10_000, 100_000]
    started = time.time()
    stem, result = new_result(name, command, out_dir)
    sc = cfg.scoring
    result |= {"dim": cfg.learner.dim, "top_k": sc.top_k}
    batches = sorted({1, 64, sc.max_batch_events})
    threads = sorted({sc.ort_threads, 0}, reverse=True)  # the configured count, then onnxruntime's pool
    result["scoring"] = scoring_cost(items_list, cfg.learner.dim, sc.top_k, batches, threads, say=say)
    result["state_bytes"] = state_sizes(cfg)
    say(f"state bytes: {result['state_bytes']}")
    result["learner_stream"] = learner_stream(cfg, 1_000_000, 100_000, events, say=say)
    say(f"learner stream: {result['learner_stream']}")
    result["load_after"] = os.getloadavg()
    result["total_s"] = round(time.time() - started, 1)
    write_result(result, stem)
    try:
        from streamrec.bench.plots import plot_scale

        plot_scale(result, stem.with_suffix(".png"))
    except Exception as exc:  # noqa: BLE001
        say(f"plot failed: {exc!r}")
    print(scale_table(result), flush=True)
    say(f"results: {stem.with_suffix('.json')}; {result['total_s']:.0f} s")
    return result


def scale_table(result: dict) -> str:
    lines = [f"{'items':>8} {'batch':>5} {'ORT thr':>7} {'ms/call p50':>12} {'ms/call p99':>12} "
             f"{'users/s mean':>12} {'users/s @p50':>12}"]
    for r in result.get("scoring", []):
        lines.append(f"{r['items']:>8,} {r['batch']:>5} {r['ort_intra_op_threads']:>7} {r['call_ms_p50']:>12.3f} "
                     f"{r['call_ms_p99']:>12.3f} {r['records_per_s']:>12,.0f} {r['records_per_s_at_p50']:>12,.0f}")
    ls = result.get("learner_stream") or {}
    if ls:
        lines.append(f"learner core (ShardModel, batches of {ls['batch']}) on a Zipf stream (1M users / 100k items): "
                     f"{ls['events_per_s']:,.0f} events/s, {ls['cpu_us_per_event']:,.0f} CPU us per event; "
                     f"{ls['distinct_items']:,} items, {ls['distinct_users']:,} users "
                     f"({ls['user_records_mib']:,.0f} MiB of user records)")
    sb = result.get("state_bytes") or {}
    if sb:
        lines.append(f"state per key at dim {sb['dim']}: user {sb['user_record_bytes']:,} B (seen filter of "
                     f"{sb['seen_filter_bits']:,} bits), item {sb['item_record_bytes']} B "
                     f"({sb['item_record_bytes_exchanging']} B with the item exchange)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    import argparse

    from streamrec.core.config import load_config

    parser = argparse.ArgumentParser(prog="python -m streamrec.bench.scale", description=__doc__.splitlines()[0])
    parser.add_argument("--name", default="scale")
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--items", type=int, nargs="+")
    parser.add_argument("--out", help="results folder (default: bench/results under the working directory)")
    args = parser.parse_args(argv)
    cmd = " ".join(["python -m streamrec.bench.scale", *(argv if argv is not None else sys.argv[1:])])
    run_scale(load_config(), args.name, args.events, args.items, out_dir=args.out, command=cmd)
    return 0


if __name__ == "__main__":
    sys.exit(main())
