"""The package as users get it: a wheel with one top-level name that runs the pipeline outside a
checkout, and the import layers held by import-linter's contracts (pyproject.toml)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

from streamrec.core.config import to_env
from streamrec.runtime.kafka_io import ensure_topics, read_topic
from streamrec import replay
from tests.support import REPO, account_recommendations, planted_stream

#: Every file a job or the CLI reads at run time, as package data of the wheel.
PACKAGE_DATA = ("streamrec/sql/pipeline_sinks.sql", "streamrec/sql/ingest.sql",
                "streamrec/runtime/jvm/flink-connector.pom.xml", "streamrec/runtime/jvm/flink-connector.lock",
                "streamrec/runtime/jvm/kafka-broker.pom.xml", "streamrec/runtime/jvm/flink-metrics-prometheus.lock",
                "streamrec/udfs/jvm/streamrec/udfs/FlatEventParser.java", "streamrec/serving/static/dashboard.html")


#: What the wheel is built from (setuptools builds in the source tree: a copy keeps the checkout
#: clean and no stale build/ output can slip into the wheel).
SOURCES = ("pyproject.toml", "README.md", "streamrec", "core", "runtime", "udfs", "model", "flink_jobs",
           "serving", "sql", "bench")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    src, out = tmp_path_factory.mktemp("src"), tmp_path_factory.mktemp("wheel")
    for name in SOURCES:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "results"))
        else:
            shutil.copy2(REPO / name, src / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "--wheel-dir", str(out), str(src)], check=True, capture_output=True, timeout=300)
    (path,) = out.glob("streamrec-*.whl")
    return path


def test_the_wheel_has_one_top_level_name_and_its_data(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names} == {"streamrec", wheel.name.split("-py3")[0] + ".dist-info"}
    for data in PACKAGE_DATA:
        assert data in names, data
    assert not [n for n in names if "/tests/" in n or "__pycache__" in n or n.endswith(".pyc")]
    meta = zipfile.ZipFile(wheel).read(f"{wheel.name.split('-py3')[0]}.dist-info/METADATA").decode()
    requires = [line for line in meta.splitlines() if line.startswith("Requires-Dist:") and "extra ==" not in line]
    assert requires and not [r for r in requires if "matplotlib" in r], requires
    assert all(">=" in r for r in requires), requires  # ranges: the exact set is constraints.txt


def test_the_layers_hold(wheel, tmp_path):
    """import-linter reads the installed tree (the checkout's folders are mapped into one
    namespace, which it cannot follow), so the wheel is unpacked and linted."""
    zipfile.ZipFile(wheel).extractall(tmp_path / "site")
    proc = subprocess.run([str(Path(sys.executable).with_name("lint-imports")), "--config", str(REPO / "pyproject.toml")],
                          cwd=tmp_path, env=os.environ | {"PYTHONPATH": str(tmp_path / "site")},
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "0 broken" in proc.stdout


@pytest.mark.slow
def test_the_installed_wheel_runs_a_bounded_pipeline_from_an_empty_directory(cfg, wheel, tmp_path):
    # A virtualenv with the wheel alone; its dependencies come from this interpreter's
    # site-packages through a path entry (no editable finder: that .pth is not processed there).
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=False)
    site = next((env_dir / "lib").glob("python3.*/site-packages"))
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    python = env_dir / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--no-deps",
                    str(wheel)], check=True, capture_output=True, timeout=300)
    workdir = tmp_path / "empty"
    workdir.mkdir()
    where = subprocess.run([str(python), "-c", "import streamrec.udfs, streamrec.sql; "
                            "print(streamrec.udfs.__file__); print(streamrec.sql.__file__)"],
                           cwd=workdir, capture_output=True, text=True, check=True)
    assert all(line.startswith(str(site)) for line in where.stdout.split()), where.stdout

    ensure_topics(cfg)
    events = planted_stream(600, seed=11)
    assert replay.produce(cfg, cfg.kafka.topics.raw, replay.encode_events(events), progress=False).failed == 0
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STREAMREC_", "PYTHON"))} | to_env(cfg)
    proc = subprocess.run([str(env_dir / "bin" / "streamrec"), "run", "--bounded", "--without-features"],
                          cwd=workdir, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    clean = [r.json() for r in read_topic(cfg, cfg.kafka.topics.clean)]
    recs = [r.json() for r in read_topic(cfg, cfg.kafka.topics.recommendations)]
    assert len(clean) == len(events)
    accounting = account_recommendations(clean, recs)
    assert accounting.exact, accounting
    assert sorted(os.listdir(workdir)) == [], "the run wrote into the working directory"
