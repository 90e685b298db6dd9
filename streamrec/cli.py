"""``streamrec``: the front door.

    streamrec up | down | status          the embedded Apache Kafka broker (skipped for an external Kafka)
    streamrec topics create | list        the configured topics
    streamrec replay [ml-100k | FILE]     produce a dataset into events.raw
    streamrec consume TOPIC               print records (read_committed)
    streamrec run [--bounded] [--fresh]   the pipeline and features jobs on Flink's local mini-cluster (resume by default)
        [--from-version V]                ... with the learner's vectors rolled back to version V
    streamrec sql "SELECT ..."            a Flink SQL query over the topics (bounded), as a table
    streamrec demo                        everything above, end to end, then stops it all
    streamrec cluster up | down | status  a standalone Flink cluster from the PyFlink wheel
    streamrec submit [--parallelism N] [--from-savepoint PATH]
    streamrec stop --savepoint JOB_ID
    streamrec exporter [--once [--wait S]] [--force] [--metrics-port P]  the sidecar: model changelog -> ONNX registry versions
    streamrec model list | promote V | rollback [V] [--force] | unpin | log [V]   the model registry
    streamrec serve [--host H] [--port P]  HTTP: users' newest lists, request-time scoring, metrics
    streamrec bench [--limit N] [--scale | --shards] ML-100k benchmark (throughput, latency, quality) -> bench/results/
    streamrec setup [--relock]            fetch + verify the broker and connector jars, ML-100k
    streamrec config                      print the effective configuration
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from streamrec.core.config import Config, ConfigError, describe, load_config


def _at_least(minimum: int):
    """An argparse type: an integer >= ``minimum``; anything else is a usage error (exit 2).

    >>> _at_least(1)("3")
    3
    >>> _at_least(1)("-1")
    Traceback (most recent call last):
    ...
    argparse.ArgumentTypeError: must be an integer >= 1, got '-1'
    """
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < minimum:
            raise argparse.ArgumentTypeError(f"must be an integer >= {minimum}, got {text!r}")
        return value
    return parse


def _seconds_or_rate(allow_zero: bool):
    """An argparse type: a finite number > 0 (>= 0 with ``allow_zero``).

    >>> _seconds_or_rate(False)("2.5"), _seconds_or_rate(True)("0")
    (2.5, 0.0)
    >>> _seconds_or_rate(False)("nan")
    Traceback (most recent call last):
    ...
    argparse.ArgumentTypeError: must be a finite number > 0, got 'nan'
    """
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
            raise argparse.ArgumentTypeError(
                f"must be a finite number {'>=' if allow_zero else '>'} 0, got {text!r}")
        return value
    return parse


POSITIVE, NON_NEGATIVE = _at_least(1), _at_least(0)
RATE, SECONDS = _seconds_or_rate(False), _seconds_or_rate(True)


def _cfg(args: argparse.Namespace) -> Config:
    overrides = {}
    if getattr(args, "parallelism", None):
        overrides["flink.parallelism"] = args.parallelism
    return load_config(args.config or "auto", overrides=overrides)


def ensure_kafka(cfg: Config, topics: list[str] | None = None) -> None:
    """Start/reuse the embedded broker (if no real Kafka is configured) and create topics."""
    from streamrec.runtime import broker, kafka_io

    status = broker.up(cfg, log=lambda m: print(m, file=sys.stderr))
    if status.embedded and not status.started:
        print(f"using the running embedded broker at {status.bootstrap}", file=sys.stderr)
    kafka_io.ensure_topics(cfg, topics)


def cmd_up(args, cfg: Config) -> int:
    from streamrec.runtime import broker

    status = broker.up(cfg, log=lambda m: print(m, file=sys.stderr))
    if not status.embedded:
        print(f"kafka.bootstrap_servers is set: using the external Kafka at {status.bootstrap}; "
              "nothing embedded started", file=sys.stderr)
    elif not status.started:
        print(f"embedded broker already running (pid {status.pid})", file=sys.stderr)
    if not args.no_topics:
        from streamrec.runtime.kafka_io import ensure_topics

        ensure_topics(cfg)
    print(status.bootstrap)
    return 0


def cmd_down(args, cfg: Config) -> int:
    from streamrec.runtime import broker

    broker.down(cfg)
    return 0


def cmd_status(args, cfg: Config) -> int:
    from streamrec.runtime import broker

    st = broker.status(cfg)
    if st is None:
        print("embedded broker: not running")
        return 1
    kind = "embedded" if st.embedded else "external"
    print(f"{kind} Kafka at {st.bootstrap}" + (f" (pid {st.pid})" if st.pid else ""))
    return 0


def cmd_topics(args, cfg: Config) -> int:
    from streamrec.runtime.kafka_io import admin, ensure_topics

    if args.action == "create":
        ensure_kafka(cfg, [])
        for topic, what in ensure_topics(cfg).items():
            print(f"{topic:24s} {what} ({cfg.kafka.partitions} partitions)")
    else:
        md = admin(cfg).list_topics(timeout=10)
        for name in sorted(t for t in md.topics if not t.startswith("__")):
            print(f"{name:24s} {len(md.topics[name].partitions)} partitions")
    return 0


def cmd_replay(args, cfg: Config) -> int:
    from streamrec.runtime import assets
    from streamrec import replay

    from streamrec.runtime.kafka_io import topic_exists

    topic = args.topic or cfg.kafka.topics.raw
    configured = set(cfg.kafka.topics.model_dump().values())
    ensure_kafka(cfg, [topic] if topic in configured else [])
    if not topic_exists(cfg, topic):  # a typo would otherwise be created silently and filled
        print(f"error: topic {topic!r} does not exist and is not a configured topic; create it "
              "first, or name a configured one (`streamrec topics list`)", file=sys.stderr)
        return 2
    if args.source == "ml-100k":
        events = replay.ml100k_events(assets.ml100k_dir(cfg))
        items, total = replay.encode_events(events), len(events)
    else:
        path = Path(args.source)
        if not path.is_file():
            print(f"error: {path} is neither 'ml-100k' nor a readable JSONL file", file=sys.stderr)
            return 2
        items, total = replay.jsonl_items(path), None
    result = replay.produce(cfg, topic, items, total=total, limit=args.limit, rate=args.rate,
                            speedup=args.speedup, progress=not args.quiet)
    print(f"replayed {result.delivered} of {result.sent} records to {topic} in {result.seconds:.1f} s "
          f"({result.rate:,.0f} records/s); {result.failed} failed")
    if result.failed:
        print(f"error: {result.failed} records were not delivered: {result.first_error}", file=sys.stderr)
        return 1
    return 0


def cmd_consume(args, cfg: Config) -> int:
    from streamrec.runtime.kafka_io import read_topic, topic_exists

    if not topic_exists(cfg, args.topic):
        print(f"error: topic {args.topic!r} does not exist at {cfg.bootstrap_servers} "
              "(`streamrec topics list` shows the configured ones)", file=sys.stderr)
        return 1
    count = 0
    for rec in read_topic(cfg, args.topic, limit=args.limit, from_beginning=args.from_beginning,
                          follow=args.follow, idle_timeout=args.idle_timeout):
        value = rec.value.decode("utf-8", errors="replace") if rec.value is not None else None
        if args.meta:
            key = rec.key.decode("utf-8", errors="replace") if rec.key is not None else None
            print(json.dumps({"partition": rec.partition, "offset": rec.offset, "key": key,
                              "value": value}))
        else:
            print(value)
        count += 1
    print(f"{count} records", file=sys.stderr)
    return 0


def cmd_run(args, cfg: Config) -> int:
    from streamrec.flink_jobs import pipeline

    try:
        if args.from_version:  # before a broker or a job is started for nothing
            pipeline.check_from_version(cfg, args.from_version)
        ensure_kafka(cfg)
        pipeline.run(cfg, bounded=args.bounded, restore_from=args.restore_from, fresh=args.fresh,
                     from_version=args.from_version, with_features=not args.without_features,
                     progress_s=args.progress)
    except pipeline.FromVersionError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def cmd_sql(args, cfg: Config) -> int:
    from streamrec.flink_jobs.sql_query import QueryError, format_table, prepare_query

    if args.file:
        try:
            statement = Path(args.file).read_text()
        except (OSError, UnicodeDecodeError) as exc:
            print(f"error: cannot read the statement from {args.file}: {getattr(exc, 'strerror', None) or exc}",
                  file=sys.stderr)
            return 2
    elif args.statement:
        statement = args.statement
    else:
        print("error: give a statement or -f FILE", file=sys.stderr)
        return 2
    try:
        # checked (read-only) before the broker is started or reached
        query = prepare_query(cfg, statement, allow_write=args.allow_write)
        ensure_kafka(cfg, [])
        columns, rows = query.run()
    except QueryError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(format_table(columns, rows))
    return 0


DEMO_DEFAULT_EVENTS = 0  # all of ML-100k (README, "The demo", has its time)


def cmd_demo(args, cfg: Config) -> int:
    from streamrec.demo import run_demo

    return run_demo(cfg, limit=args.limit or None, keep_running=args.keep_broker)


def cmd_cluster(args, cfg: Config) -> int:
    from streamrec.runtime import cluster

    if args.action == "up":
        cluster.up(cfg)
    elif args.action == "down":
        cluster.down(cfg)
    else:
        current = cluster.info(cfg)
        if current is None:
            print(f"no Flink cluster answers at {cluster.rest_url(cfg)}")
            return 1
        print(f"Flink cluster at {current.rest_url}: {current.taskmanagers} TaskManagers, "
              f"{current.slots_available}/{current.slots_total} slots free, {current.jobs_running} jobs running")
    return 0


def cmd_submit(args, cfg: Config) -> int:
    from streamrec.runtime import cluster

    from streamrec.flink_jobs.pipeline import JOB_NAME as PIPELINE_JOB

    # One pipeline per lineage: a second one would share its checkpoints, transactional ids and
    # consumer group (and --fresh would delete the live job's checkpoints). A local `streamrec
    # run` on this state dir is refused by the driver's run lock.
    running = cluster.running_jobs(cfg, PIPELINE_JOB)
    if running:
        print(f"error: pipeline job {running[0]} is already running on {cluster.rest_url(cfg)} with this "
              f"lineage; stop it first (streamrec stop --savepoint {running[0]}), then submit again",
              file=sys.stderr)
        return 1
    ensure_kafka(cfg)
    # The job's driver decides where it starts (runtime/lineage.py): the latest retained
    # checkpoint or recorded savepoint of this state dir, --from-savepoint, or --fresh.
    job_args = ["--no-wait"] + (["--bounded"] if args.bounded else []) + (["--fresh"] if args.fresh else [])
    if args.from_savepoint:
        job_args += ["--restore-from", args.from_savepoint]
    if args.from_version:
        from streamrec.flink_jobs.pipeline import FromVersionError, check_from_version

        try:  # here, before submitting: the driver on the cluster would fail less visibly
            check_from_version(cfg, args.from_version)
        except FromVersionError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        job_args += ["--from-version", args.from_version]
    job_id = cluster.submit(cfg, parallelism=args.parallelism, job_args=job_args + ["--without-features"])
    print(f"submitted job {job_id}")
    print(f"web UI: {cluster.rest_url(cfg)}/#/job/running/{job_id}/overview")
    # The features job (flink_jobs/features.py) is a job of its own: submitted once, it keeps
    # running across the pipeline's upgrades (a stop with savepoint and a resubmit).
    from streamrec.flink_jobs.features import JOB_NAME as FEATURES_JOB

    running = cluster.running_jobs(cfg, FEATURES_JOB)
    if running:
        print(f"features job {running[0]} is running (left as it is)")
    else:
        features_id = cluster.submit(cfg, job_module="streamrec.flink_jobs.features", parallelism=args.parallelism,
                                     job_args=["--no-wait"] + (["--fresh"] if args.fresh else []))
        print(f"submitted features job {features_id}")
    return 0


def cmd_stop(args, cfg: Config) -> int:
    from streamrec.runtime import cluster

    if not args.savepoint:
        print("error: only `streamrec stop --savepoint JOB_ID` is supported (a stop without a "
              "savepoint loses the job's state; use the web UI to cancel)", file=sys.stderr)
        return 2
    from streamrec.runtime import lineage

    name = cluster.job_name(cfg, args.job_id)
    path = cluster.stop_with_savepoint(cfg, args.job_id)
    lineage.mark_savepoint(cfg, name, path)  # a plain `streamrec submit` resumes from it
    print(path)
    return 0


def cmd_exporter(args, cfg: Config) -> int:
    import logging

    from streamrec.model.exporter import INPUTS, Exporter

    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.once and (args.metrics_port is not None or args.metrics_host):
        print("error: --metrics-port / --metrics-host serve the long-running exporter's metrics, "
              "not --once's", file=sys.stderr)
        return 2
    ensure_kafka(cfg, [getattr(cfg.kafka.topics, name) for name in INPUTS.values()])
    exporter = Exporter(cfg, force=args.force)
    if args.once:
        try:
            result = exporter.export_once(wait_s=args.wait)
        finally:
            exporter.close()
        print(result.line() if result else "nothing to export (no items in the changelog)")
        if result is not None and result.pending:
            print(f"{result.version} stays a candidate: the gate decides it on "
                  f"{cfg.exporter.gate_min_events} clean events after its training position; "
                  "`--wait S` waits for them, the long-running exporter decides as they arrive")
        return 0
    host = args.metrics_host or cfg.exporter.metrics_host
    port = cfg.exporter.metrics_port if args.metrics_port is None else args.metrics_port
    server = None
    if port is not None:  # Prometheus metrics (docs/metrics.md); not for --once, which exits at once
        from streamrec.model.metrics import serve_metrics

        try:
            server = serve_metrics(exporter.metrics, host, port)
        except OSError as exc:  # the port is taken, the address is not this host's
            print(f"error: cannot serve the exporter's metrics on {host}:{port}: {exc.strerror or exc}",
                  file=sys.stderr)
            return 1
        print(f"exporter metrics on {server.url}", flush=True)
    try:
        results = exporter.run()
    finally:
        if server is not None:
            server.close()
    print(f"exporter stopped after {len(results)} exports ({exporter.failures} failed)", file=sys.stderr)
    return 0


def cmd_serve(args, cfg: Config) -> int:
    import logging

    from streamrec.serving.app import serve

    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # no broker is started and no topic created: the service waits for them (/readyz says why)
    serve(cfg, host=args.host, port=args.port, announce=lambda line: print(line, flush=True))
    return 0


def _model_rows(reg) -> list[list[str]]:
    from streamrec.model.registry import CorruptModelError

    current = reg.current()
    refused = reg.refusals()
    rows = [["", "version", "created", "items", "dim", "recall cand/cur", "status"]]
    for version in reg.list_versions():
        try:
            meta = reg.read_meta(version)
        except CorruptModelError:
            rows.append(["*" if version == current else "", version, "?", "?", "?", "?", "corrupt"])
            continue
        q = meta.get("quality") or {}

        def fmt(x):
            return "-" if x is None else f"{x:.4f}"

        rows.append(["*" if version == current else "", version,
                     str(meta.get("created_at", "?"))[:19].replace("T", " "),
                     str(meta.get("item_count", "?")), str(meta.get("dim", "?")),
                     f"{fmt(q.get('candidate'))}/{fmt(q.get('current'))}",
                     str(meta.get("status", "?")) + _refused_note(refused.get(version))])
    return rows


def _refused_note(entries) -> str:
    """`` REFUSED by N reader(s): <first reason>`` for a version scoring operators refused."""
    if not entries:
        return ""
    readers = len({e.get("actor") for e in entries})
    return f" REFUSED by {readers} reader(s): {str(entries[0].get('reason'))[:80]}"


def _model_document(reg) -> dict:
    """Every version with its creation time, training position, gate figures, status and sha256,
    plus CURRENT, the pin and the guard: one JSON document (`streamrec model list --json`)."""
    from streamrec.model.registry import CorruptModelError

    current, pin = reg.current(), reg.pinned()
    refused = reg.refusals()
    versions = []
    for version in reg.list_versions():
        try:
            meta = reg.read_meta(version)
        except CorruptModelError as exc:
            versions.append({"version": version, "status": "corrupt", "error": str(exc),
                             "refused": [{k: e.get(k) for k in ("ts", "actor", "reason")}
                                         for e in refused.get(version, [])]})
            continue
        status = meta.get("status", "candidate")
        if version == current:
            status = "pinned" if pin and pin.get("version") == version else "current"
        versions.append({
            "version": version, "status": status, "created_at": meta.get("created_at"),
            "training_position": meta.get("training_position"), "gate": meta.get("quality"),
            "items": meta.get("item_count"), "dim": meta.get("dim"), "sha256": meta.get("sha256"),
            "attachments_sha256": meta.get("attachments", {}), "files_sha256": meta.get("files"),
            "config_sha256": meta.get("config_sha256"), "code_version": meta.get("code_version"),
            "checkpoint": meta.get("checkpoint"), "counts": meta.get("counts"),
            "refused": [{k: e.get(k) for k in ("ts", "actor", "reason")} for e in refused.get(version, [])],
        })
    return {"registry": str(reg.root), "current": current, "pin": pin, "guard": reg.guard(), "versions": versions}


def _log_line(entry: dict) -> str:
    """One registry.log entry for people: time, action, version, from, actor/user, reason, rest."""
    rest = {k: v for k, v in entry.items() if k not in ("ts", "action", "version", "from", "actor", "reason", "user")}
    head = f"{entry.get('ts')} {entry.get('action')} {entry.get('version') or '-'}"
    if entry.get("from"):
        head += f" from {entry['from']}"
    who = str(entry.get("actor")) + (f"/{entry['user']}" if entry.get("user") else "")
    tail = f" {json.dumps(rest, sort_keys=True, default=str)}" if rest else ""
    return f"{head} by {who}: {entry.get('reason')}{tail}"


def cmd_model(args, cfg: Config) -> int:
    import getpass

    from streamrec.model.registry import NotARollbackTargetError, Registry, RegistryError
    from streamrec.model.scoring import check_servable

    reg = Registry(cfg.paths_resolved.registry_dir, log_max_bytes=cfg.exporter.log_max_bytes,
                   log_keep=cfg.exporter.log_keep)
    who = {"user": getpass.getuser()}
    try:
        if args.action == "log":
            entries = [e for e in reg.read_log() if args.version in (None, e.get("version"))]
            for entry in entries[-args.last:] if args.last else entries:
                print(json.dumps(entry, sort_keys=True, default=str) if args.json else _log_line(entry))
        elif args.action == "list" and args.json:
            print(json.dumps(_model_document(reg), indent=1, default=str))
        elif args.action == "list":
            rows = _model_rows(reg)
            if len(rows) == 1:
                print(f"registry {reg.root} has no versions")
                return 0
            widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
            for r in rows:  # items and dim right-aligned
                print(" ".join(c.rjust(w) if i in (3, 4) else c.ljust(w)
                               for i, (c, w) in enumerate(zip(r, widths))).rstrip())
            pin = reg.pinned()
            print(f"CURRENT: {reg.current() or 'none'}" + (
                f" (pinned by {pin.get('actor')}/{pin.get('user', '?')} at {pin.get('ts')}: {pin.get('reason')})"
                if pin else ""))
            guard = reg.guard()
            if guard:
                print(f"live model held back since {guard.get('ts')}: the gate showed its export "
                      f"{guard.get('version')} worse than CURRENT {guard.get('current')}, which the "
                      "stream serves until an export is promoted")
        elif args.action == "promote":
            if not args.version:
                print("error: `streamrec model promote` needs a VERSION", file=sys.stderr)
                return 2
            previous = reg.current()
            check_servable(reg, args.version, cfg.learner.dim)  # what the readers would refuse
            reg.promote(args.version, actor="cli", reason=args.reason or "manual promote", log_extra=who,
                        operator=True)
            print(f"CURRENT: {args.version} (was {previous or 'none'}), served as it is until the next "
                  "promotion; not pinned")
        elif args.action == "unpin":
            held = reg.unpin(actor="cli", reason=args.reason or "manual unpin", log_extra=who)
            print(f"unpinned {held}: the exporter promotes again" if held else "nothing was pinned")
        else:
            previous = reg.current()
            version = args.version
            if args.before:
                if version:
                    print("error: give a VERSION or --before TIME, not both", file=sys.stderr)
                    return 2
                version = reg.newest_before(parse_time(args.before), promoted_only=not args.force)
            version = version or reg.previous_promoted()
            if version:
                check_servable(reg, version, cfg.learner.dim)
            target = reg.rollback(version, actor="cli", reason=args.reason or "manual rollback",
                                  log_extra=who, force=args.force)
            print(f"CURRENT: {target} (rolled back from {previous or 'none'}), pinned and served: the "
                  "exporter promotes nothing until `streamrec model unpin` or `promote V`")
    except NotARollbackTargetError as exc:  # a refusal, not a failure: one sentence
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (RegistryError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def parse_time(text: str):
    """ISO-8601 (naive = UTC) or epoch milliseconds, as an aware datetime.

    >>> parse_time("1764547200000").isoformat(), parse_time("2025-12-01T00:00:00").isoformat()
    ('2025-12-01T00:00:00+00:00', '2025-12-01T00:00:00+00:00')
    """
    from datetime import datetime, timezone

    if text.strip().isdigit():
        return datetime.fromtimestamp(int(text) / 1000, tz=timezone.utc)
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"--before {text!r} is neither ISO-8601 nor epoch milliseconds") from None
    return when if when.tzinfo else when.replace(tzinfo=timezone.utc)


def cmd_eval(args, cfg: Config) -> int:
    from streamrec.evaluate import evaluate_topics

    result = evaluate_topics(cfg, k=args.k, baselines=not args.no_baselines)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        print(result.table())
    return 0


def cmd_bench(args, cfg: Config) -> int:
    command = "streamrec " + " ".join(sys.argv[1:])
    if args.shards:
        from streamrec.bench.sharded import run_sharded

        run_sharded(cfg, args.name or "sharded", command=command, out_dir=args.out)
        return 0
    if args.scale:
        from streamrec.bench.scale import run_scale

        run_scale(cfg, args.name or "scale", events=args.events, command=command, out_dir=args.out)
        return 0
    from streamrec.bench.run_bench import run_bench

    run_bench(cfg, name=args.name, limit=args.limit, latency_seconds=args.latency_seconds,
              latency_rate=args.latency_rate, skip_latency=args.skip_latency,
              skip_quality=args.skip_quality, progress=not args.quiet, command=command,
              peer_events=args.peer_events, latency_checkpoint_ms=args.latency_checkpoint_ms,
              latency_with_features=not args.latency_without_features, out_dir=args.out,
              **({"streams": args.streams} if args.streams else {}),
              **({"modes": args.modes} if args.modes else {}))
    return 0


def cmd_setup(args, cfg: Config) -> int:
    from streamrec.runtime import assets

    print(assets.check_java())
    if args.relock:  # after a version change in a POM: resolve afresh, rewrite the lock, review
        for classpath in assets.MAVEN_CLASSPATHS:
            print(f"rewrote {assets.relock(classpath)}")
    broker_jars = assets.kafka_broker_jars(cfg)
    print(f"kafka broker: {len(broker_jars)} jars verified "
          f"({next(j.name for j in broker_jars if j.name.startswith('kafka_2.13'))})")
    for jar in assets.connector_jars(cfg):
        print(f"flink connector: {jar.name} verified")
    print(f"flink prometheus reporter: {assets.prometheus_reporter_jar(cfg).name} verified")
    print(f"streamrec UDFs: {assets.udf_jar(cfg).name}")
    print(f"ml-100k: {assets.ml100k_dir(cfg)}")
    return 0


def cmd_config(args, cfg: Config) -> int:
    print(describe(cfg))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="streamrec", description="Real-time recommender on Apache Flink.")
    parser.add_argument("--config", help="TOML config file (default: $STREAMREC_CONFIG or ./streamrec.toml)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("up", help="start (or reuse) the embedded Kafka broker and create topics")
    p.add_argument("--no-topics", action="store_true", help="do not create the configured topics")
    p.set_defaults(func=cmd_up)
    sub.add_parser("down", help="stop the embedded broker started by `up`").set_defaults(func=cmd_down)
    sub.add_parser("status", help="is the embedded broker running?").set_defaults(func=cmd_status)

    p = sub.add_parser("topics", help="create or list the configured topics")
    p.add_argument("action", choices=["create", "list"])
    p.set_defaults(func=cmd_topics)

    p = sub.add_parser("replay", help="produce ml-100k or a JSONL file into events.raw")
    p.add_argument("source", nargs="?", default="ml-100k", help="'ml-100k' (default) or a JSONL file")
    p.add_argument("--topic", help="target topic (default: kafka.topics.raw)")
    p.add_argument("--limit", type=POSITIVE, help="send at most N records")
    pace = p.add_mutually_exclusive_group()
    pace.add_argument("--rate", type=RATE, help="events per second")
    pace.add_argument("--speedup", type=RATE, help="event-time pacing, N times faster than real time")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_replay)

    p = sub.add_parser("consume", help="print a topic's records (read_committed)")
    p.add_argument("topic")
    p.add_argument("--limit", type=POSITIVE)
    p.add_argument("--from-beginning", action="store_true", default=True)
    p.add_argument("--latest", dest="from_beginning", action="store_false", help="only new records")
    p.add_argument("--follow", action="store_true", help="keep reading new records")
    p.add_argument("--meta", action="store_true", help="print partition/offset/key as JSON")
    p.add_argument("--idle-timeout", type=RATE, default=5.0)
    p.set_defaults(func=cmd_consume)

    p = sub.add_parser("run", help="run the pipeline and features jobs on Flink's local mini-cluster")
    p.add_argument("--bounded", action="store_true", help="stop at the end offsets present at start")
    p.add_argument("--parallelism", type=POSITIVE)
    p.add_argument("--restore-from", help="a retained checkpoint or savepoint path (default: the "
                   "latest retained checkpoint of this state dir, if any)")
    p.add_argument("--fresh", action="store_true", help="start over on purpose: discard the retained "
                   "checkpoints (learner state, source offsets) and say what was discarded")
    p.add_argument("--from-version", metavar="V", help="roll the learner back with the model: its item "
                   "and user vectors become registry version V's and CURRENT is pinned to V; the "
                   "stream goes on from where the run starts (docs/registry.md)")
    p.add_argument("--without-features", action="store_true", help="do not run the features job "
                   "(features.user / features.item) with the pipeline: it then has the cores to itself")
    p.add_argument("--progress", type=SECONDS, default=15.0, metavar="S",
                   help="a progress line every S seconds: recommendations committed, source lag, "
                   "CURRENT (default 15; 0: none). `streamrec config` prints every setting")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("sql", help="run a Flink SQL query over bounded reads of the topics")
    p.add_argument("statement", nargs="?", help="e.g. \"SELECT * FROM features_item LIMIT 5\"")
    p.add_argument("-f", "--file", help="read the statement from a file")
    p.add_argument("--allow-write", action="store_true", help="also run statements that write "
                   "(INSERT, CREATE, ...) or carry OPTIONS hints; read-only by default")
    p.set_defaults(func=cmd_sql)

    p = sub.add_parser("demo", help="broker + ML-100k replay + pipeline, end to end; stops it all")
    p.add_argument("--limit", type=NON_NEGATIVE, default=DEMO_DEFAULT_EVENTS,
                   help="replay only the first N events of ML-100k (default 0 = all 100,000)")
    p.add_argument("--keep-broker", action="store_true", help="leave the broker running afterwards")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("cluster", help="a standalone Flink cluster on this machine (JobManager + TaskManagers)")
    p.add_argument("action", choices=["up", "down", "status"])
    p.set_defaults(func=cmd_cluster)

    p = sub.add_parser("submit", help="submit the pipeline job to a running Flink cluster")
    p.add_argument("--parallelism", type=POSITIVE)
    p.add_argument("--from-savepoint", help="resume from this savepoint (default: the latest "
                   "retained checkpoint or recorded savepoint of this state dir)")
    p.add_argument("--fresh", action="store_true", help="start over on purpose (discards retained state)")
    p.add_argument("--bounded", action="store_true", help="stop at the end offsets present at start")
    p.add_argument("--from-version", metavar="V", help="roll the learner back with the model: its item "
                   "and user vectors become registry version V's and CURRENT is pinned to V; the "
                   "stream goes on from where the run starts (docs/registry.md)")
    p.set_defaults(func=cmd_submit)

    p = sub.add_parser("stop", help="stop a job on the cluster with a savepoint; prints its path")
    p.add_argument("job_id")
    p.add_argument("--savepoint", action="store_true", required=True)
    p.set_defaults(func=cmd_stop)

    p = sub.add_parser("exporter", help="the exporter sidecar: model changelog -> registry versions")
    p.add_argument("--once", action="store_true", help="catch up, export once, exit")
    p.add_argument("--wait", type=SECONDS, default=0.0, metavar="S",
                   help="--once: read events up to S seconds for the gate's decision (default 0: the "
                        "candidate stays pending)")
    p.add_argument("--force", action="store_true",
                   help="promote at once, without waiting for held-out events (never while pinned)")
    p.add_argument("--metrics-port", type=NON_NEGATIVE, metavar="P",
                   help="serve Prometheus metrics on port P (0 = any free port; the URL is printed; "
                        "default: exporter.metrics_port, none); not with --once")
    p.add_argument("--metrics-host", metavar="H",
                   help="interface for the metrics (default: exporter.metrics_host, loopback)")
    p.set_defaults(func=cmd_exporter)

    p = sub.add_parser("serve", help="the HTTP service: users' newest recommendations, request-time "
                       "scoring with CURRENT, /metrics (docs/serving.md)")
    p.add_argument("--host", help="interface to listen on (default: serving.host, loopback)")
    p.add_argument("--port", type=NON_NEGATIVE, help="port (default: serving.port; 0 = any free port)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("model", help="list the model registry, promote or roll back a version, read its log")
    p.add_argument("action", choices=["list", "promote", "rollback", "unpin", "log"])
    p.add_argument("version", nargs="?", help="promote: required; rollback: default = previous; "
                   "log: only this version's entries")
    p.add_argument("--json", action="store_true", help="list: one JSON document; log: JSON lines")
    p.add_argument("--last", type=NON_NEGATIVE, default=20, metavar="N",
                   help="log: the newest N entries, rotated files included (0: all)")
    p.add_argument("--before", help="rollback: to the newest promoted version created before this time "
                   "(ISO-8601, UTC if no offset, or epoch ms)")
    p.add_argument("--force", action="store_true", help="rollback: also to a version that was never "
                   "promoted or was rejected (with --before: the newest non-rejected one)")
    p.add_argument("--reason", help="recorded in registry.log")
    p.set_defaults(func=cmd_model)

    p = sub.add_parser("eval", help="prequential recall/NDCG of the recommendations topic vs baselines")
    p.add_argument("--k", type=POSITIVE, default=10)
    p.add_argument("--no-baselines", action="store_true", help="pipeline figures only (fast)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("bench", help="benchmark: ML-100k through the pipeline (or --scale); bench/results/")
    p.add_argument("--name", help="results file name part (default: ml100k[-LIMIT], or scale)")
    p.add_argument("--limit", type=POSITIVE, help="replay only the first N events (throughput phase)")
    p.add_argument("--latency-seconds", type=RATE, default=60.0, help="length of the fixed-rate run")
    p.add_argument("--latency-rate", type=RATE, help="events/s of the fixed-rate run (default: half "
                   "the capacity of its jobs, measured first over a backlog)")
    p.add_argument("--skip-latency", action="store_true", help="no fixed-rate latency run")
    p.add_argument("--skip-quality", action="store_true", help="no prequential evaluation")
    p.add_argument("--latency-checkpoint-ms", type=POSITIVE, help="checkpoint interval of the latency run "
                   "(default: flink.checkpoint_interval_ms); a read_committed reader waits for it")
    p.add_argument("--latency-without-features", action="store_true", help="the latency run without "
                   "the features job beside the pipeline (the recommendations' path alone)")
    p.add_argument("--peer-events", type=int, default=5_000, help="events the River peer runs on "
                   "(it ranks every item with one Python call each)")
    p.add_argument("--scale", action="store_true", help="the scale benchmark instead (scoring cost vs "
                   "items, state bytes, learner core on a 1M-user Zipf stream)")
    p.add_argument("--events", type=int, default=200_000, help="--scale: synthetic events")
    p.add_argument("--shards", action="store_true", help="the sharding benchmark instead (recall of "
                   "2 and 4 shards with and without the item exchange, in process: bench/sharded.py)")
    p.add_argument("--streams", help="the quality phase's streams, comma-separated, or all: ml100k, second "
                   "(in process), bursty and ml100k-5star (through the job); default: ml100k,second,bursty")
    p.add_argument("--modes", help="the serving modes (scoring.serve) measured side by side, comma-separated, "
                   "or all: live, registry; default: both (the configured one is always measured)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--out", type=Path, help="results folder (default: bench/results under the working directory)")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("setup", help="fetch (Maven, PyPI) and verify the Kafka broker, the Flink "
                       "connector and ML-100k")
    p.add_argument("--relock", action="store_true", help="re-resolve the POMs in runtime/jvm/ "
                   "and rewrite their sha256 lock files (after a version change)")
    p.set_defaults(func=cmd_setup)
    sub.add_parser("config", help="print the effective configuration").set_defaults(func=cmd_config)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        cfg = _cfg(args)
        return int(args.func(args, cfg) or 0)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # one clear line for known failures; tracebacks only for bugs
        from streamrec.runtime.lineage import LineageError
        from streamrec.flink_jobs.pipeline import JobFailedError
        from streamrec.runtime.assets import AssetError
        from streamrec.runtime.broker import BrokerError
        from streamrec.runtime.cluster import ClusterError
        from streamrec.runtime.kafka_io import KafkaSetupError

        if isinstance(exc, (AssetError, BrokerError, ClusterError, JobFailedError, KafkaSetupError,
                            LineageError)):
            print(f"error: {exc}", file=sys.stderr)
            return 1
        raise


if __name__ == "__main__":
    sys.exit(main())
