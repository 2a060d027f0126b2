"""`python -m slurm_rl.roles.ranks --ntasks N --tasks-per-node R --nodes a,b -- COMMAND...`: what
srun does for a multi-rank job on Slurm, for the local backend. Starts N copies of COMMAND with
SLURM_RL_RANK / SLURM_RL_WORLD_SIZE / SLURM_RL_LOCAL_RANK / SLURM_RL_NODE set, and when one ends
badly (non-zero or a signal) kills the others and ends the same way (srun --kill-on-bad-exit):
a multi-rank trainer lives and dies as one job."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m slurm_rl.roles.ranks")
    p.add_argument("--ntasks", type=int, required=True)
    p.add_argument("--tasks-per-node", type=int, default=1)
    p.add_argument("--nodes", default="", help="comma-separated node names, one per group of tasks-per-node ranks")
    p.add_argument("command", nargs=argparse.REMAINDER)
    a = p.parse_args(argv)
    cmd = a.command[1:] if a.command and a.command[0] == "--" else a.command
    if not cmd or a.ntasks < 1 or a.tasks_per_node < 1:
        p.error("need --ntasks >= 1, --tasks-per-node >= 1 and a command after --")
    nodes = [n for n in a.nodes.split(",") if n]
    procs = []
    for r in range(a.ntasks):
        env = dict(os.environ, SLURM_RL_RANK=str(r), SLURM_RL_WORLD_SIZE=str(a.ntasks),
                   SLURM_RL_LOCAL_RANK=str(r % a.tasks_per_node))
        if nodes:
            env["SLURM_RL_NODE"] = nodes[min(r // a.tasks_per_node, len(nodes) - 1)]
        procs.append(subprocess.Popen(cmd, env=env))
    # the job is cancelled with SIGTERM to its process group, which reaches every rank already
    signal.signal(signal.SIGTERM, lambda *_: None)
    while True:
        codes = [pr.poll() for pr in procs]
        bad = next((c for c in codes if c not in (None, 0)), None)
        if bad is not None or all(c == 0 for c in codes):
            break
        time.sleep(0.05)
    if bad is None:
        return 0
    for pr in procs:
        if pr.poll() is None:
            pr.kill()
    for pr in procs:
        pr.wait()
    if bad < 0:                        # died of a signal: so does the job, as Slurm would report it
        if -bad not in (signal.SIGKILL, signal.SIGSTOP):
            signal.signal(-bad, signal.SIG_DFL)
        os.kill(os.getpid(), -bad)
    return bad


if __name__ == "__main__":
    sys.exit(main())
