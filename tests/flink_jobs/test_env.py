"""flink_jobs.env helpers that need no running job."""

import os

from streamrec.flink_jobs import env
from streamrec.core.config import load_config


def test_the_gateway_jvm_gets_the_low_priority_jit_and_keeps_the_users_options(monkeypatch):
    cfg = load_config(config_file=None, env={})
    monkeypatch.setenv("JVM_ARGS", "-Xss2m -XX:ThreadPriorityPolicy=1")
    env._gateway_jvm_options(cfg)
    assert os.environ["JVM_ARGS"].split() == ["-Xss2m", "-XX:ThreadPriorityPolicy=1",
                                                  "-XX:CompilerThreadPriority=1"]
    env._gateway_jvm_options(cfg)  # idempotent: every job of a process calls it
    assert os.environ["JVM_ARGS"].count("CompilerThreadPriority") == 1


def test_no_jvm_options_when_switched_off(monkeypatch):
    cfg = load_config(config_file=None, env={"STREAMREC_FLINK__LOW_PRIORITY_JIT": "false"})
    monkeypatch.delenv("JVM_ARGS", raising=False)
    env._gateway_jvm_options(cfg)
    assert "JVM_ARGS" not in os.environ


def test_a_value_the_user_set_wins(monkeypatch):
    cfg = load_config(config_file=None, env={})
    monkeypatch.setenv("JVM_ARGS", "-XX:CompilerThreadPriority=7")
    env._gateway_jvm_options(cfg)
    assert os.environ["JVM_ARGS"].split() == ["-XX:CompilerThreadPriority=7", "-XX:ThreadPriorityPolicy=1"]


def test_the_changelog_state_backend_logs_beside_the_jobs_checkpoints(tmp_path):
    cfg = load_config(config_file=None, env={"STREAMREC_PATHS__STATE_DIR": str(tmp_path)})
    settings = env.flink_settings(cfg, "a-job")
    assert settings["state.changelog.enabled"] == "true"
    assert settings["state.changelog.dstl.dfs.base-path"] == (
        cfg.paths_resolved.checkpoint_dir / "a-job" / "changelog").as_uri()
    assert settings["state.changelog.periodic-materialize.interval"] == "30000 ms"
    assert settings["state.backend.type"] == "rocksdb"


def test_without_the_changelog_no_changelog_option_is_set(tmp_path):
    cfg = load_config(config_file=None, env={"STREAMREC_PATHS__STATE_DIR": str(tmp_path),
                                             "STREAMREC_FLINK__STATE_CHANGELOG": "false"})
    assert not [k for k in env.flink_settings(cfg, "a-job") if k.startswith("state.changelog")]
