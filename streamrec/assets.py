"""Files streamrec needs that are not Python packages: the Flink Kafka connector jars and ML-100k.

Both come from PyPI wheels (the only registry reachable everywhere we run), are checked against a
pinned sha256, and are extracted into the cache / data dirs. Nothing here is committed to the repo:
MovieLens' licence forbids redistribution, and the jars are big.

- Connector: ``shigawire-apache-flink-libraries==2.0.0.post1`` carries flink-connector-kafka 4.0.1
  (built for Flink 2.0, works with PyFlink 2.3.0) and kafka-clients 3.9.1 plus compression codecs.
  It must never be pip-installed next to apache-flink 2.3.0 (it overlays Flink 2.0 core jars), so we
  only download the file and take the five jars out of it.
- Data: ``recbole==1.2.1`` ships ``dataset_example/ml-100k``.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from streamrec.config import Config


class AssetError(RuntimeError):
    """A required file could not be fetched or failed its checksum."""


@dataclass(frozen=True)
class WheelAsset:
    requirement: str
    filename: str
    sha256: str
    members: dict[str, str]  # path inside the wheel -> file name on disk


CONNECTOR = WheelAsset(
    requirement="shigawire-apache-flink-libraries==2.0.0.post1",
    filename="shigawire_apache_flink_libraries-2.0.0.post1-py3-none-any.whl",
    sha256="aaa65537d3f0c0ff279185d8243024f0efd95788ba044bf249ba0f40b69289cd",
    members={
        f"pyflink/lib/{name}.jar": f"{name}.jar"
        for name in ("flink-connector-kafka", "kafka-clients", "lz4-java", "snappy-java", "zstd-jni")
    },
)

ML100K = WheelAsset(
    requirement="recbole==1.2.1",
    filename="recbole-1.2.1-py3-none-any.whl",
    sha256="9c9948202011f37eb0a7c6768129313f00d6403ad221ec940d5e2d5d5f33a407",
    members={
        "recbole/dataset_example/ml-100k/ml-100k.inter": "ml-100k.inter",
        "recbole/dataset_example/ml-100k/ml-100k.item": "ml-100k.item",
    },
)
# Checksums of the extracted files, so a half-written extraction is never trusted.
ML100K_FILES_SHA256 = {
    "ml-100k.inter": "4edb74e2a81178c2ba9ff381495f754f996c4aea351b1272ca36b43da0935eff",
    "ml-100k.item": "51d7cdf777ce5c0f5b32c1d947a4a81fe07d75e78abbe761e0cd4d0756064532",
}


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _download_wheel(asset: WheelAsset, wheel_dir: Path, log=print) -> Path:
    wheel_dir.mkdir(parents=True, exist_ok=True)
    wheel = wheel_dir / asset.filename
    if wheel.is_file() and sha256_of(wheel) == asset.sha256:
        return wheel
    log(f"downloading {asset.requirement} from PyPI ...")
    with tempfile.TemporaryDirectory(dir=wheel_dir) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
               "--disable-pip-version-check", "-d", tmp, asset.requirement]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        got = Path(tmp) / asset.filename
        if proc.returncode != 0 or not got.is_file():
            raise AssetError(f"could not download {asset.requirement}: {proc.stderr.strip()[-500:]}")
        actual = sha256_of(got)
        if actual != asset.sha256:
            raise AssetError(
                f"{asset.filename} has sha256 {actual}, expected {asset.sha256}; refusing to use it"
            )
        got.replace(wheel)
    return wheel


def _extract(asset: WheelAsset, wheel: Path, dest: Path) -> list[Path]:
    dest.mkdir(parents=True, exist_ok=True)
    out = []
    with zipfile.ZipFile(wheel) as zf:
        for member, name in asset.members.items():
            target = dest / name
            tmp = target.with_suffix(target.suffix + ".part")
            with zf.open(member) as src, open(tmp, "wb") as dst:
                shutil.copyfileobj(src, dst)
            tmp.replace(target)
            out.append(target)
    return out


def connector_jars(cfg: Config, log=print) -> list[Path]:
    """The Kafka connector jars, fetched and verified on first use."""
    jar_dir = cfg.paths_resolved.cache_dir / "jars"
    jars = [jar_dir / name for name in CONNECTOR.members.values()]
    stamp = jar_dir / ".sha256"
    if all(j.is_file() for j in jars) and stamp.is_file() and stamp.read_text() == CONNECTOR.sha256:
        return jars
    wheel = _download_wheel(CONNECTOR, cfg.paths_resolved.cache_dir / "wheels", log)
    _extract(CONNECTOR, wheel, jar_dir)
    stamp.write_text(CONNECTOR.sha256)
    return jars


def ml100k_dir(cfg: Config, log=print) -> Path:
    """Directory holding ml-100k.inter / ml-100k.item, fetched and verified on first use."""
    dest = cfg.paths_resolved.data_dir / "ml-100k"

    def valid() -> bool:
        return all(
            (dest / name).is_file() and sha256_of(dest / name) == digest
            for name, digest in ML100K_FILES_SHA256.items()
        )

    if valid():
        return dest
    wheel = _download_wheel(ML100K, cfg.paths_resolved.cache_dir / "wheels", log)
    _extract(ML100K, wheel, dest)
    if not valid():
        raise AssetError(f"ml-100k files extracted to {dest} do not match their checksums")
    return dest


def check_java() -> str:
    """Return ``java -version``'s first line, or raise with one clear sentence."""
    java = shutil.which("java")
    if java is None:
        raise AssetError(
            "Java was not found on PATH: streamrec runs on Apache Flink, which needs a Java 11/17 "
            "runtime (e.g. `apt-get install openjdk-17-jre-headless`)."
        )
    proc = subprocess.run([java, "-version"], capture_output=True, text=True)
    first = (proc.stderr or proc.stdout).splitlines()[0] if (proc.stderr or proc.stdout) else ""
    if proc.returncode != 0:
        raise AssetError(f"`java -version` failed: {first}")
    return first


def ensure_all(cfg: Config, log=print) -> None:
    check_java()
    connector_jars(cfg, log)
    ml100k_dir(cfg, log)
