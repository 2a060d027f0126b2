"""A short full run on the local backend, as a user runs it, and the commands around it."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

from slurm_rl.cli import cli
from slurm_rl.rundir import RunDir
from tests import runs

pytestmark = pytest.mark.slow


def test_python_launch_runs_to_completion_and_accounts_for_everything(tmp_path):
    proc = runs.python_launch(tmp_path, "algorithm.steps=25", "trainer.checkpoint_every=10")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "finished" in proc.stdout and "lost 0" in proc.stdout
    run = RunDir(tmp_path / "demo")
    res = CliRunner().invoke(cli, ["report", str(run.path), "--json"])
    assert res.exit_code == 0, res.output
    rep = json.loads(res.output)
    for key in ("steps", "wall_s", "ettr", "reward", "trajectories", "faults", "restarts"):
        assert key in rep
    assert rep["steps"] == 25 and rep["state"] == "finished"
    assert set(rep["reward"]) >= {"first", "last"} and len(rep["reward"]["curve"]) == 25
    assert set(rep["trajectories"]) >= {"generated", "consumed", "dropped_stale", "lost"}
    runs.assert_accounted(rep)
    runs.assert_no_prompt_done_twice(run)
    assert rep["faults"] == [] and rep["restarts"]["trainer"] == 0
    # the last checkpoint is the final step, written atomically, nothing half-written left
    ckpts = sorted(p.name for p in run.checkpoints.iterdir())
    assert ckpts[-1] == "step-000025" and not any(c.endswith(".tmp") for c in ckpts)
    assert runs.run_processes(run) == []                 # nothing left running
    assert not run.controller_file.exists()


def test_status_events_report_and_plots_of_a_finished_run(tmp_path):
    run = runs.launch(tmp_path, "algorithm.steps=12", name="small")
    rep = runs.wait_done(run)
    assert rep["state"] == "finished"
    r = CliRunner()
    st = json.loads(r.invoke(cli, ["status", str(run.path), "--json"]).output)
    assert st["state"] == "finished" and st["step"] == 12 and not st["live"]
    assert {x["slot"] for x in st["roles"]} == {"trainer/0", "rollout/0", "rollout/1", "spare/0"}
    assert all(x["state"] == "STOPPED" for x in st["roles"])
    ev = r.invoke(cli, ["events", str(run.path), "--json"]).output.splitlines()
    kinds = [json.loads(line)["kind"] for line in ev]
    assert kinds[0] == "run_started" and kinds[-1] == "run_finished"
    out = r.invoke(cli, ["report", str(run.path), "--plot", str(tmp_path / "plots")])
    assert out.exit_code == 0 and "ETTR" in out.output
    assert (tmp_path / "plots" / "reward.png").stat().st_size > 1000
    assert (tmp_path / "plots" / "goodput.png").stat().st_size > 1000
    ls = json.loads(r.invoke(cli, ["ls", str(tmp_path), "--json"]).output)
    assert [x["run"] for x in ls] == ["small"] and ls[0]["steps"] == 12


def test_stop_cancels_every_role_and_leaves_nothing(tmp_path):
    run = runs.launch(tmp_path, "algorithm.steps=100000", name="long")
    try:
        runs.wait_ready(run)
        res = CliRunner().invoke(cli, ["stop", str(run.path)])
        assert res.exit_code == 0, res.output
        assert "stopped" in res.output
        # the guarantee itself, checked at once: no process of the run, none that any of its jobs started
        assert runs.run_processes(run) == [] and runs.job_processes(run) == []
        assert runs.meta(run, "run_state") == "stopped"
        # the trainer checkpointed the steps it had taken before going
        assert runs.q(run, "SELECT MAX(step) FROM checkpoints")[0][0] == runs.meta(run, "trainer_version")
    finally:
        runs.cleanup(run)


def test_launch_refuses_an_existing_run_dir(tmp_path):
    run = runs.launch(tmp_path, "algorithm.steps=3", name="once")
    runs.wait_done(run)
    res = CliRunner().invoke(cli, ["launch", "configs/demo.yaml", "--run-dir", str(run.path)])
    assert res.exit_code == 2 and "already holds a run" in res.output


@pytest.mark.vllm
def test_the_demo_learns_with_vllm(tmp_path):
    """The README's demo as it ships: vLLM rollouts, 100 steps, reward must rise by >= 0.3."""
    proc = subprocess.run([sys.executable, "-m", "slurm_rl.cli", "launch", "configs/demo.yaml", "--quiet",
                           "--set", f"runs_dir={tmp_path}"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    rep = runs.report_dict(RunDir(tmp_path / "demo"))
    assert rep["state"] == "finished" and rep["steps"] == 100
    assert rep["reward"]["last"] - rep["reward"]["first"] >= 0.3, rep["reward"]
    runs.assert_accounted(rep)
