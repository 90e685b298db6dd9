"""Scale benchmark: how the costs grow with the catalogue and the id space (no Flink, no Kafka).

    python bench/scale.py [--name NAME] [--events 200000] [--items 10000 100000]
    streamrec bench --scale                     (the same, from the CLI)

1. **Scoring cost as items grow**: a real ONNX scoring graph (:mod:`model.onnx_model`) with N
   random item vectors at the configured ``learner.dim``, loaded in onnxruntime exactly as the
   Scorer does (:class:`model.scoring.ScoringModel`), top-K with each user's 20 recent items
   excluded; batches of 1 (one call per record) and of ``scoring.batch_size`` (64): per-call
   latency and users scored per second.
2. **State bytes per key** at the configured dim: the serialised user / item states
   (``udfs.online_mf.*_to_bytes``) and what the operators actually store (the bytes pickled by
   ``Types.PICKLED_BYTE_ARRAY``, plus the small meta states).
3. **Learner throughput on a synthetic Zipf stream**: 1M users / 100k items id space, Zipf
   popularity (s = 1.1 for items, 0.8 for users), ``--events`` events through the pure-Python
   core the Flink operators wrap: state decode, ``user_step``, state encode, then ``item_step``
   with decode/encode for every item update (1 positive + ``negatives``), against an item snapshot
   of all items. That is the per-event Python work of UserLearner + ItemLearner without Flink's
   state backend and serialisation between operators.

Writes ``bench/results/<date>-<name>.json`` (+ ``.png``) and prints a table; ~2-4 minutes here.
"""

from __future__ import annotations

import json
import pickle
import sys
import time
from pathlib import Path

import numpy as np

BENCH_DIR = Path(__file__).resolve().parent


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


def scoring_cost(items_list: list[int], dim: int, k: int, batches: list[int], recent: int = 20,
                 seed: int = 7, min_s: float = 2.0, say=print) -> list[dict]:
    from streamrec.model.onnx_model import export_model_bytes, popularity_prior
    import onnxruntime as ort

    from streamrec.model.scoring import ScoringModel, choose_providers

    rng = np.random.default_rng(seed)
    rows = []
    for n in items_list:
        vectors = (rng.standard_normal((n, dim)) * 0.1).astype(np.float32)
        pop = (zipf_weights(n, 1.1) * 1e6).astype(np.float32)
        t = time.perf_counter()
        blob = export_model_bytes(vectors, np.zeros(n, np.float32), popularity_prior(pop), 0.1)
        build_s = time.perf_counter() - t
        ids = [f"i{j}" for j in range(n)]
        t = time.perf_counter()
        meta = {"version": "bench", "item_ids": ids, "dim": dim}
        model = ScoringModel.from_bytes(blob, meta, providers=choose_providers("cpu"))
        load_s = time.perf_counter() - t
        one = ort.SessionOptions()
        one.intra_op_num_threads = 1
        single = ScoringModel.from_bytes(blob, meta, providers=choose_providers("cpu"), session_options=one)
        for b, threads in [(b, th) for b in batches for th in ("default", "1")]:
            scorer = model if threads == "default" else single
            users = (rng.standard_normal((b, dim)) * 0.3).astype(np.float32)
            excl = [set(rng.choice(ids, recent, replace=False).tolist()) for _ in range(b)]
            times = _timed(lambda: scorer.topk(users, k, exclude=excl), min_s=min_s)
            per_call = np.asarray(times) * 1000.0
            row = {"items": n, "batch": b, "ort_intra_op_threads": threads, "calls": len(times),
                   "call_ms_p50": round(float(np.percentile(per_call, 50)), 3),
                   "call_ms_p99": round(float(np.percentile(per_call, 99)), 3),
                   "records_per_s": round(b / float(np.mean(times)), 1),
                   "records_per_s_at_p50": round(b / float(np.percentile(times, 50)), 1),
                   "model_bytes": len(blob), "build_s": round(build_s, 3), "load_s": round(load_s, 3)}
            rows.append(row)
            say(f"scoring: {n:>7,} items, batch {b:>3}, ORT threads {threads:>7}: {row['call_ms_p50']:8.3f} "
                f"ms/call p50, {row['records_per_s']:>10,.0f} users/s (mean), "
                f"{row['records_per_s_at_p50']:>10,.0f} at p50")
    return rows


def state_sizes(cfg) -> dict:
    from streamrec.udfs import online_mf
    from streamrec.udfs.online_mf import init_item_state, init_user_state

    p = online_mf.LearnerParams.of(cfg.learner)
    out = {"dim": p.dim, "recent_items_max": p.recent_items}
    user = init_user_state("123456", p)
    for n in (0, 10, p.recent_items):
        s = online_mf.UserState(user.vector, user.accum, [f"{100000 + j}" for j in range(n)], 42)
        raw = online_mf.user_state_to_bytes(s)
        out[f"user_state_bytes_recent{n}"] = len(raw)
        out[f"user_state_pickled_bytes_recent{n}"] = len(pickle.dumps(raw))
    item = online_mf.item_state_to_bytes(init_item_state("123456", p))
    out["item_state_bytes"] = len(item)
    out["item_state_pickled_bytes"] = len(pickle.dumps(item))
    out["user_meta_pickled_bytes"] = len(pickle.dumps((29_000_000, 3, 1_740_000_000_000, 1_740_000_000_000)))
    out["item_emit_pickled_bytes"] = len(pickle.dumps((1_740_000_000_000, None, 1_740_000_000_000)))
    return out


def learner_stream(cfg, users: int, items: int, events: int, seed: int = 11, say=print,
                   max_s: float = 150.0) -> dict:
    """Events/s of the UserLearner + ItemLearner Python core on a synthetic Zipf stream."""
    from streamrec.udfs import online_mf
    from streamrec.udfs.online_mf import init_item_state, init_user_state

    p = online_mf.LearnerParams.of(cfg.learner)
    rng = np.random.default_rng(seed)
    t = time.perf_counter()
    item_p = zipf_weights(items, 1.1)
    user_p = zipf_weights(users, 0.8)
    item_idx = rng.choice(items, size=events, p=item_p)
    user_idx = rng.choice(users, size=events, p=user_p)
    snapshot = online_mf.ItemSnapshot([f"i{j}" for j in range(items)],
                                      (rng.standard_normal((items, p.dim)) * 0.1).astype(np.float32),
                                      np.zeros(items, np.float32), item_p * events, p.dim)
    setup_s = time.perf_counter() - t
    user_states: dict[str, bytes] = {}
    item_states: dict[str, bytes] = {}
    t_user = t_item = 0.0
    updates = 0
    done = 0
    start = time.perf_counter()
    for n in range(events):
        uid, iid, eid = f"u{user_idx[n]}", f"i{item_idx[n]}", f"e{n}"
        t0 = time.perf_counter()
        raw = user_states.get(uid)
        state = online_mf.user_state_from_bytes(raw) if raw is not None else init_user_state(uid, p)
        state, upds = online_mf.user_step(state, iid, 1.0, eid, snapshot, p)
        user_states[uid] = online_mf.user_state_to_bytes(state)
        t1 = time.perf_counter()
        for u in upds:
            raw_i = item_states.get(u.item_id)
            ist = online_mf.item_state_from_bytes(raw_i) if raw_i is not None else init_item_state(u.item_id, p)
            item_states[u.item_id] = online_mf.item_state_to_bytes(online_mf.item_step(ist, u, p))
        t2 = time.perf_counter()
        t_user += t1 - t0
        t_item += t2 - t1
        updates += len(upds)
        done += 1
        if done % 20_000 == 0:
            say(f"learner stream: {done:,}/{events:,} events, {done / (t2 - start):,.0f} events/s")
            if t2 - start > max_s:
                say(f"learner stream: stopping after {max_s:.0f} s")
                break
    total = time.perf_counter() - start
    user_bytes = sum(len(v) for v in user_states.values())
    item_bytes = sum(len(v) for v in item_states.values())
    return {
        "id_space": {"users": users, "items": items}, "zipf_s": {"items": 1.1, "users": 0.8},
        "events": done, "seconds": round(total, 2), "setup_s": round(setup_s, 2),
        "events_per_s": round(done / total, 1),
        "user_step_us_per_event": round(1e6 * t_user / done, 1),
        "item_steps_us_per_event": round(1e6 * t_item / done, 1),
        "item_updates_per_event": round(updates / done, 2),
        "item_step_us_per_update": round(1e6 * t_item / max(updates, 1), 1),
        "distinct_users": len(user_states), "distinct_items": len(item_states),
        "mean_user_state_bytes": round(user_bytes / max(len(user_states), 1), 1),
        "mean_item_state_bytes": round(item_bytes / max(len(item_states), 1), 1),
    }


def run_scale(cfg, name: str = "scale", events: int = 200_000, items_list: list[int] | None = None,
              out_dir: Path | None = None, command: str | None = None) -> dict:
    from streamrec.bench.run_bench import new_result

    def say(msg: str) -> None:
        print(f"[scale] {msg}", flush=True)

    import os

    items_list = items_list or [1_682, 10_000, 100_000]
    started = time.time()
    stem, result = new_result(name, command, out_dir)
    result |= {"dim": cfg.learner.dim, "top_k": cfg.scoring.top_k}
    batches = sorted({1, cfg.scoring.batch_size})
    result["scoring"] = scoring_cost(items_list, cfg.learner.dim, cfg.scoring.top_k, batches, say=say)
    result["state_bytes"] = state_sizes(cfg)
    say(f"state bytes: {result['state_bytes']}")
    result["learner_stream"] = learner_stream(cfg, 1_000_000, 100_000, events, say=say)
    say(f"learner stream: {result['learner_stream']}")
    result["load_after"] = os.getloadavg()
    result["total_s"] = round(time.time() - started, 1)
    stem.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
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
        lines.append(f"learner core on Zipf stream (1M users / 100k items): {ls['events_per_s']:,.0f} events/s "
                     f"(user side {ls['user_step_us_per_event']} us + item side {ls['item_steps_us_per_event']} us "
                     f"per event, {ls['item_updates_per_event']} item updates per event)")
    sb = result.get("state_bytes") or {}
    if sb:
        lines.append(f"state per key at dim {sb['dim']}: item {sb['item_state_bytes']} B, user "
                     f"{sb['user_state_bytes_recent0']}-{sb['user_state_bytes_recent' + str(sb['recent_items_max'])]} B "
                     f"(0-{sb['recent_items_max']} recent items)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    import argparse

    from streamrec.core.config import load_config

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", default="scale")
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--items", type=int, nargs="+")
    args = parser.parse_args(argv)
    cmd = " ".join(["python", "bench/scale.py", *(argv if argv is not None else sys.argv[1:])])
    run_scale(load_config(), args.name, args.events, args.items, command=cmd)
    return 0


if __name__ == "__main__":
    sys.exit(main())
