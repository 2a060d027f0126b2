"""One role slot as the controller keeps it: identity, job, liveness and weight state.

Mutable and owned by the registry; the policy sees each as a frozen `SlotView`."""

from __future__ import annotations

from dataclasses import dataclass, field

from slurm_rl import protocol as P
from slurm_rl.backends.base import JobStatus
from slurm_rl.controller.view import ProbeResult
from slurm_rl.states import Phase, RoleKind, RoleState


@dataclass
class RankSeen:
    """A rank > 0 of a multi-rank role (rank 0 is the slot's own record): what says it is alive."""

    node: str | None
    pid: int | None
    live_addr: str = ""
    last_hb: float | None = None
    link_lost_at: float | None = None
    sync_addrs: dict[str, str] = field(default_factory=dict)   # serves its part of each version
    host_id: str = ""


@dataclass
class Slot:
    """Controller-side record of one role slot (mutable; the policy sees a frozen SlotView)."""

    kind: RoleKind
    index: int
    state: RoleState = RoleState.PENDING
    incarnation: int = 0
    job_id: str | None = None
    node: str | None = None
    pid: int | None = None
    host_id: str = ""
    connected: bool = False
    phase: Phase = Phase.LOADING
    phase_since: float | None = None
    progress: int = 0
    detail: str = ""
    last_hb: float | None = None
    progress_at: float | None = None
    suspect_since: float | None = None
    suspect_reason: str = ""
    state_before_suspect: RoleState = RoleState.STARTING
    probe: ProbeResult | None = None
    probe_at: float | None = None
    probe_pending: bool = False
    job: JobStatus | None = None
    job_running_since: float | None = None
    version: int = -1                 # held weight version (valid lineage), -1 none
    parts: int = 1                    # the parts that version is in (slurm_rl.sync.parts)
    sync_addrs: dict[str, str] = field(default_factory=dict)
    live_addr: str = ""               # the role process's liveness port (slurm_rl.liveness)
    link_lost_at: float | None = None  # when the controller's connection to it ended
    proc_state: str = ""              # the process as its job's batch agent last saw it (P.Pulse)
    proc_at: float | None = None
    proc_cpu: float | None = None     # CPU seconds at cpu_moved_at
    cpu_moved_at: float | None = None
    restarts: list[float] = field(default_factory=list)
    moving: bool = False
    reserved_for: str | None = None
    stop_requested: bool = False
    goodbye: bool = False
    extra: bool = False
    commands: list[P.Command] = field(default_factory=list)
    assign: P.Command | None = None
    fault_ids: list[int] = field(default_factory=list)   # open faults this slot's incarnation recovers from
    submitted_at: float | None = None
    submitted_inc: int = -1           # the incarnation submitted then, until it is ready (a start sample)
    submit_retry_at: float | None = None
    submit_failures: int = 0
    exclude: tuple[str, ...] = ()
    world_size: int = 1               # ranks of its job (a multi-rank trainer), as rank 0 said
    rdzv: str = ""                    # rank 0's process-group store, for the other ranks
    ranks: dict[int, RankSeen] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"{self.kind.value}/{self.index}"

    def holder(self) -> str:
        return f"{self.name}#{self.incarnation}"

    def reset_runtime(self) -> None:
        self.connected = False
        self.phase = Phase.LOADING
        self.phase_since = None
        self.progress = 0
        self.detail = ""
        self.last_hb = None
        self.progress_at = None
        self.job_running_since = None
        self.suspect_since = None
        self.suspect_reason = ""
        self.probe = None
        self.probe_at = None
        self.probe_pending = False
        self.job = None
        self.version = -1
        self.sync_addrs = {}
        self.live_addr = ""
        self.link_lost_at = None
        self.proc_state = ""
        self.proc_at = self.proc_cpu = self.cpu_moved_at = None
        self.moving = False
        self.stop_requested = False
        self.goodbye = False
        self.commands = []
        self.pid = None
        self.node = None
        self.host_id = ""
        self.world_size = 1
        self.parts = 1                  # the parts of the version it holds (slurm_rl.sync.parts)
        self.rdzv = ""
        self.ranks = {}

    def nodes(self) -> list[str]:
        """The distinct nodes its ranks run on, rank 0's first."""
        out = [self.node] if self.node else []
        for r in sorted(self.ranks):
            n = self.ranks[r].node
            if n and n not in out:
                out.append(n)
        return out



def exit_text(js: JobStatus | None) -> str:
    """How a job ended, for messages: "signal 9", "exit 3", else the scheduler's reason."""
    if js is None:
        return ""
    if js.signal:
        return f"signal {js.signal}"
    if js.exit_code is not None and js.state.terminal:
        return f"exit {js.exit_code}"
    return js.reason
