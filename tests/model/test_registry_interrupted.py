"""A writer SIGKILLed between logging a CURRENT change and carrying it out: the next writer
finishes the change, so registry.log and CURRENT (and the pin) never disagree for longer."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from streamrec.model.onnx_model import export_model_bytes
from streamrec.model.registry import Registry

#: Run in a child: publish and promote two versions, then die at the next CURRENT write.
CHILD = textwrap.dedent("""
    import os, signal, sys
    import numpy as np
    from streamrec.model.onnx_model import export_model_bytes
    from streamrec.model.registry import Registry

    root, action = sys.argv[1], sys.argv[2]
    reg = Registry(root)
    def publish():
        vecs = np.ones((3, 4), np.float32)
        data = export_model_bytes(vecs, np.zeros(3), np.zeros(3), 0.0)
        return reg.publish(data, {"item_ids": ["a", "b", "c"], "dim": 4})
    v1, v2, v3 = publish(), publish(), publish()
    reg.promote(v1, "gate", "first")
    reg.promote(v2, "gate", "second")
    def die(version):
        os.kill(os.getpid(), signal.SIGKILL)
    Registry._set_current = lambda self, version: die(version)
    if action == "promote":
        reg.promote(v3, "gate", "third")
    else:
        reg.rollback(v1, actor="operator", reason="bad v2")
""")


def killed_writer(root, action: str) -> None:
    proc = subprocess.run([sys.executable, "-c", CHILD, str(root), action], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]


@pytest.mark.parametrize("action", ["promote", "rollback"])
def test_the_next_writer_finishes_a_change_logged_but_not_made(tmp_path, action):
    killed_writer(tmp_path, action)
    reg = Registry(tmp_path)
    versions = reg.list_versions()
    assert reg.current() == versions[1]  # the kill came before CURRENT moved
    assert reg.read_log()[-1]["action"] == action

    reg.record_refusal(versions[2], "any locked change runs the recovery first", actor="test")
    expected = versions[2] if action == "promote" else versions[0]
    assert reg.current() == expected
    if action == "rollback":
        assert reg.pinned()["version"] == versions[0]
        assert [e["action"] for e in reg.read_log()][-3:] == ["rollback", "pin", "refuse"]
    assert reg.promotion_stack()[-1] == expected


def test_a_current_written_by_hand_after_the_log_is_left_alone(tmp_path):
    reg = Registry(tmp_path)
    data = export_model_bytes(np.ones((3, 4), np.float32), np.zeros(3), np.zeros(3), 0.0)
    v1, v2 = (reg.publish(data, {"item_ids": ["a", "b", "c"], "dim": 4}) for _ in range(2))
    reg.promote(v1, "gate", "first")
    reg.promote(v2, "gate", "second")
    (tmp_path / "CURRENT").write_text(f"{v1}\n")  # an operator's hand edit, after the last line
    os.utime(tmp_path / "CURRENT")
    reg.record_refusal(v2, "a locked change", actor="test")
    assert reg.current() == v1
