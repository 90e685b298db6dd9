"""`streamrec serve` under load: memory per user and request throughput / latency.

    python -m streamrec.bench.serving_bench [--users 1000000] [--items 1682] [--seconds 10] [--connections 16 32]
                                  [--client bench|wrk|both]

1. Builds a store of ``--users`` synthetic users (a list of ``scoring.top_k`` items from a
   catalogue of ``--items`` and a ``learner.dim`` vector each), writes it as the service's
   snapshot, and a registry with one promoted model of the same catalogue.
2. Starts ``streamrec serve`` as its own process on that state dir, with ``kafka.bootstrap_servers``
   pointing at a closed port: the service resumes from the snapshot and serves it while /readyz
   says the broker does not answer (the topic reader is not under test here).
3. Reports the server's RSS (``/proc/PID/status``) and the store's bytes per user, then
   load-tests ``GET /v1/users/{id}/recommendations`` and ``POST /v1/score`` from this process
   (asyncio, raw sockets, HTTP/1.1 keep-alive, ``--connections`` at once): requests/s, p50/p99
   latency, and the server's CPU per request (utime + stime from ``/proc/PID/stat``). With
   ``--client wrk`` (or ``both``) the lookups are also, or instead, loaded by ``wrk`` (Debian's
   package, a C client: one thread, a Lua script picking a random user per request), if it is on
   the PATH.

The client shares the machine with the server: on few cores its own CPU caps what it measures
(this one's 35-130 us per request, as much as a lookup costs the service: use wrk for lookups).
Every row prints the load average (``/proc/loadavg``) before and after it: on a shared machine
the figures move with it.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import random
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import orjson

from streamrec.core.config import Config, load_config, to_env
from streamrec.model.item_table import ItemTable
from streamrec.model.onnx_model import export_model_bytes, popularity_prior
from streamrec.model.registry import Registry
from streamrec.serving.materializer import source_of
from streamrec.serving.snapshot import write_snapshot
from streamrec.serving.store import Interner, ServingStore

TICK = os.sysconf("SC_CLK_TCK")


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def synthetic_store(cfg: Config, users: int, items: int, seed: int = 1) -> ServingStore:
    """``users`` users with a full list each (Zipf-ish item choice) and a vector; filled column by
    column (the per-record path is timed separately, :func:`apply_rate`)."""
    rng = np.random.default_rng(seed)
    k, dim = cfg.scoring.top_k, cfg.learner.dim
    store = ServingStore(width=k, dim=dim, capacity=users)
    store.users = Interner(f"user-{n}" for n in range(users))
    store.items = Interner(f"item-{n}" for n in range(items))
    store.versions = Interner(["live"])
    store.strategies = Interner(["model"])
    c = store.columns
    weights = 1.0 / np.arange(1, items + 1)
    c["list_items"][:users] = rng.choice(items, size=(users, k), p=weights / weights.sum())
    c["list_scores"][:users] = np.round(np.sort(rng.random((users, k)))[:, ::-1] * 5, 6)
    c["list_len"][:users] = k
    c["user_events"][:users] = rng.integers(1, 500, users)
    c["event_ts"][:users] = c["emitted_ts"][:users] = int(time.time() * 1000)
    c["vector"][:users] = rng.normal(0, 0.1, (users, dim))
    c["has_vector"][:users] = True
    store.lists = store.vectors = users
    store._count_items(c["list_items"][:users].ravel(), 1)
    store.offsets = {cfg.kafka.topics.recommendations: {0: users}, cfg.kafka.topics.model_users: {0: users}}
    return store


def apply_rate(cfg: Config, n: int = 50_000) -> float:
    """Records/s of the reader's per-record path (decoded records into a store)."""
    store = ServingStore(width=cfg.scoring.top_k, dim=cfg.learner.dim)
    recs = [{"user_id": f"u{i}", "items": [{"item_id": f"i{(i * 7 + j) % 1682}", "score": 0.5 - j / 100}
                                           for j in range(cfg.scoring.top_k)],
             "model_version": "live", "strategy": "model", "cold_start": False, "user_events": 3,
             "event_ts": 1, "emitted_ts": 2} for i in range(n)]
    started = time.perf_counter()
    for r in recs:
        store.apply_recommendation(r)
    return n / (time.perf_counter() - started)


def synthetic_registry(cfg: Config, items: int, seed: int = 2) -> str:
    rng = np.random.default_rng(seed)
    ids = np.array(sorted(f"item-{n}" for n in range(items)))
    table = ItemTable(ids, rng.normal(0, 0.1, (items, cfg.learner.dim)).astype(np.float32),
                      np.zeros(items, np.float32), rng.integers(0, 1000, items).astype(np.float32))
    registry = Registry(cfg.paths_resolved.registry_dir)
    model = export_model_bytes(table.vectors, table.bias, popularity_prior(table.popularity),
                               cfg.learner.popularity_prior)
    version = registry.publish(model, {"item_ids": ids.tolist(), "dim": cfg.learner.dim},
                               {"items.npz": table.to_npz_bytes()})
    registry.promote(version, actor="bench", reason="serving bench")
    return version


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS / VmHWM in bytes."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            out[name] = int(value.split()[0]) * 1024
    return out


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime, stime


async def _connection(host: str, port: int, make_request, stop_at: float, latencies: list[float],
                      errors: list[str]) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        while time.perf_counter() < stop_at:
            request = make_request()
            started = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            await reader.readexactly(length)
            latencies.append(time.perf_counter() - started)
            if not head.startswith(b"HTTP/1.1 200"):
                errors.append(head.split(b"\r\n", 1)[0].decode())
    finally:
        writer.close()


def load_test(host: str, port: int, pid: int, make_request, seconds: float, connections: int) -> dict:
    latencies: list[float] = []
    errors: list[str] = []

    async def run() -> None:
        stop_at = time.perf_counter() + seconds
        await asyncio.gather(*(_connection(host, port, make_request, stop_at, latencies, errors)
                               for _ in range(connections)))

    cpu_before, client_before, started = cpu_seconds(pid), time.process_time(), time.perf_counter()
    asyncio.run(run())
    wall = time.perf_counter() - started
    server_cpu, client_cpu = cpu_seconds(pid) - cpu_before, time.process_time() - client_before
    lat = np.array(latencies) * 1000
    n = len(latencies)
    return {"requests": n, "errors": len(errors), "first_error": errors[0] if errors else None,
            "req_per_s": n / wall, "p50_ms": float(np.percentile(lat, 50)) if n else None,
            "p99_ms": float(np.percentile(lat, 99)) if n else None,
            "server_cpu_us_per_req": 1e6 * server_cpu / max(n, 1),
            "client_cpu_us_per_req": 1e6 * client_cpu / max(n, 1)}


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


WRK_SCRIPT = """
math.randomseed(%d)
request = function()
  return wrk.format("GET", "/v1/users/user-" .. math.random(0, %d) .. "/recommendations?k=10")
end
"""


def wrk_lookups(url: str, pid: int, users: int, seconds: float, connections: int, script_dir: str) -> dict:
    """``wrk`` (one thread) for ``seconds`` on lookups of random users: its requests/s and latency
    percentiles, the server's CPU per request, and the responses that were not 200."""
    script = Path(script_dir) / "lookups.lua"
    script.write_text(WRK_SCRIPT % (random.randrange(1 << 30), users - 1))
    cpu_before = cpu_seconds(pid)
    out = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--latency",
                          "-s", str(script), url], capture_output=True, text=True, check=True).stdout
    server_cpu = cpu_seconds(pid) - cpu_before

    def ms(percent: int) -> float:
        value, unit = re.search(rf"^\s*{percent}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M).groups()
        return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]

    n = int(re.search(r"(\d+) requests in", out).group(1))
    not_ok = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: (.*)", out)
    return {"requests": n, "req_per_s": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
            "p50_ms": ms(50), "p99_ms": ms(99), "server_cpu_us_per_req": 1e6 * server_cpu / max(n, 1),
            "errors": int(not_ok.group(1)) if not_ok else 0,
            "socket_errors": socket_errors.group(1) if socket_errors else None}


def vegeta_run(name: str, targets: list[dict], pid: int, rate: float, seconds: float, workdir: str,
               workers: int = 32) -> dict:
    """``vegeta`` (a Go load generator, an open model: requests leave at ``rate`` per second
    whatever the answers' delay, so a stall shows in the latencies instead of slowing the client
    down, which closed-loop clients such as wrk hide) for ``seconds`` over ``targets`` (vegeta's
    JSON target lines, taken in turn): achieved rate, latency percentiles, the server's and the
    client's CPU per request, and the answers that were not 200."""
    lines = Path(workdir) / f"{name}.targets"
    lines.write_bytes(b"\n".join(orjson.dumps(t) for t in targets) + b"\n")
    results = Path(workdir) / f"{name}.bin"
    cpu_before, client_before = cpu_seconds(pid), resource.getrusage(resource.RUSAGE_CHILDREN)
    with open(results, "wb") as out:
        subprocess.run(["vegeta", "attack", "-format=json", f"-targets={lines}", f"-rate={rate:g}/1s",
                        f"-duration={seconds:g}s", "-timeout=10s", "-http2=false",
                        f"-workers={workers}", f"-max-workers={workers}", f"-max-connections={workers}"], stdout=out, check=True)
    server_cpu = cpu_seconds(pid) - cpu_before
    client_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    client_cpu = (client_after.ru_utime - client_before.ru_utime) + (client_after.ru_stime - client_before.ru_stime)
    report = orjson.loads(subprocess.run(["vegeta", "report", "-type=json", str(results)], capture_output=True,
                                         check=True).stdout)
    n = report["requests"]
    codes = report.get("status_codes") or {}
    lat = report["latencies"]
    return {"requests": n, "offered_per_s": report["rate"], "req_per_s": report["throughput"],
            "p50_ms": lat["50th"] / 1e6, "p90_ms": lat["90th"] / 1e6, "p99_ms": lat["99th"] / 1e6,
            "max_ms": lat["max"] / 1e6, "server_cpu_us_per_req": 1e6 * server_cpu / max(n, 1),
            "client_cpu_us_per_req": 1e6 * client_cpu / max(n, 1),
            "errors": n - int(codes.get("200", 0)), "status_codes": codes}


def vegeta_lookups(url: str, user_ids: Sequence[str], count: int = 50_000, seed: int = 4) -> list[dict]:
    """``count`` lookups of users drawn from ``user_ids``, as vegeta's JSON targets."""
    rng = random.Random(seed)
    return [{"method": "GET", "url": f"{url}/v1/users/{rng.choice(user_ids)}/recommendations?k=10"}
            for _ in range(count)]


def vegeta_scores(url: str, user_ids: Sequence[str], item_ids: Sequence[str], exclude: int, count: int = 20_000,
                  seed: int = 5) -> list[dict]:
    """``count`` score requests (k=10, ``exclude`` random items excluded), as vegeta's JSON targets."""
    rng = random.Random(seed)
    header = {"Content-Type": ["application/json"]}
    return [{"method": "POST", "url": f"{url}/v1/score", "header": header,
             "body": base64.b64encode(orjson.dumps({
                 "user_id": rng.choice(user_ids), "k": 10,
                 "exclude": [rng.choice(item_ids) for _ in range(exclude)]})).decode()}
            for _ in range(count)]


def print_paced(name: str, r: dict, before: str) -> None:
    print(f"{name} (vegeta, {r['offered_per_s']:,.0f}/s offered): {r['req_per_s']:,.0f} req/s answered, "
          f"p50 {r['p50_ms']:.2f} ms, p90 {r['p90_ms']:.2f} ms, p99 {r['p99_ms']:.2f} ms, max {r['max_ms']:.1f} ms, "
          f"server CPU {r['server_cpu_us_per_req']:.0f} us/req, client CPU {r['client_cpu_us_per_req']:.0f} us/req, "
          f"{r['requests']:,} requests, {r['errors']} not 200"
          f"{' ' + str({c: n for c, n in r['status_codes'].items() if c != '200'}) if r['errors'] else ''}; "
          f"load average {before} -> {load_average()}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--items", type=int, default=1_682, help="catalogue size (ML-100k's by default)")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each load test")
    parser.add_argument("--connections", type=int, nargs="+", default=[16, 32],
                        help="concurrent keep-alive connections; one run per value")
    parser.add_argument("--exclude", type=int, default=20, help="items each score request excludes")
    parser.add_argument("--client", choices=("bench", "wrk", "both", "vegeta"), default="bench",
                        help="the load generator: this process (closed loop), wrk (Debian's package, lookups "
                             "only), both, or vegeta (open loop at --lookup-rate / --score-rate)")
    parser.add_argument("--lookup-rate", type=float, nargs="+", default=[5_000.0],
                        help="with --client vegeta: lookups offered per second (one run per value)")
    parser.add_argument("--score-rate", type=float, nargs="+", default=[1_000.0],
                        help="with --client vegeta: scores offered per second (one run per value)")
    args = parser.parse_args(argv)
    # a SIGTERM (e.g. `timeout`) unwinds like Ctrl-C: the service started below is stopped too
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    with tempfile.TemporaryDirectory(prefix="serving-bench-") as tmp:
        cfg = load_config(config_file=None, env={}, overrides={
            "paths.state_dir": tmp, "kafka.bootstrap_servers": f"127.0.0.1:{closed_port()}",
            "serving.port": 0, "serving.snapshot_interval_s": 0, "scoring.provider": "auto"})
        print(f"apply rate (reader's per-record path): {apply_rate(cfg):,.0f} records/s", flush=True)
        started = time.perf_counter()
        store = synthetic_store(cfg, args.users, args.items)
        bytes_per_user = store.nbytes() / args.users
        path = Path(tmp) / cfg.serving.snapshot_file
        write_snapshot(path, store, source_of(cfg))
        del store
        version = synthetic_registry(cfg, args.items)
        print(f"{args.users:,} users, {args.items:,} items, K={cfg.scoring.top_k}, dim={cfg.learner.dim}: "
              f"store arrays {bytes_per_user:.0f} B/user, snapshot {path.stat().st_size / 2**20:.0f} MiB "
              f"(built in {time.perf_counter() - started:.1f} s); model {version}", flush=True)

        env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMREC_")} | to_env(cfg)
        log_path = Path(tmp) / "serve.log"
        launched = time.monotonic()
        with open(log_path, "w") as log:
            server = subprocess.Popen([sys.executable, "-m", "streamrec.cli", "serve"], env=env,
                                      stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            deadline = time.monotonic() + 300
            while "resumed from snapshot" not in log_path.read_text() or "serving on" not in log_path.read_text():
                if server.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"the service did not start:\n{log_path.read_text()[-3000:]}")
                time.sleep(0.5)
            print(f"service up, snapshot loaded, in {time.monotonic() - launched:.1f} s", flush=True)
            url = log_path.read_text().split("serving on http://", 1)[1].split()[0]
            host, port = url.rsplit(":", 1)
            time.sleep(2)  # the model watcher's first load
            mem = proc_status(server.pid)
            print(f"server RSS {mem['VmRSS'] / 2**20:.0f} MiB (peak {mem['VmHWM'] / 2**20:.0f} MiB) with "
                  f"{args.users:,} users: {mem['VmRSS'] / args.users:.0f} B/user all included", flush=True)

            rng = random.Random(3)
            users = args.users

            def lookup() -> bytes:
                return (f"GET /v1/users/user-{rng.randrange(users)}/recommendations?k=10 HTTP/1.1\r\n"
                        f"Host: {host}\r\n\r\n").encode()

            def score() -> bytes:
                body = orjson.dumps({"user_id": f"user-{rng.randrange(users)}", "k": 10,
                                     "exclude": [f"item-{rng.randrange(args.items)}" for _ in range(args.exclude)]})
                return (f"POST /v1/score HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                        f"Content-Length: {len(body)}\r\n\r\n").encode() + body

            if args.client == "vegeta":
                if shutil.which("vegeta") is None:
                    raise SystemExit("vegeta is not on the PATH (go install github.com/tsenart/vegeta/v12@v12.13.0)")
                user_ids = [f"user-{n}" for n in range(users)]
                lookups = vegeta_lookups(f"http://{url}", user_ids)
                scores = vegeta_scores(f"http://{url}", user_ids, [f"item-{n}" for n in range(args.items)],
                                       args.exclude)
                vegeta_run("warm-up", lookups[:5_000] + scores[:1_000], server.pid, 2_000, 3.0, tmp)
                for name, targets, rates in (("lookups", lookups, args.lookup_rate),
                                             ("scores", scores, args.score_rate)):
                    for rate in rates:
                        before = load_average()
                        print_paced(name, vegeta_run(name, targets, server.pid, rate, args.seconds, tmp), before)
            elif args.client != "bench" and shutil.which("wrk") is None:
                print("wrk is not on the PATH (apt-get install wrk): lookups by this process only", flush=True)
                args.client = "bench"
            if args.client in ("wrk", "both"):
                wrk_lookups(f"http://{url}", server.pid, users, 2.0, max(args.connections), tmp)  # warm-up
                for connections in args.connections:
                    before = load_average()
                    r = wrk_lookups(f"http://{url}", server.pid, users, args.seconds, connections, tmp)
                    print(f"lookups (wrk), {connections} connections: {r['req_per_s']:,.0f} req/s, "
                          f"p50 {r['p50_ms']:.2f} ms, p99 {r['p99_ms']:.2f} ms, server CPU "
                          f"{r['server_cpu_us_per_req']:.0f} us/req, {r['requests']:,} requests, "
                          f"{r['errors']} not 200{', socket errors ' + r['socket_errors'] if r['socket_errors'] else ''}; "
                          f"load average {before} -> {load_average()}", flush=True)
            for name, make in (("lookups", lookup), ("scores", score)):
                if args.client == "vegeta" or (name == "lookups" and args.client == "wrk"):
                    continue
                load_test(host, int(port), server.pid, make, 2.0, max(args.connections))  # warm-up
                for connections in args.connections:
                    before = load_average()
                    r = load_test(host, int(port), server.pid, make, args.seconds, connections)
                    print(f"{name}, {connections} connections: {r['req_per_s']:,.0f} req/s, "
                          f"p50 {r['p50_ms']:.2f} ms, p99 {r['p99_ms']:.2f} ms, server CPU "
                          f"{r['server_cpu_us_per_req']:.0f} us/req, client CPU {r['client_cpu_us_per_req']:.0f} us/req, "
                          f"{r['requests']:,} requests, {r['errors']} errors"
                          f"{' (' + r['first_error'] + ')' if r['errors'] else ''}; "
                          f"load average {before} -> {load_average()}", flush=True)
            mem = proc_status(server.pid)
            print(f"server RSS after the load {mem['VmRSS'] / 2**20:.0f} MiB (peak {mem['VmHWM'] / 2**20:.0f} MiB)")
        finally:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(30)
            except subprocess.TimeoutExpired:
                server.kill()
    return 0


if __name__ == "__main__":
    sys.exit(main())
