"""`streamrec model list | promote | rollback` in-process against a tmp registry: output,
CURRENT, and registry.log entries with actor `cli` and the operating-system user."""

import getpass
import os

import numpy as np
import pytest

from streamrec.model.item_table import ITEMS_ATTACHMENT, ItemTable
from streamrec.model.onnx_model import export_model_bytes
from streamrec.model.registry import Registry
from streamrec.cli import main


@pytest.fixture
def reg(tmp_path, monkeypatch):
    for name in [n for n in os.environ if n.startswith("STREAMREC_")]:
        monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)  # no streamrec.toml here
    monkeypatch.setenv("STREAMREC_PATHS__REGISTRY_DIR", str(tmp_path / "registry"))
    monkeypatch.setenv("STREAMREC_LEARNER__DIM", "3")  # the versions below: what the readers expect
    registry = Registry(tmp_path / "registry")
    for seed in range(3):
        rng = np.random.default_rng(seed)
        table = ItemTable(np.array([f"i{n}" for n in range(4 + seed)]),
                          rng.normal(size=(4 + seed, 3)).astype(np.float32),
                          np.zeros(4 + seed, np.float32), np.ones(4 + seed, np.float32))
        data = export_model_bytes(table.vectors, table.bias, np.zeros(len(table)), 0.0)
        registry.publish(data, {"item_ids": table.item_ids.tolist(), "dim": 3},
                         {ITEMS_ATTACHMENT: table.to_npz_bytes()})
    return registry


def run(capsys, *argv):
    capsys.readouterr()
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def _rows(out):
    return {line.split()[1] if line.startswith("*") else line.split()[0]: line
            for line in out.splitlines() if "v0000" in line and not line.startswith("CURRENT")}


def test_list_promote_rollback(reg, capsys):
    user = getpass.getuser()
    rc, out, _ = run(capsys, "model", "list")
    assert rc == 0
    header = out.splitlines()[0].split()
    assert header == ["version", "created", "items", "dim", "recall", "cand/cur", "status"]
    rows = _rows(out)
    assert list(rows) == ["v000001", "v000002", "v000003"]
    assert rows["v000002"].split()[3:] == ["5", "3", "-/-", "candidate"]  # items, dim, recall, status
    assert "CURRENT: none" in out and not any(r.startswith("*") for r in rows.values())

    assert run(capsys, "model", "promote", "v000001", "--reason", "first")[0] == 0
    rc, out, _ = run(capsys, "model", "promote", "v000003")
    assert rc == 0 and "CURRENT: v000003 (was v000001)" in out
    rc, out, _ = run(capsys, "model", "list")
    rows = _rows(out)
    assert rows["v000003"].startswith("*") and rows["v000003"].split()[-1] == "promoted"
    assert not rows["v000001"].startswith("*") and rows["v000002"].split()[-1] == "candidate"

    rc, out, _ = run(capsys, "model", "rollback", "--reason", "ctr dropped")
    assert rc == 0 and "CURRENT: v000001 (rolled back from v000003)" in out
    assert reg.current() == "v000001"
    rc, out, _ = run(capsys, "model", "rollback", "v000003")
    assert rc == 0 and reg.current() == "v000003"

    entries = [e for e in reg.read_log() if e["action"] in ("promote", "rollback")]
    assert [(e["action"], e["version"], e["from"]) for e in entries] == [
        ("promote", "v000001", None), ("promote", "v000003", "v000001"),
        ("rollback", "v000001", "v000003"), ("rollback", "v000003", "v000001")]
    assert all(e["actor"] == "cli" and e["user"] == user for e in entries)
    assert [e["reason"] for e in entries] == ["first", "manual promote", "ctr dropped", "manual rollback"]
    history = reg.read_meta("v000001")["history"]
    assert history[-1]["action"] == "rollback" and history[-1]["user"] == user


def test_errors(reg, capsys):
    rc, _, err = run(capsys, "model", "promote", "v000009")
    assert rc == 1 and "error:" in err and "v000009" in err
    rc, _, err = run(capsys, "model", "promote")
    assert rc == 2 and "needs a VERSION" in err
    rc, _, err = run(capsys, "model", "rollback")
    assert rc == 1 and "nothing to roll back to" in err
    reg.promote("v000001", actor="test", reason="x")
    reg.reject("v000002", reason="bad")
    rc, _, err = run(capsys, "model", "rollback", "v000002")  # a refusal: one sentence, exit 2
    assert rc == 2 and err == ("error: cannot roll back to v000002: it was rejected; `--force` rolls back "
                               "to it anyway\n") and reg.current() == "v000001"
    # a corrupt model is never made CURRENT
    (reg.path("v000003") / "model.onnx").write_bytes(b"garbage")
    rc, _, err = run(capsys, "model", "promote", "v000003")
    assert rc == 1 and "sha256" in err and reg.current() == "v000001"


def test_empty_registry(tmp_path, monkeypatch, capsys):
    for name in [n for n in os.environ if n.startswith("STREAMREC_")]:
        monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("STREAMREC_PATHS__REGISTRY_DIR", str(tmp_path / "empty"))
    rc, out, _ = run(capsys, "model", "list")
    assert rc == 0 and "has no versions" in out


def test_rollback_pins_and_unpin_ends_it(reg, capsys):
    for v in ("v000001", "v000002", "v000003"):
        reg.promote(v, actor="gate", reason="ok")
    before = reg.read_meta("v000003")["created_at"]
    rc, out, _ = run(capsys, "model", "rollback", "--before", before, "--reason", "bad CTR")
    assert rc == 0 and "CURRENT: v000002" in out and "pinned" in out
    rc, out, _ = run(capsys, "model", "list")
    assert f"pinned by cli/{getpass.getuser()}" in out and "bad CTR" in out
    rc, _, err = run(capsys, "model", "rollback", "v000001", "--before", before)
    assert rc == 2 and "not both" in err
    rc, _, err = run(capsys, "model", "rollback", "--before", "yesterday")
    assert rc == 1 and "neither ISO-8601 nor epoch milliseconds" in err
    rc, out, _ = run(capsys, "model", "unpin")
    assert rc == 0 and "unpinned v000002" in out and reg.pinned() is None
    rc, out, _ = run(capsys, "model", "unpin")
    assert "nothing was pinned" in out


def test_list_json_is_one_document_with_statuses_and_checksums(reg, capsys):
    import json

    reg.promote("v000001", actor="gate", reason="ok")
    reg.promote("v000002", actor="gate", reason="ok")
    reg.rollback(actor="cli", reason="bad")
    rc, out, _ = run(capsys, "model", "list", "--json")
    doc = json.loads(out)
    assert rc == 0 and doc["current"] == "v000001" and doc["pin"]["version"] == "v000001"
    status = {v["version"]: v["status"] for v in doc["versions"]}
    assert status == {"v000001": "pinned", "v000002": "promoted", "v000003": "candidate"}
    for v in doc["versions"]:
        assert len(v["sha256"]) == 64 and v["created_at"] and set(v["attachments_sha256"]) == {ITEMS_ATTACHMENT}


def test_list_json_shows_what_an_export_recorded(reg, capsys, monkeypatch):
    import json

    from streamrec.model.exporter import Exporter, config_sha256
    from streamrec.core.config import load_config
    from tests.model.changelog import encoded, item

    monkeypatch.setenv("STREAMREC_LEARNER__DIM", "3")
    monkeypatch.setenv("STREAMREC_EXPORTER__GATE_MIN_EVENTS", "0")
    cfg = load_config()
    exp = Exporter(cfg)  # no Kafka: the state is fed directly
    exp.state.apply("items", b"a", encoded("items", item("a", [1, 2, 3])))
    version = exp.export().version
    rc, out, _ = run(capsys, "model", "list", "--json")
    doc = {v["version"]: v for v in json.loads(out)["versions"]}
    assert rc == 0 and doc[version]["status"] == "current"
    assert doc[version]["config_sha256"] == config_sha256(cfg) and doc[version]["code_version"]
    assert doc[version]["checkpoint"] is None  # no pipeline checkpoint in this state directory
    assert doc[version]["counts"] == {"items": 1, "users_with_vectors": 0, "items_with_features": 0}
    assert set(doc[version]["files_sha256"]) == {"model.onnx", ITEMS_ATTACHMENT, "users.npz"}
    assert doc[version]["training_position"]["events_offsets"] == {}


def test_log_reads_rotated_files_and_filters_by_version(reg, capsys, monkeypatch):
    import json

    monkeypatch.setenv("STREAMREC_EXPORTER__LOG_MAX_BYTES", "1024")
    for v in ("v000001", "v000002", "v000003"):
        assert run(capsys, "model", "promote", v, "--reason", "r" * 300)[0] == 0
    assert list(reg.root.glob("registry.log.*")), "the CLI's registry rotates the log too"
    rc, out, _ = run(capsys, "model", "log", "--last", "0")
    lines = out.splitlines()
    assert rc == 0 and sum(" promote " in line for line in lines) == 3  # rotated ones included
    assert any(" snapshot " in line for line in lines)
    assert f"promote v000002 from v000001 by cli/{getpass.getuser()}: {'r' * 300}" in out
    rc, out, _ = run(capsys, "model", "log", "v000003", "--json")
    entries = [json.loads(line) for line in out.splitlines()]
    assert {e["version"] for e in entries} == {"v000003"} and [e["action"] for e in entries] == ["publish", "promote"]
    rc, out, _ = run(capsys, "model", "log", "--last", "2")
    assert len(out.splitlines()) == 2
    # rollback after the rotation still walks back to the version promoted before it
    rc, out, _ = run(capsys, "model", "rollback")
    assert rc == 0 and "CURRENT: v000002" in out


def _publish_broken(registry, vectors: np.ndarray, poison_graph: bool = False) -> str:
    """A version whose files are intact (sha256 matches) but that no reader would serve."""
    from onnx import numpy_helper

    from streamrec.model.onnx_model import build_scoring_model

    n = len(vectors)
    table = ItemTable(np.array([f"i{j}" for j in range(n)]), vectors.astype(np.float32),
                      np.zeros(n, np.float32), np.ones(n, np.float32))
    proto = build_scoring_model(np.nan_to_num(table.vectors), table.bias, np.zeros(n), 0.0)
    if poison_graph:
        init = max(proto.graph.initializer, key=lambda i: numpy_helper.to_array(i).size)
        values = numpy_helper.to_array(init).copy()
        values.flat[0] = np.nan
        init.CopyFrom(numpy_helper.from_array(values, init.name))
    return registry.publish(proto.SerializeToString(),
                            {"item_ids": table.item_ids.tolist(), "dim": table.dim},
                            {ITEMS_ATTACHMENT: table.to_npz_bytes()})


@pytest.mark.parametrize("case", ["nan_graph", "nan_table", "other_dim"])
def test_promote_and_rollback_refuse_what_the_readers_refuse(reg, capsys, case):
    """Promoting (or rolling back to) a version the stream would refuse to load left CURRENT on a
    model no reader serves; now the CLI runs the readers' checks first and changes nothing."""
    rng = np.random.default_rng(7)
    if case == "other_dim":
        bad = _publish_broken(reg, rng.normal(size=(4, 5)))
        reason = "dim"
    else:
        vectors = rng.normal(size=(4, 3))
        if case == "nan_table":
            vectors[1, 1] = np.nan
        bad = _publish_broken(reg, vectors, poison_graph=case == "nan_graph")
        reason = "non-finite"
    assert run(capsys, "model", "promote", "v000001")[0] == 0
    before = reg.current(), len(reg.read_log())
    rc, _, err = run(capsys, "model", "promote", bad)
    assert rc == 1 and reason in err and err.count("\n") == 1
    rc, _, err = run(capsys, "model", "rollback", bad)
    assert rc == 1 and reason in err
    assert (reg.current(), len(reg.read_log())) == before and reg.pinned() is None


def test_rollback_refuses_a_version_never_promoted_unless_forced(reg, capsys):
    reg.promote("v000001", actor="gate", reason="ok")
    reg.promote("v000002", actor="gate", reason="ok")
    rc, out, err = run(capsys, "model", "rollback", "v000003")
    assert (rc, out) == (2, "") and err == ("error: cannot roll back to v000003: it was never promoted (status "
                                            "candidate); `--force` rolls back to it anyway\n")
    assert reg.current() == "v000002" and reg.pinned() is None
    rc, out, _ = run(capsys, "model", "rollback", "v000003", "--force", "--reason", "checked by hand")
    assert rc == 0 and "CURRENT: v000003 (rolled back from v000002), pinned and served" in out
    assert reg.pinned()["version"] == "v000003"
    (entry,) = [e for e in reg.read_log() if e["action"] == "rollback"]
    assert (entry["forced"], entry["user"], entry["reason"]) == (True, getpass.getuser(), "checked by hand")
    # by time: the newest promoted version before it; with --force the newest non-rejected one
    assert run(capsys, "model", "unpin")[0] == 0
    after_all = "2999-01-01T00:00:00"
    rc, out, _ = run(capsys, "model", "rollback", "--before", after_all)
    assert rc == 0 and "CURRENT: v000002" in out
    rc, out, _ = run(capsys, "model", "rollback", "--before", after_all, "--force")
    assert rc == 0 and "CURRENT: v000003" in out


def test_an_operators_promotion_is_served_as_it_is(reg, capsys):
    reg.promote("v000001", actor="gate", reason="ok")
    rc, out, _ = run(capsys, "model", "promote", "v000002")
    assert rc == 0 and out == "CURRENT: v000002 (was v000001), served as it is until the next promotion; not pinned\n"
    assert reg.state().by_operator and reg.current() == "v000002"
