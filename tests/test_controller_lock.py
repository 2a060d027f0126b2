"""One controller per state store (issue 17): a live controller holds an exclusive lock on its run;
`resume` (and a second controller process) is refused with the holder named, exit 2, before
anything is written; the lock goes with the process, SIGKILL included."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from slurm_rl.cli import cli
from slurm_rl.controller.lock import ControllerLock, check_free
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
        assert res.exit_code == 2, res.output
        assert f"pid {holder.pid}" in res.output and "refused" in res.output and "Traceback" not in res.output
        assert run.read_controller() is None
        # a controller process started anyway stops before writing anything, exit 2
        ctl = subprocess.run([sys.executable, "-m", "slurm_rl.controller", str(run.path), "--resume"],
                             capture_output=True, text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT)})
        assert ctl.returncode == 2 and f"pid {holder.pid}" in ctl.stderr + ctl.stdout
        assert run.read_controller() is None
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    # the kernel dropped the lock with the killed process: free again, and this process can take it
    check_free(run)
    lock = ControllerLock(run)
    lock.acquire()
    lock.release()
