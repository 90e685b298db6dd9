"""The dashboard of `streamrec serve` checked in a real browser (headless Chromium, no driver
library): after a bounded pipeline run and an export, /v1/stats has joined every event with its
record, the page at ``/`` loads, every chart has points, the values it plots are /v1/stats's, and
its script raised nothing. Called by tests/serving/test_serve_e2e.py on its run (one pipeline run
for both)."""

from __future__ import annotations

import re
import shutil
import subprocess
import time
import warnings

#: Debian's package and command (CI installs it).
CHROMIUM = shutil.which("chromium")
#: Every chart's series that a bounded run followed by `serve` must have points of.
EXPECTED = {"events": ["events_per_s"], "latency": ["latency_p50_ms", "latency_p99_ms"],
            "strategy": ["strategy_model", "strategy_none"], "versions": ["version_serving", "version_stream"],
            "recall": ["recall_served", "recall_popularity"], "lag": ["lag_serve"]}


def chromium(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                           "--disable-extensions", "--enable-logging=stderr", "--v=0", *args],
                          capture_output=True, text=True, timeout=timeout)


def plotted(dom: str) -> dict[str, dict[str, tuple[int, str]]]:
    """Per chart, per series: (points drawn, last value drawn), from the page's SVG paths."""
    charts = {}
    for chart, body in re.findall(r'<svg[^>]*data-chart="(\w+)"[^>]*>(.*?)</svg>', dom, re.S):
        paths = re.findall(r"<path [^>]*>", body)
        charts[chart] = {}
        for path in paths:
            attrs = dict(re.findall(r'([\w-]+)="([^"]*)"', path))
            charts[chart][attrs["data-series"]] = (int(attrs["data-points"]), attrs["data-last"])
        charts[chart]["decisions"] = (body.count('class="decision"'), "")
    return charts


def check_dashboard(client, url: str, n_events: int, version: str, tmp_path) -> None:
    """The checks, after a bounded run of ``n_events`` events and ``version`` promoted last, on a
    service just started (tests/serving/test_serve_e2e.py's ``start_service``): reusable by any
    test that has such a run."""
    deadline = time.monotonic() + 30
    while True:  # the dashboard's thread has read the clean events and closed a few seconds
        status, stats = client.call("GET", "/v1/stats")
        assert status == 200, stats
        totals = stats["totals"]
        if totals["records"] == n_events and totals["clean_events"] == n_events and totals["pending"] == 0 \
                and len(stats["t"]) >= 3 and stats["series"]["version_serving"][-1] is not None:
            break
        assert time.monotonic() < deadline, totals
        time.sleep(0.5)
    # every event was joined with its record; the recall is over those with a list before them
    assert totals["evaluated"] + totals["without_list"] == n_events and totals["unmatched"] == 0, totals
    assert totals["evaluated"] > n_events / 2 and totals["hits_served"] > 0, totals
    assert sum(totals["by_strategy"].values()) == n_events
    assert [d["action"] for d in stats["models"]["decisions"]][-2:] == ["publish", "promote"]
    assert stats["models"]["serving"] == version

    status, page = client.raw("GET", "/")
    assert status == 200 and b"<svg" not in page and b"http://" not in page.replace(b"http://www.w3.org", b"")
    if CHROMIUM is None:  # CI installs it (.ci/run)
        warnings.warn("the dashboard was not drawn: headless Chromium is absent (apt-get install chromium)")
        return

    done = chromium("--virtual-time-budget=8000", "--dump-dom", url + "/")
    assert done.returncode == 0, done.stderr[-3000:]
    dom = done.stdout
    assert 'data-errors="0"' in dom, re.findall(r'<div id="errors"[^<]*</div>', dom)
    assert re.search(r'<body data-polls="\d+"', dom), dom[:2000]
    console = [line for line in done.stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]
    assert not console, console

    charts = plotted(dom)
    for chart, series in EXPECTED.items():
        for name in series:
            points, _ = charts[chart][name]
            assert points > 0, (chart, name, charts[chart])
    assert charts["versions"]["decisions"][0] >= 2  # publish and promote of the export
    # the values drawn are /v1/stats's: the run is over, so these no longer change
    served = f"{stats['series']['recall_served'][-1]:g}"
    assert charts["recall"]["recall_served"][1] == served, (charts["recall"], stats["series"]["recall_served"][-3:])
    assert float(charts["versions"]["version_serving"][1]) == stats["series"]["version_serving"][-1]
    assert f'data-records="{n_events}"' in dom

    shot = tmp_path / "dashboard.png"
    done = chromium("--virtual-time-budget=3000", f"--screenshot={shot}", "--window-size=1400,1000", url + "/")
    assert done.returncode == 0 and shot.stat().st_size > 10_000, done.stderr[-3000:]
