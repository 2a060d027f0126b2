"""Helpers for end-to-end tests: launch real runs (controller + role processes), wait, inspect."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
from click.testing import CliRunner

from slurm_rl.cli import cli
from slurm_rl.report import report_dict
from slurm_rl.rundir import RunDir
from slurm_rl.store import connect

# Small and fast: the hf engine, a 2-layer 64-wide model, short runs.
FAST = ("rollout.engine=hf", "model.hidden=64", "model.heads=2", "model.kv_heads=1",
        "algorithm.prompts_per_step=8", "rollout.prompts_per_batch=4")


def launch(tmp_path: Path, *sets: str, name: str = "t", config: str = "configs/demo.yaml",
           fast: bool = True) -> RunDir:
    """`slurm-rl launch --detach` in-process (the controller and roles are real processes)."""
    args = ["launch", config, "--name", name, "--detach", "--set", f"runs_dir={tmp_path}"]
    for s in (FAST if fast else ()) + sets:
        args += ["--set", s]
    res = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return RunDir(tmp_path / name)


def q(run: RunDir, sql: str, args: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
    conn = connect(run.db, readonly=True)
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


def meta(run: RunDir, key: str, default: Any = None) -> Any:
    rows = q(run, "SELECT value FROM meta WHERE key=?", (key,))
    return json.loads(rows[0][0]) if rows else default


def committed(run: RunDir) -> int:
    return int(meta(run, "committed", 0))


def events(run: RunDir, kind: str | None = None) -> list[sqlite3.Row]:
    if kind:
        return q(run, "SELECT * FROM events WHERE kind=? ORDER BY id", (kind,))
    return q(run, "SELECT * FROM events ORDER BY id")


def role(run: RunDir, slot: str) -> sqlite3.Row:
    return q(run, "SELECT * FROM roles WHERE slot=?", (slot,))[0]


def wait_for(pred: Callable[[], Any], timeout: float, what: str, run: RunDir | None = None) -> Any:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            v = pred()
        except sqlite3.OperationalError:
            v = None
        if v:
            return v
        time.sleep(0.2)
    detail = ""
    if run is not None:
        detail = "\nevents:\n" + "\n".join(f"  {e['kind']}: {e['msg']}" for e in events(run)[-25:])
        detail += "\ncontroller log:\n" + _tail(run.logs / "controller.log")
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}{detail}")


def _tail(p: Path, n: int = 20) -> str:
    try:
        return "\n".join(p.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


def wait_ready(run: RunDir, timeout: float = 120) -> None:
    def ready() -> bool:
        rows = q(run, "SELECT state FROM roles")
        return bool(rows) and all(r["state"] == "READY" for r in rows) and committed(run) >= 1
    wait_for(ready, timeout, "every role READY and a first committed step", run)


def wait_done(run: RunDir, timeout: float = 240) -> dict[str, Any]:
    wait_for(lambda: meta(run, "run_state") in ("finished", "failed", "stopped") and not controller_pid(run),
             timeout, "the run to end", run)
    return report_dict(run)


def controller_pid(run: RunDir) -> int | None:
    addr = run.read_controller()
    if addr is None:
        return None
    try:
        return None if psutil.Process(addr.pid).status() == psutil.STATUS_ZOMBIE else addr.pid
    except psutil.NoSuchProcess:
        return None


def inject(run: RunDir, slot: str, fault: str) -> float:
    t = time.time()
    res = CliRunner().invoke(cli, ["inject", str(run.path), slot, "--fault", fault], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return t


def run_processes(run: RunDir) -> list[psutil.Process]:
    """Every live process that belongs to this run (controller and role workers)."""
    out = []
    for p in psutil.process_iter(["cmdline", "status"]):
        try:
            if belongs_to(run, p.info["cmdline"]) and p.info["status"] != psutil.STATUS_ZOMBIE and p.pid != os.getpid():
                out.append(p)
        except psutil.Error:
            continue
    return out


def job_processes(run: RunDir) -> list[psutil.Process]:
    """Every live process started by one of the run's jobs, wherever it went: each carries its job's id
    in its environment (SLURM_RL_JOB_ID), also one that left its job's process group."""
    ids = {r["job_id"] for r in q(run, "SELECT job_id FROM jobs")}
    out = []
    for p in psutil.process_iter(["status"]):
        try:
            if p.info["status"] != psutil.STATUS_ZOMBIE and p.environ().get("SLURM_RL_JOB_ID") in ids:
                out.append(p)
        except psutil.Error:
            continue
    return out


def belongs_to(run: RunDir, cmdline: list[str] | None) -> bool:
    """A process of the run has the run directory (or a path inside it) as an argument: a
    substring test would also match `RUNS/soak.json` for the run `RUNS/soak`."""
    root = str(run.path)
    return any(a == root or a.startswith(root + "/") for a in (cmdline or []))


def cleanup(run: RunDir) -> None:
    """Stop the run and make sure nothing of it is left running."""
    if controller_pid(run):
        CliRunner().invoke(cli, ["stop", str(run.path), "--timeout", "30"])
    for p in run_processes(run):
        try:
            p.send_signal(signal.SIGCONT)
            p.kill()
        except psutil.Error:
            pass


def assert_accounted(rep: dict[str, Any]) -> None:
    t = rep["trajectories"]
    assert t["accounted"], t
    assert t["generated"] == t["consumed"] + t["dropped_stale"] + t["dropped_rollback"] + t["queued"], t
    assert t["lost"] == 0 and rep["groups"]["lost"] == 0, rep["groups"]


def assert_no_prompt_done_twice(run: RunDir) -> None:
    dup = q(run, "SELECT item_id, COUNT(*) c FROM groups GROUP BY item_id HAVING c > 1")
    assert not dup, [tuple(r) for r in dup]


def python_launch(tmp_path: Path, *sets: str, timeout: float = 300,
                  env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    args = [sys.executable, "launch.py", "configs/demo.yaml", "--quiet", "--set", f"runs_dir={tmp_path}"]
    for s in FAST + sets:
        args += ["--set", s]
    env = {**os.environ, **(env or {})}
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, env=env)


def slot_events(run: RunDir, kind: str, slot: str) -> list[sqlite3.Row]:
    """Events of one kind about one role slot (e.g. its "recovered" or "dead" events)."""
    return [e for e in events(run, kind) if e["slot"] == slot]


def stop_and_audit(run: RunDir) -> dict[str, Any]:
    """`slurm-rl stop`, then the run's report with nothing lost and no prompt done twice."""
    res = CliRunner().invoke(cli, ["stop", str(run.path)])
    assert res.exit_code == 0, res.output
    rep = wait_done(run)
    assert_accounted(rep)
    assert_no_prompt_done_twice(run)
    return rep

