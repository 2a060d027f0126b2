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
import enum
import math
import random
from collections import Counter, deque
from collections.abc import Generator
from typing import Any

import simpy

from slurm_rl.config import ChaosConfig, RecoveryPolicy
from slurm_rl.controller import chaos as chaos_mod
from slurm_rl.controller import policy as pol
from slurm_rl.sim.config import ChaosSchedule, NodeFailures, SimConfig, Standby
from slurm_rl.sim.metrics import (
    Breakdown,
    FaultRecord,
    StepRecord,
    StepState,
    ettr_breakdown,
    replay_between,
)
from slurm_rl.states import FaultKind, JobState, Phase, RoleKind, RoleState

__all__ = ["Badput", "MttrRow", "SimResult", "Trace", "simulate"]

_EPS = 1e-9
_NEVER = math.inf


# ------------------------------------------------------------------------------- results


@dataclasses.dataclass(kw_only=True, slots=True, frozen=True)
class Badput:
    """Wall time that is not productive, split by cause (seconds)."""

    recovery_s: float          # no trainer step in progress: detection, queue, load, sync, restore
    replay_s: float            # steps computed and then rolled back
    idle_s: float              # the trainer starved because rollouts were lost

    @property
    def total_s(self) -> float:
        return self.recovery_s + self.replay_s + self.idle_s


@dataclasses.dataclass(kw_only=True, slots=True, frozen=True)
class MttrRow:
    """Mean time to recovery of one (role, fault kind), as in a report's `mttr` table."""

    role: RoleKind
    kind: str
    count: int
    mttr_s: float


@dataclasses.dataclass(kw_only=True, slots=True, frozen=True)
class Trace:
    """The rows a real run's store would hold (kept for tests and hand checks)."""

    steps: tuple[StepRecord, ...]        # one row per step number, as the store keeps them
    replaced: tuple[StepRecord, ...]     # rolled-back rows a recomputed step overwrote
    faults: tuple[FaultRecord, ...]
    end: float
    finished: bool


@dataclasses.dataclass(kw_only=True, slots=True, frozen=True)
class SimResult:
    policy: RecoveryPolicy
    seed: int
    ettr: float
    wall_s: float              # from the trainer's first batch of data to the end
    productive_s: float
    badput: Badput             # replay counted in full (see slurm_rl.sim.metrics)
    as_reported: Badput        # the split a real report would print for the same run
    ettr_as_reported: float    # what a real report would print (differs only after a rollback to step 0)
    ettr_as_reported_v1: float  # ... a schema-1 report (its wall time began at the first request for data)
    steps: int                 # steps kept at the end
    steps_computed: int        # every step computed, replays included
    faults: int                # fault rows (a node failure opens one per role it hits)
    fault_events: int          # failures that happened (injections or node failures)
    restarts: dict[RoleKind, int]
    full_restarts: int
    finished: bool
    end_reason: str
    mttr: tuple[MttrRow, ...]
    trace: Trace | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, with the same key names as `slurm-rl report --json` where they overlap."""
        return {
            "policy": self.policy.value, "seed": self.seed, "ettr": round(self.ettr, 4),
            "wall_s": round(self.wall_s, 3), "productive_s": round(self.productive_s, 3),
            "badput": {"recovery_s": round(self.badput.recovery_s, 3), "replay_s": round(self.badput.replay_s, 3),
                       "idle_s": round(self.badput.idle_s, 3)},
            "ettr_as_reported": round(self.ettr_as_reported, 4),
            "badput_as_reported": {"recovery_s": round(self.as_reported.recovery_s, 3),
                                   "replay_s": round(self.as_reported.replay_s, 3),
                                   "idle_s": round(self.as_reported.idle_s, 3)},
            "steps": self.steps, "steps_computed": self.steps_computed, "faults": self.faults,
            "fault_events": self.fault_events,
            "restarts": {k.value: v for k, v in self.restarts.items()} | {"full": self.full_restarts},
            "finished": self.finished, "end_reason": self.end_reason,
            "mttr": [{"role": r.role.value, "kind": r.kind, "count": r.count, "mttr_s": round(r.mttr_s, 3)}
                     for r in self.mttr],
        }


# ------------------------------------------------------------------------------- model state


class _JobState(enum.Enum):
    RUNNING = "running"
    HUNG = "hung"              # alive (occupies its node) but does no work and sends nothing
    GONE = "gone"


@dataclasses.dataclass(slots=True, eq=False)
class _Job:
    id: int
    nodes: tuple[str, ...]
    state: _JobState = _JobState.RUNNING
    version: int | None = None     # the weights it held when it stopped working (None: working, current)

    @property
    def working(self) -> bool:
        return self.state is _JobState.RUNNING

    @property
    def present(self) -> bool:
        return self.state is not _JobState.GONE


@dataclasses.dataclass(slots=True, eq=False)
class _Slot:
    kind: RoleKind
    index: int
    state: RoleState = RoleState.STOPPED
    incarnation: int = 0
    job: _Job | None = None
    fault: FaultRecord | None = None       # the fault this incarnation recovers (controller: fault_id)
    pending: FaultRecord | None = None     # injected, not yet detected (controller: pending_faults)
    hit_node: str | None = None            # the node a pending fault hit (what the policy sees)
    detect_at: float = 0.0                 # when the pending fault will be detected
    restarts: list[float] = dataclasses.field(default_factory=list)
    producing: bool = False                # a rollout generating into the buffer
    exclude: tuple[str, ...] = ()
    submitted_at: float | None = None
    submitted_inc: int = -1                # the incarnation submitted then, until it is ready
    reserved_for: str | None = None        # a spare a dead rollout slot waits for (AwaitSpare)

    @property
    def name(self) -> str:
        return f"{self.kind.value}/{self.index}"


class _Buffer:
    """Trajectory groups waiting for the trainer: a level that grows at `rate` up to `cap`."""

    __slots__ = ("cap", "level", "rate", "t")

    def __init__(self, cap: float):
        self.level = 0.0
        self.t = 0.0
        self.rate = 0.0
        self.cap = cap

    def at(self, now: float) -> float:
        if self.level >= self.cap:
            return self.level          # rollouts pause; requeued groups may sit above the cap
        return min(self.cap, self.level + self.rate * (now - self.t))

    def set_rate(self, now: float, rate: float) -> None:
        self.level, self.t, self.rate = self.at(now), now, rate

    def add(self, now: float, n: float) -> None:
        self.level, self.t = self.at(now) + n, now

    def take(self, now: float, n: float) -> None:
        self.level, self.t = max(0.0, self.at(now) - n), now

    def time_to(self, now: float, n: float) -> float:
        have = self.at(now)
        if have >= n - _EPS:
            return 0.0
        if self.rate <= 0 or n > self.cap + _EPS:
            return _NEVER
        return (n - have) / self.rate


class _Run:
    def __init__(self, cfg: SimConfig, policy: RecoveryPolicy, seed: int):
        self.cfg = cfg
        self.topo = cfg.topology
        self.work = cfg.work
        self.times = cfg.times
        self.policy = policy
        self.seed = seed
        self.env = simpy.Environment()
        # separate streams: the failure process must not depend on how recovery used randomness,
        # so both policies see the same failures for one seed
        self.rng_fail = random.Random(f"fail/{seed}")
        self.rng_time = random.Random(f"time/{seed}")
        self.slots: dict[str, _Slot] = {}
        for kind, n in ((RoleKind.TRAINER, 1), (RoleKind.ROLLOUT, self.topo.rollout_replicas),
                        (RoleKind.SPARE, self.topo.spare_replicas)):
            for i in range(n):
                s = _Slot(kind=kind, index=i)
                self.slots[s.name] = s
        self.trainer = self.slots["trainer/0"]
        self.jobs: list[_Job] = []
        self._job_ids = 0
        self.node_names = [f"local{i}" for i in range(1, (self.topo.cluster_nodes or 0) + 1)]
        self.node_down_until: dict[str, float] = {}
        self.excluded: set[str] = set()
        # the controller never writes its node_failures map (policy counts failures within one
        # decision only); mirror that so exclusions happen exactly when the real ones do
        self.node_failures: dict[str, int] = {}
        G = self.work.groups_per_step
        self.G = G
        self.buf = _Buffer(cap=self.work.buffer_steps * G)
        # trainer lineage
        self.version = 0
        self.committed = 0
        self.published: deque[tuple[int, float]] = deque()
        self.checkpoints: list[tuple[int, float]] = []       # (step, written at)
        self.steps: dict[int, StepRecord] = {}
        self.replaced: list[StepRecord] = []
        self.computed = 0
        self.faults: list[FaultRecord] = []
        self.fault_events = 0
        self.restart_faults: list[FaultRecord] = []
        self.full_restarts = 0
        self.waiter: simpy.Process | None = None
        self.batch_in_hand = False             # the trainer took a batch and has not finished the step
        self.start_times = pol.StartTimes()
        self.t_train: float | None = None      # the trainer first asked for data
        self.t_data: float | None = None       # ... and had its first batch: training starts
        self.done = self.env.event()
        self.end_reason = ""
        self.finished = False
        self.t_end = 0.0
        # chaos plan (schedule mode)
        self.plan: list[chaos_mod.PlannedFault] = []
        self.chaos_due: float | None = None
        self.plan_next = 0
        self.restarting_until = -_NEVER
        self.dying: set[str] = set()
        self.thresholds = self._thresholds()

    # ----------------------------------------------------------------- set-up
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

    def _end(self, *, finished: bool, reason: str) -> None:
        if not self.done.triggered:
            self.finished = finished
            self.end_reason = reason
            self.t_end = self.env.now
            self.done.succeed()

    # ----------------------------------------------------------------- helpers
    def _stale(self, slot: _Slot, inc: int, job: _Job | None) -> bool:
        return self.done.triggered or slot.incarnation != inc or slot.job is not job or job is None \
            or not job.working

    def _jitter(self, mean: float) -> float:
        cv = self.times.queue_cv
        if mean <= 0 or cv <= 0:
            return mean
        k = 1.0 / (cv * cv)
        return self.rng_time.gammavariate(k, mean / k)

    def _new_job(self, nodes: tuple[str, ...]) -> _Job:
        self._job_ids += 1
        job = _Job(id=self._job_ids, nodes=nodes)
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
        if rate != self.buf.rate:
            self.buf.set_rate(self.env.now, rate)
            w = self.waiter
            if w is not None and w.is_alive and w is not self.env.active_process:
                w.interrupt("data")

    def _open_fault(self, slot: _Slot, kind: FaultKind, node: str | None) -> FaultRecord:
        f = FaultRecord(id=len(self.faults) + 1, slot=slot.name, role=slot.kind, kind=kind.value, node=node,
                        injected=True, t_fault=self.env.now)
        self.faults.append(f)
        return f

    # ----------------------------------------------------------------- starting jobs
    def _submit(self, slot: _Slot, queue_s: float, exclude: tuple[str, ...] = ()) -> None:
        """A new job for the slot (next incarnation): queue, load, then the role's own start."""
        slot.incarnation += 1
        slot.state = RoleState.PENDING
        slot.producing = False
        slot.exclude = exclude
        slot.submitted_at, slot.submitted_inc = self.env.now, slot.incarnation
        job: _Job | None = None
        if self.node_names:
            # the local backend starts the process at once, on a node chosen now
            job = self._new_job(self._pick_nodes(self.topo.nodes_of(slot.kind), set(exclude) | self.excluded))
        slot.job = job
        if slot.fault is not None and slot.fault.action != "full restart":
            slot.fault.action = f"submit {slot.name}"
        self.env.process(self._start(slot, slot.incarnation, job, queue_s))

    def _start(self, slot: _Slot, inc: int, job: _Job | None, queue_s: float) -> Generator[simpy.Event, Any, None]:
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
        if slot.kind is RoleKind.TRAINER and self.version > 0:
            load += self.times.restore_s
        yield self.env.timeout(load)
        if self._stale(slot, inc, job):
            return
        self._ready(slot)
        if slot.kind is RoleKind.TRAINER:
            self.env.process(self._trainer_loop(slot, inc, job))
        else:
            yield self.env.timeout(self.times.sync_s)
            if self._stale(slot, inc, job):
                return
            self._synced(slot)

    def _ready(self, slot: _Slot) -> None:
        slot.state = RoleState.READY
        if slot.submitted_inc == slot.incarnation and slot.submitted_at is not None:
            self.start_times.add(slot.kind, self.env.now - slot.submitted_at)     # as the controller does
            slot.submitted_inc = -1
        if slot.fault is not None:
            slot.fault.t_loaded = self.env.now
        if slot.reserved_for is not None:
            self._decide([])                  # a slot waits for this spare (the controller decides every tick)
        self._chaos_poll()

    def _synced(self, slot: _Slot) -> None:
        if slot.fault is not None:
            slot.fault.t_synced = self.env.now
        if slot.kind is RoleKind.ROLLOUT:
            slot.producing = True
            self._set_rate()
            if slot.fault is not None:        # the controller: "generating again"
                slot.fault.t_recovered = self.env.now
                slot.fault = None

    def _resync(self, slot: _Slot, inc: int, job: _Job) -> Generator[simpy.Event, Any, None]:
        """After a trainer loss the lineage forks: a rollout pulls the committed version again."""
        yield self.env.timeout(self.times.sync_s)
        if not self._stale(slot, inc, job) and slot.state is RoleState.READY:
            slot.producing = True
            self._set_rate()

    # ----------------------------------------------------------------- the trainer
    def _trainer_loop(self, slot: _Slot, inc: int, job: _Job) -> Generator[simpy.Event, Any, None]:
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
                    yield env.timeout(dt) if dt != _NEVER else env.event()
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

    # ----------------------------------------------------------------- faults
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

    def _inject(self, target: _Slot, kind: FaultKind, node: str | None) -> None:
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
            # what is committed is fixed now: no holder can pull a version from a dead trainer,
            # and its checkpoint writes in flight never finish
            self._update_commit()
            self.published.clear()
            self._drop_unwritten_checkpoints()
        hit: list[tuple[_Slot, _Job]] = []
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
                if job.state is _JobState.RUNNING:
                    job.state = _JobState.HUNG
            else:
                job.state = _JobState.GONE
            if s.producing:
                s.producing = False
            hit.append((s, job))
        self._set_rate()
        delay = self.times.detect(target.kind, kind)
        for s, _ in hit:
            s.detect_at = now + delay
        self.env.process(self._detect(hit, delay))

    def _detect(self, hit: list[tuple[_Slot, _Job]], delay: float) -> Generator[simpy.Event, Any, None]:
        yield self.env.timeout(delay)
        if self.done.triggered:
            return
        dead = [s for s, job in hit if s.job is job and s.state.alive and s.pending is not None]
        if dead:
            self._decide(dead)

    # ----------------------------------------------------------------- decisions
    def _view(self, dead: list[_Slot]) -> pol.View:
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

    def _decide(self, dead: list[_Slot]) -> None:
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

    def _dead(self, s: _Slot) -> None:
        now = self.env.now
        s.state = RoleState.DEAD
        s.restarts.append(now)
        f = s.pending
        s.pending = None
        if f is not None:
            f.t_detect = f.t_decide = now
        if s.job is not None:
            s.job.state = _JobState.GONE       # the controller cancels the job of a dead role
        s.producing = False
        s.fault = f
        s.reserved_for = None
        if s.kind is RoleKind.TRAINER:
            self._trainer_lost()
        self._set_rate()

    def _promote(self, standby: _Slot, target: _Slot, *, awaited: bool = False) -> None:
        """A standby's live job takes over the target slot (controller: _promote)."""
        now = self.env.now
        job = standby.job
        standby.reserved_for = None
        standby.state = RoleState.STOPPED
        standby.job = None
        standby.producing = False
        if standby.pending is not None and job is not None:
            # it failed but is not declared yet (a READY standby looks fine to the policy): the
            # failure follows the job, and the controller finds it dead in its new slot
            target.pending, target.hit_node = standby.pending, standby.hit_node
            standby.pending = None
            self.env.process(self._detect([(target, job)], max(0.0, standby.detect_at - now)))
        target.incarnation += 1
        target.job = job
        target.state = RoleState.STARTING
        target.producing = False
        if target.fault is not None:
            if not awaited:
                target.fault.t_decide = now
            target.fault.t_scheduled = now
            target.fault.action = f"promote {standby.name}"
        self._set_rate()
        self.env.process(self._take_over(target, target.incarnation, job))

    def _take_over(self, slot: _Slot, inc: int, job: _Job | None) -> Generator[simpy.Event, Any, None]:
        took = self.times.promote(slot.kind)
        if slot.kind is RoleKind.TRAINER and self.version > 0:
            took += self.times.restore_s
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
                s.job.state = _JobState.GONE
            s.job = None
            s.fault = None
            s.pending = None
            s.producing = False
        self._set_rate()
        for s in self.slots.values():
            self._submit(s, queue)
        # the controller takes no decisions (and injects nothing) for 2 s while old jobs go
        self.restarting_until = now + 2.0

    # ----------------------------------------------------------------- result
    def _result(self) -> SimResult:
        rows = [self.steps[k] for k in sorted(self.steps)]
        # the report's own arithmetic on the rows its store would hold ...
        rep: Breakdown = ettr_breakdown(rows, self.faults, end=self.t_end, finished=self.finished)
        v1: Breakdown = ettr_breakdown(rows, self.faults, end=self.t_end, finished=self.finished,
                                       startup_wait=False)
        # ... and the same definition with the wall time from the trainer's first batch of data
        # and every rolled-back step counted (a store keeps one row per step number)
        bd: Breakdown = ettr_breakdown(rows, self.faults, end=self.t_end, finished=self.finished,
                                       t_train=self.t_data)
        rolled = [r for r in rows if not r.state.kept] + self.replaced
        t0 = self.t_data if self.t_data is not None else 0.0
        replay = replay_between(rolled, t0, t0 + bd.wall_s)
        recovery = max(0.0, bd.wall_s - bd.productive_s - bd.idle_s - replay)
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
            trace=Trace(steps=tuple(rows), replaced=tuple(self.replaced), faults=tuple(self.faults), end=self.t_end,
                        finished=self.finished))


def simulate(config: SimConfig, policy: RecoveryPolicy | str, seed: int = 0, *, keep_trace: bool = False) -> SimResult:
    """Simulate one run of `config` under `policy` ("role-based" or "full-restart") with `seed`.

    Deterministic for a given (config, policy, seed). The failures (chaos plan, or the node-failure
    arrival stream) depend on the seed only, so both policies meet the same faults."""
    run = _Run(config, RecoveryPolicy(policy), seed)
    result = run.run()
    return result if keep_trace else dataclasses.replace(result, trace=None)
