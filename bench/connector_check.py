"""Which Flink Kafka connector release works on this PyFlink? Runs the exactly-once tests that
exercise the connector (pass-through exact count, the pipeline across a broker kill -9 and a clean
restart) with a given ``flink-sql-connector-kafka`` version instead of the locked one.

    .venv/bin/python -m streamrec.bench.connector_check 4.0.1-2.0 5.0.0-2.2

Evidence for the choice in ``runtime/jvm/flink-connector.pom.xml``; results in docs/kafka.md.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from streamrec.runtime import assets

TESTS = ["tests/flink_jobs/test_passthrough.py", "tests/flink_jobs/test_broker_faults.py"]


def fetch(version: str, dest: Path) -> list[Path]:
    cmd = [assets.check_maven(), "-B", "-q", "-Dstyle.color=never", "-f", str(assets.FLINK_CONNECTOR.pom),
           "dependency:copy-dependencies", "-DincludeScope=runtime",
           f"-Dflink.connector.kafka.version={version}", f"-DoutputDirectory={dest}"]
    subprocess.run(cmd, check=True)
    return sorted(dest.glob("*.jar"))


class UseJars:
    """A pytest plugin that makes every job ship ``jars`` as its connector."""

    def __init__(self, jars: list[Path]):
        self.jars = jars

    def pytest_configure(self, config):
        import streamrec.flink_jobs.env as flink_env

        flink_env.connector_jars = lambda cfg, log=print: self.jars


def check_one(version: str) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        jars = fetch(version, Path(tmp))
        print(f"[connector-check] {version}: {[j.name for j in jars]}", flush=True)
        return int(pytest.main(["-q", "-p", "no:cacheprovider", *TESTS], plugins=[UseJars(jars)]))


def main(versions: list[str]) -> int:
    rows = []
    for version in versions:  # one process per version: one PyFlink gateway JVM per connector
        started = time.monotonic()
        code = subprocess.run([sys.executable, "-m", "streamrec.bench.connector_check", "--one", version]).returncode
        rows.append((version, code, time.monotonic() - started))
    for version, code, seconds in rows:
        print(f"{version:12s} {'PASS' if code == 0 else f'FAIL (pytest exit {code})'} in {seconds:.0f} s")
    return 0 if all(r[1] == 0 for r in rows) else 1


if __name__ == "__main__":
    if sys.argv[1:2] == ["--one"]:
        sys.exit(check_one(sys.argv[2]))
    sys.exit(main(sys.argv[1:] or ["4.0.1-2.0", "5.0.0-2.2"]))
