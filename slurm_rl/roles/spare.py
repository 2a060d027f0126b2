"""Spares, the warm standbys. A spare: engine loaded, trainer staged, newest weights held (pulled
eagerly), idle until promoted to rollout (keeps the engine) or trainer (uses the staged trainer).
A trainer-shaped spare (spare.trainer_nodes) of a one-process trainer: no engine, the trainer built
on its own device, idle until promoted to trainer (the multi-rank one is
roles.trainer_ranks.stand_by)."""

from __future__ import annotations

import time

from slurm_rl import protocol as P
from slurm_rl.roles.host import RoleHost
from slurm_rl.roles.runtime import RoleRuntime
from slurm_rl.states import Phase


def run_spare(rt: RoleRuntime, host: RoleHost) -> P.Command | None:
    host.ensure_engine()
    rt.set_phase(Phase.LOADING, "staging the trainer")
    host.stage_trainer()
    rt.set_phase(Phase.IDLE, "standby")
    while True:
        cmd = rt.next_command()
        if cmd is not None:
            if cmd.op == "stop":
                return None
            if cmd.op == "become":
                return cmd
        if rt.needs_sync():
            rt.sync_newest(host.apply_weights)
            rt.set_phase(Phase.IDLE, "standby")
        time.sleep(0.05)


def run_trainer_spare(rt: RoleRuntime, host: RoleHost) -> P.Command | None:
    rt.set_phase(Phase.LOADING, "building the trainer")
    host.stage_trainer(own_device=True)
    rt.set_phase(Phase.IDLE, "standby (trainer-shaped)")
    cmd = rt.wait_command("stop", "become")
    return None if cmd.op == "stop" else cmd
