"""Chaos mode: inject faults at a configured mean interval (in trainer steps), reproducibly.

The schedule is a pure function of the seed: fault i happens after an exponential number of
steps (mean `mean_interval_steps`), on a role kind and fault kind drawn from the configured
lists. The exponential gap is continuous: fault i lands in trainer step `at_step + 1`, a fraction
`at_fraction` of the way through it (the controller waits that fraction of the recent step time
after step `at_step` is done), so faults hit every moment of a step alike, as real ones do, and not
always right after a step was published (the one moment its weights exist only on the trainer).
Two runs with the same seed and config see the same schedule, whatever the recovery
policy, so role-based and full-restart runs are compared on the same faults.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from slurm_rl.config import ChaosConfig
from slurm_rl.states import FaultKind, RoleKind


@dataclass(frozen=True)
class PlannedFault:
    at_step: int
    role: RoleKind
    replica_pick: float       # in [0, 1): which live replica of that role (by sorted index)
    kind: FaultKind
    at_fraction: float = 0.0  # in [0, 1): how far into the next step, in units of the step time


def schedule(cfg: ChaosConfig, total_steps: int) -> list[PlannedFault]:
    """The whole fault plan for a run of `total_steps` trainer steps."""
    rng = random.Random(cfg.seed)
    out: list[PlannedFault] = []
    step = float(cfg.start_after_steps)
    while True:
        step += rng.expovariate(1.0 / cfg.mean_interval_steps)
        at = int(step)
        if at >= total_steps:
            break
        if cfg.max_faults is not None and len(out) >= cfg.max_faults:
            break
        out.append(PlannedFault(at_step=max(at, cfg.start_after_steps), role=rng.choice(cfg.roles),
                                replica_pick=rng.random(), kind=rng.choice(cfg.kinds),
                                at_fraction=step - at))
    return out
