"""Where a run starts (runtime/lineage.py), on checkpoint directories laid out as Flink lays
them out (``<job dir>/<job id>/chk-N/_metadata``)."""

from __future__ import annotations

import os
import time

import pytest

from streamrec.runtime import lineage
from streamrec.core.config import load_config

JOB = "streamrec-pipeline"


@pytest.fixture
def cfg(tmp_path):
    return load_config(config_file=None, env={}, overrides={"paths.state_dir": str(tmp_path)})


def checkpoint(cfg, job_id: str, n: int, age_s: float = 0.0, content: bytes = b"flink") -> str:
    chk = lineage.job_dir(cfg, JOB) / job_id / f"chk-{n}"
    chk.mkdir(parents=True)
    (chk / "_metadata").write_bytes(content)
    stamp = time.time() - age_s
    os.utime(chk / "_metadata", (stamp, stamp))
    return str(chk)


def test_first_run_starts_fresh_and_a_rerun_resumes_from_the_newest_checkpoint(cfg):
    first = lineage.plan_run(cfg, JOB)
    assert first.restore_from is None and "no earlier run" in first.reason
    checkpoint(cfg, "job-a", 3, age_s=30)
    newest = checkpoint(cfg, "job-a", 4, age_s=10)
    (lineage.job_dir(cfg, JOB) / "job-a" / "chk-5").mkdir()  # in progress: no _metadata yet
    again = lineage.plan_run(cfg, JOB)
    assert str(again.restore_from) == newest and "resuming run" in again.reason
    # the lineage keeps its transaction names across resumes, so Flink aborts its leftovers
    assert again.run_id == first.run_id
    assert again.transactional_id_prefix(JOB, "t") == first.transactional_id_prefix(JOB, "t")


def test_two_lineages_never_share_a_transactional_id_prefix(cfg, tmp_path):
    other = load_config(config_file=None, env={}, overrides={"paths.state_dir": str(tmp_path / "b")})
    a, b = lineage.plan_run(cfg, JOB), lineage.plan_run(other, JOB)
    assert a.transactional_id_prefix(JOB, "recs") != b.transactional_id_prefix(JOB, "recs")


def test_fresh_discards_and_says_what(cfg):
    first = lineage.plan_run(cfg, JOB)
    chk = checkpoint(cfg, "job-a", 7)
    plan = lineage.plan_run(cfg, JOB, fresh=True)
    assert plan.restore_from is None and plan.run_id != first.run_id
    assert "discarded 1 retained checkpoint(s)" in plan.reason and first.run_id in plan.reason
    assert not os.path.exists(chk)


@pytest.mark.parametrize("change, key", [
    ({"flink.execution_mode": "process"}, "execution_mode"),
    ({"flink.state_backend": "hashmap"}, "state_backend"),
    ({"kafka.topics.raw": "other.raw"}, "source"),
])
def test_a_checkpoint_of_another_setting_is_an_error_not_a_fresh_start(cfg, tmp_path, change, key):
    lineage.plan_run(cfg, JOB)
    checkpoint(cfg, "job-a", 1)
    changed = load_config(config_file=None, env={},
                          overrides={"paths.state_dir": str(tmp_path), **change})
    with pytest.raises(lineage.LineageError, match=f"written with {key}=.*--fresh"):
        lineage.plan_run(changed, JOB)


def test_a_checkpoint_of_another_code_version_is_an_error(cfg, monkeypatch):
    lineage.plan_run(cfg, JOB)
    checkpoint(cfg, "job-a", 1)
    monkeypatch.setattr(lineage, "code_version", lambda: "99.0")
    with pytest.raises(lineage.LineageError, match="code_version="):
        lineage.plan_run(cfg, JOB)


def test_a_corrupt_checkpoint_is_an_error(cfg):
    lineage.plan_run(cfg, JOB)
    checkpoint(cfg, "job-a", 1, content=b"")
    with pytest.raises(lineage.LineageError, match="missing or empty"):
        lineage.plan_run(cfg, JOB)


def test_a_finished_bounded_run_is_not_silently_recomputed(cfg):
    lineage.plan_run(cfg, JOB, bounded=True)
    checkpoint(cfg, "job-a", 3)  # left behind by the finished job, older than its final commit
    lineage.mark_finished(cfg, JOB)
    with pytest.raises(lineage.LineageError, match="publish its recommendations again.*--fresh"):
        lineage.plan_run(cfg, JOB, bounded=True)
    assert lineage.plan_run(cfg, JOB, bounded=True, fresh=True).restore_from is None


def test_resumes_count_the_runs(cfg):
    lineage.plan_run(cfg, JOB)
    checkpoint(cfg, "job-a", 1)
    assert [lineage.plan_run(cfg, JOB).runs for _ in range(3)] == [2, 3, 4]


def test_a_run_that_never_checkpointed_starts_again_but_lost_checkpoints_are_an_error(cfg):
    first = lineage.plan_run(cfg, JOB)
    again = lineage.plan_run(cfg, JOB)  # crashed before its first checkpoint: nothing committed
    assert again.restore_from is None and "never completed a checkpoint" in again.reason
    assert again.run_id != first.run_id
    checkpoint(cfg, "job-b", 1)
    assert lineage.plan_run(cfg, JOB).restore_from is not None
    import shutil

    shutil.rmtree(lineage.job_dir(cfg, JOB) / "job-b")
    with pytest.raises(lineage.LineageError, match="no completed checkpoint of it is left"):
        lineage.plan_run(cfg, JOB)


def test_a_recorded_savepoint_newer_than_the_checkpoints_wins(cfg, tmp_path):
    lineage.plan_run(cfg, JOB)
    checkpoint(cfg, "job-a", 2, age_s=60)
    savepoint = tmp_path / "savepoints" / "savepoint-1"
    savepoint.mkdir(parents=True)
    (savepoint / "_metadata").write_bytes(b"sp")
    lineage.mark_savepoint(cfg, JOB, str(savepoint))
    plan = lineage.plan_run(cfg, JOB)
    assert _copy_of(plan.restore_from, savepoint) and "savepoint" in plan.reason


def _copy_of(restored, savepoint) -> bool:
    """A CLAIM-mode restore (the changelog state backend) gets a copy inside the lineage's
    directory; the savepoint itself stays as it was."""
    return (restored != savepoint and restored.name == savepoint.name
            and (restored / "_metadata").read_bytes() == (savepoint / "_metadata").read_bytes()
            and (savepoint / "_metadata").is_file())


def test_restore_from_a_missing_path_is_an_error(cfg):
    with pytest.raises(lineage.LineageError, match="no such checkpoint"):
        lineage.plan_run(cfg, JOB, restore_from="/nonexistent/chk-1")


def test_a_savepoint_given_as_a_file_uri_is_found(cfg, tmp_path):
    lineage.plan_run(cfg, JOB)
    savepoint = tmp_path / "savepoints" / "savepoint-2"
    savepoint.mkdir(parents=True)
    (savepoint / "_metadata").write_bytes(b"sp")
    lineage.mark_savepoint(cfg, JOB, savepoint.as_uri().replace("file:///", "file:/"))  # as `flink stop` prints it
    assert _copy_of(lineage.plan_run(cfg, JOB).restore_from, savepoint)
    assert _copy_of(lineage.plan_run(cfg, JOB, restore_from=savepoint.as_uri()).restore_from, savepoint)


def test_without_the_changelog_a_savepoint_is_restored_where_it_is(tmp_path):
    cfg = load_config(config_file=None, env={}, overrides={"paths.state_dir": str(tmp_path),
                                                           "flink.state_changelog": False})
    savepoint = tmp_path / "savepoints" / "savepoint-3"
    savepoint.mkdir(parents=True)
    (savepoint / "_metadata").write_bytes(b"sp")
    assert lineage.plan_run(cfg, JOB, restore_from=str(savepoint)).restore_from == savepoint


def test_another_jobs_checkpoint_is_not_claimed(cfg, tmp_path):
    # an incremental checkpoint shares files with its job's other checkpoints: a CLAIM-mode
    # restore could delete them, and a copy would still point at them
    other = tmp_path / "elsewhere" / "job-x" / "chk-7"
    other.mkdir(parents=True)
    (other / "_metadata").write_bytes(b"flink")
    with pytest.raises(lineage.LineageError, match="STATE_CHANGELOG=false"):
        lineage.plan_run(cfg, JOB, restore_from=str(other))
