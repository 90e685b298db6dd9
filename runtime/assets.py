"""Files streamrec needs that are not Python packages: JVM classpaths from Maven Central and ML-100k.

- The embedded Kafka broker (``jvm/kafka-broker.pom.xml``: Apache Kafka 4.x + its log4j binding),
  the Flink Kafka connector (``jvm/flink-connector.pom.xml``: the official SQL connector jar) and
  Flink's Prometheus metric reporter (``jvm/flink-metrics-prometheus.pom.xml``: the official jar,
  docs/metrics.md) are resolved by ``mvn`` from committed, pinned POMs; every jar is checked
  against the sha256 lock beside its POM before it is used. Maven's local repository keeps the
  downloads, so a second set-up fetches nothing.
- streamrec's own JVM code (``udfs/jvm``: the validation fast path) is compiled at set-up by the
  JDK's javac against the Flink jars PyFlink ships, into a jar named by the sources' hash.
- Data: ``recbole==1.2.1`` (a PyPI wheel) ships ``dataset_example/ml-100k``; MovieLens' licence
  forbids redistribution, so it is extracted at set-up and never committed.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

from streamrec.core.config import Config


class AssetError(RuntimeError):
    """A required file could not be fetched or failed its checksum."""


@dataclass(frozen=True)
class WheelAsset:
    requirement: str
    filename: str
    sha256: str
    members: dict[str, str]  # path inside the wheel -> file name on disk


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


@dataclass(frozen=True)
class MavenClasspath:
    """A set of jars resolved by ``mvn`` from a committed POM and pinned by a sha256 lock file."""

    name: str  # directory under <cache_dir>/maven/ and the POM / lock file stem in runtime/jvm/

    @property
    def pom(self) -> Path:
        return Path(str(files("streamrec.runtime").joinpath("jvm", f"{self.name}.pom.xml")))

    @property
    def lock(self) -> Path:
        return self.pom.with_name(f"{self.name}.lock")

    def pinned(self) -> dict[str, str]:
        """{jar file name: sha256} from the lock file (``sha256  name`` lines, # comments)."""
        out = {}
        for line in self.lock.read_text().splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                digest, name = line.split(maxsplit=1)
                out[name] = digest
        return out


KAFKA_BROKER = MavenClasspath("kafka-broker")
FLINK_CONNECTOR = MavenClasspath("flink-connector")
FLINK_METRICS_PROMETHEUS = MavenClasspath("flink-metrics-prometheus")
#: Every classpath `streamrec setup` fetches (and `--relock` rewrites).
MAVEN_CLASSPATHS = (KAFKA_BROKER, FLINK_CONNECTOR, FLINK_METRICS_PROMETHEUS)


def check_maven() -> str:
    mvn = shutil.which("mvn")
    if mvn is None:
        raise AssetError(
            "Maven (`mvn`) was not found on PATH: streamrec fetches the Kafka broker, the Flink "
            "Kafka connector and Flink's Prometheus reporter from Maven Central with it (e.g. "
            "`apt-get install maven`, then `streamrec setup`)."
        )
    return mvn


def _mismatches(directory: Path, pinned: dict[str, str]) -> list[str]:
    present = {p.name for p in directory.glob("*.jar")} if directory.is_dir() else set()
    problems = [f"missing {n}" for n in sorted(set(pinned) - present)]
    problems += [f"unexpected {n}" for n in sorted(present - set(pinned))]
    problems += [
        f"{n} has sha256 {actual}, pinned {pinned[n]}"
        for n in sorted(present & set(pinned))
        if (actual := sha256_of(directory / n)) != pinned[n]
    ]
    return problems


def _mvn_copy(classpath: MavenClasspath, dest: Path, log=print) -> None:
    """Resolve the POM's runtime classpath into ``dest`` (a new directory) with mvn."""
    cmd = [check_maven(), "-B", "-q", "-Dstyle.color=never", "-f", str(classpath.pom),
           "dependency:copy-dependencies", "-DincludeScope=runtime", f"-DoutputDirectory={dest}"]
    log(f"fetching the {classpath.name} jars with Maven ({classpath.pom.name}) ...")
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stdout + proc.stderr).strip()[-1500:]
        raise AssetError(f"mvn could not resolve {classpath.pom.name}:\n{tail}")


def maven_jars(classpath: MavenClasspath, cfg: Config, log=print) -> list[Path]:
    """The classpath's jars, fetched on first use and verified against the lock every time."""
    pinned = classpath.pinned()
    dest = cfg.paths_resolved.cache_dir / "maven" / classpath.name
    if _mismatches(dest, pinned):
        dest.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=dest.parent, prefix=f".{classpath.name}-") as tmp:
            fetched = Path(tmp) / "jars"
            _mvn_copy(classpath, fetched, log)
            problems = _mismatches(fetched, pinned)
            if problems:
                raise AssetError(
                    f"the jars Maven resolved for {classpath.pom.name} do not match "
                    f"{classpath.lock.name}; refusing to use them: " + "; ".join(problems[:5])
                )
            if dest.exists():
                shutil.rmtree(dest)
            fetched.rename(dest)
    return sorted(dest / name for name in pinned)


def relock(classpath: MavenClasspath, log=print) -> Path:
    """Resolve the POM afresh and (re)write its lock file; review the diff before committing."""
    with tempfile.TemporaryDirectory() as tmp:
        fetched = Path(tmp) / "jars"
        _mvn_copy(classpath, fetched, log)
        lines = [f"# sha256 of every jar {classpath.pom.name} resolves (runtime scope); "
                 "written by `streamrec setup --relock`"]
        lines += [f"{sha256_of(j)}  {j.name}" for j in sorted(fetched.glob("*.jar"))]
    classpath.lock.write_text("\n".join(lines) + "\n")
    return classpath.lock


def connector_jars(cfg: Config, log=print) -> list[Path]:
    """The Flink Kafka connector jar(s) for ``pipeline.jars`` and the cluster's lib/."""
    return maven_jars(FLINK_CONNECTOR, cfg, log)


#: streamrec's own JVM code: the fast path of validation (udfs/jvm, Java sources, no dependency
#: beyond the Flink API that PyFlink ships), compiled at set-up by the JDK's javac.
UDF_SOURCES = "jvm"


def _udf_sources() -> list[Path]:
    root = Path(str(files("streamrec.udfs").joinpath(UDF_SOURCES)))
    return sorted(root.rglob("*.java"))


def find_javac() -> str:
    """javac of the JDK that runs ``java`` (or the first on PATH), or a clear error."""
    java = shutil.which("java")
    candidates = [Path(java).resolve().with_name("javac")] if java else []
    candidates += [Path(p) for p in [shutil.which("javac")] if p]
    for javac in candidates:
        if javac.is_file():
            return str(javac)
    raise AssetError("javac was not found: streamrec compiles its validation fast path (udfs/jvm) at "
                     "set-up and needs a Java 17+ JDK, not only a runtime (e.g. `apt-get install "
                     "openjdk-17-jdk-headless`).")


def udf_jar(cfg: Config, log=print) -> Path:
    """streamrec's UDF jar (``streamrec.udfs.*``), built on first use from udfs/jvm and named by
    the sources' sha256, so a changed source is rebuilt and a stale jar is never used."""
    import pyflink

    sources = _udf_sources()
    if not sources:
        raise AssetError(f"no Java sources under udfs/{UDF_SOURCES}: the installation is incomplete")
    digest = hashlib.sha256()
    for src in sources:
        digest.update(src.name.encode() + b"\0" + src.read_bytes())
    target = cfg.paths_resolved.cache_dir / "udfs" / f"streamrec-udfs-{digest.hexdigest()[:16]}.jar"
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    flink_lib = Path(pyflink.__file__).parent / "lib"
    log(f"compiling streamrec's UDF jar ({len(sources)} Java sources) ...")
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".build-") as tmp:
        classes = Path(tmp) / "classes"
        cmd = [find_javac(), "--release", "17", "-nowarn", "-cp", str(flink_lib / "*"),
               "-d", str(classes), *map(str, sources)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise AssetError("javac could not compile udfs/jvm:\n" + (proc.stdout + proc.stderr)[-1500:])
        jar = Path(tmp) / target.name
        with zipfile.ZipFile(jar, "w", zipfile.ZIP_DEFLATED) as zf:
            zf.writestr("META-INF/MANIFEST.MF", "Manifest-Version: 1.0\nCreated-By: streamrec setup\n\n")
            for cls in sorted(classes.rglob("*.class")):
                zf.write(cls, cls.relative_to(classes).as_posix())
        jar.replace(target)
    # (jars of earlier sources stay: a cluster's lib/ or a running job may still point at one)
    return target


def job_jars(cfg: Config, log=print) -> list[Path]:
    """Every jar a streamrec job needs beside Flink's own: the Kafka connector and streamrec's UDFs
    (``pipeline.jars``, or a cluster's lib/)."""
    return [*connector_jars(cfg, log), udf_jar(cfg, log)]


def prometheus_reporter_jar(cfg: Config, log=print) -> Path:
    """Flink's Prometheus metric reporter: one jar (its client shaded inside), fetched on first use
    and checked against its lock like every Maven classpath (docs/metrics.md)."""
    jars = maven_jars(FLINK_METRICS_PROMETHEUS, cfg, log)
    if len(jars) != 1:
        raise AssetError(f"{FLINK_METRICS_PROMETHEUS.lock.name} pins {len(jars)} jars; the reporter "
                         "is one jar (a plugin folder of its own)")
    return jars[0]


def kafka_broker_jars(cfg: Config, log=print) -> list[Path]:
    """The embedded Kafka broker's classpath."""
    return maven_jars(KAFKA_BROKER, cfg, log)


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


def check_java(min_major: int = 17) -> str:
    """Return ``java -version``'s first line, or raise with one clear sentence (Flink and Kafka
    need Java 17+)."""
    java = shutil.which("java")
    hint = "(e.g. `apt-get install openjdk-17-jre-headless`)"
    if java is None:
        raise AssetError(f"Java was not found on PATH: streamrec runs Apache Flink and Apache Kafka, "
                         f"which need a Java {min_major}+ runtime {hint}.")
    proc = subprocess.run([java, "-version"], capture_output=True, text=True)
    first = ((proc.stderr or proc.stdout).splitlines() or [""])[0]
    if proc.returncode != 0:
        raise AssetError(f"`java -version` failed: {first}")
    match = re.search(r'version "(\d+)(?:\.(\d+))?', first)
    major = int(match.group(1)) if match else 0
    if major == 1 and match and match.group(2):  # "1.8.0_..." style
        major = int(match.group(2))
    if major < min_major:
        raise AssetError(f"{first.strip()} is too old: streamrec needs Java {min_major}+ {hint}.")
    return first


#: The subpackages a Python worker imports (bench and the CLI's top layer never run there).
WORKER_SUBPACKAGES = ("core", "runtime", "udfs", "model", "flink_jobs", "sql")


def installed_as_one_tree() -> bool:
    """Whether every subpackage lies under the ``streamrec`` folder (a regular install), as
    opposed to a checkout's editable install, whose subpackages live in the repository's
    top-level folders and are found by setuptools' import hook, which an embedded interpreter
    (thread mode) does not load."""
    import importlib.util

    import streamrec

    home = Path(streamrec.__file__).resolve().parent
    return all(Path(next(iter(importlib.util.find_spec(f"streamrec.{sub}").submodule_search_locations)))
               .resolve() == home / sub for sub in WORKER_SUBPACKAGES)


def package_archive(cfg: Config) -> Path:
    """The ``streamrec`` package as one zip (``streamrec/...`` inside) for Python workers: their
    path entry on the mini-cluster (from a checkout) and ``flink run -pyfs`` on a cluster.

    Built from wherever the package is imported from, so a checkout and a regular install ship
    the same tree; rewritten only when its content changes.
    """
    import importlib.util
    import io
    import zipfile

    import streamrec

    roots = {"streamrec": Path(streamrec.__file__).parent}
    for sub in WORKER_SUBPACKAGES:
        spec = importlib.util.find_spec(f"streamrec.{sub}")
        roots[f"streamrec/{sub}"] = Path(next(iter(spec.submodule_search_locations)))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for prefix, root in roots.items():
            for path in sorted(root.rglob("*")):
                rel = path.relative_to(root)
                if path.suffix in {".py", ".sql"} and path.is_file() and "__pycache__" not in rel.parts \
                        and (prefix != "streamrec" or len(rel.parts) == 1):
                    info = zipfile.ZipInfo(f"{prefix}/{rel.as_posix()}", date_time=(1980, 1, 1, 0, 0, 0))
                    zf.writestr(info, path.read_bytes(), zipfile.ZIP_DEFLATED)
    data = buf.getvalue()
    out = cfg.paths_resolved.cache_dir / "python" / f"streamrec-{hashlib.sha256(data).hexdigest()[:16]}.zip"
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, out)
    return out

