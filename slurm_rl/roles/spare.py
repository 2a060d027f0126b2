"""Spare: a warm standby. Engine loaded, trainer staged, newest weights held (pulled eagerly), idle
until promoted to rollout (keeps the engine) or trainer (uses the staged trainer)."""

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
