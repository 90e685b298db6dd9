"""Where the micro-batched learner loses against its own sequential reference (issue 33, item 2).

Runs the pipeline's learner core (:class:`udfs.shard_model.ShardModel`, the Flink operator's
code) over a stream in process at several fixed batch sizes and at the job's defaults (one
shard; a window of ``scoring.batch_interval_ms`` at ``rate`` events/s, learned in chunks of
``scoring.max_batch_events``: :func:`streamrec.bench.sharded.run_shards`), each with the ingest's
bot limit on (the job's default) and off, and evaluates each with the evaluator of ``make bench``
on the same events against one run of the sequential reference. Besides recall and NDCG it
splits each variant's recall by whether the evaluated event came within ``gap_s`` (60 s) of the
same user's previous event (a burst) or not, and counts the events the bot limit kept from
learning: what a burst costs the batched learner is where the hypothesis looks.

    python -m streamrec.bench.batch_sweep [bursty|ml100k] [EVENTS] [--batches 1,8,64,256] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from streamrec.evaluate import evaluate


def clean_events(events: list[dict], ingest) -> list[dict]:
    """Raw rating events as the job's ingest cleans them (``weight`` from the rating, the
    stream position as ``src_offset``)."""
    from streamrec.udfs.features import event_weight

    return [dict(e, weight=event_weight(e["event_type"], e.get("rating"), ingest), src_partition=0, src_offset=n)
            for n, e in enumerate(events)]


def core_recommendations(cfg, events: list[dict], batch: int | None, bots: bool = True) -> tuple[list[dict], dict]:
    """The shard core's records over ``events`` in fixed batches of ``batch`` (None: the job's
    defaults, :func:`~streamrec.bench.sharded.run_shards` with one shard), with the bot limit
    on or off; and its figures (CPU per event, events not learned as a bot's)."""
    from streamrec.udfs.online_mf import LearnerParams
    from streamrec.udfs.shard_model import Event, ShardModel, ShardSettings

    if not bots:
        cfg = cfg.model_copy(update={"ingest": cfg.ingest.model_copy(update={"exclude_bots_from_learning": False})})
    if batch is None:
        from streamrec.bench.sharded import run_shards

        recs, figures = run_shards(cfg, events, 1, None, batch_ms=cfg.scoring.batch_interval_ms)
        return recs, {"cpu_us_per_event": figures["cpu_us_per_event"]}
    shard = ShardModel(LearnerParams.of(cfg.learner), ShardSettings.from_config(cfg))
    users, recs, bot_events = {}, [], 0
    cpu = time.process_time()
    for lo in range(0, len(events), batch):
        out = shard.process([Event(e["event_id"], e["user_id"], e["item_id"], e["weight"], e["ts"], 0,
                                   e["src_offset"]) for e in events[lo:lo + batch]], users, now_ms=0)
        users.update(out.user_records)
        recs += out.recommendations
        bot_events += out.bot_events
    return recs, {"cpu_us_per_event": round((time.process_time() - cpu) / len(events) * 1e6, 1),
                  "events_not_learned_as_bot": bot_events}


def burst_flags(events: list[dict], gap_s: float = 60.0) -> dict[int, bool]:
    """``src_offset`` -> whether the event came within ``gap_s`` of its user's previous one.

    >>> burst_flags([{"user_id": "a", "ts": 0, "src_offset": 0}, {"user_id": "a", "ts": 5_000, "src_offset": 1},
    ...              {"user_id": "a", "ts": 500_000, "src_offset": 2}])
    {0: False, 1: True, 2: False}
    """
    last: dict[str, int] = {}
    out = {}
    for e in events:
        prev = last.get(e["user_id"])
        out[e["src_offset"]] = prev is not None and e["ts"] - prev <= gap_s * 1000
        last[e["user_id"]] = e["ts"]
    return out


def evaluated_offsets(events: list[dict], recs: list[dict]) -> list[int]:
    """The ``src_offset`` of each event the evaluator scores, in its order (as
    :func:`streamrec.evaluate.evaluate` picks them from events in stream order: a first
    interaction whose user had a non-empty list from an earlier offset).

    >>> ev = [{"user_id": "a", "item_id": i, "src_offset": n} for n, i in enumerate("xyx")]
    >>> evaluated_offsets(ev, [{"user_id": "a", "source_offset": 0, "items": [{"item_id": "y"}]}])
    [1]
    """
    first_list: dict[str, int] = {}
    for r in recs:
        if r["items"]:
            first_list[r["user_id"]] = min(r["source_offset"], first_list.get(r["user_id"], r["source_offset"]))
    seen: dict[str, set] = {}
    out = []
    for e in events:
        had = seen.setdefault(e["user_id"], set())
        if e["item_id"] not in had and first_list.get(e["user_id"], e["src_offset"]) < e["src_offset"]:
            out.append(e["src_offset"])
        had.add(e["item_id"])
    return out


def split_recall(ranks: list[int], offsets: list[int], flags: dict[int, bool]) -> dict:
    """Recall over the evaluated events (``offsets``, with their ``ranks``) in bursts and not.

    >>> split_recall([0, -1, 3], [4, 5, 6], {4: True, 5: True, 6: False})
    {'burst': {'evaluated': 2, 'recall': 0.5}, 'not_burst': {'evaluated': 1, 'recall': 1.0}}
    """
    hits = {True: [0, 0], False: [0, 0]}
    for off, rank in zip(offsets, ranks):
        h = hits[flags[off]]
        h[0] += rank >= 0
        h[1] += 1
    return {name: {"evaluated": hits[key][1], "recall": hits[key][0] / hits[key][1] if hits[key][1] else None}
            for name, key in (("burst", True), ("not_burst", False))}


def sweep(cfg, events: list[dict], batches=(1, 8, 64, 256), say=print) -> dict:
    """Every variant's recall and NDCG against the sequential reference on ``events`` (cleaned)."""
    flags = burst_flags(events)
    rows: dict[str, dict] = {}
    reference = popularity = None
    variants = [(f"batch {b}", b, True) for b in batches] + [("job defaults", None, True)]
    variants += [(f"batch {b}, no bot limit", b, False) for b in (batches[0], batches[-1])]
    variants += [("job defaults, no bot limit", None, False)]
    for name, batch, bots in variants:
        t = time.time()
        recs, figures = core_recommendations(cfg, events, batch, bots)
        first = reference is None
        ev = evaluate(events, recs, k=cfg.scoring.top_k, baselines=first, learner_cfg=cfg.learner)
        if first:
            reference, popularity = ev.reference, ev.popularity
            ref_offsets = evaluated_offsets(events, recs)
            rows["reference (sequential)"] = {"recall": reference.recall, "ndcg": reference.ndcg,
                                              "evaluated": reference.evaluated,
                                              **split_recall(reference.ranks, ref_offsets, flags)}
            rows["popularity (windowed)"] = {"recall": popularity.recall, "ndcg": popularity.ndcg,
                                             "evaluated": popularity.evaluated,
                                             **split_recall(popularity.ranks, ref_offsets, flags)}
        offsets = evaluated_offsets(events, recs)
        assert len(offsets) == ev.pipeline.evaluated, "evaluated_offsets disagrees with the evaluator"
        rows[name] = {"recall": ev.pipeline.recall, "ndcg": ev.pipeline.ndcg, "evaluated": ev.pipeline.evaluated,
                      "over_reference": ev.pipeline.recall / reference.recall,
                      "same_events_as_reference": offsets == ref_offsets,
                      **split_recall(ev.pipeline.ranks, offsets, flags),
                      **figures, "seconds": round(time.time() - t, 1)}
        r = rows[name]
        say(f"{name:28s} recall {r['recall']:.4f} ndcg {r['ndcg']:.4f} / reference {r['over_reference']:.3f}; "
            f"burst {r['burst']['recall']:.4f} not {r['not_burst']['recall']:.4f} ({r['seconds']:.0f} s)")
        if first:
            for ref in ("reference (sequential)", "popularity (windowed)"):
                q = rows[ref]
                say(f"{ref:28s} recall {q['recall']:.4f} ndcg {q['ndcg']:.4f}; burst {q['burst']['recall']:.4f} "
                    f"not {q['not_burst']['recall']:.4f}")
    return {"events": len(events), "burst_share": sum(flags.values()) / len(flags), "rows": rows}


def main(argv: list[str] | None = None) -> int:
    from streamrec.core.config import load_config

    parser = argparse.ArgumentParser(prog="python -m streamrec.bench.batch_sweep")
    parser.add_argument("stream", nargs="?", default="bursty", choices=("bursty", "ml100k"))
    parser.add_argument("events", nargs="?", type=int)
    parser.add_argument("--batches", default="1,8,64,256")
    parser.add_argument("--json")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    cfg = load_config()
    if args.stream == "bursty":
        from streamrec.bench.bursty import bursty_stream

        raw = bursty_stream()
    else:
        from streamrec import replay
        from streamrec.runtime import assets

        raw = replay.ml100k_events(assets.ml100k_dir(cfg))
    events = clean_events(raw[:args.events] if args.events else raw, cfg.ingest)
    out = sweep(cfg, events, tuple(int(b) for b in args.batches.split(",")))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(out, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
