"""The model's mutable state: jobs on nodes, role slots, the trajectory buffer, and the run's fields.

`RunState` only declares what every mechanism module (jobs, trainer, faults, recovery) reads and
writes; `slurm_rl.sim.model.Run` initialises it and combines the mechanisms.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import random
from collections import deque

import simpy

from slurm_rl.config import RecoveryPolicy
from slurm_rl.controller import chaos as chaos_mod
from slurm_rl.controller import policy as pol
from slurm_rl.sim.config import SimConfig
from slurm_rl.sim.metrics import FaultRecord, StepRecord
from slurm_rl.states import RoleKind, RoleState

EPS = 1e-9
NEVER = math.inf


class JobStatus(enum.Enum):
    RUNNING = "running"
    HUNG = "hung"              # alive (occupies its node) but does no work and sends nothing
    GONE = "gone"


@dataclasses.dataclass(slots=True, eq=False)
class Job:
    id: int
    nodes: tuple[str, ...]
    state: JobStatus = JobStatus.RUNNING
    version: int | None = None     # the weights it held when it stopped working (None: working, current)

    @property
    def working(self) -> bool:
        return self.state is JobStatus.RUNNING

    @property
    def present(self) -> bool:
        return self.state is not JobStatus.GONE


@dataclasses.dataclass(slots=True, eq=False)
class Slot:
    kind: RoleKind
    index: int
    state: RoleState = RoleState.STOPPED
    incarnation: int = 0
    job: Job | None = None
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
    synced: bool = False                   # a rollout or spare holding the current lineage's weights
    syncing: bool = False                  # a rollout waiting for a holder or pulling weights

    @property
    def name(self) -> str:
        return f"{self.kind.value}/{self.index}"


class Buffer:
    """Trajectory groups waiting for the trainer: a level that grows at `rate` up to `cap`."""

    __slots__ = ("level", "t", "rate", "cap")

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
        if have >= n - EPS:
            return 0.0
        if self.rate <= 0 or n > self.cap + EPS:
            return NEVER
        return (n - have) / self.rate


class RunState:
    """Everything a simulated run holds. The mechanisms are mixins over it: `slurm_rl.sim.jobs`
    (placement, start-up, weight pulls), `.trainer` (steps, commits, rollbacks), `.faults`
    (injection, detection) and `.recovery` (the policy's view and its actions)."""

    thresholds: pol.Thresholds

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
        self.slots: dict[str, Slot] = {}
        for kind, n in ((RoleKind.TRAINER, 1), (RoleKind.ROLLOUT, self.topo.rollout_replicas),
                        (RoleKind.SPARE, self.topo.spare_replicas),
                        (RoleKind.TRAINER_SPARE, self.topo.trainer_spares)):
            for i in range(n):
                s = Slot(kind=kind, index=i)
                self.slots[s.name] = s
        self.trainer = self.slots["trainer/0"]
        self.jobs: list[Job] = []
        self._job_ids = 0
        self.node_names = [f"local{i}" for i in range(1, (self.topo.cluster_nodes or 0) + 1)]
        self.node_down_until: dict[str, float] = {}
        self.excluded: set[str] = set()
        # the controller never writes its node_failures map (policy counts failures within one
        # decision only); mirror that so exclusions happen exactly when the real ones do
        self.node_failures: dict[str, int] = {}
        G = self.work.groups_per_step
        self.G = G
        self.buf = Buffer(cap=self.work.buffer_steps * G)
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
        self.restarting_until = -NEVER
        self.dying: set[str] = set()
        # rollouts and spares waiting for someone to pull the weights from (after a full restart:
        # the restored trainer)
        self.holder_waiters: list[simpy.Event] = []
        # what the trainer is doing, (since, label), and whether every rollout is pulling weights
        # (since, flag): the badput split reads these (slurm_rl.sim.blame)
        self.trainer_marks: list[tuple[float, str]] = []
        self.sync_marks: list[tuple[float, bool]] = []


    def _stale(self, slot: Slot, inc: int, job: Job | None) -> bool:
        """A process started for an incarnation that is no longer the slot's, or whose job stopped."""
        return self.done.triggered or slot.incarnation != inc or slot.job is not job or job is None \
            or not job.working

    def _end(self, *, finished: bool, reason: str) -> None:
        if not self.done.triggered:
            self.finished = finished
            self.end_reason = reason
            self.t_end = self.env.now
            self.done.succeed()

    def _mark_trainer(self, label: str) -> None:
        """The trainer's activity from now on (one of slurm_rl.sim.blame.TRAINER_LABELS)."""
        if not self.trainer_marks or self.trainer_marks[-1][1] != label:
            self.trainer_marks.append((self.env.now, label))
