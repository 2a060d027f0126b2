"""What the recovery policy sees and what it answers: the frozen snapshot of every role slot
(`View`, `SlotView`), the thresholds, the measured start times, and the actions `decide` returns."""

from __future__ import annotations

import dataclasses
import enum
import statistics
from collections import deque
from collections.abc import Mapping, Sequence

from slurm_rl.states import JobState, NodeHealth, Phase, RoleKind, RoleState


class ProbeResult(str, enum.Enum):
    OK = "ok"                  # something accepts connections on the role's endpoint
    REFUSED = "refused"        # host answers, nothing listens: the process is gone
    TIMEOUT = "timeout"        # no answer at all: node gone or network cut
    UNKNOWN = "unknown"        # no endpoint to probe yet

    @property
    def confirms_death(self) -> bool:
        return self in (ProbeResult.REFUSED, ProbeResult.TIMEOUT)


@dataclasses.dataclass(frozen=True, slots=True)
class SlotView:
    """What the controller knows about one role slot (e.g. rollout/1) right now."""

    kind: RoleKind
    index: int
    state: RoleState
    incarnation: int
    job_id: str | None = None
    node: str | None = None
    connected: bool = False
    phase: Phase = Phase.LOADING
    last_hb: float | None = None          # last message from the current incarnation
    progress_at: float | None = None      # last change of progress counter or phase
    suspect_since: float | None = None
    suspect_reason: str = ""
    probe: ProbeResult | None = None      # newest probe result
    probe_at: float | None = None
    probe_pending: bool = False
    link_lost_at: float | None = None     # the controller's idle connection to the process ended
    proc_state: str = ""                  # the process seen by its job's batch agent: R, S, D, T...
    proc_at: float | None = None          # when that was seen
    cpu_moved_at: float | None = None     # last time the agent saw the process use CPU
    job_state: JobState | None = None
    job_running_since: float | None = None
    job_exit: str = ""                    # "exit 3" / "signal 9" for messages
    node_health: NodeHealth = NodeHealth.OK
    version: int = -1                     # weight version held (valid lineage only; -1 none)
    restarts_in_window: int = 0
    moving: bool = False                  # a graceful move (drain) is under way
    reserved_for: str | None = None       # a spare promised to a moving/dead slot
    stop_requested: bool = False          # we asked it to stop (drain handoff)
    goodbye: bool = False                 # it said goodbye (graceful stop done)
    extra: bool = False                   # a spare added for a move; not backfilled
    starting_since: float | None = None   # its job was submitted then and has not been ready since
    shape: tuple[int, int] = (1, 1)       # its job: (nodes, ranks per node)
    nodes: tuple[str, ...] = ()           # every node its ranks run on (node is the first), where known

    @property
    def slot(self) -> str:
        return f"{self.kind.value}/{self.index}"

    @property
    def all_nodes(self) -> frozenset[str]:
        return frozenset(self.nodes or ((self.node,) if self.node else ()))

    @property
    def ready(self) -> bool:
        return self.state is RoleState.READY and self.connected and not self.moving


@dataclasses.dataclass(frozen=True, slots=True)
class Thresholds:
    suspect_after_s: float
    hang_after_s: float
    phase_timeouts: Mapping[Phase, float]
    restart_budget: int
    exclude_node_after: int
    max_full_restarts: int
    standby: str                          # spare-then-rollout | spare-only | none
    full_restart_policy: bool             # recovery.policy == full-restart
    spare_replicas: int
    hang_idle_after_s: float = 5.0
    use_process_state: bool = True
    stopped_after_s: float = 0.5          # silence that, with the process seen stopped, is a hang


@dataclasses.dataclass(frozen=True, slots=True)
class View:
    slots: Sequence[SlotView]
    thresholds: Thresholds
    committed_version: int = 0
    full_restarts: int = 0
    node_failures: Mapping[str, int] = dataclasses.field(default_factory=dict)
    excluded_nodes: frozenset[str] = frozenset()
    restarting: bool = False              # a full restart is under way: no per-role decisions
    stopping: bool = False
    # measured submission -> ready, this run (StartTimes.estimates): TRAINER a cold trainer,
    # ROLLOUT an engine (rollout or spare); absent until seen once
    start_s: Mapping[RoleKind, float] = dataclasses.field(default_factory=dict)
    trainer_shape: tuple[int, int] = (1, 1)   # (nodes, ranks per node): a standby must have it to take over
    # why a standby of a kind cannot become the trainer (shape, GPUs, memory, gres, constraint:
    # RunConfig.standby_misfit); a kind absent or "" can
    standby_misfit: Mapping[RoleKind, str] = dataclasses.field(default_factory=dict)


class StartTimes:
    """How long this run's jobs took from submission to ready: the median of the newest few, for a
    cold trainer and for an engine (rollouts and spares both start one). Bookkeeping without I/O,
    fed by the controller and by the simulator alike."""

    def __init__(self, keep: int = 8):
        self._seen: dict[RoleKind, deque[float]] = {}
        self._keep = keep

    @staticmethod
    def _key(kind: RoleKind) -> RoleKind:
        return RoleKind.TRAINER if kind is RoleKind.TRAINER else RoleKind.ROLLOUT

    def add(self, kind: RoleKind, seconds: float) -> None:
        if seconds >= 0:
            self._seen.setdefault(self._key(kind), deque(maxlen=self._keep)).append(seconds)

    def estimates(self) -> dict[RoleKind, float]:
        return {k: statistics.median(v) for k, v in self._seen.items() if v}


# ------------------------------------------------------------------------------- actions


@dataclasses.dataclass(frozen=True, slots=True)
class Action:
    reason: str


@dataclasses.dataclass(frozen=True, slots=True)
class Suspect(Action):
    slot: str


@dataclasses.dataclass(frozen=True, slots=True)
class Clear(Action):
    slot: str


@dataclasses.dataclass(frozen=True, slots=True)
class Probe(Action):
    slot: str


@dataclasses.dataclass(frozen=True, slots=True)
class Dead(Action):
    slot: str
    signals: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True, slots=True)
class ExcludeNode(Action):
    node: str


@dataclasses.dataclass(frozen=True, slots=True)
class PromoteSpare(Action):
    """A warm spare takes over a rollout slot (no queue wait, weights already held)."""

    spare: str
    target: str
    awaited: bool = False                 # the slot waited for this spare to finish starting (AwaitSpare)


@dataclasses.dataclass(frozen=True, slots=True)
class AwaitSpare(Action):
    """A dead rollout's slot waits for a spare that is still starting: promoted once ready."""

    spare: str
    target: str


@dataclasses.dataclass(frozen=True, slots=True)
class PromoteTrainer(Action):
    """A warm standby (spare or rollout) becomes the trainer at the newest committed step."""

    standby: str
    resume_step: int


@dataclasses.dataclass(frozen=True, slots=True)
class Submit(Action):
    """Start a new job (next incarnation) for a slot, avoiding `exclude` nodes."""

    slot: str
    exclude: tuple[str, ...] = ()
    backfill: bool = False


@dataclasses.dataclass(frozen=True, slots=True)
class AddSpare(Action):
    """Start an extra spare so a role on a draining node can be handed over."""

    for_slot: str


@dataclasses.dataclass(frozen=True, slots=True)
class StartMove(Action):
    """Node drains: ask the role to stop gracefully; `spare` takes over once it has."""

    slot: str
    spare: str


@dataclasses.dataclass(frozen=True, slots=True)
class FinishMove(Action):
    slot: str
    spare: str


@dataclasses.dataclass(frozen=True, slots=True)
class FullRestart(Action):
    pass


@dataclasses.dataclass(frozen=True, slots=True)
class StopRun(Action):
    failed: bool = True
