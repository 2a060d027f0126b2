"""Chaos schedule: seeded, the same for both policies, and faults land anywhere inside a step."""

from __future__ import annotations

import statistics

from slurm_rl.config import ChaosConfig
from slurm_rl.controller import chaos
from slurm_rl.states import FaultKind, RoleKind


def plan(seed: int = 0, every: float = 10.0, steps: int = 2000) -> list[chaos.PlannedFault]:
    return chaos.schedule(ChaosConfig(enabled=True, mean_interval_steps=every, seed=seed, start_after_steps=5), steps)


def test_same_seed_same_plan_other_seed_other_plan() -> None:
    assert plan(3) == plan(3)
    assert plan(3) != plan(4)


def test_faults_arrive_at_the_configured_mean_interval() -> None:
    p = plan(every=10.0, steps=20_000)
    gaps = [b.at_step + b.at_fraction - (a.at_step + a.at_fraction) for a, b in zip(p, p[1:], strict=False)]
    assert 9.0 < statistics.mean(gaps) < 11.0
    assert all(f.at_step >= 5 and f.at_step < 20_000 for f in p)


def test_faults_land_anywhere_inside_a_step_not_at_its_boundary() -> None:
    # A fault right after a step is published is the one moment the step exists only on the
    # trainer; a schedule that always fired there would overstate what a trainer fault costs.
    fr = [f.at_fraction for f in plan(steps=20_000)]
    assert all(0.0 <= x < 1.0 for x in fr)
    assert 0.4 < statistics.mean(fr) < 0.6
    assert sum(x < 0.1 for x in fr) < len(fr) * 0.2


def test_kinds_and_roles_come_from_the_config() -> None:
    cfg = ChaosConfig(enabled=True, mean_interval_steps=3, seed=1, kinds=["hang"], roles=["rollout"])
    p = chaos.schedule(cfg, 300)
    assert p and {f.kind for f in p} == {FaultKind.HANG} and {f.role for f in p} == {RoleKind.ROLLOUT}
