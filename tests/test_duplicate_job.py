"""One process per identity: a second job that says hello as a slot's current incarnation (an
sbatch that timed out but went through, then was retried) is told to leave and cancelled; the
slot's own process goes on undisturbed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests import runs

REPO = Path(__file__).resolve().parents[1]


def test_a_second_job_under_one_identity_is_sent_away(tmp_path: Path) -> None:
    run = runs.launch(tmp_path, "algorithm.steps=100000", "spare.replicas=0")
    try:
        runs.wait_ready(run)
        slot = runs.role(run, "rollout/0")
        env = {**os.environ, "SLURM_RL_JOB_ID": "dup-1", "SLURM_RL_NODE": "node-x",
               "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
        for k in ("SLURM_RL_PID_FILE", "SLURM_RL_EXIT_FILE"):
            env.pop(k, None)
        dup = subprocess.run([sys.executable, "-m", "slurm_rl.roles.worker", str(run.path), "rollout", "0",
                              "--incarnation", str(slot["incarnation"])], env=env, capture_output=True, text=True,
                             timeout=120)
        assert dup.returncode == 0, dup.stderr[-2000:]
        assert "is not rollout/0's job" in dup.stderr
        ev = runs.events(run, "duplicate_job")
        assert len(ev) == 1 and "dup-1" in ev[0]["msg"]
        # the real rollout/0 kept its job, its incarnation and its life
        after = runs.role(run, "rollout/0")
        assert after["job_id"] == slot["job_id"] and after["incarnation"] == slot["incarnation"]
        assert not runs.slot_events(run, "dead", "rollout/0")
        c = runs.committed(run)
        runs.wait_for(lambda: runs.committed(run) >= c + 2, 120, "training to go on", run)
    finally:
        runs.cleanup(run)
