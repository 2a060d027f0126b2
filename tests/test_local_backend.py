"""The local backend's process handling, with plain shell jobs (no roles)."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import psutil

from slurm_rl.backends.base import LaunchSpec, Resources
from slurm_rl.backends.local import LocalBackend
from slurm_rl.config import LocalConfig
from slurm_rl.states import JobState, RoleKind

# the job's leader dies of SIGTERM; its child ignores SIGTERM (inherited across exec) and sleeps on
STUBBORN_CHILD = '( trap "" TERM; exec sleep 600 ) & echo "child $!"; sleep 600'


def group_members(pgid: int) -> list[psutil.Process]:
    out = []
    for p in psutil.process_iter(["status"]):
        try:
            if os.getpgid(p.pid) == pgid and p.info["status"] != psutil.STATUS_ZOMBIE:
                out.append(p)
        except (OSError, psutil.Error):
            continue
    return out


def test_cancel_leaves_no_process_of_the_job_even_one_that_ignores_sigterm(tmp_path: Path) -> None:
    be = LocalBackend(tmp_path, LocalConfig())
    spec = LaunchSpec(run_name="t", run_dir=tmp_path, role=RoleKind.ROLLOUT, index=0, incarnation=1,
                      argv=("bash", "-c", STUBBORN_CHILD), resources=Resources(time_min=10), env=())
    job = be.submit(spec)
    pid = be._jobs[job].pid
    deadline = time.time() + 10
    while len(group_members(pid)) < 2 and time.time() < deadline:
        time.sleep(0.05)
    assert len(group_members(pid)) >= 2, "the job's child did not start"
    be.cancel([job])
    assert group_members(pid) == []
    assert be.poll([job]).jobs[job].state is JobState.CANCELLED


def test_cancel_of_an_ended_job_returns_at_once(tmp_path: Path) -> None:
    be = LocalBackend(tmp_path, LocalConfig())
    spec = LaunchSpec(run_name="t", run_dir=tmp_path, role=RoleKind.ROLLOUT, index=0, incarnation=1,
                      argv=(sys.executable, "-c", "pass"), resources=Resources(time_min=10), env=())
    job = be.submit(spec)
    be._jobs[job].proc.wait(timeout=10)
    t0 = time.monotonic()
    be.cancel([job])
    assert time.monotonic() - t0 < 2.0
