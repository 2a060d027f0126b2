"""Faults: random node failures or the chaos plan the controller itself would inject, what each
one stops, and its detection after the configured delay."""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

import simpy

from slurm_rl.sim.config import NodeFailures
from slurm_rl.sim.metrics import FaultRecord
from slurm_rl.sim.state import Job, JobStatus, RunState, Slot
from slurm_rl.states import FaultKind, RoleState

__all__ = ["Faults"]


class Faults(RunState):
    """Failures: what they stop, and their detection."""

    def _open_fault(self, slot: Slot, kind: FaultKind, node: str | None) -> FaultRecord:
        f = FaultRecord(id=len(self.faults) + 1, slot=slot.name, role=slot.kind, kind=kind.value, node=node,
                        injected=True, t_fault=self.env.now)
        self.faults.append(f)
        return f

    def _node_failures(self, fail: NodeFailures) -> Generator[simpy.Event, Any, None]:
        """Node failures at `per_node_per_day` on every node in use (thinning over the run's size)."""
        cap = max(1, self.topo.nodes)
        rate = fail.per_node_per_day / 86_400.0 * cap
        kinds = list(fail.kinds)
        weights = [fail.kinds[k] for k in kinds]
        rng = self.rng_fail
        while True:
            yield self.env.timeout(rng.expovariate(rate))
            # always draw the same numbers per candidate: the failure stream stays policy-independent
            u, pick, kind = rng.random(), rng.random(), rng.choices(kinds, weights)[0]
            occupied = sorted({nd for j in self.jobs if j.present for nd in j.nodes})
            if not occupied or u >= len(occupied) / max(cap, len(occupied)):
                continue
            self._node_fault(occupied[int(pick * len(occupied))], kind, pick)

    def _node_fault(self, node: str, kind: FaultKind, pick: float) -> None:
        hit = [s for s in self.slots.values() if s.job is not None and s.job.present and node in s.job.nodes]
        if not hit:
            return
        if kind is not FaultKind.NODE_DOWN:
            hit = [hit[int(pick * len(hit)) % len(hit)]]        # a process fault hits one role
        self._inject(hit[0], kind, node)

    def _chaos_poll(self) -> None:
        """The controller's _chaos: the next planned fault, once the trainer reached its step."""
        while self.plan_next < len(self.plan) and not self.done.triggered:
            f = self.plan[self.plan_next]
            if self.version < f.at_step or self.env.now < self.restarting_until:
                return
            if self.chaos_due is None and f.at_fraction > 0:
                # the controller's wait: that fraction of a step into the next one
                self.chaos_due = self.env.now + f.at_fraction * self.work.nominal_step_s(self.topo.rollout_replicas)
                self.env.process(self._chaos_later(self.chaos_due))
            if self.chaos_due is not None and self.env.now < self.chaos_due:
                return
            live = sorted((s for s in self.slots.values() if s.kind is f.role and s.state is RoleState.READY
                           and s.job is not None), key=lambda s: s.index)
            if not live:
                return
            target = live[int(f.replica_pick * len(live))]
            self.plan_next += 1
            self.chaos_due = None
            self._inject(target, f.kind, target.job.nodes[0] if target.job else None)

    def _chaos_later(self, due: float):
        yield self.env.timeout(max(0.0, due - self.env.now))
        self._chaos_poll()

    def _inject(self, target: Slot, kind: FaultKind, node: str | None) -> None:
        now = self.env.now
        self.fault_events += 1
        if kind is FaultKind.NODE_DOWN and node is not None:
            victims = [s for s in self.slots.values() if s.job is not None and s.job.present and node in s.job.nodes]
            if target not in victims:
                victims.insert(0, target)
            if self.node_names:
                self.node_down_until[node] = now + self.topo.node_down_s
        else:
            victims = [target]
        if any(s is self.trainer and s.job is not None and s.job.working for s in victims):
            self._mark_trainer("detect")
            # what is committed is fixed now: no holder can pull a version from a dead trainer,
            # and its checkpoint writes in flight never finish
            self._update_commit()
            self.published.clear()
            self._drop_unwritten_checkpoints()
        hit: list[tuple[Slot, Job]] = []
        for s in victims:
            job = s.job
            if job is None:
                continue
            f = self._open_fault(s, kind, node)
            s.pending = f                   # a second fault before detection replaces the first
            s.hit_node = node
            if job.working:
                job.version = self.version      # it pulls nothing more
            if kind is FaultKind.HANG:
                if job.state is JobStatus.RUNNING:
                    job.state = JobStatus.HUNG
            else:
                job.state = JobStatus.GONE
            if s.producing:
                s.producing = False
            hit.append((s, job))
        self._set_rate()
        delay = self.times.detect(target.kind, kind)
        for s, _ in hit:
            s.detect_at = now + delay
        self.env.process(self._detect(hit, delay))

    def _detect(self, hit: list[tuple[Slot, Job]], delay: float) -> Generator[simpy.Event, Any, None]:
        yield self.env.timeout(delay)
        if self.done.triggered:
            return
        dead = [s for s, job in hit if s.job is job and s.state.alive and s.pending is not None]
        if dead:
            self._decide(dead)
