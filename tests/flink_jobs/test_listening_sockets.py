"""What a running local job listens on: loopback only (flink.bind_host), unless configured.

Flink binds its REST API (which cancels jobs and takes savepoints, unauthenticated), blob server
and RPC to every interface by default, and PyFlink's loopback worker pool opened a gRPC server on
``[::]``; the check reads the kernel's socket tables for this process and its children (the
gateway JVM with the mini-cluster), so a socket nobody thought of is caught too."""

from __future__ import annotations

import ipaddress
import os
import time
from pathlib import Path

import pytest

from streamrec.flink_jobs.env import build_runtime
from streamrec.core.config import load_config

pytestmark = pytest.mark.slow

_LISTEN = "0A"


def _process_tree(root: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    tree, todo = set(), [root]
    while todo:
        pid = todo.pop()
        tree.add(pid)
        todo.extend(children.get(pid, []))
    return tree


def _socket_inodes(pids: set[int]) -> dict[str, int]:
    inodes = {}
    for pid in pids:
        for fd in Path(f"/proc/{pid}/fd").glob("*"):
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes[target[8:-1]] = pid
    return inodes


def _address(hex_addr: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    raw = bytes.fromhex(hex_addr)
    # /proc/net/tcp* print each 32-bit word in host (little-endian) order
    swapped = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    addr = ipaddress.ip_address(swapped)
    return addr.ipv4_mapped or addr if isinstance(addr, ipaddress.IPv6Address) else addr


def listening_addresses(root: int) -> list[tuple[str, int, int]]:
    """(address, port, pid) of every TCP socket in LISTEN state owned by ``root``'s process tree."""
    owners = _socket_inodes(_process_tree(root))
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            parts = line.split()
            local, state, inode = parts[1], parts[3], parts[9]
            if state == _LISTEN and inode in owners:
                host, port = local.split(":")
                found.append((str(_address(host)), int(port, 16), owners[inode]))
    return found


def test_a_running_job_with_python_listens_on_loopback_only(tmp_path):
    from pyflink.common import JobStatus
    from pyflink.table.udf import udf

    cfg = load_config(config_file=None, env={"STREAMREC_PATHS__STATE_DIR": str(tmp_path)})
    assert cfg.flink.bind_host == "127.0.0.1"
    rt = build_runtime(cfg, "sockets-probe")
    t_env = rt.t_env
    t_env.create_temporary_function("plus_one", udf(lambda x: x + 1, result_type="BIGINT"))
    t_env.execute_sql("CREATE TEMPORARY TABLE gen (x BIGINT) WITH ('connector' = 'datagen', "
                      "'rows-per-second' = '50')")
    t_env.execute_sql("CREATE TEMPORARY TABLE sink (x BIGINT) WITH ('connector' = 'blackhole')")
    job = t_env.execute_sql("INSERT INTO sink SELECT plus_one(x) FROM gen").get_job_client()
    try:
        deadline = time.monotonic() + 60
        while job.get_job_status().result() != JobStatus.RUNNING and time.monotonic() < deadline:
            time.sleep(0.5)
        time.sleep(3)  # the Python operator is open and its workers connected
        sockets = listening_addresses(os.getpid())
        rest = [s for s in sockets if s[2] != os.getpid()]
        assert rest, "the mini-cluster's JVM listens on nothing? (the check reads the wrong tree)"
        exposed = [s for s in sockets if not ipaddress.ip_address(s[0]).is_loopback]
        assert exposed == [], f"listening beyond loopback: {exposed}"
    finally:
        job.cancel().result()
