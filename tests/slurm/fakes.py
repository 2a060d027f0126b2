"""A scripted fake of the Slurm commands, for unit tests of the client, watcher and backend.

It answers in the exact formats the real commands print (see tests/slurm/data), keeps a job
table the test edits, and records every argv it was given.
"""

from __future__ import annotations

import dataclasses
import subprocess
from collections.abc import Mapping, Sequence

from slurm_rl.slurm import parse
from slurm_rl.slurm.query import CommandResult


@dataclasses.dataclass
class FakeJob:
    state: str = "RUNNING"
    wait_status: int = 0          # squeue exit_code (raw wait status)
    exit_code: str = "0:0"        # sacct ExitCode
    nodes: str = "n1"
    reason: str = "None"
    name: str = "slurm-rl/run/rollout/0"
    in_squeue: bool = True        # False: purged from slurmctld (MinJobAge passed)
    in_sacct: bool = True         # False: accounting lags


class FakeSlurm:
    """Callable runner: `SlurmClient(FakeSlurm())`."""

    def __init__(self) -> None:
        self.jobs: dict[str, FakeJob] = {}
        self.nodes: dict[str, tuple[str, str, str]] = {f"n{i}": ("idle", "idle", "none") for i in range(1, 5)}
        self.calls: list[tuple[str, ...]] = []
        self.envs: list[Mapping[str, str] | None] = []
        self.accounting = True
        self.missing: set[str] = set()        # commands "not installed"
        self.hang: set[str] = set()           # commands that time out
        self.responses: dict[str, CommandResult] = {}   # canned answers by command name
        self.next_id = 100

    def add(self, job_id: str, **kw: object) -> FakeJob:
        job = FakeJob(**kw)  # type: ignore[arg-type]
        self.jobs[job_id] = job
        return job

    def count(self, name: str) -> int:
        return sum(1 for c in self.calls if c[0] == name)

    def __call__(self, argv: Sequence[str], *, timeout: float, env: Mapping[str, str] | None = None) -> CommandResult:
        argv = tuple(argv)
        self.calls.append(argv)
        self.envs.append(env)
        name = argv[0].rsplit("/", 1)[-1]
        if name in self.missing:
            raise FileNotFoundError(2, "No such file or directory", argv[0])
        if name in self.hang:
            raise subprocess.TimeoutExpired(list(argv), timeout)
        if name in self.responses:
            r = self.responses[name]
            return CommandResult(argv, r.returncode, r.stdout, r.stderr)
        handler = getattr(self, "_" + name.replace(".", "_").replace("-", "_"), None)
        if handler is None:
            return CommandResult(argv, 0, "", "")
        return handler(argv)

    @staticmethod
    def _opt(argv: tuple[str, ...], key: str) -> str | None:
        for a in argv:
            if a.startswith(key + "="):
                return a.split("=", 1)[1]
        return None

    def _squeue(self, argv: tuple[str, ...]) -> CommandResult:
        ids = (self._opt(argv, "--jobs") or "").split(",")
        ids = [i for i in ids if i] or list(self.jobs)
        rows = [f"{j}|{j}|{job.state}|{job.wait_status}|{job.reason}|{job.nodes}|{job.name}"
                for j in ids if (job := self.jobs.get(j)) and job.in_squeue]
        if not rows and self._opt(argv, "--jobs"):
            return CommandResult(argv, 1, "", "slurm_load_jobs error: Invalid job id specified\n")
        return CommandResult(argv, 0, "".join(r + "\n" for r in rows), "")

    def _sacct(self, argv: tuple[str, ...]) -> CommandResult:
        if not self.accounting:
            return CommandResult(argv, 1, "", "sacct: error: Slurm accounting storage is disabled\n")
        ids = (self._opt(argv, "--jobs") or "").split(",")
        out = ["|".join(parse.SACCT_FIELDS)]
        for j in ids:
            job = self.jobs.get(j)
            if job and job.in_sacct:
                nodes = job.nodes or "None assigned"
                out.append(f"{j}|{j}|{job.state}|{job.exit_code}|{nodes}|{job.reason}|{job.name}")
        return CommandResult(argv, 0, "\n".join(out) + "\n", "")

    def _sinfo(self, argv: tuple[str, ...]) -> CommandResult:
        if any(a.startswith("--format=%P") for a in argv):
            return CommandResult(argv, 0, "main*\ngpu\n", "")
        rows = [f"{n}|{s}|{sl}|{r}" for n, (s, sl, r) in self.nodes.items()]
        return CommandResult(argv, 0, "".join(r + "\n" for r in rows), "")

    def _sbatch(self, argv: tuple[str, ...]) -> CommandResult:
        self.next_id += 1
        job_id = str(self.next_id)
        self.jobs[job_id] = FakeJob(state="PENDING", nodes="")
        return CommandResult(argv, 0, f"{job_id}\n", "")

    def _scontrol(self, argv: tuple[str, ...]) -> CommandResult:
        if argv[1:2] == ("ping",):
            return CommandResult(argv, 0, "Slurmctld(primary) at ctl is UP\n", "")
        return CommandResult(argv, 0, "", "")
