"""`streamrec demo` end to end, as a user runs it (issue 30): the CLI's own entry point on the real
embedded broker (the session's), a real Flink job, the real exporter sidecar and all of ML-100k.
Everything is checked on what the demo leaves: its report, its registry and its plot.

Why all of ML-100k and not `--limit N`: the exporter makes about one version per 2.5 s of stream
(an export, its decision, the next interval), whatever the event count, so the versions a run
gets follow how long the stream lasts, not how many events it has. On a quiet 2-core machine the
job goes through ML-100k in about 15 s (6-7,000 events/s): six versions at most, one of them held
by the rollback's pin and the last one decided at the stop; on 50,000 events that is three
versions, too few for three promotions (under load, slower, 50,000 events made ten). The run's
fixed costs (job start-up, the evaluation's reference model) do not shrink with a limit either.
"""

from __future__ import annotations

import os
import re
import sys
import time

import pytest

from streamrec.cli import main
from streamrec.core.config import to_env
from streamrec.demo import demo_config
from streamrec.model.registry import Registry

pytestmark = pytest.mark.slow

EVENTS = 100_000  # ML-100k

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _counted(text: str) -> dict[str, int]:
    """``live+v000003 6,131, v000002 5,685`` -> {name: records}."""
    return {name: int(n.replace(",", "")) for name, n in re.findall(r"(\S+) ([\d,]+)(?:,|$)", text)}


def _has_colour(pixels, rgb: tuple[int, int, int], tolerance: int = 8) -> int:
    """How many pixels of the RGB(A) image are ``rgb``, give or take ``tolerance`` per channel."""
    import numpy as np

    rgb8 = (pixels[..., :3] * 255).round() if pixels.dtype.kind == "f" else pixels[..., :3]
    return int((np.abs(rgb8.astype(int) - np.array(rgb)).max(axis=-1) <= tolerance).sum())


def test_the_demo_promotes_versions_plots_them_and_shows_a_rollback(cfg, monkeypatch, capsys):
    for key, value in to_env(cfg).items():
        monkeypatch.setenv(key, value)
    started = time.monotonic()
    code = main(["demo"])
    wall = time.monotonic() - started
    out = capsys.readouterr().out
    sys.stdout.write(out)  # the report, shown when the test fails
    print(f"test_demo: the demo on {EVENTS:,} events took {wall:.0f} s")
    assert code == 0
    demo = demo_config(cfg)  # the topics and the registry the demo used
    demo_dir = demo.paths_resolved.state_dir / "demo"
    registry = Registry(demo.paths_resolved.registry_dir)
    log = registry.read_log()

    # every event in, through the whole graph
    assert f"parsed={EVENTS} cleaned={EVENTS} " in out, out

    # the versions' fates: CURRENT set, >= 3 promoted by the gate, nothing left pending
    fates = re.search(r"model versions: (\d+) exported, (\d+) promoted, (\d+) rejected by the gate, "
                      r"(\d+) superseded, (\d+) held \(pinned\), (\d+) undecided \(pending when the "
                      r"exporter stopped\)(?:; (\d+) not evaluated \([^)]*\))?; CURRENT = (\S+) ", out)
    assert fates, out
    exported, promoted, _rejected, _superseded, _held, undecided = map(int, fates.groups()[:6])
    current = fates.group(8)
    gate_promoted = [e["version"] for e in log if e["action"] == "promote" and e["actor"] == "gate"]
    assert promoted >= 3 and len(gate_promoted) == promoted, (promoted, gate_promoted)
    assert exported == sum(e["action"] == "publish" for e in log)
    assert undecided == 0 and registry.undecided() == [], registry.undecided()
    assert current == registry.current() and current in gate_promoted, (current, registry.current())
    assert registry.pinned() is None  # the demo unpinned
    # the swaps: CURRENT changed at every promotion and at the rollback
    swaps = re.search(r"CURRENT changed (\d+) times", out)
    assert swaps and int(swaps.group(1)) == promoted + 1, out

    # the rollback: the log pinned a version the gate had promoted, then unpinned it, and the
    # report (read from the recommendations topic) shows records scored by it, then the live table
    rollback = [e for e in log if e["action"] == "rollback"]
    assert len(rollback) == 1 and rollback[0]["actor"] == "demo", rollback
    target = rollback[0]["version"]
    assert target in gate_promoted
    pin = next(e for e in log if e["action"] == "pin")
    unpin = next(e for e in log if e["action"] == "unpin")
    assert pin["version"] == unpin["version"] == target
    shown = re.search(rf"rollback to {target}: first record scored by {target} (\d+) ms after the pin; "
                      r"while pinned: (.*?)(?: \(the run's recall|$)", out, re.MULTILINE)
    assert shown, out
    assert _counted(shown.group(2)).get(target, 0) > 0, shown.group(0)
    assert re.search(r"^\[demo\] unpin: first record of the live table \d+ ms after it; after: ", out,
                     re.MULTILINE), out
    # (the report read them from the recommendations topic: every event has its record)
    assert f"recommendations: {EVENTS:,} records (" in out

    # the plot: a real PNG next to the report, with the gate's promotions and the rolling recall
    png = demo_dir / "versions.png"
    assert f"plot of versions and recall: {png}" in out
    data = png.read_bytes()
    assert data.startswith(PNG_SIGNATURE) and data[12:16] == b"IHDR" and data.endswith(b"IEND\xaeB`\x82")
    assert len(data) > 20_000, len(data)
    import matplotlib.image

    pixels = matplotlib.image.imread(png)
    assert pixels.shape[:2] == (int.from_bytes(data[20:24], "big"), int.from_bytes(data[16:20], "big"))
    assert _has_colour(pixels, (0x2C, 0xA0, 0x2C)) > 60   # tab:green: the promoted candidates (none: 0)
    assert _has_colour(pixels, (153, 153, 153)) > 2000    # grey 0.6: the rolling recall (none: 165)

    # nothing left running: the exporter sidecar it started has exited
    pid = int(re.search(r"exporter sidecar started \(pid (\d+)", out).group(1))
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
