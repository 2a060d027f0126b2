"""What a simulated run is made of: topology, work, failures, recovery times, controller rules.

Every field has a unit in its name or docstring (seconds unless said otherwise). Defaults are the
cluster-scale defaults the 256-GPU table uses (`cluster_config()`); docs/simulation.md justifies
each one. The local benchmark's configuration is built from measurements instead
(`slurm_rl.sim.measured.local_config`).
"""

from __future__ import annotations

import dataclasses
import enum
import math
from collections.abc import Mapping
from types import MappingProxyType

from slurm_rl.config import RecoveryPolicy
from slurm_rl.errors import BadInput
from slurm_rl.states import FaultKind, RoleKind

__all__ = [
    "ChaosSchedule", "ControllerRules", "NodeFailures", "RecoveryPolicy", "RecoveryTimes", "SimConfig", "Standby",
    "Topology", "Work", "cluster_config", "config_dict", "rate_for_fraction_failing",
]

DAY_S = 86_400.0


def frozen_map(m: Mapping) -> Mapping:
    """A read-only copy: one config serves many trials and must not change under them."""
    return MappingProxyType(dict(m))


class Standby(str, enum.Enum):
    """Who may take over a dead trainer (mirrors `recovery.standby`)."""

    SPARE_THEN_ROLLOUT = "spare-then-rollout"
    SPARE_ONLY = "spare-only"
    NONE = "none"

    def __str__(self) -> str:
        return self.value


@dataclasses.dataclass(kw_only=True, slots=True, frozen=True)
class Topology:
    """Where the roles sit. Each role replica is its own job on its own nodes."""

    gpus_per_node: int = 8
    trainer_nodes: int = 16
    rollout_replicas: int = 16
    rollout_nodes: int = 1                 # nodes per rollout replica
    spare_replicas: int = 0
    spare_nodes: int | None = None         # nodes per spare; None: the size of a rollout replica
    trainer_spares: int = 0                # trainer-shaped standbys (spare.trainer_nodes): trainer_nodes each
    # None: every new job gets fresh nodes and a failed node never comes back (a big cluster).
    # N: a pool of N nodes shared by all jobs, least-loaded first (the local backend's fake nodes).
    cluster_nodes: int | None = None
    node_down_s: float = math.inf          # how long a failed node stays DOWN (pool mode; local: 30 s)

    def __post_init__(self) -> None:
        for name in ("gpus_per_node", "trainer_nodes", "rollout_replicas", "rollout_nodes"):
            if getattr(self, name) < 1:
                raise BadInput(f"topology.{name} must be at least 1 (got {getattr(self, name)})")
        if self.spare_replicas < 0:
            raise BadInput(f"topology.spare_replicas must be >= 0 (got {self.spare_replicas})")
        if self.trainer_spares not in (0, 1):
            raise BadInput(f"topology.trainer_spares must be 0 or 1, as spare.trainer_nodes gives (got "
                           f"{self.trainer_spares})")
        if self.spare_nodes is not None and self.spare_nodes < 1:
            raise BadInput(f"topology.spare_nodes must be at least 1 (got {self.spare_nodes})")
        if self.cluster_nodes is not None and self.cluster_nodes < 1:
            raise BadInput(f"topology.cluster_nodes must be at least 1 or None (got {self.cluster_nodes})")

    @property
    def spare_size(self) -> int:
        return self.rollout_nodes if self.spare_nodes is None else self.spare_nodes

    def nodes_of(self, kind: RoleKind) -> int:
        return {RoleKind.TRAINER: self.trainer_nodes, RoleKind.ROLLOUT: self.rollout_nodes,
                RoleKind.SPARE: self.spare_size, RoleKind.TRAINER_SPARE: self.trainer_nodes}[kind]

    @property
    def nodes(self) -> int:
        """Nodes the run holds when every slot is filled."""
        return (self.trainer_nodes * (1 + self.trainer_spares) + self.rollout_replicas * self.rollout_nodes
                + self.spare_replicas * self.spare_size)

    @property
    def gpus(self) -> int:
        return self.nodes * self.gpus_per_node

    @property
    def working_gpus(self) -> int:
        """GPUs of the trainer and the rollouts (spares excluded): the run's nominal size."""
        return (self.trainer_nodes + self.rollout_replicas * self.rollout_nodes) * self.gpus_per_node


@dataclasses.dataclass(kw_only=True, slots=True, frozen=True)
class Work:
    """The training work and its pace. The pipeline is asynchronous: rollouts fill a bounded buffer
    while the trainer steps, so the trainer only waits when generation falls behind."""

    step_compute_s: float = 90.0           # trainer time per step once its batch is there (incl. publish)
    groups_per_step: int = 256             # trajectory groups (prompts x group) one step consumes
    rollout_groups_per_s: float = 0.17     # groups per second one rollout replica generates
    buffer_steps: float = 3.0              # rollouts pause when this many steps of data wait
    total_steps: int | None = None         # the run ends after this many steps ...
    duration_s: float | None = None        # ... or this much wall time from the first step (default 3 days)
    checkpoint_every: int = 20             # steps between checkpoints
    checkpoint_write_s: float = 60.0       # asynchronous write; a checkpoint counts once written
    commit_delay_s: float = 30.0           # until a non-trainer holder has pulled a new version (commit)

    def __post_init__(self) -> None:
        if self.total_steps is not None and self.duration_s is not None:
            raise BadInput("work: set one of total_steps and duration_s, not both")
        if self.total_steps is None and self.duration_s is None:
            object.__setattr__(self, "duration_s", 3 * DAY_S)
        if self.total_steps is not None and self.total_steps < 1:
            raise BadInput(f"work.total_steps must be at least 1 (got {self.total_steps})")
        if self.duration_s is not None and self.duration_s <= 0:
            raise BadInput(f"work.duration_s must be positive (got {self.duration_s})")
        for name in ("step_compute_s", "rollout_groups_per_s", "buffer_steps"):
            if getattr(self, name) <= 0:
                raise BadInput(f"work.{name} must be positive (got {getattr(self, name)})")
        if self.groups_per_step < 1 or self.checkpoint_every < 1:
            raise BadInput("work.groups_per_step and work.checkpoint_every must be at least 1")
        if self.buffer_steps < 1:
            raise BadInput(f"work.buffer_steps must be at least 1, or the trainer never gets a batch "
                           f"(got {self.buffer_steps})")

    def nominal_step_s(self, rollouts: int) -> float:
        """Step interval without faults: compute, or generation of one batch if that is slower."""
        return max(self.step_compute_s, self.groups_per_step / (rollouts * self.rollout_groups_per_s))


@dataclasses.dataclass(kw_only=True, slots=True, frozen=True)
class NodeFailures:
    """Random failures: each node in use fails at `per_node_per_day` (exponential inter-arrival);
    the failure hits every role on that node with a kind drawn from `kinds` (weights)."""

    per_node_per_day: float
    kinds: Mapping[FaultKind, float] = dataclasses.field(default_factory=lambda: frozen_map(
        {FaultKind.NODE_DOWN: 0.6, FaultKind.CRASH: 0.25, FaultKind.HANG: 0.15}))

    def __post_init__(self) -> None:
        if self.per_node_per_day < 0:
            raise BadInput(f"failures.per_node_per_day must be >= 0 (got {self.per_node_per_day})")
        if not self.kinds or any(w < 0 for w in self.kinds.values()) or sum(self.kinds.values()) <= 0:
            raise BadInput("failures.kinds needs at least one fault kind with a positive weight")
        object.__setattr__(self, "kinds", frozen_map(self.kinds))


@dataclasses.dataclass(kw_only=True, slots=True, frozen=True)
class ChaosSchedule:
    """The local benchmark's injector (`chaos:` in a run config): one fault on average every
    `mean_interval_steps` trainer steps, on a role and kind drawn from the lists. Generated by
    `slurm_rl.controller.chaos.schedule` itself, so the simulated faults are the real ones."""

    mean_interval_steps: float
    roles: tuple[RoleKind, ...] = (RoleKind.ROLLOUT, RoleKind.TRAINER)
    kinds: tuple[FaultKind, ...] = (FaultKind.CRASH, FaultKind.NODE_DOWN, FaultKind.HANG)
    start_after_steps: int = 5
    max_faults: int | None = None
    seed: int | None = None                # None: the seed given to simulate()

    def __post_init__(self) -> None:
        if self.mean_interval_steps <= 0:
            raise BadInput(f"chaos.mean_interval_steps must be positive (got {self.mean_interval_steps})")
        if not self.roles or not self.kinds:
            raise BadInput("chaos.roles and chaos.kinds must not be empty")


@dataclasses.dataclass(kw_only=True, slots=True, frozen=True)
class RecoveryTimes:
    """How long each part of a recovery takes, in seconds (means; `queue_cv` adds spread)."""

    # fault to DEAD, by fault kind; `detect_by_role` overrides it for one (role, kind)
    detect_s: Mapping[FaultKind, float] = dataclasses.field(default_factory=lambda: frozen_map(
        {FaultKind.CRASH: 15.0, FaultKind.EXIT: 15.0, FaultKind.NODE_DOWN: 30.0, FaultKind.HANG: 300.0,
         FaultKind.DRAIN: 15.0}))
    detect_by_role: Mapping[tuple[RoleKind, FaultKind], float] = dataclasses.field(default_factory=dict)
    # a replacement job's wait in the queue, by role (submitted to running)
    queue_s: Mapping[RoleKind, float] = dataclasses.field(default_factory=lambda: frozen_map(
        {RoleKind.TRAINER: 600.0, RoleKind.ROLLOUT: 180.0, RoleKind.SPARE: 180.0}))
    # coefficient of variation of every queue wait (0: fixed; 1: exponential-like, gamma-distributed)
    queue_cv: float = 0.0
    # a new job's start: process, model and engine load (running to ready), by role
    load_s: Mapping[RoleKind, float] = dataclasses.field(default_factory=lambda: frozen_map(
        {RoleKind.TRAINER: 300.0, RoleKind.ROLLOUT: 240.0, RoleKind.SPARE: 240.0}))
    sync_s: float = 30.0                   # a newcomer pulls the newest weights from a holder
    # a warm standby takes over (decision to working), by the role it becomes; TRAINER_SPARE: the
    # trainer-shaped standby becoming the trainer (its process group and shards are there already)
    promote_s: Mapping[RoleKind, float] = dataclasses.field(default_factory=lambda: frozen_map(
        {RoleKind.ROLLOUT: 5.0, RoleKind.TRAINER: 60.0, RoleKind.TRAINER_SPARE: 1.0}))
    restore_s: float = 180.0               # trainer: optimizer state and data cursor from a checkpoint
    # a restored trainer's weights, on top of restore_s: its ranks pull their shards of the committed
    # version from a live holder (a rollout or spare has them), or, when no holder has it (a full
    # restart, every holder lost), read them from the checkpoint
    weights_from_holder_s: float = 0.0
    weights_from_checkpoint_s: float = 0.0
    teardown_s: float = 60.0               # full restart: cancel every job and let it end
    full_queue_s: float = 900.0            # full restart: queue wait until the whole allocation runs again

    def __post_init__(self) -> None:
        for name in ("detect_s", "detect_by_role", "queue_s", "load_s", "promote_s"):
            m = getattr(self, name)
            if any(v < 0 for v in m.values()):
                raise BadInput(f"times.{name}: every time must be >= 0")
            object.__setattr__(self, name, frozen_map(m))
        for name in ("queue_cv", "sync_s", "restore_s", "weights_from_holder_s", "weights_from_checkpoint_s",
                     "teardown_s", "full_queue_s"):
            if getattr(self, name) < 0:
                raise BadInput(f"times.{name} must be >= 0 (got {getattr(self, name)})")

    def detect(self, role: RoleKind, kind: FaultKind) -> float:
        if (role, kind) in self.detect_by_role:
            return self.detect_by_role[(role, kind)]
        return self.detect_s.get(kind, max(self.detect_s.values(), default=0.0))

    def queue(self, role: RoleKind) -> float:
        role = RoleKind.TRAINER if role is RoleKind.TRAINER_SPARE else role     # a job of the trainer's shape
        return self.queue_s.get(role, self.queue_s.get(RoleKind.ROLLOUT, 0.0))

    def load(self, role: RoleKind) -> float:
        role = RoleKind.TRAINER if role is RoleKind.TRAINER_SPARE else role     # it builds what the trainer does
        return self.load_s.get(role, self.load_s.get(RoleKind.ROLLOUT, 0.0))

    def promote(self, role: RoleKind) -> float:
        return self.promote_s.get(role, 0.0)


@dataclasses.dataclass(kw_only=True, slots=True, frozen=True)
class ControllerRules:
    """The controller settings that shape recovery (the `recovery:` section of a run config)."""

    standby: Standby = Standby.SPARE_THEN_ROLLOUT
    restart_budget: int = 5                # restarts of one slot within budget_window_s before escalation
    budget_window_s: float = 600.0
    exclude_node_after: int = 2            # role failures on a node before new jobs avoid it
    max_full_restarts: int | None = None   # past this the run stops (None: never; a real run's default is 3)
    weigh_start_times: bool = True         # the policy weighs the run's measured start times (see config.py)


@dataclasses.dataclass(kw_only=True, slots=True, frozen=True)
class SimConfig:
    """One simulated run, whatever the policy."""

    topology: Topology = dataclasses.field(default_factory=Topology)
    work: Work = dataclasses.field(default_factory=Work)
    failures: NodeFailures | ChaosSchedule | None = None
    times: RecoveryTimes = dataclasses.field(default_factory=RecoveryTimes)
    rules: ControllerRules = dataclasses.field(default_factory=ControllerRules)
    max_sim_s: float | None = None         # give up (run not finished) after this much simulated time

    def replace(self, **changes: object) -> "SimConfig":
        return dataclasses.replace(self, **changes)


def rate_for_fraction_failing(fraction: float, duration_s: float) -> float:
    """Per-node daily failure rate at which `fraction` of the nodes fail at least once in `duration_s`
    (exponential failures: 1 - exp(-rate * days) = fraction)."""
    if not 0 <= fraction < 1:
        raise BadInput(f"fraction of nodes failing must be in [0, 1) (got {fraction})")
    return -math.log1p(-fraction) / (duration_s / DAY_S)


def cluster_config(*, spares: int = 0, per_node_per_day: float = 0.0, days: float = 3.0) -> SimConfig:
    """The 256-GPU defaults: 32 nodes of 8 GPUs (a 16-node trainer, 16 one-node rollouts)."""
    return SimConfig(topology=Topology(spare_replicas=spares),
                     work=Work(duration_s=days * DAY_S),
                     failures=NodeFailures(per_node_per_day=per_node_per_day) if per_node_per_day > 0 else None,
                     times=RecoveryTimes(queue_cv=1.0))


def config_dict(cfg: SimConfig) -> dict[str, object]:
    """JSON-ready form of a config (enum keys and values as their strings), for `--json` outputs."""

    def conv(x: object) -> object:
        if isinstance(x, enum.Enum):
            return x.value
        if isinstance(x, Mapping):
            return {("/".join(conv(p) for p in k) if isinstance(k, tuple) else conv(k)): conv(v)
                    for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [conv(v) for v in x]
        if isinstance(x, float) and math.isinf(x):
            return None
        return x

    out: dict[str, object] = {}
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        if dataclasses.is_dataclass(v):
            out[f.name] = {"type": type(v).__name__} | {g.name: conv(getattr(v, g.name)) for g in dataclasses.fields(v)}
        else:
            out[f.name] = conv(v)
    return out
