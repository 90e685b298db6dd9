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
    out = capsys.readouterr().out
    assert exit_.value.code == 0 and "--out" in out and "--modes" in out


def test_served_by_counts_each_kind_of_model():
    from streamrec.bench.report import MODEL_KINDS, model_kind, served_by

    versions = ["live"] * 3 + ["live+v000001"] * 2 + ["v000001", "v000002", "v000002"]
    s = served_by(versions)
    assert s["records"] == 8
    assert s["by_kind"] == {"live": 3, "live+vN": 2, "vN": 3}
    assert s["share"] == {"live": 3 / 8, "live+vN": 2 / 8, "vN": 3 / 8}
    assert s["by_model_version"] == {"live": 3, "live+v000001": 2, "v000001": 1, "v000002": 2}
    assert s["registry_versions_served"] == ["v000001", "v000002"]
    # every kind is listed, 0 included; "unknown" only when a record names nothing
    assert served_by(["live+v000004"])["by_kind"] == dict.fromkeys(MODEL_KINDS, 0) | {"live+vN": 1}
    assert served_by(["live", None])["by_kind"]["unknown"] == 1
    assert served_by([]) == {"records": 0, "by_kind": dict.fromkeys(MODEL_KINDS, 0),
                             "share": dict.fromkeys(MODEL_KINDS), "by_model_version": {},
                             "registry_versions_served": []}
    # the names the learner writes (udfs/shard_model.py LIVE, learner_core.serving_decision)
    from streamrec.udfs.learner_core import RegistryState, serving_decision

    assert model_kind(serving_decision("live", RegistryState(None)).name) == "live"
    assert model_kind(serving_decision("live", RegistryState("v000003")).name) == "live+vN"
    assert model_kind(serving_decision("registry", RegistryState("v000003")).name) == "vN"


def test_registry_fates_count_the_log_actions():
    from streamrec.bench.report import registry_fates

    log = ([{"action": "publish"}] * 5 + [{"action": "promote"}] * 2
           + [{"action": "reject", "hold_back_live": True}, {"action": "reject"},
              {"action": "supersede"}, {"action": "retention", "deleted": []}])
    assert registry_fates(log, undecided=1) == {"exported": 5, "promoted": 2, "rejected": 2, "guards": 1,
                                                "held": 0, "superseded": 1, "undecided": 1}
    assert registry_fates([])["exported"] == 0


def test_the_serving_modes_parse_and_match_the_learners():
    from streamrec.bench.run_bench import DEFAULT_MODES, MODES, parse_modes
    from streamrec.udfs.learner_core import SERVE_MODES

    assert MODES == SERVE_MODES and DEFAULT_MODES == MODES
    assert parse_modes("registry,live") == ("live", "registry")
    assert parse_modes(("live",)) == ("live",)  # --modes live: no extra run
    assert parse_modes("registry") == ("live", "registry")  # the configured mode always runs
    assert parse_modes("live", configured="registry") == ("live", "registry")
    with pytest.raises(ValueError, match="unknown serving mode"):
        parse_modes("live,canary")


def test_cpu_split_and_thread_deltas():
    from streamrec.bench.phases import cpu_split, since, waits_since

    rows = [{"threads": "JIT compilers", "cpu_us_per_event": 250.0},
            {"threads": "other", "cpu_us_per_event": 130.0},
            {"threads": "task: ShardLearner (online MF + onnxruntime top-K, per micro-batch)",
             "cpu_us_per_event": 120.0},
            {"threads": "task: OutputFlusher for ShardLearner (online MF)", "cpu_us_per_event": 0.6},
            {"threads": "task: Source: KafkaSource -> Calc[2]", "cpu_us_per_event": 33.0}]
    assert cpu_split(rows) == {"flink_jvm_task_threads": 153.6, "learner_thread": 120.0}
    assert cpu_split(rows[:2]) == {"flink_jvm_task_threads": None, "learner_thread": None}
    # a second job in the same JVM: its threads' CPU since the run began, a new thread's all of it
    before = {1: ("C2 CompilerThre", 10.0), 2: ("Flink thread", 3.0)}
    now = {1: ("C2 CompilerThre", 12.5), 3: ("ShardLearner (1", 4.0)}
    assert since(now, before) == {1: ("C2 CompilerThre", 2.5), 3: ("ShardLearner (1", 4.0)}
    assert since({1: ("x", 1.0)}, {1: ("y", 2.0)}) == {1: ("x", 0.0)}  # a reused thread id
    assert waits_since({1: 5.0, 3: 1.0}, {1: 4.5}) == {1: 0.5, 3: 1.0}


def _mode_result() -> dict:
    def run(serve, events_per_s, jvm, tasks, kinds, fates, started):
        return {"events": 1000, "events_per_s": events_per_s, "jvm_started_by_this_run": started,
                "batch": {"mean_batch": events_per_s / 100},
                "cpu_us_per_event": {"flink_jvm": jvm, "broker": 90.0, "exporter": 30.0,
                                     "flink_jvm_task_threads": tasks, "learner_thread": 110.0},
                "serving": {"serve": serve, "served_by": {"by_kind": kinds,
                                                          "share": {k: v / 1000 for k, v in kinds.items()},
                                                          "registry_versions_served": []},
                            "registry": {**fates, "current": "v000002"}}}

    fates = {"exported": 3, "promoted": 2, "rejected": 1, "guards": 0, "held": 0, "superseded": 0,
             "undecided": 0}
    live = run("live", 5000.0, 650.0, 220.0, {"live": 300, "live+vN": 700, "vN": 0}, fates, True)
    registry = run("registry", 4000.0, 560.0, 230.0, {"live": 300, "live+vN": 0, "vN": 700}, fates, False)
    registry["quality"] = {"pipeline": {"recall": 0.12, "evaluated": 990}}
    return {"settings": {"serve": "live"},
            "throughput": {**live, "reference_events_per_s": 4000.0},
            "quality": {"pipeline": {"recall": 0.14, "evaluated": 990}, "reference": {"recall": 0.16}},
            "serve_modes": {"registry": registry}}


def test_mode_comparison_puts_each_mode_beside_the_reference():
    from streamrec.bench.report import mode_comparison

    live, registry = mode_comparison(_mode_result())
    assert (live["serve"], live["run"], registry["serve"], registry["run"]) == (
        "live", "throughput", "registry", "serve_modes.registry")
    assert live["recall_over_reference"] == pytest.approx(0.875)
    assert registry["recall_over_reference"] == pytest.approx(0.75)
    assert live["throughput_over_reference"] == pytest.approx(1.25)
    assert registry["throughput_over_reference"] == pytest.approx(1.0)
    assert registry["cpu_us_per_event"] == {"flink_jvm": 560.0, "flink_jvm_task_threads": 230.0,
                                            "learner_thread": 110.0, "exporter": 30.0, "broker": 90.0}
    assert live["jvm_start_up_included"] is True and registry["jvm_start_up_included"] is False
    assert (live["mean_batch"], registry["mean_batch"]) == (50.0, 40.0)
    assert registry["registry"]["promoted"] == 2 and registry["served_by"]["share"]["vN"] == 0.7
    # without the quality phase (--skip-quality): no recall, no reference speed, figures None
    bare = _mode_result()
    del bare["quality"], bare["serve_modes"]["registry"]["quality"], bare["throughput"]["reference_events_per_s"]
    rows = mode_comparison(bare)
    assert [r["recall"] for r in rows] == [None, None]
    assert [r["throughput_over_reference"] for r in rows] == [None, None]
    assert mode_comparison({}) == []


def test_table_shows_the_modes_side_by_side():
    from streamrec.bench.report import mode_comparison, modes_table

    result = _mode_result()
    text = table(result)
    assert "serving modes" in text
    head = next(line for line in text.splitlines() if line.startswith("serving modes"))
    assert head.split()[-2:] == ["live", "registry"]
    assert "0.1400 (0.88)" in text and "0.1200 (0.75)" in text
    assert "5,000 (1.25)" in text and "4,000 (1.00)" in text
    assert "650 (JVM start-up incl.)" in text and "3 / 2 / 1 (CURRENT v000002)" in text
    assert "30.0 / 70.0 / 0.0 %" in text and "30.0 / 0.0 / 70.0 %" in text
    assert "learner batches: mean events" in text and "50.0" in text
    # the rows stored in the result are what the table prints
    assert modes_table(mode_comparison(result)) == modes_table(result.get("modes") or mode_comparison(result))
    assert modes_table([]) == []
    # one mode only (--modes live): no comparison block
    del result["serve_modes"]
    assert "serving modes" not in table(result)
