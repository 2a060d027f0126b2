"""Recovery: the policy's View of the run, `policy.decide` (the controller's own pure function),
and the application of its actions (promotions, submissions, full restarts)."""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

import simpy

from slurm_rl.config import RecoveryPolicy
from slurm_rl.controller import policy as pol
from slurm_rl.sim.config import Standby
from slurm_rl.sim.state import Job, JobStatus, RunState, Slot
from slurm_rl.states import JobState, Phase, RoleKind, RoleState

__all__ = ["Recovery"]


class Recovery(RunState):
    """The controller's decisions (policy.decide) and how the model applies each action."""

    def _thresholds(self) -> pol.Thresholds:
        r = self.cfg.rules
        return pol.Thresholds(
            suspect_after_s=1.0, hang_after_s=10.0, phase_timeouts={}, restart_budget=r.restart_budget,
            exclude_node_after=r.exclude_node_after,
            max_full_restarts=r.max_full_restarts if r.max_full_restarts is not None else 1 << 62,
            standby=self._standby().value, full_restart_policy=self.policy is RecoveryPolicy.FULL_RESTART,
            spare_replicas=self.topo.spare_replicas)

    def _standby(self) -> Standby:
        """The configured standby rule, narrowed to standbys with enough nodes to host the trainer."""
        want = self.cfg.rules.standby
        spare_ok = self.topo.spare_size >= self.topo.trainer_nodes
        rollout_ok = self.topo.rollout_nodes >= self.topo.trainer_nodes
        if want is Standby.NONE or not (spare_ok or rollout_ok):
            return Standby.NONE
        if want is Standby.SPARE_ONLY:
            return Standby.SPARE_ONLY if spare_ok else Standby.NONE
        return Standby.SPARE_THEN_ROLLOUT if rollout_ok else Standby.SPARE_ONLY

    def _hide_spares_from_trainer(self) -> bool:
        """Spares too small for the trainer, while rollouts are big enough (policy takes spares first)."""
        return (self._standby() is Standby.SPARE_THEN_ROLLOUT
                and self.topo.spare_size < self.topo.trainer_nodes <= self.topo.rollout_nodes)

    def _view(self, dead: list[Slot]) -> pol.View:
        now = self.env.now
        window = self.cfg.rules.budget_window_s
        hide_spares = self.trainer in dead and self._hide_spares_from_trainer()
        views = []
        for s in self.slots.values():
            is_dead = s in dead
            state = s.state
            if hide_spares and s.kind is RoleKind.SPARE and state is RoleState.READY:
                state = RoleState.STARTING      # too small to host the trainer: not a standby now
            node = s.hit_node if is_dead else (s.job.nodes[0] if s.job is not None else None)
            connected = state in (RoleState.STARTING, RoleState.READY)
            views.append(pol.SlotView(
                kind=s.kind, index=s.index, state=state, incarnation=s.incarnation,
                job_id=str(s.job.id) if s.job is not None else None, node=node, connected=connected,
                phase=Phase.IDLE, last_hb=now if connected else None, progress_at=now if connected else None,
                job_state=(JobState.FAILED if is_dead else (JobState.RUNNING if s.job is not None else None)),
                # a standby that stopped working (undetected) lags: the policy prefers the newest
                version=-1 if not connected or s.job is None else
                (self.version if s.job.version is None else min(s.job.version, self.version)),
                restarts_in_window=sum(1 for t in s.restarts if now - t < window),
                starting_since=s.submitted_at if s.submitted_inc == s.incarnation
                and s.state in (RoleState.PENDING, RoleState.STARTING) else None, reserved_for=s.reserved_for))
        self._update_commit()
        return pol.View(slots=views, thresholds=self.thresholds, committed_version=self.committed,
                        full_restarts=self.full_restarts, node_failures=dict(self.node_failures),
                        excluded_nodes=frozenset(self.excluded),
                        start_s=self.start_times.estimates() if self.cfg.rules.weigh_start_times else {})

    def _decide(self, dead: list[Slot]) -> None:
        actions = pol.decide(self.env.now, self._view(dead))
        # roles found dead together are gone before anyone restores from them
        self.dying = {a.slot for a in actions if isinstance(a, pol.Dead)}
        for a in actions:
            self._apply(a)
            if self.done.triggered:
                break
        self.dying = set()
        self._prune_jobs()

    def _apply(self, a: pol.Action) -> None:
        if isinstance(a, pol.Dead):
            self._dead(self.slots[a.slot])
        elif isinstance(a, pol.ExcludeNode):
            self.excluded.add(a.node)
        elif isinstance(a, pol.PromoteSpare):
            self._promote(self.slots[a.spare], self.slots[a.target], awaited=a.awaited)
        elif isinstance(a, pol.AwaitSpare):
            self.slots[a.spare].reserved_for = a.target
            f = self.slots[a.target].fault
            if f is not None:
                f.action = f"await {a.spare}"
        elif isinstance(a, pol.PromoteTrainer):
            self._promote(self.slots[a.standby], self.trainer)
        elif isinstance(a, pol.Submit):
            s = self.slots[a.slot]
            self._submit(s, self._jitter(self.times.queue(s.kind)), a.exclude)
        elif isinstance(a, pol.FullRestart):
            self._full_restart()
        elif isinstance(a, pol.StopRun):
            self._end(finished=False, reason=a.reason)
        # Suspect/Probe/Clear/moves never arise: the model declares deaths with a terminal job state

    def _dead(self, s: Slot) -> None:
        now = self.env.now
        s.state = RoleState.DEAD
        s.restarts.append(now)
        f = s.pending
        s.pending = None
        if f is not None:
            f.t_detect = f.t_decide = now
        if s.job is not None:
            s.job.state = JobStatus.GONE       # the controller cancels the job of a dead role
        s.producing = s.synced = s.syncing = False
        s.fault = f
        s.reserved_for = None
        if s.kind is RoleKind.TRAINER:
            self._mark_trainer("schedule")
            self._trainer_lost()
        self._set_rate()

    def _promote(self, standby: Slot, target: Slot, *, awaited: bool = False) -> None:
        """A standby's live job takes over the target slot (controller: _promote)."""
        now = self.env.now
        job = standby.job
        standby.reserved_for = None
        standby.state = RoleState.STOPPED
        standby.job = None
        standby.producing = standby.synced = standby.syncing = False
        if standby.pending is not None and job is not None:
            # it failed but is not declared yet (a READY standby looks fine to the policy): the
            # failure follows the job, and the controller finds it dead in its new slot
            target.pending, target.hit_node = standby.pending, standby.hit_node
            standby.pending = None
            self.env.process(self._detect([(target, job)], max(0.0, standby.detect_at - now)))
        target.incarnation += 1
        target.job = job
        target.state = RoleState.STARTING
        target.producing = target.synced = target.syncing = False
        if target.kind is RoleKind.TRAINER:
            self._mark_trainer("load")
        if target.fault is not None:
            if not awaited:
                target.fault.t_decide = now
            target.fault.t_scheduled = now
            target.fault.action = f"promote {standby.name}"
        self._set_rate()
        self.env.process(self._take_over(target, target.incarnation, job, standby.kind))

    def _take_over(self, slot: Slot, inc: int, job: Job | None,
                   was: RoleKind) -> Generator[simpy.Event, Any, None]:
        took = self.times.promote(was if was is RoleKind.TRAINER_SPARE else slot.kind)
        if slot.kind is RoleKind.TRAINER:
            took += self._restore_time(cold=False)
            if was is RoleKind.TRAINER_SPARE and self.version > 0:
                took += self.times.weights_from_holder_s     # it holds no weights: its ranks pull their shards
        yield self.env.timeout(took)
        if self._stale(slot, inc, job):
            return
        self._ready(slot)
        if slot.kind is RoleKind.TRAINER:
            self.env.process(self._trainer_loop(slot, inc, job))
        else:
            self._synced(slot)              # a warm standby already holds the newest weights

    def _full_restart(self) -> None:
        """Every job stops; the run restarts from the newest checkpoint (controller: _full_restart)."""
        now = self.env.now
        self.full_restarts += 1
        self._update_commit()
        self._drop_unwritten_checkpoints()
        ck = max((st for st, _ in self.checkpoints), default=0)
        self._rollback(ck)
        self.batch_in_hand = False          # its groups are dropped and generated again
        self.committed = ck
        self._drop_unwritten_checkpoints(upto=ck)
        open_faults = [f for s in self.slots.values() for f in (s.fault, s.pending) if f is not None]
        for f in open_faults:
            f.t_decide = now
            f.action = "full restart"
        self.restart_faults.extend(open_faults)
        queue = self.times.teardown_s + self._jitter(self.times.full_queue_s)
        for s in self.slots.values():
            if s.job is not None:
                s.job.state = JobStatus.GONE
            s.job = None
            s.fault = None
            s.pending = None
            s.producing = s.synced = s.syncing = False
        self._set_rate()
        for s in self.slots.values():
            self._submit(s, queue)
        # the controller takes no decisions (and injects nothing) for 2 s while old jobs go
        self.restarting_until = now + 2.0
