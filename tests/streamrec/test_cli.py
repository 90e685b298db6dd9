"""The `streamrec` front door, run in-process against the session broker."""

import json

import pytest

from streamrec.runtime import assets
from streamrec.cli import main
from streamrec.core.config import to_env


@pytest.fixture
def cli_env(cfg, monkeypatch):
    for key, value in to_env(cfg).items():
        monkeypatch.setenv(key, value)
    return cfg


@pytest.mark.slow
def test_replay_and_consume_jsonl(cli_env, tmp_path, capsys):
    path = tmp_path / "events.jsonl"
    path.write_text('{"event_id":"a","user_id":"u1","item_id":"i1","event_type":"view","ts":5}\n'
                    "{broken\n")
    assert main(["replay", str(path), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "replayed 2 of 2 records" in out and "0 failed" in out
    assert main(["consume", cli_env.kafka.topics.raw, "--meta", "--idle-timeout", "2"]) == 0
    captured = capsys.readouterr()
    rows = [json.loads(line) for line in captured.out.splitlines()]
    assert sorted(r["value"] for r in rows) == sorted(path.read_text().splitlines())
    assert {r["key"] for r in rows} == {"u1", None}
    assert "2 records" in captured.err


def test_replay_of_a_missing_file_is_a_clear_error(cli_env, capsys):
    assert main(["replay", "no/such/file.jsonl"]) == 2
    assert "neither 'ml-100k' nor a readable JSONL file" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [
    ["replay", "--limit", "-1"], ["replay", "--limit", "0"], ["replay", "--rate", "-5"],
    ["replay", "--rate", "nan"], ["replay", "--speedup", "0"], ["consume", "t", "--limit", "-3"],
    ["model", "log", "--last", "-1"], ["demo", "--limit", "-10"], ["eval", "--k", "0"],
    ["run", "--parallelism", "0"], ["exporter", "--once", "--wait", "-1"],
    ["bench", "--latency-rate", "-1"], ["replay", "--limit", "ten"],
])
def test_out_of_range_numbers_are_usage_errors(argv, capsys):
    """Negative limits and rates silently did nothing (or printed a traceback): now argparse
    refuses them, one sentence naming the option, exit 2, before anything starts."""
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 2
    assert f"argument {argv[-2]}: must be" in err and "Traceback" not in err


def test_sql_from_a_missing_file_is_a_clear_error(capsys):
    assert main(["sql", "-f", "no/such/query.sql"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot read the statement from no/such/query.sql") and "Traceback" not in err


@pytest.mark.slow
def test_missing_topics_are_errors_not_tracebacks_or_new_topics(cli_env, capsys):
    from streamrec.runtime.kafka_io import topic_exists

    typo = cli_env.kafka.topics.raw + "-typo"
    for argv in (["consume", typo, "--follow"], ["consume", typo]):
        assert main(argv) == 1
        err = capsys.readouterr().err
        assert f"topic '{typo}' does not exist" in err and "Traceback" not in err
    assert main(["replay", "--topic", typo, "--limit", "1", "--quiet"]) == 2
    assert "does not exist and is not a configured topic" in capsys.readouterr().err
    assert not topic_exists(cli_env, typo)  # nothing was created on the way


def test_bad_config_exits_2_with_the_key(monkeypatch, capsys):
    monkeypatch.setenv("STREAMREC_SCORING__PROVIDER", "tpu")
    assert main(["config"]) == 2
    err = capsys.readouterr().err
    assert "scoring.provider = 'tpu'" in err and "'auto', 'cuda', 'cpu'" in err


def test_missing_java_is_one_sentence(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(assets.AssetError, match="Java was not found on PATH"):
        assets.check_java()


def test_missing_maven_is_one_sentence(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(assets.AssetError, match=r"Maven \(`mvn`\) was not found on PATH"):
        assets.check_maven()


def test_a_tampered_jar_is_never_used(tmp_path):
    """A jar in the cache that does not match the lock is fetched again, and what is returned
    matches the lock."""
    from tests.support import make_config

    cfg = make_config(tmp_path, 19092, **{"paths.cache_dir": str(tmp_path / "cache")})
    jars = assets.connector_jars(cfg)
    jars[0].write_bytes(b"not the connector")
    again = assets.connector_jars(cfg)
    pinned = assets.FLINK_CONNECTOR.pinned()
    assert {j.name: assets.sha256_of(j) for j in again} == pinned
