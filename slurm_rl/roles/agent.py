"""The batch-step agent: watches a role's process from outside its job step and reports its state.

Every Slurm role job runs `python -m slurm_rl.roles.agent -- srun ... python -m slurm_rl.roles.worker
...`: the agent is the batch step, the role is step 0. It starts `srun` as its child, forwards the
signals Slurm sends the batch step, and exits exactly as `srun` did (the same exit code, or the same
signal), so Slurm records the role's own outcome as before.

While the role runs, the agent reads the role process's state from /proc (the role's first task
writes its pid to `$SLURM_RL_PID_FILE`, which the agent sets) and sends it to the controller as a
`Pulse` four times a second: the scheduler state letter (R running, S sleeping, D in the kernel,
T stopped) and the CPU time used. That is the second signal a hang needs. Heartbeat silence alone
cannot tell a role that is stuck from one that is busy holding the interpreter; with the pulse:

  * silent and stopped (T) -> it cannot run until someone continues it: dead now;
  * silent and no CPU used -> deadlocked or stuck in the kernel: dead after `recovery.hang_idle_after_s`;
  * silent and using CPU -> busy (a long native call holding the interpreter): only
    `recovery.hang_after_s` confirms.

The agent lives outside the role's step, so a signal that stops or kills the step leaves it
running; if the agent itself is killed (`scancel --batch`), the batch step ends and Slurm ends
the job, as with a plain `exec srun`. Pulses are best effort: a controller that does not answer
costs nothing, and a role whose agent is silent is judged by heartbeats and probes alone.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

# signals Slurm (or a user) sends a batch step that must reach the role's step
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2,
             signal.SIGCONT)
CLK_TCK = os.sysconf("SC_CLK_TCK")


def proc_state(pid: int) -> tuple[str, float] | None:
    """(state letter, CPU seconds used) of a process from /proc/PID/stat, or None if it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    # the command name is in parentheses and may itself contain spaces and parentheses
    rest = raw[raw.rfind(b")") + 2:].split()
    state = rest[0].decode()
    utime, stime = int(rest[11]), int(rest[12])
    return state, (utime + stime) / CLK_TCK


def _say(msg: str) -> None:
    print(f"slurm-rl agent: {msg}", file=sys.stderr, flush=True)


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


class _Reporter:
    """Sends pulses to the run's controller; every failure is swallowed (best effort)."""

    def __init__(self, run_dir: str, job_id: str):
        self.job_id = job_id
        self.client = None
        self.broken = False
        self.failed = False
        self.run_dir = run_dir

    def send(self, pid: int, state: str, cpu_s: float) -> None:
        if self.broken:
            return
        try:
            from slurm_rl import protocol as P
            from slurm_rl.controlplane import ControlClient
            from slurm_rl.rundir import RunDir

            if self.client is None:
                self.client = ControlClient(RunDir(self.run_dir), name=f"agent/{self.job_id}")
            self.client.request(P.Pulse(job_id=self.job_id, pid=pid, state=state, cpu_s=cpu_s),
                                timeout_s=1.0, attempts=1)
        except ImportError as e:
            self.broken = True
            _say(f"cannot report to the controller ({e}); hangs are judged by heartbeats alone")
        except Exception as e:  # noqa: BLE001 - controller away or restarting: the next pulse tries again
            if not self.failed:
                _say(f"a pulse to the controller failed ({e.__class__.__name__}: {e}); retrying")
            self.failed = True


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m slurm_rl.roles.agent", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run-dir", default=os.environ.get("SLURM_RL_RUN_DIR", ""),
                   help="the run's directory (its controller address and keys; the pid file goes under slurm/)")
    p.add_argument("--interval", type=float, default=0.25, help="seconds between pulses")
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- srun ... (the role's step)")
    args = p.parse_args(argv)
    cmd = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not cmd:
        p.error("nothing to run: give the role's command after --")

    run_dir = args.run_dir
    job_id = os.environ.get("SLURM_RL_JOB_ID") or os.environ.get("SLURM_JOB_ID", "")
    pid_file = Path(run_dir or ".") / "slurm" / f"pid-{job_id or os.getpid()}"
    env = dict(os.environ, SLURM_RL_PID_FILE=str(pid_file))
    try:
        child = subprocess.Popen(cmd, env=env)
    except OSError as e:
        print(f"slurm-rl agent: cannot start {cmd[0]}: {e}", file=sys.stderr)
        return 127

    def forward(signum: int, _frame: object) -> None:
        try:
            child.send_signal(signum)
        except ProcessLookupError:
            pass

    for sig in FORWARDED:
        signal.signal(sig, forward)

    reporter = _Reporter(run_dir, job_id) if run_dir and job_id else None
    pid: int | None = None
    while True:
        try:
            rc = child.wait(timeout=args.interval)
            break
        except subprocess.TimeoutExpired:
            pass
        if reporter is None:
            continue
        try:
            if pid is None:
                pid = _read_pid(pid_file)
                if pid is not None:
                    _say(f"watching the role's process {pid} (job {job_id})")
            st = proc_state(pid) if pid is not None else None
            if st is not None and pid is not None:
                reporter.send(pid, st[0], st[1])
        except Exception as e:  # noqa: BLE001 - the agent must outlive any problem of its own: it IS the job
            _say(f"watching stopped ({e.__class__.__name__}: {e}); the role runs on, judged by heartbeats")
            reporter = None
    try:
        pid_file.unlink()
    except OSError:
        pass
    if rc < 0:                       # srun died of a signal: die of the same one
        if -rc not in (signal.SIGKILL, signal.SIGSTOP):      # those two cannot be caught anyway
            signal.signal(-rc, signal.SIG_DFL)
        os.kill(os.getpid(), -rc)
        time.sleep(1)
        return 128 - rc              # a signal whose default is not to terminate: the shell's code
    return rc


if __name__ == "__main__":
    sys.exit(main())
