"""The pure helpers of the benchmarks (bench/stats.py, probes.py, report.py, phases.py, scale.py;
no broker, no Flink)."""

from __future__ import annotations

import math

import pytest

from streamrec.bench.phases import cycled_events
from streamrec.bench.probes import parse_listening, parse_ppid, parse_status_kb
from streamrec.bench.report import results_dir, table
from streamrec.bench.scale import zipf_weights
from streamrec.bench.stats import (
    batch_histogram,
    batch_summary,
    downsample,
    latency_series,
    percentiles,
    rate_series,
    span_throughput,
    time_reached,
)


def test_percentiles_interpolate_and_handle_empty():
    values = list(range(1, 101))
    p = percentiles(values)
    assert p == {"p50": pytest.approx(50.5), "p95": pytest.approx(95.05), "p99": pytest.approx(99.01)}
    assert percentiles([], (50, 99)) == {"p50": None, "p99": None}
    assert percentiles([7.0], (99.9,)) == {"p99.9": 7.0}


def test_span_throughput():
    assert span_throughput(1000, 0, 2000) == 500.0
    assert span_throughput(10, 5, 5) is None
    assert span_throughput(0, 0, 10) is None
    assert span_throughput(10, None, 10) is None


def test_time_reached_interpolates_between_samples():
    samples = [(10.0, 0), (10.5, 100), (11.0, 300), (11.5, 300)]
    assert time_reached(samples, 200) == pytest.approx(10.75)
    assert time_reached(samples, 100) == 10.5  # reached at a sample
    assert time_reached(samples, 0) == 10.0  # already at the first sample
    assert time_reached(samples, 301) is None  # never reached
    assert time_reached([], 1) is None
    # a count that stalls below the target, then jumps: between the last stalled sample and the jump
    assert time_reached([(0.0, 5), (1.0, 5), (2.0, 15)], 10) == pytest.approx(1.5)


def test_rate_series_bins_from_t0_and_keeps_empty_bins():
    assert rate_series([1000, 1100, 3500], bin_s=1.0, t0_ms=0) == [[0.0, 0.0], [1.0, 2.0], [2.0, 0.0], [3.0, 1.0]]
    assert rate_series([0, 400, 600], bin_s=0.5) == [[0.0, 4.0], [0.5, 2.0]]
    assert rate_series([]) == []
    # times before t0 are dropped rather than wrapping round
    assert rate_series([-500, 100], t0_ms=0) == [[0.0, 1.0]]


def test_latency_series_per_bin_percentiles():
    series = latency_series([0, 100, 200, 2100], [10, 20, 30, 99])
    assert [s["t_s"] for s in series] == [0.0, 2.0]
    assert series[0]["n"] == 3 and series[0]["p50"] == 20.0
    assert series[1] == {"t_s": 2.0, "n": 1, "p50": 99.0, "p99": 99.0}
    assert latency_series([], []) == []


def test_batch_histogram_counts_batches_not_records():
    sizes = [64] * 128 + [3] * 3 + [1]
    assert batch_histogram(sizes) == {1: 1, 3: 1, 64: 2}
    s = batch_summary(sizes)
    assert s["batches"] == 4 and s["records"] == 132 and s["max_batch"] == 64
    assert s["mean_batch"] == pytest.approx(33.0)
    assert s["histogram"] == {"1": 1, "3": 1, "64": 2}
    assert batch_summary([])["mean_batch"] is None


def test_downsample_keeps_first_and_last():
    pts = downsample([float(i) for i in range(1001)], max_points=100)
    assert pts[0] == [0, 0.0] and pts[-1] == [1000, 1000.0]
    assert len(pts) <= 102
    assert downsample([]) == []
    assert downsample([1.0, 2.0]) == [[0, 1.0], [1, 2.0]]


def test_proc_parsers():
    status = "Name:\tjava\nVmPeak:\t 9 kB\nVmHWM:\t  1536 kB\nVmRSS:\t   512 kB\n"
    assert parse_status_kb(status, "VmHWM") == 1536 * 1024
    assert parse_status_kb(status, "VmRSS") == 512 * 1024
    assert parse_status_kb(status, "VmSwap") is None
    assert parse_ppid("4242 (my (odd) name) S 17 4242 4242 0 -1") == 17
    tcp6 = ("  sl  local_address                         remote_address                        st tx_queue "
            "rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
            "   0: 00000000000000000000000000000000:9C40 00000000000000000000000000000000:0000 0A "
            "00000000:00000000 00:00000000 00000000     0        0 777 1 0000000000000000 100 0 0 10 0\n")
    assert parse_listening(tcp6) == {777: 40000}
    assert parse_listening("header only\n") == {}


def test_cycled_events_relabel_later_rounds():
    ev = [{"event_id": "a", "ts": 100}, {"event_id": "b", "ts": 200}]
    assert cycled_events(ev, 1) == ev[:1]
    out = cycled_events(ev, 5)
    assert [e["event_id"] for e in out] == ["a", "b", "a-r1", "b-r1", "a-r2"]
    assert [e["ts"] for e in out] == [100, 200, 201, 301, 302]
    assert len({e["event_id"] for e in out}) == 5


def test_table_renders_partial_results():
    text = table({"throughput": {"events": 10, "events_per_s": 5.0, "wall_s": 2.0,
                                 "batch": {"mean_batch": 2.0, "max_batch": 3},
                                 "memory": {"jvm_peak_rss": 2**30}, "checkpoints": {},
                                 "vertices": [{"vertex": "ShardLearner", "busy_ms_per_s": 900.0,
                                               "backpressured_ms_per_s": 0.0}]}})
    assert "5 events/s" in text and "1,024 MiB" in text and "ShardLearner" in text


def test_results_go_under_the_working_directory_unless_given(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert results_dir() == tmp_path / "bench" / "results"
    assert results_dir(tmp_path / "elsewhere") == tmp_path / "elsewhere"


def test_zipf_weights_normalised_and_decreasing():
    w = zipf_weights(1000, 1.1)
    assert math.isclose(w.sum(), 1.0)
    assert all(w[i] > w[i + 1] for i in range(999))


def test_thread_cpu_reads_this_process_threads_and_groups_them():
    import os
    import time

    from streamrec.bench.probes import thread_cpu, thread_cpu_table

    before = thread_cpu(os.getpid())
    assert os.getpid() in before  # the main thread's id is the process id
    t = time.process_time()
    while time.process_time() - t < 0.05:
        pass
    after = thread_cpu(os.getpid())
    assert after[os.getpid()][1] >= before[os.getpid()][1]
    rows = thread_cpu_table({**after, 10**9: ("rocksdb:low", 2.0)}, {}, 1_000)
    assert {"threads": "RocksDB background (flush, compaction)", "cpu_us_per_event": 2000.0,
            "cpu_s": 2.0, "count": 1} in rows
    assert {r["threads"] for r in rows} >= {"other"}
    assert [r["cpu_s"] for r in rows] == sorted((r["cpu_s"] for r in rows), reverse=True)
    assert thread_cpu(None) == {}


def test_thread_waits_read_schedstat_and_join_the_cpu_table():
    import os

    from streamrec.bench.probes import thread_cpu, thread_cpu_table, thread_waits

    waits = thread_waits(os.getpid())
    if not waits:
        pytest.skip("this kernel keeps no schedstats")
    assert os.getpid() in waits and waits[os.getpid()] >= 0.0
    threads = thread_cpu(os.getpid())
    rows = thread_cpu_table(threads, {}, 1_000, waits)
    row = next(r for r in rows if r["threads"] == "other")
    assert row["waited_for_core_s"] >= 0.0 and 0.0 <= row["waited_for_core_share"] <= 1.0
    # a thread the waits do not know (ended before the sample) leaves the fields out
    assert "waited_for_core_s" not in thread_cpu_table({10**9: ("rocksdb:low", 2.0)}, {}, 1_000, waits)[0]
    assert thread_waits(None) == {}


def test_scale_state_sizes_are_the_operators_records():
    from streamrec.bench.scale import state_sizes
    from streamrec.core.config import load_config

    cfg = load_config(config_file=None, env={})
    sizes = state_sizes(cfg)
    dim, bits = cfg.learner.dim, cfg.scoring.seen_filter_bits
    # head, vector and AdaGrad sums (float32), the seen filter's head and bits
    assert sizes["user_record_bytes"] == 23 + 8 * dim + 10 + bits // 8
    assert sizes["item_record_bytes"] < sizes["item_record_bytes_exchanging"]


def test_the_command_line_parses(capsys):
    from streamrec.bench.__main__ import main

    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0 and "--out" in capsys.readouterr().out
