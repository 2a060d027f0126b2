"""One controller per state store (issue 17): a live controller holds an exclusive lock on its run;
`resume` (and a second controller process) is refused with the run dir and the holder named, exit 4
(its own code: the run is in use), before anything is written; the lock goes with the process,
SIGKILL included; a file system without flock runs unlocked, with a warning."""

from __future__ import annotations

import errno
import logging
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from slurm_rl import launcher
from slurm_rl.cli import cli
from slurm_rl.controller import lock as lock_mod
from slurm_rl.controller.lock import ControllerLock, ControllerRunning, check_free
from tests.test_cli import fake_run

ROOT = Path(__file__).resolve().parents[1]
_HOLD = "import sys, time; from slurm_rl.rundir import RunDir; from slurm_rl.controller.lock import ControllerLock; " \
        "ControllerLock(RunDir(sys.argv[1])).acquire(); print('held', flush=True); time.sleep(300)"


def test_a_second_controller_on_one_run_is_refused(tmp_path: Path) -> None:
    run = fake_run(tmp_path, "locked", state="running")
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(run.path)], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        # `slurm-rl resume`: refused at once, the holder named, nothing started
        res = CliRunner().invoke(cli, ["resume", str(run.path), "--detach"])
        assert res.exit_code == ControllerRunning.exit_code == 4, res.output
        assert f"pid {holder.pid} on {socket.gethostname()}" in res.output and str(run.path) in res.output
        assert "refused" in res.output and "Traceback" not in res.output
        assert run.read_controller() is None
        # a controller process started anyway stops before writing anything, exit 4
        ctl = subprocess.run([sys.executable, "-m", "slurm_rl.controller", str(run.path), "--resume"],
                             capture_output=True, text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT)})
        assert ctl.returncode == 4 and f"pid {holder.pid}" in ctl.stderr + ctl.stdout
        assert "Traceback" not in ctl.stderr + ctl.stdout
        assert run.read_controller() is None
        # two `resume`s at once: the one that loses the race past the check is refused by its child
        with pytest.raises(ControllerRunning, match=f"pid {holder.pid}"):
            launcher.start_controller(run, resume=True)
        assert run.read_controller() is None
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    # the kernel dropped the lock with the killed process: free again, and this process can take it
    check_free(run)
    lock = ControllerLock(run)
    lock.acquire()
    lock.release()


def test_a_file_system_without_flock_runs_unlocked_with_a_warning(tmp_path: Path, monkeypatch, caplog) -> None:
    """Lustre mounted without `-o flock`, some FUSE file systems: flock fails with ENOSYS / ENOLCK /
    EOPNOTSUPP. The controller runs (the `resume` status check still guards) and says so."""
    run = fake_run(tmp_path, "nolocks", state="running")

    def no_flock(fd: int, op: int) -> None:
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(lock_mod.fcntl, "flock", no_flock)
    lock = ControllerLock(run)
    with caplog.at_level(logging.WARNING, logger="slurm_rl.controller"):
        lock.acquire()
    assert "flock" in caplog.text and str(run.path) in caplog.text
    check_free(run)                        # nothing to refuse on: no lock can be held here
    lock.release()
