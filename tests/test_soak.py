"""A short soak (bench/soak.py) in CI: every fault kind, a trainer+rollout double fault, a fault
into a replacement while it starts, a controller killed mid-recovery and resumed, and the run's disk
filled until ENOSPC (a tmpfs of its own: CI runs as root) and freed, then every invariant: nothing
lost, nothing consumed twice, no committed step undone, nothing left after stop, controller memory
flat, every fault recovered, store intact, the controller's clean stop on the full disk (exit 75). The long one (60 faults) is `python bench/soak.py`; figures in docs/failure-model.md.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
KINDS = {"crash", "hang", "exit", "node-down", "drain"}

pytestmark = pytest.mark.slow


def test_short_soak_holds_every_invariant(tmp_path):
    out = tmp_path / "soak.json"
    res = subprocess.run([sys.executable, "bench/soak.py", "--faults", "10", "--seed", "5", "--episodes",
                          "pair,recovery,controller,diskfull", "--runs-dir", str(tmp_path), "--out", str(out)],
                         capture_output=True, text=True, timeout=900, cwd=REPO, check=False)
    print(res.stdout[-6000:])
    data = json.loads(out.read_text()) if out.exists() else {}
    assert res.returncode == 0, res.stdout[-6000:] + res.stderr[-3000:]
    done = [i for i in data["injections"] if i["ok"]]
    assert len([i for i in done if i["fault"] != "controller-kill"]) >= 10
    assert set(Counter(i["fault"] for i in done)) - {"controller-kill", "disk-full"} == KINDS
    # the controller SIGKILLed while a recovery was under way, and resumed: every invariant still holds
    assert any(i["fault"] == "controller-kill" for i in done)
    # the disk filled up: the controller stopped itself with 75 and the run was resumed
    assert [d["exit_code"] for d in data["disk_full"]] == [75] and data["disk_full"][0]["resumed"]
    assert "I8 disk full: the controller stops cleanly, the run resumes" in data["invariants"]
    assert any(i["second"] and i["episode_kind"] == "pair" for i in done)          # trainer + rollout at once
    assert any(i["second"] and i["episode_kind"] == "recovery" for i in done)      # into a starting replacement
    for name, r in data["invariants"].items():
        assert r["ok"], (name, r["detail"])
    assert data["recovery"] and all(d["recovered"] == d["n"] for d in data["recovery"])
    assert "== recovery time" in res.stdout and "[PASS] I5 controller memory flat" in res.stdout
