"""The Slurm backend: one batch job per role replica, batched polling, fault injection.

    backend = SlurmBackend(partitions=["gpu"])
    backend.preflight()                     # BackendError / ConfigError before anything is submitted
    job_id = backend.submit(spec)           # one sbatch
    snap = backend.poll([job_id, ...])      # <= 3 Slurm calls whatever the number of jobs
    backend.inject(job_id, FaultKind.CRASH) # returns the node hit
    backend.cancel([job_id, ...])           # one scancel

Fault injection:
  crash      `scancel --signal=KILL --batch JOB`: the batch step (which is our `exec srun`) dies
             of SIGKILL and Slurm SIGKILLs the role's tasks on every node with it; Slurm records
             FAILED 0:9, what a real crash (OOM killer, segfault of the launcher) looks like.
             Not `--full`: slurmctld treats SIGKILL to the whole job as a cancel (measured on
             22.05: CANCELLED, tasks get SIGTERM first), which would hide the crash.
  hang       `scancel --signal=STOP JOB.0`: SIGSTOP to the role's tasks (step 0, the `exec srun`
             step, on every node). The role is alive but silent and the job stays RUNNING: only
             heartbeats can tell, as with a real deadlock. Not `--full`: Slurm then marks the
             job STOPPED (reported as SUSPENDED), a hint a real hang never gives.
             `scancel` ends a hung job normally (measured: CANCELLED within a second).
  node-down  on the lab cluster (scripts/slurm-lab): `nodectl.sh crash NODE`, a real power loss
             (slurmd and every job process die; Slurm notices after SlurmdTimeout, ~19 s there).
             Elsewhere `scontrol update state=down`, which needs Slurm operator rights.
  drain      `scontrol update state=drain reason="slurm-rl inject"` (operator rights).
  exit       not a Slurm action: the controller tells the role over the control plane to exit
             with the code. Asking the Slurm backend raises BackendError saying so - a signal
             cannot carry an exit code, and a USR2 the role might not handle would fake a crash.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from slurm_rl.backends.base import Backend, LaunchSpec, Snapshot
from slurm_rl.errors import BackendError, ConfigError
from slurm_rl.slurm.parse import SqueueRecord
from slurm_rl.slurm.query import CommandResult, CommandRunner, JobWatcher, SlurmClient
from slurm_rl.slurm.submit import SubmittedJob, render_script, submit_spec
from slurm_rl.states import FaultKind, RoleKind

if TYPE_CHECKING:   # config pulls in pydantic; the backend must import without it for tests
    from slurm_rl.config import RunConfig
    from slurm_rl.rundir import RunDir

log = logging.getLogger("slurm_rl.slurm")

REQUIRED_COMMANDS: tuple[str, ...] = ("sbatch", "squeue", "sinfo", "scancel", "sacct", "scontrol")
INJECT_REASON = "slurm-rl inject"
LAB_ENV = "SLURM_RL_LAB"


def default_lab_dir() -> Path:
    """Where scripts/slurm-lab/cluster-up.sh puts the lab unless LAB is set."""
    return Path(os.environ.get("TMPDIR") or "/tmp") / "slurm-rl-lab"


def find_lab(slurm_conf: Path = Path("/etc/slurm/slurm.conf")) -> Path | None:
    """The running lab cluster's directory, or None on a real cluster.

    $SLURM_RL_LAB wins (and must hold nodectl.sh); otherwise the default lab dir counts only when
    the live slurm.conf was written by its cluster-up.sh - a stale lab dir on a real cluster's
    login node must never turn `node-down` into killing local processes.
    """
    env = os.environ.get(LAB_ENV)
    if env:
        lab = Path(env)
        if not (lab / "nodectl.sh").is_file():
            raise BackendError(f"{LAB_ENV}={env} has no nodectl.sh: the lab cluster is not up there",
                               hint="bring it up with scripts/slurm-lab/cluster-up.sh (LAB=... for another dir)")
        return lab
    lab = default_lab_dir()
    try:
        first = slurm_conf.read_text().splitlines()[0]
    except (OSError, IndexError):
        return None
    if (lab / "nodectl.sh").is_file() and first.endswith(f"LAB={lab}") and "slurm-rl" in first:
        return lab
    return None


class SlurmBackend(Backend):
    """Role jobs as Slurm batch jobs. `partitions`: the partitions the config names (None = default)."""

    name = "slurm"

    def __init__(self, *, partitions: Iterable[str | None] = (), runner: CommandRunner | None = None,
                 client: SlurmClient | None = None, timeout_s: float = 30.0, unknown_after_s: float = 30.0,
                 lab_dir: Path | None = None):
        self.client = client or SlurmClient(runner, timeout_s=timeout_s)
        self.watcher = JobWatcher(self.client, unknown_after_s=unknown_after_s)
        self.partitions = tuple(partitions)
        self._lab_dir = lab_dir
        self.submitted: dict[str, SubmittedJob] = {}

    @classmethod
    def from_config(cls, run: RunDir, cfg: RunConfig) -> SlurmBackend:
        """The backend of a run: the partitions of every role it starts (for preflight)."""
        del run   # everything per-run lives in the LaunchSpecs; kept for the backends' common shape
        return cls(partitions=_config_partitions(cfg))

    @classmethod
    def check(cls, cfg: RunConfig, *, runner: CommandRunner | None = None) -> None:
        """`slurm-rl launch`'s fail-fast: Slurm reachable, partitions exist, every role's sbatch
        options valid (a typo in `additional` is a ConfigError before any job is submitted)."""
        for role in _config_roles(cfg):
            spec = LaunchSpec(run_name=cfg.name or "check", run_dir=Path("/nonexistent/slurm-rl-check"),
                              role=role, index=0, incarnation=0, argv=("true",), resources=cfg.resources(role))
            render_script(spec)   # pure: validates, writes nothing
        cls(partitions=_config_partitions(cfg), runner=runner).preflight()

    # ------------------------------------------------------------------ Backend
    def preflight(self) -> None:
        """Slurm commands on PATH, slurmctld answering, and every configured partition existing."""
        missing = [c for c in REQUIRED_COMMANDS if shutil.which(c) is None]
        if missing:
            raise BackendError(
                f"Slurm command(s) not found on PATH: {', '.join(missing)}",
                hint="run on a Slurm login node, load Slurm (`module load slurm`), or use `--backend local`")
        self.client.ping()
        wanted = [p for p in self.partitions if p]
        if wanted or None in self.partitions:
            existing, default = self.client.partitions()
            unknown = sorted({p for p in wanted if p not in existing})
            if unknown:
                raise ConfigError(
                    f"Slurm partition(s) {', '.join(map(repr, unknown))} do not exist here; "
                    f"partitions are: {', '.join(existing) or '(none visible)'}",
                    where="slurm.partition / <role>.partition", hint="`sinfo -s` lists them")
            if None in self.partitions and default is None:
                raise ConfigError(
                    "a role has no partition and this cluster has no default partition; "
                    f"set slurm.partition (or the role's partition) to one of: {', '.join(existing)}",
                    where="slurm.partition")

    def submit(self, spec: LaunchSpec) -> str:
        """One sbatch; returns the job id. The script is kept in `<run_dir>/slurm/`."""
        job = submit_spec(self.client, spec)
        self.submitted[job.job_id] = job
        return job.job_id

    def poll(self, job_ids: list[str]) -> Snapshot:
        """One squeue + one sinfo (+ one sacct for jobs that left squeue unseen), for all jobs."""
        return self.watcher.poll(job_ids)

    def cancel(self, job_ids: list[str]) -> None:
        """One scancel for all of them; jobs that already ended are fine."""
        if job_ids:
            self.client.scancel([str(j) for j in job_ids])

    def inject(self, job_id: str, fault: FaultKind, *, exit_code: int = 1, node: str | None = None,
               pid: int | None = None) -> str:
        """Inject `fault` into the running job (see the module docstring); returns the node hit."""
        if fault is FaultKind.EXIT:
            raise BackendError(
                f"fault 'exit' (code {exit_code}) is delivered by the controller over the control plane, "
                "not by Slurm", hint="the controller sends the role an exit order; use crash/hang/node-down/drain here")
        job_node = self._job_node(job_id)
        target = node or job_node
        if fault in (FaultKind.CRASH, FaultKind.HANG) and pid is not None:
            self._signal_rank(job_id, target, pid, "KILL" if fault is FaultKind.CRASH else "STOP")
        elif fault is FaultKind.CRASH:
            self.client.scancel([job_id], signal="KILL", batch=True)
        elif fault is FaultKind.HANG:
            self.client.scancel([f"{job_id}.0"], signal="STOP")
        elif fault is FaultKind.NODE_DOWN:
            self._node_down(target)
        elif fault is FaultKind.DRAIN:
            self._scontrol_node(target, "drain")
        else:  # pragma: no cover - FaultKind grew a member
            raise BackendError(f"fault {fault} is not supported by the Slurm backend")
        log.info("[inject job=%s] %s on node %s", job_id, fault.value, target)
        return target

    def _signal_rank(self, job_id: str, node: str, pid: int, sig: str) -> None:
        """One rank's process: a step inside the job's allocation on that node sends the signal (scancel
        reaches whole steps only)."""
        res = self.client.run(["srun", f"--jobid={job_id}", "--overlap", f"--nodelist={node}", "--nodes=1",
                               "--ntasks=1", "--quiet", "kill", f"-{sig}", str(pid)], check=False)
        if not res.ok:
            raise BackendError(f"could not send SIG{sig} to process {pid} of job {job_id} on {node}: {res.describe()}")

    def survivors(self, run_name: str, job_ids: list[str]) -> dict[str, str]:
        """The jobs still pending, running or completing: those the store knows, and any job named after
        the run (a submission whose id was never recorded)."""
        out = super().survivors(run_name, job_ids)
        for r in self.find_run_jobs(run_name):
            if r.state.active:
                out.setdefault(r.job_id, f"job {r.job_id} ({r.name}) {r.state.value}")
        return out

    def find_run_jobs(self, run_name: str) -> list[SqueueRecord]:
        """This user's jobs of run `run_name` (named slurm-rl/<run>/...), from one squeue.

        For re-attaching or cleaning up when the job ids are not at hand (a lost state store).
        """
        return self.client.squeue_by_name_prefix(f"slurm-rl/{run_name}/")

    @property
    def call_counts(self) -> dict[str, int]:
        """Commands issued so far, by name (squeue, sinfo, sacct, sbatch, scancel, scontrol, ...)."""
        return self.client.call_counts

    # ------------------------------------------------------------------ helpers
    def _job_node(self, job_id: str) -> str:
        records = [r for r in self.client.squeue([job_id]) if job_id in (r.job_id, r.raw_id)]
        if not records or not records[0].state.active or not records[0].nodes:
            state = records[0].state.value if records else "not in squeue"
            raise BackendError(f"job {job_id} is not running ({state}): no process or node to inject a fault into")
        return records[0].nodes[0]

    def lab_dir(self) -> Path | None:
        """The lab cluster's directory when running on it (node-down then crashes a real node)."""
        return self._lab_dir or find_lab()

    def _node_down(self, node: str) -> None:
        lab = self.lab_dir()
        if lab is not None:
            res = self.client.run([str(lab / "nodectl.sh"), "crash", node], check=False)
            if not res.ok:
                raise BackendError(f"could not crash lab node {node}: {res.describe()}")
            # a crash that finds no node to kill exits 0 too: make sure its slurmd is gone
            if self.client.run([str(lab / "nodectl.sh"), "is-up", node], check=False).ok:
                raise BackendError(f"lab node {node} is still up after nodectl.sh crash",
                                   hint=f"see {lab}/nodectl.sh status; restart the lab with scripts/slurm-lab/cluster-up.sh")
            return
        self._scontrol_node(node, "down")

    def _scontrol_node(self, node: str, state: str) -> CommandResult:
        res = self.client.update_node([node], state, INJECT_REASON)
        if not res.ok:
            text = res.stderr + res.stdout
            if any(m in text for m in ("Access/permission denied", "Invalid user id", "Permission denied",
                                       "permission denied")):
                raise BackendError(
                    f"Slurm refused to set node {node} {state}: this needs Slurm operator rights "
                    f"(root, SlurmUser, or AdminLevel=Operator in sacctmgr): {res.describe()}",
                    hint="ask an admin, or inject crash/hang faults, which need no rights")
            raise self.client.error(res)
        return res


def _config_roles(cfg: RunConfig) -> list[RoleKind]:
    return [role for role in RoleKind if cfg.replicas(role) > 0]


def _config_partitions(cfg: RunConfig) -> list[str | None]:
    return list(dict.fromkeys(cfg.resources(role).partition for role in _config_roles(cfg)))


def partitions_of(specs: Sequence[LaunchSpec]) -> list[str | None]:
    """The partitions a set of specs asks for (None = the cluster's default), for SlurmBackend(partitions=...)."""
    return list(dict.fromkeys(s.resources.partition for s in specs))
