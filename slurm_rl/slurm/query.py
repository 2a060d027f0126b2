"""Talking to Slurm: a command client with an injectable runner, and the batched job watcher.

Every Slurm command slurm-rl issues goes through `SlurmClient.run`, which counts calls by command
name (the scheduler-friendliness metric) and turns "not installed", "timed out" and "slurmctld
does not answer" into `BackendError`s that say what to do. Tests pass a fake runner to count
and script calls without a cluster.

`JobWatcher.poll(job_ids)` costs a bounded number of calls whatever the number of role jobs:
one `squeue` for all of them, one `sinfo` for all nodes, and - only when some job has left
slurmctld's memory before we saw its end - one `sacct` for those jobs.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import os
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Protocol

from slurm_rl.backends.base import JobStatus, NodeStatus, Snapshot
from slurm_rl.errors import BackendError
from slurm_rl.slurm import parse
from slurm_rl.states import JobState

log = logging.getLogger("slurm_rl.slurm")

SLURM_COMMANDS: tuple[str, ...] = ("sbatch", "squeue", "sinfo", "scancel", "sacct", "scontrol")


@dataclasses.dataclass(frozen=True, slots=True)
class CommandResult:
    """What one command did."""

    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def describe(self) -> str:
        """`squeue ... -> rc 1: <stderr>` for error messages."""
        msg = (self.stderr.strip() or self.stdout.strip())[:500]
        return f"`{' '.join(self.argv)}` exited {self.returncode}: {msg or '(no output)'}"


class CommandRunner(Protocol):
    """Runs argv (with `env`, or this process's environment when None) and returns its result.
    Raise FileNotFoundError when the command does not exist and subprocess.TimeoutExpired on
    timeout (SlurmClient turns both into BackendError)."""

    def __call__(self, argv: Sequence[str], *, timeout: float,
                 env: Mapping[str, str] | None = None) -> CommandResult: ...


def subprocess_runner(argv: Sequence[str], *, timeout: float, env: Mapping[str, str] | None = None) -> CommandResult:
    """The real runner: no shell, text output, C locale so messages are the ones we match on."""
    full_env = dict(os.environ if env is None else env, LC_ALL="C")
    proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, env=full_env,
                          stdin=subprocess.DEVNULL, check=False)
    return CommandResult(tuple(argv), proc.returncode, proc.stdout, proc.stderr)


# Variables a job leaks into a job it submits (the controller may itself run as a Slurm job).
# SBATCH_* would even override the role script's #SBATCH lines (env beats script for sbatch),
# and a leaked SLURM_MEM_PER_CPU makes the role's srun fail next to its own --mem. Same list as
# submitit.helpers.clean_env, which mutates os.environ instead; SLURM_CONF is kept: some
# clusters need it to find slurm.conf.
_JOB_ENV_PREFIXES = ("SLURM_", "SLURMD_", "SRUN_", "SBATCH_", "SALLOC_", "SUBMITIT_")
_DISTRIBUTED_ENV = frozenset({"MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"})


def submission_env(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment to run sbatch with: ours, minus what a surrounding Slurm job would leak."""
    env = os.environ if environ is None else environ
    return {k: v for k, v in env.items()
            if k == "SLURM_CONF" or not (k.startswith(_JOB_ENV_PREFIXES) or k in _DISTRIBUTED_ENV)}


# stderr of a Slurm client that could not reach slurmctld (22.05 wording, plus older ones)
_UNREACHABLE = ("Unable to contact slurm controller", "Socket timed out", "Connection refused",
                "Zero Bytes were transmitted or received", "Communication connection failure")


class SlurmClient:
    """Typed wrappers around the Slurm commands slurm-rl uses, one method per command shape."""

    def __init__(self, runner: CommandRunner | None = None, *, timeout_s: float = 30.0):
        self._runner: CommandRunner = runner or subprocess_runner
        self.timeout_s = timeout_s
        self._counts: collections.Counter[str] = collections.Counter()
        self._lock = threading.Lock()   # the controller submits from worker threads while it polls

    @property
    def call_counts(self) -> dict[str, int]:
        """Commands issued so far by name, e.g. {"squeue": 12, "sinfo": 12, "sacct": 1}."""
        with self._lock:
            return dict(self._counts)

    def run(self, argv: Sequence[str], *, check: bool = True, env: Mapping[str, str] | None = None) -> CommandResult:
        """Run one Slurm command. With check=True a non-zero exit raises BackendError."""
        name = Path(argv[0]).name
        with self._lock:
            self._counts[name] += 1
        log.debug("run: %s", " ".join(argv))
        try:
            result = self._runner(argv, timeout=self.timeout_s, env=env)
        except FileNotFoundError as e:
            raise BackendError(
                f"`{name}` not found on PATH: Slurm's client commands are not installed here",
                hint="run slurm-rl on a Slurm login node, load the Slurm module (`module load slurm`), "
                     "or use `--backend local`") from e
        except subprocess.TimeoutExpired as e:
            raise BackendError(
                f"`{' '.join(argv)}` did not answer within {self.timeout_s:.0f} s: slurmctld is down or overloaded",
                hint="check `scontrol ping`; slurm-rl retries on the next poll") from e
        except OSError as e:
            raise BackendError(f"cannot run `{name}`: {e}") from e
        if check and not result.ok:
            raise self.error(result)
        return result

    @staticmethod
    def error(result: CommandResult) -> BackendError:
        """The BackendError for a failed command, with a hint when slurmctld is unreachable."""
        text = result.stderr + result.stdout
        if any(m in text for m in _UNREACHABLE):
            return BackendError(f"slurmctld does not answer: {result.describe()}",
                                hint="check `scontrol ping` and that slurmctld is running")
        return BackendError(result.describe())

    # ------------------------------------------------------------------ queries
    def squeue(self, job_ids: Sequence[str]) -> list[parse.SqueueRecord]:
        """One `squeue` for these jobs, finished ones included while slurmctld still holds them."""
        if not job_ids:
            return []
        res = self.run(["squeue", "--noheader", "--states=all", f"--jobs={','.join(job_ids)}",
                        f"--Format={parse.SQUEUE_FORMAT}"], check=False)
        if not res.ok:
            # 22.05 fails the whole call when *every* id is unknown (all purged after MinJobAge)
            if "Invalid job id specified" in res.stderr:
                return []
            raise self.error(res)
        return parse.parse_squeue(res.stdout)

    def squeue_by_name_prefix(self, prefix: str, user: str | None = None) -> list[parse.SqueueRecord]:
        """One `squeue` for the user's jobs whose name starts with `prefix` (e.g. `slurm-rl/run1/`).

        Slurm filters names only exactly, so the prefix is matched here; used to find a run's
        jobs when their ids are not known (a lost state store).
        """
        argv = ["squeue", "--noheader", "--states=all", f"--Format={parse.SQUEUE_FORMAT}"]
        argv.append(f"--user={user}" if user else "--me")
        res = self.run(argv)
        return [r for r in parse.parse_squeue(res.stdout) if r.name.startswith(prefix)]

    def sacct(self, job_ids: Sequence[str]) -> list[parse.SacctRecord] | None:
        """One `sacct -X --parsable2` for these jobs; None when accounting is disabled here."""
        if not job_ids:
            return []
        res = self.run(["sacct", "--allocations", "--parsable2", f"--jobs={','.join(job_ids)}",
                        f"--format={','.join(parse.SACCT_FIELDS)}"], check=False)
        if not res.ok:
            if "accounting storage is disabled" in res.stderr.lower():
                return None
            raise self.error(res)
        return parse.parse_sacct(res.stdout)

    def sinfo(self) -> list[parse.SinfoRecord]:
        """One `sinfo` for every node of the cluster."""
        res = self.run(["sinfo", "--noheader", "--Node", f"--Format={parse.SINFO_FORMAT}"])
        return parse.parse_sinfo(res.stdout)

    def partitions(self) -> tuple[list[str], str | None]:
        """Partitions this user can see and the default one (one `sinfo`)."""
        return parse.parse_partitions(self.run(["sinfo", "--noheader", "--format=%P"]).stdout)

    def ping(self) -> None:
        """`scontrol ping`; BackendError unless the primary or backup slurmctld is UP."""
        res = self.run(["scontrol", "ping"], check=False)
        if "is UP" not in res.stdout:
            raise BackendError(f"slurmctld does not answer: {res.describe()}",
                               hint="check that slurmctld is running and SLURM_CONF points at its slurm.conf")

    # ------------------------------------------------------------------ actions
    def sbatch(self, script: Path) -> str:
        """Submit a batch script; returns the job id. Failures come back as the CommandResult's error."""
        res = self.run(["sbatch", "--parsable", str(script)], check=False, env=submission_env())
        if not res.ok:
            raise SbatchRejected(res)
        return parse.parse_sbatch_job_id(res.stdout)

    def scancel(self, job_ids: Sequence[str], *, signal: str | None = None, full: bool = False,
                batch: bool = False) -> CommandResult:
        """One `scancel` for many jobs (`--full`: every step and the batch step; `--batch`: only
        the batch step). Unknown/finished ids are not an error (logged)."""
        argv = ["scancel"]
        if signal:
            argv.append(f"--signal={signal}")
        if full:
            argv.append("--full")
        if batch:
            argv.append("--batch")
        res = self.run([*argv, *job_ids], check=False)
        if not res.ok:
            # scancel exits 1 with "Invalid job id" / "Job/step already completing or completed"
            # for ids that already ended; anything else (permission, controller) is real.
            lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
            benign = ("Invalid job id", "already completing or completed", "Job has already finished")
            if not lines or not all(any(b in ln for b in benign) for ln in lines):
                raise self.error(res)
            log.debug("scancel: some jobs had already ended: %s", res.stderr.strip())
        return res

    def update_node(self, nodes: Sequence[str], state: str, reason: str) -> CommandResult:
        """`scontrol update nodename=... state=... reason=...` (operator rights needed); not checked."""
        return self.run(["scontrol", "update", f"nodename={','.join(nodes)}", f"state={state}",
                         f"reason={reason}"], check=False)


class SbatchRejected(BackendError):
    """sbatch refused a job; `result` holds its output (submit.py classifies it)."""

    def __init__(self, result: CommandResult):
        super().__init__(result.describe())
        self.result = result


# ------------------------------------------------------------------------------------ watcher
@dataclasses.dataclass(slots=True)
class _Missing:
    since: float
    polls: int = 0


class JobWatcher:
    """Batched poller of a run's jobs and the cluster's nodes.

    Per poll: one squeue (all live jobs), one sinfo, and at most one sacct (only jobs that left
    squeue without us seeing their end). Final states are cached, so a finished job costs nothing
    on later polls - our jobs never requeue (--no-requeue), so terminal is final.

    A job missing from both squeue and sacct (sacct lags behind slurmctld, or accounting is off)
    is asked about again on the next polls; after `unknown_after_s` and `unknown_after_polls` it is
    reported UNKNOWN for good, so the controller can decide with the other signals.
    """

    def __init__(self, client: SlurmClient, *, unknown_after_s: float = 30.0, unknown_after_polls: int = 3,
                 clock: Callable[[], float] = time.monotonic):
        self.client = client
        self.unknown_after_s = unknown_after_s
        self.unknown_after_polls = unknown_after_polls
        self._clock = clock
        self._final: dict[str, JobStatus] = {}
        self._missing: dict[str, _Missing] = {}
        self._accounting = True   # flips off the first time sacct says accounting is disabled

    def forget(self, job_ids: Iterable[str]) -> None:
        """Drop cached final states (a job id reused by a later test cluster, say)."""
        for j in job_ids:
            self._final.pop(j, None)
            self._missing.pop(j, None)

    def poll(self, job_ids: Sequence[str]) -> Snapshot:
        """State of these jobs and of every node: <= 3 Slurm calls, whatever len(job_ids)."""
        ids = list(dict.fromkeys(str(j) for j in job_ids))
        for j in ids:
            if j not in self._final and not parse.is_job_id(j):
                # never hand Slurm something it would fail the whole batched call on
                self._final[j] = JobStatus(job_id=j, state=JobState.UNKNOWN, reason="not a Slurm job id")
        jobs: dict[str, JobStatus] = {j: self._final[j] for j in ids if j in self._final}
        live = [j for j in ids if j not in self._final]
        if live:
            jobs.update(self._poll_live(live))
        nodes: dict[str, NodeStatus] = {r.name: r.to_status() for r in self.client.sinfo()}
        return Snapshot(jobs=jobs, nodes=nodes)

    def _poll_live(self, live: list[str]) -> dict[str, JobStatus]:
        out: dict[str, JobStatus] = {}
        seen = parse.statuses(self.client.squeue(live))
        gone: list[str] = []
        for j in live:
            st = seen.get(j)
            if st is None:
                gone.append(j)
                continue
            self._missing.pop(j, None)
            out[j] = st
            if st.state.terminal:
                # squeue's exit_code is the real wait status once the job ended: no sacct needed
                self._final[j] = st
        if not gone:
            return out
        now = self._clock()
        found: dict[str, JobStatus] = {}
        if self._accounting:
            records = self.client.sacct(gone)
            if records is None:
                log.info("Slurm accounting is disabled: jobs that left squeue are reported UNKNOWN")
                self._accounting = False
            else:
                found = parse.statuses(records)
        for j in gone:
            st = found.get(j)
            if st is not None:
                self._missing.pop(j, None)
                out[j] = st
                if st.state.terminal:
                    self._final[j] = st
                continue
            miss = self._missing.setdefault(j, _Missing(since=now))
            miss.polls += 1
            waited = now - miss.since
            if not self._accounting or (waited >= self.unknown_after_s and miss.polls >= self.unknown_after_polls):
                st = JobStatus(job_id=j, state=JobState.UNKNOWN,
                               reason="gone from squeue and not in sacct" if self._accounting
                               else "gone from squeue; accounting disabled")
                self._final[j] = st
                self._missing.pop(j, None)
                out[j] = st
                log.warning("job %s: no record in squeue or sacct after %.0f s, reported UNKNOWN", j, waited)
            # else: absent from this snapshot; asked again next poll (sacct lags)
        return out
