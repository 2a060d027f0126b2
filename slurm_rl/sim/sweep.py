"""Many simulated runs: the ETTR-vs-failure-rate table and the check against a measured benchmark."""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Callable, Sequence
from typing import Any

from slurm_rl.config import RecoveryPolicy
from slurm_rl.sim.config import (
    ChaosSchedule,
    NodeFailures,
    SimConfig,
    cluster_config,
    rate_for_fraction_failing,
)
from slurm_rl.sim.measured import (
    LocalBenchmark,
    MeasuredRun,
    MeasuredTimes,
    local_config,
)
from slurm_rl.sim.model import SimResult, simulate

__all__ = ["DEFAULT_RATES", "Stat", "Table", "TableRow", "ValidationRow", "table", "validate"]

# failures per node per day: from a quiet fleet to a bad week (docs/simulation.md, "Failure rates")
DEFAULT_RATES: tuple[float, ...] = (0.0, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2)
POLICIES = (RecoveryPolicy.ROLE_BASED, RecoveryPolicy.FULL_RESTART)


@dataclasses.dataclass(kw_only=True, slots=True, frozen=True)
class Stat:
    """Mean and sample standard deviation over trials."""

    mean: float
    std: float
    n: int

    @classmethod
    def of(cls, xs: Sequence[float]) -> Stat:
        return cls(mean=statistics.fmean(xs), std=statistics.stdev(xs) if len(xs) > 1 else 0.0, n=len(xs))

    def fmt(self, digits: int = 3) -> str:
        return f"{self.mean:.{digits}f}" + (f" ± {self.std:.{digits}f}" if self.n > 1 else "")

    def to_dict(self, digits: int = 4) -> dict[str, float | int]:
        return {"mean": round(self.mean, digits), "std": round(self.std, digits), "n": self.n}


@dataclasses.dataclass(kw_only=True, slots=True, frozen=True)
class TableRow:
    label: str                     # how the rate was chosen ("0.05/node/day", "10% of nodes fail")
    per_node_per_day: float
    policy: RecoveryPolicy
    spares: int
    ettr: Stat
    recovery_s: Stat
    replay_s: Stat
    idle_s: Stat
    faults: Stat
    full_restarts: Stat

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, "per_node_per_day": round(self.per_node_per_day, 6),
                "policy": self.policy.value, "spares": self.spares, "ettr": self.ettr.to_dict(),
                "badput_s": {"recovery": self.recovery_s.to_dict(1), "replay": self.replay_s.to_dict(1),
                             "idle": self.idle_s.to_dict(1)},
                "faults": self.faults.to_dict(2), "full_restarts": self.full_restarts.to_dict(2)}


@dataclasses.dataclass(kw_only=True, slots=True, frozen=True)
class Table:
    rows: tuple[TableRow, ...]
    gpus: int                      # working GPUs (trainer + rollouts)
    nodes: int                     # nodes without spares
    days: float | None
    trials: int
    seed: int

    def cell(self, label: str, policy: RecoveryPolicy, spares: int) -> TableRow:
        return next(r for r in self.rows if r.label == label and r.policy is policy and r.spares == spares)

    @property
    def labels(self) -> list[str]:
        out: list[str] = []
        for r in self.rows:
            if r.label not in out:
                out.append(r.label)
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"gpus": self.gpus, "nodes": self.nodes, "days": self.days, "trials": self.trials, "seed": self.seed,
                "rows": [r.to_dict() for r in self.rows]}


def _runs(cfg: SimConfig, policy: RecoveryPolicy, seeds: Sequence[int]) -> list[SimResult]:
    return [simulate(cfg, policy, s) for s in seeds]


def _row(label: str, rate: float, policy: RecoveryPolicy, spares: int, res: list[SimResult]) -> TableRow:
    return TableRow(label=label, per_node_per_day=rate, policy=policy, spares=spares,
                    ettr=Stat.of([r.ettr for r in res]), recovery_s=Stat.of([r.badput.recovery_s for r in res]),
                    replay_s=Stat.of([r.badput.replay_s for r in res]), idle_s=Stat.of([r.badput.idle_s for r in res]),
                    faults=Stat.of([float(r.faults) for r in res]),
                    full_restarts=Stat.of([float(r.full_restarts) for r in res]))


def table(base: SimConfig | None = None, *, rates: Sequence[float] = DEFAULT_RATES,
          fraction_failing: float | None = 0.10, spares: Sequence[int] = (0, 2),
          policies: Sequence[RecoveryPolicy | str] = POLICIES, trials: int = 5, seed: int = 0,
          progress: Callable[[int, int], None] | None = None) -> Table:
    """ETTR vs per-node failure rate, for each policy and spare count, mean ± std over `trials` seeds.

    `base` gives everything but the failure rate and the spare count (default `cluster_config()`);
    it must run for a wall time (`work.duration_s`), which the "fraction of nodes failing" row needs.
    Every cell uses the seeds seed .. seed+trials-1, so policies and spare counts meet the same
    failure streams."""
    base = base or cluster_config()
    if trials < 1:
        raise ValueError("trials must be at least 1")
    labels: list[tuple[str, float]] = [(f"{r:g}/node/day", r) for r in rates]
    if fraction_failing is not None:
        if base.work.duration_s is None:
            raise ValueError("a 'fraction of nodes failing' row needs a run of fixed wall time (work.duration_s)")
        labels.append((f"{fraction_failing:.0%} of nodes fail",
                       rate_for_fraction_failing(fraction_failing, base.work.duration_s)))
    seeds = list(range(seed, seed + trials))
    rows: list[TableRow] = []
    kinds = base.failures.kinds if isinstance(base.failures, NodeFailures) else None
    total = len(labels) * len(spares) * len(policies)
    done = 0
    for label, rate in labels:
        for n_sp in spares:
            for p in policies:
                policy = RecoveryPolicy(p)
                fail = None
                if rate > 0:
                    fail = NodeFailures(per_node_per_day=rate, **({"kinds": kinds} if kinds else {}))
                cfg = base.replace(topology=dataclasses.replace(base.topology, spare_replicas=n_sp), failures=fail)
                rows.append(_row(label, rate, policy, n_sp, _runs(cfg, policy, seeds)))
                done += 1
                if progress is not None:
                    progress(done, total)
    days = base.work.duration_s / 86_400.0 if base.work.duration_s is not None else None
    topo = base.topology
    return Table(rows=tuple(rows), gpus=topo.working_gpus,
                 nodes=topo.trainer_nodes + topo.rollout_replicas * topo.rollout_nodes, days=days, trials=trials,
                 seed=seed)


@dataclasses.dataclass(kw_only=True, slots=True, frozen=True)
class ValidationRow:
    """Simulated vs measured, one policy of one benchmark pair."""

    policy: RecoveryPolicy
    measured: MeasuredRun
    sim: SimResult                 # on the measured run's own fault schedule (its chaos seed)
    spread: Stat | None            # ETTR over `trials` other schedules, when asked for

    @property
    def diff(self) -> float:
        return self.sim_ettr - self.measured.ettr

    @property
    def sim_ettr(self) -> float:
        """Like for like: the ETTR a report of the simulated run would print, by the measured report's
        own definition (schema 1 began the wall time at the trainer's first request for data)."""
        return self.sim.ettr_as_reported if self.measured.schema >= 2 else self.sim.ettr_as_reported_v1

    def within(self, tol: float = 0.05) -> bool:
        return abs(self.diff) <= tol

    def to_dict(self) -> dict[str, Any]:
        m, s = self.measured, self.sim
        return {"policy": self.policy.value,
                "measured": {"ettr": m.ettr, "wall_s": m.wall_s, "steps": m.steps, "faults": m.faults,
                             "found_faults": m.found, "full_restarts": m.full_restarts, "state": m.state,
                             "badput_s": {"recovery+replay": round(m.recovery_s + m.replay_s, 3),
                                          "idle": round(m.idle_s, 3)}},
                "simulated": {"ettr": round(self.sim_ettr, 4), "wall_s": round(s.wall_s, 3), "steps": s.steps,
                              "faults": s.faults, "full_restarts": s.full_restarts, "finished": s.finished,
                              "badput_s": {"recovery+replay": round(s.as_reported.recovery_s
                                                                    + s.as_reported.replay_s, 3),
                                           "idle": round(s.as_reported.idle_s, 3)}},
                "diff": round(self.diff, 4), "within_0.05": self.within(),
                "spread": self.spread.to_dict() if self.spread is not None else None}


def validate(measured: MeasuredTimes, bench: LocalBenchmark | None = None, *, trials: int = 1,
             seed: int | None = None) -> list[ValidationRow]:
    """Simulate the measured benchmark under both policies and put the results beside the measured.

    The main comparison replays the benchmark's own fault plan (its chaos seed). With trials > 1,
    `spread` adds the ETTR over `trials` other plans (seeds seed .. seed+trials-1): how much a
    single measured run can be expected to vary with the schedule alone."""
    bench = bench or LocalBenchmark()
    rows = []
    for policy, run in ((RecoveryPolicy.ROLE_BASED, measured.role_based),
                        (RecoveryPolicy.FULL_RESTART, measured.full_restart)):
        cfg = local_config(measured, bench, policy=policy)
        own_seed = bench.chaos.seed if bench.chaos.seed is not None else 0
        sim = simulate(cfg, policy, own_seed)
        spread = None
        if trials > 1:
            first = (own_seed + 1) if seed is None else seed
            res = []
            for s in range(first, first + trials):
                c = cfg.replace(failures=dataclasses.replace(bench.chaos, seed=s)) \
                    if isinstance(cfg.failures, ChaosSchedule) else cfg
                res.append(simulate(c, policy, s).ettr_as_reported)
            spread = Stat.of(res)
        rows.append(ValidationRow(policy=policy, measured=run, sim=sim, spread=spread))
    return rows
