"""The command line against real runs on the local backend (controller and role processes).

One finished run with an injected fault is shared by the read-only commands (module fixture);
a sweep of two short runs, a sweep interrupted with Ctrl-C, and an attached launch each start
their own. Real outputs are validated against docs/schemas/*.json.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from rich.console import Console

from slurm_rl.cli import cli
from slurm_rl.report import status_dict
from slurm_rl.rundir import RunDir
from slurm_rl.ui.status import StatusView
from tests import runs
from tests.test_cli import schema_check

pytestmark = pytest.mark.slow
STEPS = 200
ROOT = Path(__file__).resolve().parents[1]


def invoke(*args: str) -> object:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


@pytest.fixture(scope="module")
def faulted(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunDir]:
    """A finished run in which rollout/1 was crashed (through the CLI) and replaced by the spare.

    200 steps: a promoted rollout counts as recovered once it generates again, which can wait for
    the trainer to drain the buffer; the run must outlast that on a fast machine."""
    tmp = tmp_path_factory.mktemp("faulted")
    run = runs.launch(tmp, f"algorithm.steps={STEPS}", name="faulted")
    try:
        runs.wait_ready(run)
        live = invoke("status", str(run.path), "--json")
        assert live.exit_code == 0, live.output
        st = json.loads(live.output)
        schema_check("status", st)
        assert st["live"] and st["source"] == "controller" and st["state"] == "running"
        res = invoke("inject", str(run.path), "rollout/1", "--fault", "crash")
        assert res.exit_code == 0, res.output
        assert "injected crash into rollout/1" in res.output
        runs.wait_for(lambda: any(e["slot"] == "rollout/1" for e in runs.events(run, "recovered")), 60,
                      "rollout/1 recovered", run)
        rep = runs.wait_done(run)
        assert rep["state"] == "finished", rep.get("end_reason")
        yield run
    finally:
        runs.cleanup(run)


def test_status_of_the_finished_run(faulted: RunDir) -> None:
    res = invoke("status", str(faulted.path), "--json", "--events", "50")
    assert res.exit_code == 0
    st = json.loads(res.output)
    schema_check("status", st)
    assert st["state"] == "finished" and not st["live"] and st["source"] == "store" and st["step"] == STEPS
    assert {r["slot"] for r in st["roles"]} == {"trainer/0", "rollout/0", "rollout/1", "spare/0"}
    assert all(r["state"] == "STOPPED" for r in st["roles"])
    assert next(r for r in st["roles"] if r["slot"] == "rollout/1")["restarts"] >= 1
    for width in (80, 120):
        con = Console(width=width, record=True, color_system=None)
        con.print(StatusView(status_dict(faulted, live=False)))
        text = con.export_text()
        assert "faulted" in text and "finished" in text and "rollout/1" in text
        assert max(len(line) for line in text.splitlines()) <= width


def test_events_of_the_fault(faulted: RunDir) -> None:
    res = invoke("events", str(faulted.path), "--json")
    assert res.exit_code == 0
    evs = [json.loads(x) for x in res.output.splitlines()]
    for e in evs:
        schema_check("event", e)
    mine = [e["kind"] for e in evs if e["slot"] == "rollout/1"]
    for kind in ("fault_injected", "dead", "recovered"):
        assert kind in mine
    assert mine.index("fault_injected") < mine.index("dead") < mine.index("recovered")
    res = invoke("events", str(faulted.path), "--kind", "dead", "--slot", "rollout/1")
    assert res.exit_code == 0 and "rollout/1 is DEAD" in res.output and "recovered" not in res.output
    assert invoke("events", str(faulted.path), "--follow").exit_code == 0        # ended: returns at once


def test_report_of_the_fault(faulted: RunDir, tmp_path: Path) -> None:
    res = CliRunner().invoke(cli, ["report", str(faulted.path), "--json", "--plot", str(tmp_path)],
                             catch_exceptions=False)
    assert res.exit_code == 0
    rep = json.loads(res.stdout)
    schema_check("report", rep)
    runs.assert_accounted(rep)
    (fault,) = [f for f in rep["faults"] if f["injected"]]
    assert (fault["slot"], fault["kind"]) == ("rollout/1", "crash") and fault["recover_s"] is not None
    assert any(m["role"] == "rollout" and m["kind"] == "crash" for m in rep["mttr"])
    assert rep["restarts"]["rollout"] >= 1
    for name in ("reward.png", "goodput.png", "recovery.png"):
        assert (tmp_path / name).stat().st_size > 5000
    text = invoke("report", str(faulted.path)).output
    assert "MTTR by role and fault kind" in text and "rollout" in text and "crash" in text


def test_ls_and_the_commands_that_need_a_live_run(faulted: RunDir) -> None:
    res = invoke("ls", str(faulted.path.parent), "--json")
    assert res.exit_code == 0
    rows = json.loads(res.output)
    schema_check("ls", rows)
    assert [(r["run"], r["state"], r["steps"], r["faults"]) for r in rows] == [("faulted", "finished", STEPS, 1)]
    assert invoke("inject", str(faulted.path), "rollout/0", "--fault", "crash").exit_code == 2
    assert invoke("resume", str(faulted.path)).exit_code == 2
    res = invoke("stop", str(faulted.path))
    assert res.exit_code == 0 and "already finished" in res.output


def test_launch_attached_without_a_terminal_prints_progress_and_the_summary(tmp_path: Path) -> None:
    args = ["launch", "configs/demo.yaml", "--name", "att", "--set", f"runs_dir={tmp_path}",
            "--set", "algorithm.steps=12"]
    for s in runs.FAST:
        args += ["--set", s]
    res = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert "run att started" in res.stderr and "step 12/12" in res.stderr
    assert "att: finished" in res.stdout and "lost 0" in res.stdout
    assert "Writing model shards" not in res.output
    assert runs.run_processes(RunDir(tmp_path / "att")) == []         # launch waited for the controller to exit


def _sweep_file(tmp_path: Path, steps: int, grid: str = "rollout.replicas: [1, 2]") -> Path:
    sets = "\n".join(f"  {k}: {v}" for k, v in (s.split("=", 1) for s in runs.FAST))
    f = tmp_path / "sw.yaml"
    f.write_text(f"name: sw\nbase: {ROOT / 'configs' / 'demo.yaml'}\nruns_dir: {tmp_path / 'runs'}\n"
                 f"max_concurrent: 2\nset:\n{sets}\n  algorithm.steps: {steps}\n  spare.replicas: 0\n"
                 f"grid:\n  {grid}\nmetrics: [steps, reward, ettr]\n")
    return f


def test_sweep_runs_every_point_and_writes_the_summary(tmp_path: Path) -> None:
    f = _sweep_file(tmp_path, 6)
    res = CliRunner().invoke(cli, ["sweep", str(f), "--json"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    schema_check("sweep", summary)
    assert summary["ok"] and not summary["interrupted"]
    assert [(r["run"], r["state"], r["metrics"]["steps"]) for r in summary["runs"]] == \
        [("1-replicas-1", "finished", 6), ("2-replicas-2", "finished", 6)]
    with Path(summary["summary_csv"]).open() as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["run"], r["rollout.replicas"], r["state"], r["steps"]) for r in rows] == \
        [("1-replicas-1", "1", "finished", "6"), ("2-replicas-2", "2", "finished", "6")]
    assert "summary written to" in res.stderr
    # the runs are real runs: ls lists them under the sweep, report reads them
    ls = json.loads(invoke("ls", str(tmp_path / "runs"), "--json").output)
    assert [r["run"] for r in ls] == ["sw/1-replicas-1", "sw/2-replicas-2"]
    # again: refused without --resume; with it, both are kept and nothing runs
    res = invoke("sweep", str(f))
    assert res.exit_code == 2 and "--resume" in res.output
    res = CliRunner().invoke(cli, ["sweep", str(f), "--resume"], catch_exceptions=False)
    assert res.exit_code == 0 and res.stdout.count("finished (earlier)") == 2


def test_ctrl_c_stops_the_sweep_and_its_runs(tmp_path: Path) -> None:
    f = _sweep_file(tmp_path, 100000, grid="rollout.replicas: [1, 1, 1]")
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "slurm_rl.cli", "sweep", str(f), "--quiet"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first = RunDir(tmp_path / "runs" / "sw" / "1-replicas-1")
    try:
        runs.wait_for(lambda: first.db.exists() and runs.committed(first) >= 1, 120, "the first run to train")
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
        for d in (tmp_path / "runs" / "sw").glob("*-replicas-1"):
            runs.cleanup(RunDir(d))
    assert proc.returncode == 130, err
    assert "interrupted: stopping" in err
    with (tmp_path / "runs" / "sw" / "summary.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert [r["state"] for r in rows][2] == "not started"
    assert {r["state"] for r in rows[:2]} <= {"stopped", "not started"} and rows[0]["state"] == "stopped"
    for d in (tmp_path / "runs" / "sw").glob("*-replicas-1"):
        assert runs.run_processes(RunDir(d)) == []
        assert runs.meta(RunDir(d), "run_state") == "stopped"
