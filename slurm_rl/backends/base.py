"""The contract every backend fills. The controller only talks to this interface.

A backend starts one *role job* per role replica (a Slurm job, or a local process group),
reports the state of all of a run's jobs and of the nodes in ONE batched poll, cancels jobs,
and injects faults for tests and benchmarks.
"""

from __future__ import annotations

import abc
import dataclasses
from pathlib import Path

from slurm_rl.states import FaultKind, JobState, NodeHealth, RoleKind


@dataclasses.dataclass(frozen=True, slots=True)
class Resources:
    """Scheduler resources of one role replica (ignored by the local backend except `cpus`)."""

    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    time_min: int = 60
    nodes: int = 1
    tasks_per_node: int = 1
    gpus_per_node: int = 0
    cpus_per_task: int = 1
    mem_gb: float | None = None
    gres: str | None = None
    constraint: str | None = None
    exclude: tuple[str, ...] = ()
    nodelist: tuple[str, ...] = ()
    additional: tuple[tuple[str, str], ...] = ()   # extra sbatch options, e.g. (("reservation", "rl"),)


@dataclasses.dataclass(frozen=True, slots=True)
class LaunchSpec:
    """One role job to start. `argv` is the command the job runs (the role worker)."""

    run_name: str
    run_dir: Path
    role: RoleKind
    index: int
    incarnation: int                     # bumps on every restart of the same slot
    argv: tuple[str, ...]
    resources: Resources
    env: tuple[tuple[str, str], ...] = ()
    extra_exclude: tuple[str, ...] = ()  # nodes the controller wants avoided (failed before)

    @property
    def job_name(self) -> str:
        return f"slurm-rl/{self.run_name}/{self.role.value}/{self.index}"

    @property
    def log_path(self) -> Path:
        return self.run_dir / "logs" / f"{self.role.value}-{self.index}.{self.incarnation}.log"


@dataclasses.dataclass(frozen=True, slots=True)
class JobStatus:
    job_id: str
    state: JobState
    nodes: tuple[str, ...] = ()
    exit_code: int | None = None     # process exit code when it ended normally (3 for `exit 3`)
    signal: int | None = None        # signal that ended it (9 for SIGKILL)
    reason: str = ""
    # the role process seen directly, where the backend can (local jobs); Slurm jobs send theirs
    # through the batch agent (slurm_rl.roles.agent) instead
    proc_state: str = ""             # /proc state letter: R, S, D, T ...
    cpu_s: float | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class NodeStatus:
    name: str
    health: NodeHealth
    state: str = ""                  # raw scheduler state, e.g. "mixed+drain", "down*"
    reason: str = ""


@dataclasses.dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything one poll learned. Jobs unknown to the scheduler are simply absent."""

    jobs: dict[str, JobStatus]
    nodes: dict[str, NodeStatus]


class Backend(abc.ABC):
    name: str = "abstract"

    @abc.abstractmethod
    def preflight(self) -> None:
        """Fail fast (BackendError / ConfigError) if this backend cannot run here."""

    @abc.abstractmethod
    def submit(self, spec: LaunchSpec) -> str:
        """Start the role job; returns its job id. Never blocks on the job starting."""

    @abc.abstractmethod
    def poll(self, job_ids: list[str]) -> Snapshot:
        """State of these jobs and of all nodes, with a bounded number of scheduler calls."""

    @abc.abstractmethod
    def cancel(self, job_ids: list[str]) -> None:
        """Cancel jobs (no error for jobs already gone)."""

    @abc.abstractmethod
    def inject(self, job_id: str, fault: FaultKind, *, exit_code: int = 1, node: str | None = None,
               pid: int | None = None) -> str:
        """Inject a fault into a running job; returns the node it hit (for the fault record). `node` and
        `pid` aim it at one rank of a multi-rank job: its node (node-down, drain), its process (crash,
        hang); without them the whole job (its first node)."""

    def survivors(self, run_name: str, job_ids: list[str]) -> dict[str, str]:
        """What of a stopped run still runs, after its jobs were cancelled: {key: what, for a message}.
        By default the jobs among `job_ids` the scheduler does not show ended."""
        snap = self.poll(job_ids)
        return {j: f"job {j} {s.state.value}" for j, s in snap.jobs.items() if s.state.active}

    def finish_off(self, survivors: dict[str, str]) -> None:
        """The last resort on what `survivors` found (by default: cancel those jobs again)."""
        self.cancel(list(survivors))

    def close(self) -> None:
        """Release resources held by the backend object (not the jobs)."""

    @property
    def call_counts(self) -> dict[str, int]:
        """Scheduler commands issued so far, by command name (for scheduler friendliness)."""
        return {}
