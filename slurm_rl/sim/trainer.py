"""The trainer: its step loop against the buffer, what is committed, checkpoints, and the rollback
when it dies (the controller's _trainer_lost and _restore_point)."""

from __future__ import annotations

from collections import deque
from collections.abc import Generator
from typing import Any

import simpy

from slurm_rl.sim.metrics import StepRecord, StepState
from slurm_rl.sim.state import NEVER, Job, RunState, Slot
from slurm_rl.states import RoleKind, RoleState

__all__ = ["Training"]


class Training(RunState):
    """The trainer's steps, the committed step, checkpoints, rollbacks."""

    def _trainer_loop(self, slot: Slot, inc: int, job: Job) -> Generator[simpy.Event, Any, None]:
        env = self.env
        me = env.active_process
        name = f"trainer/0#{inc}"
        total = self.work.total_steps
        G = self.G
        compute = self.work.step_compute_s
        if self.t_train is None:
            self.t_train = env.now
            if self.work.duration_s is not None:
                env.process(self._deadline(self.work.duration_s))
        self._mark_trainer("work")
        while True:
            if (total is not None and self.version >= total) or self._stale(slot, inc, job):
                return
            t_wait0 = env.now
            while True:
                dt = self.buf.time_to(env.now, G)
                if dt <= 0.0:
                    break
                self.waiter = me
                try:
                    yield env.timeout(dt) if dt != NEVER else env.event()
                except simpy.Interrupt:
                    pass
                if self.waiter is me:
                    self.waiter = None
                if self._stale(slot, inc, job):
                    return
            self.buf.take(env.now, G)
            if self.t_data is None:
                self.t_data = env.now
            self.batch_in_hand = True
            t0 = env.now
            yield env.timeout(compute)
            if self._stale(slot, inc, job):
                return
            self.batch_in_hand = False
            self._step_done(name, t_wait0, t0)

    def _deadline(self, duration: float) -> Generator[simpy.Event, Any, None]:
        yield self.env.timeout(duration)
        self._end(finished=False, reason=f"wall time of {duration:.0f} s reached")

    def _step_done(self, name: str, t_wait0: float, t0: float) -> None:
        now = self.env.now
        self.version += 1
        v = self.version
        self.computed += 1
        old = self.steps.get(v)
        if old is not None:
            self.replaced.append(old)
        self.steps[v] = StepRecord(step=v, trainer=name, t_start=t_wait0, t_end=now, wait_s=t0 - t_wait0)
        self.published.append((v, now))
        if v % self.work.checkpoint_every == 0 or v == self.work.total_steps:
            self.checkpoints.append((v, now + self.work.checkpoint_write_s))
        if self.trainer.fault is not None:
            self.trainer.fault.t_recovered = now
            self.trainer.fault = None
        if self.restart_faults:
            for f in self.restart_faults:
                f.t_recovered = now
            self.restart_faults = []
        if self.work.total_steps is not None and v >= self.work.total_steps:
            self._end(finished=True, reason=f"finished {v} steps")
            return
        self._chaos_poll()

    def _update_commit(self) -> None:
        """Steps a non-trainer holder (or a written checkpoint) has by now are committed."""
        now = self.env.now
        delay = self.work.commit_delay_s
        while self.published and self.published[0][1] + delay <= now:
            v = self.published.popleft()[0]
            self.committed = max(self.committed, min(v, self.version))
        for step, t in self.checkpoints:
            if t <= now:
                self.committed = max(self.committed, min(step, self.version))

    def _rollback(self, to: int) -> int:
        """Undo steps after `to`; returns how many."""
        n = 0
        for v in range(to + 1, self.version + 1):
            rec = self.steps.get(v)
            if rec is not None and rec.state.kept:
                rec.state = StepState.ROLLED_BACK
                n += 1
        self.version = to
        self.committed = min(self.committed, to)
        self.published = deque((v, t) for v, t in self.published if v <= to)
        return n

    def _drop_unwritten_checkpoints(self, upto: int | None = None) -> None:
        """A dying trainer's checkpoint writes never finish; checkpoints past a restart point are gone."""
        now = self.env.now
        self.checkpoints = [(s, t) for s, t in self.checkpoints if t <= now and (upto is None or s <= upto)]

    def _restore_point(self) -> int:
        """The controller's _restore_point: the committed step, unless every holder of it died too
        (then the newest checkpoint). A live, ready non-trainer role is taken to hold the committed
        version: the first holder to pull a version is what commits it, and the rest follow."""
        held = any(s.kind is not RoleKind.TRAINER and s.state is RoleState.READY and s.job is not None
                   and s.job.present and s.name not in self.dying for s in self.slots.values())
        if held:
            return self.committed
        return min(self.committed, max((st for st, _ in self.checkpoints), default=0))

    def _restore_time(self, *, cold: bool) -> float:
        """A trainer's restore past its start: optimizer state from the checkpoint and, for a cold
        start, its weights (pulled from a live holder, else read from the checkpoint). Step 0 has
        nothing to restore; a promoted standby already holds the weights."""
        if self.version <= 0:
            return 0.0
        if not cold:
            return self.times.restore_s
        held = any(s.kind is not RoleKind.TRAINER and s.synced and s.job is not None and s.job.working
                   for s in self.slots.values())
        return self.times.restore_s + (self.times.weights_from_holder_s if held
                                       else self.times.weights_from_checkpoint_s)

    def _trainer_lost(self) -> None:
        """The controller's _trainer_lost: roll back to the newest restorable committed step."""
        self._update_commit()
        self._drop_unwritten_checkpoints()
        self.committed = self._restore_point()
        n = self._rollback(self.committed)
        # the rolled-back steps' groups, and a batch the dead trainer was working on, go back to
        # the queue (the store requeues them)
        n += self.batch_in_hand
        self.batch_in_hand = False
        if n:
            self.buf.add(self.env.now, n * self.G)
        # the lineage forks at the committed step: rollouts pull it again before generating
        for s in self.slots.values():
            if s.kind is RoleKind.ROLLOUT and s.producing and s.job is not None:
                s.producing = False
                self.env.process(self._resync(s, s.incarnation, s.job))
        self._set_rate()
