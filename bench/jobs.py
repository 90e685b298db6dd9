"""The benchmark's jobs on topics and state of their own: configurations (``bench.*`` topics,
registry and checkpoints under ``<state_dir>/bench/``, nothing of the user's touched), starting
and cancelling the unbounded jobs, and waiting on them.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from streamrec.bench.monitor import Monitor

#: The pipeline job's name (flink_jobs/pipeline.py's ``JOB_NAME``; not imported: that module
#: loads PyFlink).
JOB_NAME = "streamrec-pipeline"


def bench_config(cfg, prefix: str, subdir: str):
    """``cfg`` with ``<prefix>.*`` topics and registry/checkpoints under ``<state_dir>/bench/<subdir>``
    (the pattern of :func:`streamrec.demo.demo_config`)."""
    topics = {name: f"{prefix}.{value}" for name, value in cfg.kafka.topics.model_dump().items()}
    paths = cfg.paths_resolved
    root = paths.state_dir / "bench" / subdir
    return cfg.model_copy(update={
        "kafka": cfg.kafka.model_copy(update={"topics": cfg.kafka.topics.model_copy(update=topics)}),
        "paths": paths.model_copy(update={"registry_dir": root / "registry",
                                          "checkpoint_dir": root / "checkpoints"}),
        "exporter": cfg.exporter.model_copy(update={"interval_s": min(cfg.exporter.interval_s, 5.0)}),
        # the REST API's metrics at most 0.5 s old (Flink's default: 10 s), for the samples
        "flink": cfg.flink.model_copy(update={"settings": {
            "metrics.fetcher.update-interval": "500", **cfg.flink.settings}}),
    })


def fresh_topics(cfg) -> Path:
    """``cfg``'s topics deleted and created empty, its registry folder new; returns the phase's
    folder (the registry's parent, where the exporter's log goes)."""
    from streamrec.runtime import kafka_io

    topics = cfg.kafka.topics.all()
    kafka_io.delete_topics(cfg, topics)  # returns once the broker no longer lists them
    kafka_io.ensure_topics(cfg, topics)
    root = cfg.paths_resolved.registry_dir.parent
    shutil.rmtree(root, ignore_errors=True)
    cfg.paths_resolved.registry_dir.mkdir(parents=True)
    return root


def unchanged_after(count, seconds: float) -> bool:
    """Whether ``count()`` is the same after ``seconds``."""
    before = count()
    time.sleep(seconds)
    return count() == before


def wait_until(pred, timeout_s: float, step_s: float = 1.0) -> bool:
    """Whether ``pred()`` became true within ``timeout_s``, asked every ``step_s``."""
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if pred():
            return True
        time.sleep(step_s)
    return pred()


def unbounded_config(cfg, prefix: str, subdir: str, checkpoint_interval_ms: int | None = None):
    """:func:`bench_config` for a phase with unbounded jobs, at ``checkpoint_interval_ms`` if given."""
    ucfg = bench_config(cfg, prefix, subdir)
    if checkpoint_interval_ms:
        ucfg = ucfg.model_copy(update={"flink": ucfg.flink.model_copy(
            update={"checkpoint_interval_ms": checkpoint_interval_ms})})
    return ucfg


def start_unbounded(ucfg, root: Path, with_features: bool):
    """The exporter, the unbounded pipeline job and, ``with_features``, the features job beside it
    (same JVM, its own mini-cluster and checkpoints), as ``streamrec run`` starts them. Returns
    ``(exporter process, pipeline job client, features job client or None)``."""
    from streamrec.flink_jobs import features as features_job
    from streamrec.flink_jobs import pipeline
    from streamrec.flink_jobs.env import build_runtime
    from streamrec.runtime import kafka_io
    from streamrec.demo import start_exporter, stop_process

    exporter = start_exporter(ucfg, root / "exporter.log")
    kafka_io.ensure_topics(ucfg)
    client = None
    try:
        rt = build_runtime(ucfg, JOB_NAME)
        statements = pipeline.build(rt, ucfg, False)
        statements.attach_as_datastream()
        client = rt.env.execute_async(JOB_NAME)
        features_client = features_job.run(ucfg, wait=False, quiet=True).job_client if with_features else None
    except BaseException:
        cancel_job(client)
        stop_process(exporter)
        raise
    return exporter, client, features_client


def cancel_job(client) -> None:
    """Cancel a job, best effort (on the way out)."""
    if client is None:
        return
    try:
        client.cancel().result()
    except Exception:  # noqa: BLE001 - best effort on the way out
        pass


def all_running(monitor: Monitor, job_id: str) -> bool:
    """Whether every vertex of the job is RUNNING, as the monitor's REST client sees it."""
    job = monitor.rest.get(f"/jobs/{job_id}", monitor.jvm) if monitor.jvm else None
    vs = (job or {}).get("vertices", [])
    return bool(vs) and all(v.get("status") == "RUNNING" for v in vs)


def records_written(ucfg, topic: str) -> int:
    """Records written to ``topic``, committed or not (transaction markers add a few offsets:
    a count may look complete a little early; the callers wait for more checkpoints after)."""
    from streamrec.runtime import kafka_io

    return sum(kafka_io.end_offsets(ucfg, topic, read_committed=False).values())
