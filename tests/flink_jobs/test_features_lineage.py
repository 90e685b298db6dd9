"""Where the features job starts (flink_jobs/features.py ``plan_run``): it counts the clean events
of the pipeline's current run, from the offsets that run started at, resumes its own checkpoints,
and starts over when the pipeline did, so no clean event is counted twice."""

from __future__ import annotations

import pytest

from streamrec.flink_jobs import features
from streamrec.runtime import lineage
from streamrec.core.config import load_config


@pytest.fixture
def cfg(tmp_path):
    return load_config(config_file=None, env={}, overrides={"paths.state_dir": str(tmp_path)})


def pipeline_starts_fresh(cfg, clean_end: dict[int, int]) -> str:
    """What the pipeline's driver does before a fresh start (features.record_pipeline_start,
    minus the broker it asks for the end offsets)."""
    plan = lineage.plan_run(cfg, features.PIPELINE_JOB_NAME, fresh=True)
    lineage.record(cfg, features.PIPELINE_JOB_NAME, clean_start_offsets={str(p): o for p, o in clean_end.items()})
    return plan.run_id


def features_checkpoint(cfg, n: int) -> None:
    chk = lineage.job_dir(cfg, features.JOB_NAME) / "job-f" / f"chk-{n}"
    chk.mkdir(parents=True)
    (chk / "_metadata").write_bytes(b"flink")


def test_without_a_pipeline_lineage_it_reads_from_the_earliest_offsets(cfg):
    plan, offsets = features.plan_run(cfg, quiet=True)
    assert plan.restore_from is None and offsets is None


def test_it_follows_the_pipeline_run_resumes_and_starts_over_with_it(cfg):
    first_run = pipeline_starts_fresh(cfg, {0: 0, 1: 0})
    plan, offsets = features.plan_run(cfg, quiet=True)
    assert plan.restore_from is None and offsets == {0: 0, 1: 0}
    assert lineage.read_lineage(lineage.job_dir(cfg, features.JOB_NAME))["follows"] == first_run

    # a checkpoint later, the same pipeline run: resume (the checkpoint holds the offsets)
    features_checkpoint(cfg, 1)
    resumed, offsets = features.plan_run(cfg, quiet=True)
    assert resumed.restore_from is not None and resumed.run_id == plan.run_id and offsets is None

    # the pipeline starts over (`--fresh`) after 120 + 80 clean events: so does this job, from there
    pipeline_starts_fresh(cfg, {0: 120, 1: 80})
    again, offsets = features.plan_run(cfg, quiet=True)
    assert again.restore_from is None and again.run_id != plan.run_id
    assert offsets == {0: 120, 1: 80}
    assert not lineage.retained_checkpoints(lineage.job_dir(cfg, features.JOB_NAME))


def test_the_source_starts_at_the_recorded_offsets(cfg):
    options = features.source_options(cfg, "g", bounded=True, topic_pattern=None, start_offsets={1: 7, 0: 42})
    assert "'scan.startup.mode' = 'specific-offsets'" in options
    assert "'scan.startup.specific-offsets' = 'partition:0,offset:42;partition:1,offset:7'" in options
    assert "'scan.bounded.mode' = 'latest-offset'" in options
    assert "earliest-offset" not in features.source_options(cfg, "g", False, None, {0: 1})
