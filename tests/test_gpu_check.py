"""scripts/gpu_check.py on a CPU machine: every GPU step skipped with the reason (exit 0); with CUDA
pretended present, a step that fails fails the check (exit 1); the steps' own code rehearsed on
the CPU at small sizes; an unknown step is an input error (exit 2)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def check(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> tuple[int, dict, str]:
    out = tmp_path / "out"
    res = subprocess.run([sys.executable, str(REPO / "scripts" / "gpu_check.py"), "--out", str(out),
                          "--work", str(tmp_path / "work"), *args], capture_output=True, text=True, timeout=600,
                         env={**os.environ, **(env or {})})
    path = out / "gpu-check.json"
    doc = json.loads(path.read_text()) if path.exists() else {}
    return res.returncode, doc, res.stdout + res.stderr


def by_name(doc: dict) -> dict[str, dict]:
    return {s["name"]: s for s in doc["steps"]}


def test_without_cuda_every_gpu_step_is_skipped_with_the_reason(tmp_path: Path) -> None:
    rc, doc, out = check(tmp_path)
    assert rc == 0, out
    steps = by_name(doc)
    assert steps["environment"]["status"] == "ok" and steps["environment"]["figures"]["cuda_available"] is False
    rest = [s for n, s in steps.items() if n != "environment"]
    assert len(rest) >= 6 and all(s["status"] == "skipped" and "no CUDA" in s["reason"] for s in rest)
    assert doc["mode"] == "gpu" and doc["summary"]["failed"] == 0 and doc["exit_code"] == 0


def test_a_failing_step_where_cuda_is_present_fails_the_check_loudly(tmp_path: Path) -> None:
    rc, doc, out = check(tmp_path, "--steps", "memcpy", env={"SLURM_RL_GPU_CHECK_PRETEND_CUDA": "1"})
    assert rc == 1, out
    memcpy = by_name(doc)["memcpy"]
    assert memcpy["status"] == "failed" and memcpy["reason"] and memcpy["traceback"]
    assert "FAILED: memcpy" in out


def test_the_steps_rehearsed_on_cpu(tmp_path: Path) -> None:
    rc, doc, out = check(tmp_path, "--rehearse-cpu", "--steps", "memcpy,sync,engine")
    assert rc == 0, out
    steps = by_name(doc)
    assert [s["status"] for s in steps.values()] == ["ok"] * 4, out
    assert steps["sync"]["figures"]["tcp_pull_to_device_gbps"] > 0
    assert steps["engine"]["figures"]["logprob_diff_max"] < 1e-3 and steps["engine"]["figures"]["generated_tokens"] > 0
    assert doc["ratios"]["tcp_vs_d2h_pinned"] > 0


def test_an_unknown_step_is_an_input_error(tmp_path: Path) -> None:
    rc, _, out = check(tmp_path, "--steps", "memcpy,nope")
    assert rc == 2 and "nope" in out
