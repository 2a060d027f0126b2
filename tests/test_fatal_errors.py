"""Errors no restart can fix end the run at once with their message: a role that cannot import
vLLM, a model directory that is broken; and launch checks what it can before submitting anything."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from slurm_rl import launcher
from slurm_rl.cli import cli
from slurm_rl.cli.base import _parse_fault
from slurm_rl.errors import ROLE_EXIT_ENVIRONMENT, ROLE_EXIT_INPUT, BadInput, PackageMissing, role_exit_code
from slurm_rl.rl.model import build_tiny_model
from slurm_rl.rundir import RunDir
from tests import runs

REPO = Path(__file__).resolve().parents[1]


def test_a_role_without_vllm_ends_the_run_on_its_first_try(tmp_path: Path) -> None:
    # vLLM importable where launch runs (its check passes) but not in the role processes
    stub = tmp_path / "stub" / "vllm"
    stub.mkdir(parents=True)
    (stub / "__init__.py").write_text("raise ImportError('No module named vllm (a stub for this test)')\n")
    env = {"PYTHONPATH": os.pathsep.join([str(stub.parent), str(REPO)])}
    res = runs.python_launch(tmp_path / "runs", "rollout.engine=vllm", timeout=240, env=env)
    assert res.returncode == 3, res.stdout + res.stderr
    assert "cannot run" in res.stderr and "needs vLLM" in res.stderr and "hint:" in res.stderr, res.stderr
    assert "Traceback" not in res.stderr
    run = RunDir(next((tmp_path / "runs").iterdir()))
    rep = runs.wait_done(run, timeout=60)
    assert rep["state"] == "failed" and rep["fatal"]["kind"] == "environment", rep["end_reason"]
    assert rep["fatal"]["slot"] in {"rollout/0", "rollout/1", "spare/0", "trainer/0"}
    # no restart was spent on it, no fault recorded as if it were a crash
    assert rep["restarts"] == {"trainer": 0, "rollout": 0, "spare": 0, "trainer_spare": 0, "full": 0}
    assert rep["faults"] == []
    assert [e["kind"] for e in runs.events(run, "fatal")] == ["fatal"]
    runs.wait_for(lambda: not runs.run_processes(run), 30, "every process of the run to end", run)


def test_launch_says_vllm_is_missing_before_anything_is_written(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(launcher, "find_spec", lambda name: None)
    res = CliRunner().invoke(cli, ["launch", str(REPO / "configs/demo.yaml"), "--set", f"runs_dir={tmp_path}"])
    assert res.exit_code == 3 and "vLLM is not installed" in res.output and "rollout.engine=hf" in res.output
    assert not any(tmp_path.iterdir())


def _model(tmp_path: Path) -> Path:
    return build_tiny_model(tmp_path / "m", hidden=64, heads=2, kv_heads=1, seed=0)


@pytest.mark.parametrize("damage", ["config", "weights", "index", "tokenizer"])
def test_a_broken_model_dir_is_exit_2_naming_the_file(tmp_path: Path, damage: str) -> None:
    m = _model(tmp_path)
    if damage == "config":
        (m / "config.json").write_text("{not json")
        named = "config.json"
    elif damage == "weights":
        with open(m / "model.safetensors", "r+b") as f:
            f.write(b"\xff" * 8)                    # a header length past the end of the file
        named = "model.safetensors"
    elif damage == "index":
        (m / "model.safetensors").rename(m / "model-00001-of-00002.safetensors")
        (m / "model.safetensors.index.json").write_text(json.dumps(
            {"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}))
        named = "model-00002-of-00002.safetensors"
    else:
        (m / "tokenizer.json").write_text("[1, 2")
        named = "tokenizer"
    res = CliRunner().invoke(cli, ["launch", str(REPO / "configs/demo.yaml"), "--set", f"runs_dir={tmp_path / 'r'}",
                                   "--set", f"model.path={m}", "--set", "rollout.engine=hf"])
    assert res.exit_code == 2, res.output
    assert named in res.output and "Traceback" not in res.output
    assert not (tmp_path / "r").exists() or not any((tmp_path / "r").iterdir())


def test_role_exit_codes_and_inject_keeps_off_them() -> None:
    assert role_exit_code(BadInput("x")) == ROLE_EXIT_INPUT
    assert role_exit_code(PackageMissing("x")) == ROLE_EXIT_ENVIRONMENT
    assert role_exit_code(ModuleNotFoundError("x")) == ROLE_EXIT_ENVIRONMENT
    assert role_exit_code(RuntimeError("x")) == 1 and role_exit_code(OSError("x")) == 1
    for code in (ROLE_EXIT_INPUT, ROLE_EXIT_ENVIRONMENT):
        with pytest.raises(BadInput, match="cannot run"):
            _parse_fault(f"exit:{code}")
    assert _parse_fault("exit:3") == ("exit", 3)
