"""The discrete-event model of one run (SimPy): role jobs, faults, the real recovery policy.

What is simulated, in the controller's own terms:
  * slots (trainer/0, rollout/i, spare/i), each holding at most one job; a job sits on nodes;
  * jobs start through PENDING (queue wait) -> STARTING (load) -> READY, then a rollout pulls
    weights and generates, a spare pulls weights and waits, a trainer restores and steps;
  * rollouts feed a bounded buffer of trajectory groups at a constant rate each (a fluid: the
    buffer level is exact between events, so no event per group); the trainer takes one batch
    per step and computes for `step_compute_s`, waiting only when the buffer is short;
  * a step is committed once a non-trainer holder has its weights (`commit_delay_s` after it
    was published) or a checkpoint of it is written;
  * faults (a chaos plan from `slurm_rl.controller.chaos.schedule`, or random node failures) stop
    the jobs they hit; after the detection time the slots are declared DEAD and
    `slurm_rl.controller.policy.decide` -- the real controller's pure decision function -- picks
    the actions (promote a spare, promote a trainer standby, submit a job, full restart, stop),
    which the model applies with the configured times, as the controller applies them with I/O;
  * the run writes the rows the controller's store would hold (steps, faults) and ETTR is
    computed from them by the report's definition (`slurm_rl.sim.metrics`).
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Generator
from typing import Any

import simpy

from slurm_rl.config import ChaosConfig, RecoveryPolicy
from slurm_rl.controller import chaos as chaos_mod
from slurm_rl.sim.blame import split_badput
from slurm_rl.sim.config import ChaosSchedule, NodeFailures, SimConfig
from slurm_rl.sim.faults import Faults
from slurm_rl.sim.jobs import Jobs
from slurm_rl.sim.metrics import Breakdown, ettr_breakdown, replay_between
from slurm_rl.sim.recovery import Recovery
from slurm_rl.sim.results import Badput, BadputSplit, MttrRow, SimResult, Trace
from slurm_rl.sim.trainer import Training
from slurm_rl.states import RoleKind

__all__ = ["Badput", "BadputSplit", "MttrRow", "SimResult", "Trace", "simulate"]


class Run(Jobs, Training, Faults, Recovery):
    """One simulated run: the state (`RunState`) and its mechanisms, one module each."""

    def __init__(self, cfg: SimConfig, policy: RecoveryPolicy, seed: int):
        super().__init__(cfg, policy, seed)
        self.thresholds = self._thresholds()

    def run(self) -> SimResult:
        fail = self.cfg.failures
        horizon = self._horizon_steps()
        if isinstance(fail, ChaosSchedule):
            ccfg = ChaosConfig(enabled=True, mean_interval_steps=fail.mean_interval_steps, kinds=list(fail.kinds),
                               roles=list(fail.roles), start_after_steps=fail.start_after_steps,
                               max_faults=fail.max_faults, seed=self.seed if fail.seed is None else fail.seed)
            self.plan = chaos_mod.schedule(ccfg, horizon)
        elif isinstance(fail, NodeFailures) and fail.per_node_per_day > 0:
            self.env.process(self._node_failures(fail))
        for s in self.slots.values():
            self._submit(s, self.times.queue(s.kind))
        self.env.process(self._guard(self._max_sim_s()))
        self.env.run(until=self.done)
        return self._result()

    def _horizon_steps(self) -> int:
        if self.work.total_steps is not None:
            return self.work.total_steps
        nominal = self.work.nominal_step_s(self.topo.rollout_replicas)
        return int(self.work.duration_s / nominal) * 2 + 100

    def _max_sim_s(self) -> float:
        if self.cfg.max_sim_s is not None:
            return self.cfg.max_sim_s
        # a wall-time run ends at its deadline once the trainer started; this only stops runs that
        # never get going (or a step count that failures keep out of reach)
        if self.work.duration_s is not None:
            return self.work.duration_s + 10 * 86_400.0
        return 50.0 * self.work.total_steps * self.work.nominal_step_s(self.topo.rollout_replicas) + 86_400.0

    def _guard(self, limit: float) -> Generator[simpy.Event, Any, None]:
        yield self.env.timeout(limit)
        self._end(finished=False, reason=f"not finished after {limit:.0f} s of simulated time")


    def _result(self) -> SimResult:
        rows = [self.steps[k] for k in sorted(self.steps)]
        # the report's own arithmetic on the rows its store would hold ...
        rep: Breakdown = ettr_breakdown(rows, self.faults, end=self.t_end, finished=self.finished)
        v1: Breakdown = ettr_breakdown(rows, self.faults, end=self.t_end, finished=self.finished,
                                       startup_wait=False)
        # ... and the same definition with the wall time from the trainer's first batch of data
        # and every rolled-back step counted (a store keeps one row per step number)
        starved: list[tuple[list[tuple[float, float]], float]] = []
        bd: Breakdown = ettr_breakdown(rows, self.faults, end=self.t_end, finished=self.finished,
                                       t_train=self.t_data, starved_out=starved)
        rolled = [r for r in rows if not r.state.kept] + self.replaced
        t0 = self.t_data if self.t_data is not None else 0.0
        replay = replay_between(rolled, t0, t0 + bd.wall_s)
        recovery = max(0.0, bd.wall_s - bd.productive_s - bd.idle_s - replay)
        split = split_badput(kept=[r for r in rows if r.state.kept], rolled=rolled, t0=t0, t_end=t0 + bd.wall_s,
                             recovery_s=recovery, replay_s=replay, idle_s=bd.idle_s, starved=starved,
                             trainer_marks=self.trainer_marks, sync_marks=self.sync_marks)
        restarts = Counter(s.kind for s in self.slots.values() for _ in s.restarts)
        groups: dict[tuple[RoleKind, str], list[float]] = {}
        for f in self.faults:
            if f.recover_s is not None:
                groups.setdefault((f.role, f.kind), []).append(f.recover_s)
        mttr = tuple(MttrRow(role=r, kind=k, count=len(v), mttr_s=sum(v) / len(v))
                     for (r, k), v in sorted(groups.items(), key=lambda kv: (kv[0][0].value, kv[0][1])))
        return SimResult(
            policy=self.policy, seed=self.seed, ettr=bd.ettr, wall_s=bd.wall_s, productive_s=bd.productive_s,
            badput=Badput(recovery_s=recovery, replay_s=replay, idle_s=bd.idle_s),
            as_reported=Badput(recovery_s=rep.recovery_s, replay_s=rep.replay_s, idle_s=rep.idle_s),
            ettr_as_reported=rep.ettr, ettr_as_reported_v1=v1.ettr,
            steps=sum(1 for r in rows if r.state.kept), steps_computed=self.computed, faults=len(self.faults),
            fault_events=self.fault_events, restarts={k: restarts.get(k, 0) for k in RoleKind},
            full_restarts=self.full_restarts, finished=self.finished, end_reason=self.end_reason, mttr=mttr,
            split=split,
            trace=Trace(steps=tuple(rows), replaced=tuple(self.replaced), faults=tuple(self.faults), end=self.t_end,
                        finished=self.finished))


def simulate(config: SimConfig, policy: RecoveryPolicy | str, seed: int = 0, *, keep_trace: bool = False) -> SimResult:
    """Simulate one run of `config` under `policy` ("role-based" or "full-restart") with `seed`.

    Deterministic for a given (config, policy, seed). The failures (chaos plan, or the node-failure
    arrival stream) depend on the seed only, so both policies meet the same faults."""
    run = Run(config, RecoveryPolicy(policy), seed)
    result = run.run()
    return result if keep_trace else dataclasses.replace(result, trace=None)
