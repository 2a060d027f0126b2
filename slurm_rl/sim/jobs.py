"""Jobs: where a new job lands, how it starts (queue, load, restore, weight pull), and the
rollouts' generation rate that follows from who is producing."""

from __future__ import annotations

from collections import Counter
from collections.abc import Generator
from typing import Any

import simpy

from slurm_rl.sim.state import Job, RunState, Slot
from slurm_rl.states import RoleKind, RoleState

__all__ = ["Jobs"]


class Jobs(RunState):
    """Placement, the start of a new job (queue -> load -> ready -> weights), the generation rate."""

    def _jitter(self, mean: float) -> float:
        cv = self.times.queue_cv
        if mean <= 0 or cv <= 0:
            return mean
        k = 1.0 / (cv * cv)
        return self.rng_time.gammavariate(k, mean / k)

    def _new_job(self, nodes: tuple[str, ...]) -> Job:
        self._job_ids += 1
        job = Job(id=self._job_ids, nodes=nodes)
        self.jobs.append(job)
        return job

    def _fresh_nodes(self, n: int) -> tuple[str, ...]:
        base = self._job_ids + 1
        return tuple(f"n{base}.{i}" for i in range(n))

    def _pick_nodes(self, n: int, avoid: set[str]) -> tuple[str, ...]:
        """The local backend's placement: least-loaded healthy nodes not avoided, else the least bad."""
        now = self.env.now
        load = Counter(nd for j in self.jobs if j.present for nd in j.nodes)
        up = [nd for nd in self.node_names if self.node_down_until.get(nd, -1.0) <= now]
        ok = [nd for nd in up if nd not in avoid] or up or list(self.node_names)
        ranked = sorted(ok, key=lambda nd: (load.get(nd, 0), self.node_names.index(nd)))
        return tuple((ranked * n)[:n])

    def _prune_jobs(self) -> None:
        if len(self.jobs) > 4 * len(self.slots) + 16:
            self.jobs = [j for j in self.jobs if j.present]

    def _set_rate(self) -> None:
        n = sum(1 for s in self.slots.values() if s.producing)
        rate = n * self.work.rollout_groups_per_s
        waiting = n == 0 and any(s.syncing and s.job is not None and s.job.working for s in self.slots.values())
        if not self.sync_marks or self.sync_marks[-1][1] != waiting:
            self.sync_marks.append((self.env.now, waiting))
        if rate != self.buf.rate:
            self.buf.set_rate(self.env.now, rate)
            w = self.waiter
            if w is not None and w.is_alive and w is not self.env.active_process:
                w.interrupt("data")

    def _submit(self, slot: Slot, queue_s: float, exclude: tuple[str, ...] = ()) -> None:
        """A new job for the slot (next incarnation): queue, load, then the role's own start."""
        slot.incarnation += 1
        slot.state = RoleState.PENDING
        slot.producing = slot.synced = slot.syncing = False
        slot.exclude = exclude
        slot.submitted_at, slot.submitted_inc = self.env.now, slot.incarnation
        job: Job | None = None
        if self.node_names:
            # the local backend starts the process at once, on a node chosen now
            job = self._new_job(self._pick_nodes(self.topo.nodes_of(slot.kind), set(exclude) | self.excluded))
        slot.job = job
        if slot.fault is not None and slot.fault.action != "full restart":
            slot.fault.action = f"submit {slot.name}"
        if slot.kind is RoleKind.TRAINER:
            self._mark_trainer("schedule")
        self.env.process(self._start(slot, slot.incarnation, job, queue_s))

    def _start(self, slot: Slot, inc: int, job: Job | None, queue_s: float) -> Generator[simpy.Event, Any, None]:
        yield self.env.timeout(queue_s)
        if slot.incarnation != inc or self.done.triggered:
            return
        if job is None:                     # a cluster: the job runs on fresh nodes once it leaves the queue
            job = self._new_job(self._fresh_nodes(self.topo.nodes_of(slot.kind)))
            slot.job = job
        elif not job.working:
            return                          # its node failed while it was starting
        slot.state = RoleState.STARTING
        if slot.fault is not None:
            slot.fault.t_scheduled = self.env.now
        load = self.times.load(slot.kind)
        if slot.kind is RoleKind.TRAINER:
            self._mark_trainer("load")
            load += self._restore_time(cold=True)
        yield self.env.timeout(load)
        if self._stale(slot, inc, job):
            return
        self._ready(slot)
        if slot.kind is RoleKind.TRAINER:
            self.env.process(self._trainer_loop(slot, inc, job))
            return
        if slot.kind is RoleKind.TRAINER_SPARE:
            if slot.fault is not None:        # the controller: "standby ready again"
                slot.fault.t_recovered = self.env.now
                slot.fault = None
            return                            # built and waiting: it holds no weights to serve
        slot.syncing = slot.kind is RoleKind.ROLLOUT
        self._set_rate()
        while not self._has_holder():         # after a full restart: until the trainer is restored
            ev = self.env.event()
            self.holder_waiters.append(ev)
            yield ev
            if self._stale(slot, inc, job):
                return
        yield self.env.timeout(self.times.sync_s)
        if self._stale(slot, inc, job):
            return
        self._synced(slot)

    def _has_holder(self) -> bool:
        """Someone serves the current lineage's weights: a ready trainer, or a synced rollout or spare."""
        return any(s.job is not None and s.job.working
                   and (s.synced if s.kind is not RoleKind.TRAINER else s.state is RoleState.READY)
                   for s in self.slots.values())

    def _wake_pullers(self) -> None:
        waiters, self.holder_waiters = self.holder_waiters, []
        for ev in waiters:
            if not ev.triggered:
                ev.succeed()

    def _ready(self, slot: Slot) -> None:
        slot.state = RoleState.READY
        if slot.submitted_inc == slot.incarnation and slot.submitted_at is not None:
            self.start_times.add(slot.kind, self.env.now - slot.submitted_at)     # as the controller does
            slot.submitted_inc = -1
        if slot.fault is not None:
            slot.fault.t_loaded = self.env.now
        if slot.kind is RoleKind.TRAINER:
            self._wake_pullers()
        if slot.reserved_for is not None:
            self._decide([])                  # a slot waits for this spare (the controller decides every tick)
        self._chaos_poll()

    def _synced(self, slot: Slot) -> None:
        if slot.fault is not None:
            slot.fault.t_synced = self.env.now
        slot.synced, slot.syncing = True, False
        self._wake_pullers()
        if slot.kind is RoleKind.ROLLOUT:
            slot.producing = True
            self._set_rate()
            if slot.fault is not None:        # the controller: "generating again"
                slot.fault.t_recovered = self.env.now
                slot.fault = None

    def _resync(self, slot: Slot, inc: int, job: Job) -> Generator[simpy.Event, Any, None]:
        """After a trainer loss the lineage forks: a rollout pulls the committed version again."""
        slot.syncing = True
        self._set_rate()
        yield self.env.timeout(self.times.sync_s)
        slot.syncing = False
        if not self._stale(slot, inc, job) and slot.state is RoleState.READY:
            slot.producing = True
        self._set_rate()
