import json
import re

import pytest

from streamrec.core.config import ConfigError, describe, load_config


def test_defaults_use_the_embedded_broker():
    cfg = load_config(config_file=None, env={})
    assert cfg.uses_embedded_broker
    assert cfg.bootstrap_servers == "127.0.0.1:19092"
    assert cfg.flink.execution_mode == "thread"
    assert cfg.kafka.topics.raw == "events.raw"


def test_file_then_env_then_overrides(tmp_path):
    path = tmp_path / "streamrec.toml"
    path.write_text('[kafka]\nbootstrap_servers = "kafka-1:9092"\npartitions = 8\n'
                    '[learner]\ndim = 16\n[paths]\nstate_dir = "state"\n')
    cfg = load_config(path, env={"STREAMREC_LEARNER__DIM": "24"},
                      overrides={"flink.parallelism": 3})
    assert cfg.bootstrap_servers == "kafka-1:9092" and not cfg.uses_embedded_broker
    assert cfg.kafka.partitions == 8
    assert cfg.learner.dim == 24  # env beats file
    assert cfg.flink.parallelism == 3
    # relative paths resolve against the config file's directory
    assert cfg.paths_resolved.state_dir == (tmp_path / "state").resolve()
    assert cfg.paths_resolved.registry_dir == (tmp_path / "state" / "registry").resolve()


def test_config_file_from_env(tmp_path):
    path = tmp_path / "other.toml"
    path.write_text("[scoring]\ntop_k = 20\n")
    assert load_config(env={"STREAMREC_CONFIG": str(path)}).scoring.top_k == 20


def test_unknown_key_names_key_and_allowed_keys():
    with pytest.raises(ConfigError) as err:
        load_config(config_file=None, env={"STREAMREC_KAFKA__PARTITONS": "3"})
    msg = str(err.value)
    assert "kafka.partitons: unknown key (from STREAMREC_KAFKA__PARTITONS)" in msg
    assert "partitions" in msg and "bootstrap_servers" in msg


def test_literal_error_lists_allowed_values():
    with pytest.raises(ConfigError) as err:
        load_config(config_file=None, env={"STREAMREC_FLINK__EXECUTION_MODE": "beam"})
    assert "flink.execution_mode = 'beam'" in str(err.value)
    assert "'thread', 'process'" in str(err.value)


def test_range_and_type_errors_name_the_key(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("[kafka]\npartitions = 0\n[learner]\ndim = \"big\"\n")
    with pytest.raises(ConfigError) as err:
        load_config(path, env={})
    msg = str(err.value)
    assert "kafka.partitions = 0" in msg and "greater than or equal to 1" in msg
    assert "learner.dim = 'big'" in msg and str(path) in msg


def test_event_weights_must_be_ordered():
    with pytest.raises(ConfigError, match="view < click < cart < purchase"):
        load_config(config_file=None, env={"STREAMREC_INGEST__WEIGHTS__CLICK": "5"})


@pytest.mark.parametrize("key, value, says", [
    ("PURCHASE", "inf", "ingest.weights.purchase = 'inf' (from STREAMREC_INGEST__WEIGHTS__PURCHASE): Input "
                        "should be a finite number"),
    ("PURCHASE", "nan", "should be a finite number"),
    ("RATING_BASE", "inf", "ingest.weights.rating_base = 'inf'"),
    ("PURCHASE", "2e6", "less than or equal to 1000000"),
    ("RATING_BASE", "-1", "ingest (from STREAMREC_INGEST__WEIGHTS__RATING_BASE): Value error, a rating of 0.5 would "
                          "weigh -0.95 (weights.rating_base + weights.rating_scale * rating), but every rating"),
    ("RATING_BASE", "-0.05", "a rating of 0.5 would weigh 0 "),
])
def test_event_weights_that_cannot_work_are_refused_with_one_sentence(key, value, says):
    """A weight that is not a finite number, too large to sum, or a rating weight of 0 or less
    (the learner would unlearn the event) is refused before anything starts."""
    with pytest.raises(ConfigError) as err:
        load_config(config_file=None, env={f"STREAMREC_INGEST__WEIGHTS__{key}": value})
    assert says in str(err.value) and f"(from STREAMREC_INGEST__WEIGHTS__{key})" in str(err.value)
    assert len(str(err.value).splitlines()) == 2  # the heading and one sentence


def test_heavy_event_weights_are_accepted_the_learner_bounds_their_steps():
    cfg = load_config(config_file=None, env={"STREAMREC_INGEST__WEIGHTS__VIEW": "2.5",
                                             "STREAMREC_INGEST__WEIGHTS__CLICK": "3",
                                             "STREAMREC_INGEST__WEIGHTS__CART": "4",
                                             "STREAMREC_INGEST__WEIGHTS__PURCHASE": "1000",
                                             "STREAMREC_INGEST__WEIGHTS__RATING_BASE": "4"})
    assert cfg.ingest.weights.purchase == 1000 and cfg.learner.max_step == 4.0 and cfg.learner.max_norm == 10.0


@pytest.mark.parametrize("env, says", [
    ({"STREAMREC_LEARNER__MAX_STEP": "0"}, "learner.max_step = '0'"),
    ({"STREAMREC_LEARNER__MAX_STEP": "50"}, "learner.max_step = '50'"),
    ({"STREAMREC_LEARNER__MAX_NORM": "0"}, "learner.max_norm = '0'"),
    ({"STREAMREC_LEARNER__LEARNING_RATE": "5", "STREAMREC_LEARNER__REGULARIZATION": "0.5"},
     "learning_rate * regularization (5.0 * 0.5) must be below 1"),
    ({"STREAMREC_LEARNER__INIT_SCALE": "3"}, "longer than max_norm (10.0)"),
])
def test_learner_settings_that_cannot_stay_finite_are_refused(env, says):
    with pytest.raises(ConfigError, match=re.escape(says)):
        load_config(config_file=None, env=env)


def test_transaction_timeout_capped_at_broker_limit():
    with pytest.raises(ConfigError, match="kafka.transaction_timeout_ms"):
        load_config(config_file=None, env={"STREAMREC_KAFKA__TRANSACTION_TIMEOUT_MS": "3600000"})


def test_missing_and_invalid_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml", env={})
    bad = tmp_path / "bad.toml"
    bad.write_text("[kafka\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad, env={})


def test_describe_lists_every_setting():
    text = describe(load_config(config_file=None, env={}))
    assert "learner.dim = 32" in text and "kafka.topics.recommendations = recommendations" in text


def test_transaction_timeout_below_what_recovery_needs_is_refused():
    with pytest.raises(ConfigError, match=r"kafka.transaction_timeout_ms = 60000 is below the 136000 ms"):
        load_config(config_file=None, env={"STREAMREC_KAFKA__TRANSACTION_TIMEOUT_MS": "60000"})
    with pytest.raises(ConfigError, match="restart_attempts"):
        load_config(config_file=None, env={"STREAMREC_FLINK__RESTART_ATTEMPTS": "40"})
    ok = load_config(config_file=None, env={"STREAMREC_KAFKA__TRANSACTION_TIMEOUT_MS": "136000"})
    assert ok.kafka.transaction_timeout_ms == 136000


def test_restart_strategy_reaches_the_flink_configuration(tmp_path):
    from streamrec.flink_jobs.env import flink_configuration

    cfg = load_config(config_file=None, env={}, overrides={
        "paths.state_dir": str(tmp_path), "flink.restart_attempts": 0,
        "flink.tolerable_checkpoint_failures": 7, "flink.restart_delay_ms": 500,
        "flink.ship_connector": False})
    conf = flink_configuration(cfg, "job")
    assert conf.get_string("restart-strategy.fixed-delay.attempts", "") == "0"
    assert conf.get_string("restart-strategy.fixed-delay.delay", "") == "500 ms"
    assert conf.get_string("execution.checkpointing.tolerable-failed-checkpoints", "") == "7"


def test_extra_flink_settings_from_env_win_over_derived_ones(tmp_path):
    from streamrec.flink_jobs.env import flink_configuration

    cfg = load_config(config_file=None, env={
        "STREAMREC_PATHS__STATE_DIR": str(tmp_path), "STREAMREC_FLINK__SHIP_CONNECTOR": "false",
        "STREAMREC_FLINK__SETTINGS": "metrics.fetcher.update-interval=500,execution.buffer-timeout.interval=5 ms"})
    assert cfg.flink.settings == {"metrics.fetcher.update-interval": "500",
                                  "execution.buffer-timeout.interval": "5 ms"}
    conf = flink_configuration(cfg, "job")
    assert conf.get_string("metrics.fetcher.update-interval", "") == "500"
    assert conf.get_string("execution.buffer-timeout.interval", "") == "5 ms"  # not flink.buffer_timeout_ms's


def test_every_dict_setting_takes_key_value_pairs_from_env():
    cfg = load_config(config_file=None, env={
        "STREAMREC_KAFKA__CLIENT_PROPERTIES": "linger.ms=0,acks=all",
        "STREAMREC_EMBEDDED__SERVER_PROPERTIES": "num.io.threads=2"})
    assert cfg.kafka.client_properties == {"linger.ms": "0", "acks": "all"}
    assert cfg.embedded.server_properties == {"num.io.threads": "2"}


SECRET = "s3cr3t-'\"quote-XYZ"


def test_a_secret_never_appears_in_printed_config_or_unescaped_in_sql(capsys, monkeypatch):
    """The password reaches both clients, but `streamrec config`, the job's start-up lines and
    the generated SQL never show it raw (the SQL holds it only as an escaped literal)."""
    from streamrec.flink_jobs.env import kafka_sink_options, kafka_source_options
    from streamrec.cli import main
    from streamrec.runtime.kafka_io import _base

    env = {"STREAMREC_KAFKA__SECURITY__PROTOCOL": "SASL_SSL",
           "STREAMREC_KAFKA__SECURITY__SASL_MECHANISM": "SCRAM-SHA-512",
           "STREAMREC_KAFKA__SECURITY__SASL_USERNAME": "svc",
           "STREAMREC_KAFKA__SECURITY__SASL_PASSWORD": SECRET}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert main(["config"]) == 0
    out = capsys.readouterr()
    assert SECRET not in out.out + out.err
    assert "kafka.security.sasl_password = ****" in out.out
    cfg = load_config(config_file=None, env=env)
    assert describe(cfg).count("****") == 1 and SECRET not in describe(cfg)
    assert _base(cfg)["sasl.password"] == SECRET  # the Python client gets it
    for options in (kafka_source_options(cfg, "t", "g", False), kafka_sink_options(cfg, "t", "p")):
        assert SECRET not in options  # only escaped: quotes doubled inside the literal
        assert SECRET.replace("'", "''").replace('"', '\\"') in options
        assert "org.apache.flink.kafka.shaded.org.apache.kafka.common.security.scram.ScramLoginModule" in options


def test_secrets_in_property_maps_are_masked_whatever_their_last_segment(tmp_path, capsys):
    """A JAAS line passed as a client property (``...sasl.jaas.config``: its last segment is
    ``config``) and the embedded broker's inline PEM key (``ssl.keystore.key``) were printed in
    clear by `streamrec config` and at every job start; the exporter's metadata drops them."""
    from streamrec.model.exporter import redacted_config
    from streamrec.cli import main

    jaas = f"org.apache.kafka.common.security.scram.ScramLoginModule required password=\"{SECRET}\";"
    pem = "-----BEGIN PRIVATE KEY-----MIIEvQIBADANBg-----END PRIVATE KEY-----"
    path = tmp_path / "streamrec.toml"
    path.write_text(
        "[kafka.client_properties]\n"
        f"'sasl.jaas.config' = {json.dumps(jaas)}\n"
        "'ssl.keystore.location' = '/etc/k.jks'\n"
        "[embedded.server_properties]\n"
        f"'ssl.keystore.key' = '{pem}'\n"
        f"'listener.name.sasl_ssl.scram-sha-256.sasl.jaas.config' = {json.dumps(jaas)}\n")
    cfg = load_config(config_file=path, env={})
    text = describe(cfg)
    assert SECRET not in text and "PRIVATE KEY" not in text
    assert "kafka.client_properties.sasl.jaas.config = ****" in text
    assert "embedded.server_properties.ssl.keystore.key = ****" in text
    assert "kafka.client_properties.ssl.keystore.location = /etc/k.jks" in text  # a path, not a secret
    assert main(["--config", str(path), "config"]) == 0
    out = capsys.readouterr()
    assert SECRET not in out.out + out.err and "PRIVATE KEY" not in out.out + out.err
    dumped = repr(redacted_config(cfg))
    assert SECRET not in dumped and "PRIVATE KEY" not in dumped


def test_exporter_retention_gate_and_log_settings():
    ex = load_config(config_file=None, env={}).exporter
    assert (ex.retention, ex.retention_hourly_hours, ex.retention_daily_days) == (10, 24, 7)
    assert (ex.gate_min_events, ex.gate_events) == (500, 2000)
    assert (ex.log_max_bytes, ex.log_keep) == (16 * 2**20, 5)
    ex = load_config(config_file=None, env={"STREAMREC_EXPORTER__RETENTION_HOURLY_HOURS": "0",
                                            "STREAMREC_EXPORTER__GATE_MIN_EVENTS": "0"}).exporter
    assert ex.retention_hourly_hours == 0 and ex.gate_min_events == 0  # 0 disables / decides at once
    with pytest.raises(ConfigError, match=r"gate_min_events \(3000\) must not exceed gate_events \(2000\)"):
        load_config(config_file=None, env={"STREAMREC_EXPORTER__GATE_MIN_EVENTS": "3000"})
    with pytest.raises(ConfigError, match="exporter.log_keep = '0'"):
        load_config(config_file=None, env={"STREAMREC_EXPORTER__LOG_KEEP": "0"})
    with pytest.raises(ConfigError, match="exporter.retention_daily_days = '-1'"):
        load_config(config_file=None, env={"STREAMREC_EXPORTER__RETENTION_DAILY_DAYS": "-1"})
