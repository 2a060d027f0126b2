"""The embedded default backend: role jobs are local process groups spread over fake nodes.

The same controller and recovery code run on it as on Slurm. Jobs get Slurm-like states
(RUNNING, COMPLETED, FAILED with an exit code or a signal, CANCELLED), and a handful of named
fake nodes (`local1..localN`) let node faults be exercised on a laptop: `node-down` kills every
role job on the node and keeps it DOWN for `local.node_down_s`; `drain` marks it DRAIN.

Job records live in `<run>/jobs/<id>.json` so a restarted controller (`slurm-rl resume`)
re-attaches to processes it did not start; a role writes `<id>.exit` when it exits normally, so
the exit code of a re-attached job is known too.

Its job poll also reads each running role process's /proc state and CPU time, what a Slurm
job's batch agent reports, for hang detection.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

from slurm_rl.backends.base import Backend, JobStatus, LaunchSpec, NodeStatus, Snapshot
from slurm_rl.config import LocalConfig
from slurm_rl.errors import BackendError
from slurm_rl.roles.agent import proc_state
from slurm_rl.states import FaultKind, JobState, NodeHealth

log = logging.getLogger("slurm_rl.backends.local")


@dataclass
class _Job:
    job_id: str
    pid: int
    create_time: float
    node: str
    cancelled: bool = False
    proc: subprocess.Popen[bytes] | None = None
    nodes: tuple[str, ...] = ()          # every node of a multi-node job (node is the first)

    @property
    def all_nodes(self) -> tuple[str, ...]:
        return self.nodes or (self.node,)


# how long a cancel waits for SIGKILLed jobs to be gone
_KILLED_GONE_S = 15.0


def _group_alive(pgid: int) -> bool:
    """Whether a process of the group is left that is not a zombie (orphans are reaped late on some
    machines, and a zombie runs nothing)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    for p in psutil.process_iter(["status"]):
        try:
            if os.getpgid(p.pid) == pgid and p.info["status"] != psutil.STATUS_ZOMBIE:
                return True
        except (OSError, psutil.Error):
            continue
    return False


class LocalBackend(Backend):
    name = "local"

    def __init__(self, run_dir: Path, cfg: LocalConfig):
        self.dir = run_dir / "jobs"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.cfg = cfg
        self.nodes = [f"local{i}" for i in range(1, cfg.nodes + 1)]
        self._lock = threading.RLock()
        self._jobs: dict[str, _Job] = {}
        self._node_file = self.dir / "nodes.json"
        self._calls: dict[str, int] = {}
        self._load()

    # ---------------------------------------------------------------- persistence
    def _load(self) -> None:
        for f in self.dir.glob("*.json"):
            if f.name == "nodes.json":
                continue
            try:
                d = json.loads(f.read_text())
                self._jobs[d["job_id"]] = _Job(d["job_id"], d["pid"], d["create_time"], d["node"],
                                               d.get("cancelled", False), nodes=tuple(d.get("nodes", ())))
            except (OSError, ValueError, KeyError):
                continue

    def _save(self, job: _Job) -> None:
        tmp = self.dir / f"{job.job_id}.json.tmp"
        tmp.write_text(json.dumps({"job_id": job.job_id, "pid": job.pid, "create_time": job.create_time,
                                   "node": job.node, "cancelled": job.cancelled, "nodes": list(job.nodes)}))
        os.replace(tmp, self.dir / f"{job.job_id}.json")

    def _node_states(self) -> dict[str, dict[str, float | str]]:
        try:
            return json.loads(self._node_file.read_text())
        except (OSError, ValueError):
            return {}

    def _set_node(self, node: str, **state: float | str) -> None:
        states = self._node_states()
        states[node] = state
        tmp = self._node_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(states))
        os.replace(tmp, self._node_file)

    def _health(self, node: str, now: float) -> tuple[NodeHealth, str]:
        st = self._node_states().get(node)
        if not st:
            return NodeHealth.OK, ""
        if st.get("state") == "down" and float(st.get("until", 0)) > now:
            return NodeHealth.DOWN, str(st.get("reason", ""))
        if st.get("state") == "drain":
            return NodeHealth.DRAIN, str(st.get("reason", ""))
        return NodeHealth.OK, ""

    def _count(self, name: str) -> None:
        self._calls[name] = self._calls.get(name, 0) + 1

    # ---------------------------------------------------------------- Backend
    def preflight(self) -> None:
        return None

    def _pick_nodes(self, spec: LaunchSpec) -> tuple[str, ...]:
        """`resources.nodes` distinct nodes where there are enough, the least loaded first."""
        picked: list[str] = []
        for _ in range(spec.resources.nodes):
            picked.append(self._pick_node(spec, avoid=set(picked) if len(picked) < len(self.nodes) else set()))
        return tuple(picked)

    def _pick_node(self, spec: LaunchSpec, avoid: set[str] | None = None) -> str:
        now = time.time()
        taken = avoid or set()
        avoid = set(spec.resources.exclude) | set(spec.extra_exclude) | taken
        wanted = [n for n in self.nodes if not spec.resources.nodelist or n in spec.resources.nodelist]
        load = {n: 0 for n in self.nodes}
        for j in self._jobs.values():
            if self._alive(j):
                for n in j.all_nodes:
                    load[n] = load.get(n, 0) + 1
        ok = [n for n in wanted if self._health(n, now)[0] is NodeHealth.OK and n not in avoid]
        if not ok:
            # every node is excluded or unhealthy: a real scheduler would queue; we take the least bad
            ok = [n for n in wanted if self._health(n, now)[0] is not NodeHealth.DOWN and n not in taken] \
                or wanted or self.nodes
        return min(ok, key=lambda n: (load.get(n, 0), self.nodes.index(n) if n in self.nodes else 0))

    def submit(self, spec: LaunchSpec) -> str:
        with self._lock:
            self._count("submit")
            job_id = f"L{spec.incarnation}-{spec.role.value}{spec.index}-{os.getpid()}-{time.monotonic_ns() % 10**9}"
            nodes = self._pick_nodes(spec)
            node = nodes[0]
            env = dict(os.environ)
            env.update(dict(spec.env))
            env.update(SLURM_RL_JOB_ID=job_id, SLURM_RL_NODE=node, SLURM_RL_EXIT_FILE=str(self.dir / f"{job_id}.exit"),
                       SLURM_RL_PID_FILE=str(self.dir / f"{job_id}.pid"))
            argv = list(spec.argv)
            r = spec.resources
            if r.nodes * r.tasks_per_node > 1:      # the ranks of one job, as srun starts them
                argv = [sys.executable, "-m", "slurm_rl.roles.ranks", "--ntasks", str(r.nodes * r.tasks_per_node),
                        "--tasks-per-node", str(r.tasks_per_node), "--nodes", ",".join(nodes), "--", *argv]
            spec.log_path.parent.mkdir(parents=True, exist_ok=True)
            with open(spec.log_path, "ab") as out:
                try:
                    proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, env=env, cwd=str(spec.run_dir),
                                            start_new_session=True)
                except OSError as e:
                    raise BackendError(f"cannot start {spec.argv[0]}: {e}") from None
            try:
                ct = psutil.Process(proc.pid).create_time()
            except psutil.Error:
                ct = 0.0
            job = _Job(job_id, proc.pid, ct, node, proc=proc, nodes=nodes if len(nodes) > 1 else ())
            self._jobs[job_id] = job
            self._save(job)
            return job_id

    def _alive(self, j: _Job) -> bool:
        if j.proc is not None:
            return j.proc.poll() is None
        try:
            p = psutil.Process(j.pid)
            return abs(p.create_time() - j.create_time) < 1.0 and p.status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            return False

    def _status(self, j: _Job) -> JobStatus:
        if j.proc is not None:
            rc = j.proc.poll()
            if rc is None:
                st = proc_state(self._role_pid(j))
                return JobStatus(j.job_id, JobState.RUNNING, j.all_nodes, proc_state=st[0] if st else "",
                                 cpu_s=st[1] if st else None)
            if j.cancelled:
                return JobStatus(j.job_id, JobState.CANCELLED, j.all_nodes, exit_code=None, signal=-rc if rc < 0 else None)
            if rc < 0:
                return JobStatus(j.job_id, JobState.FAILED, j.all_nodes, exit_code=0, signal=-rc)
            return JobStatus(j.job_id, JobState.COMPLETED if rc == 0 else JobState.FAILED, j.all_nodes, exit_code=rc)
        if self._alive(j):
            return JobStatus(j.job_id, JobState.RUNNING, j.all_nodes)
        if j.cancelled:
            return JobStatus(j.job_id, JobState.CANCELLED, j.all_nodes)
        exit_file = self.dir / f"{j.job_id}.exit"
        try:
            rc = int(exit_file.read_text().strip())
            return JobStatus(j.job_id, JobState.COMPLETED if rc == 0 else JobState.FAILED, j.all_nodes, exit_code=rc)
        except (OSError, ValueError):
            return JobStatus(j.job_id, JobState.FAILED, j.all_nodes, reason="process gone (no exit record)")

    def _role_pid(self, j: _Job) -> int:
        """The role process (rank 0's, written by the worker), else the job's own process."""
        try:
            return int((self.dir / f"{j.job_id}.pid").read_text().strip())
        except (OSError, ValueError):
            return j.pid

    def poll(self, job_ids: list[str]) -> Snapshot:
        with self._lock:
            self._count("poll")
            now = time.time()
            jobs = {jid: self._status(self._jobs[jid]) for jid in job_ids if jid in self._jobs}
            nodes = {}
            for n in self.nodes:
                h, reason = self._health(n, now)
                nodes[n] = NodeStatus(n, h, state=h.value.lower(), reason=reason)
            return Snapshot(jobs=jobs, nodes=nodes)

    def _signal(self, j: _Job, sig: int, *, leader_gone_ok: bool = False) -> None:
        """Signal the job's process group while its leader lives. `leader_gone_ok`: also a group whose
        leader has just died but a member has not (a child that ignores SIGTERM); only for a job
        signalled a moment ago, as a dead leader's id may have been reused since by another group."""
        if not (self._alive(j) or (leader_gone_ok and _group_alive(j.pid))):
            return
        try:
            os.killpg(j.pid, sig)
        except ProcessLookupError:
            pass
        except PermissionError as e:
            raise BackendError(f"cannot signal job {j.job_id} (pid {j.pid}): {e}") from None

    def cancel(self, job_ids: list[str]) -> None:
        with self._lock:
            self._count("cancel")
            victims = [self._jobs[j] for j in job_ids if j in self._jobs and self._alive(self._jobs[j])]
            for j in victims:
                j.cancelled = True
                self._save(j)
                self._signal(j, signal.SIGCONT)      # a stopped process cannot handle SIGTERM
                self._signal(j, signal.SIGTERM)
        deadline = time.time() + 3.0
        while time.time() < deadline and any(self._alive(j) for j in victims):
            time.sleep(0.05)
        with self._lock:
            for j in victims:
                self._signal(j, signal.SIGKILL, leader_gone_ok=True)
            # gone means gone: a killed process holding gigabytes (torch, an engine) can take seconds
            # to exit on a busy machine, and `slurm-rl stop` promises that nothing is left running
            deadline = time.time() + _KILLED_GONE_S
            for j in victims:
                if j.proc is not None:
                    try:
                        j.proc.wait(timeout=max(0.0, deadline - time.time()))
                    except subprocess.TimeoutExpired:
                        pass
                while time.time() < deadline and _group_alive(j.pid):
                    time.sleep(0.05)

    def _job_processes(self, job_ids: list[str]) -> list[tuple[psutil.Process, str]]:
        """Every live process started by one of these jobs (or any job of this run dir), wherever it
        went: each carries its job's id in its environment, also one that left the job's process
        group (a helper in a session of its own), which a group kill misses."""
        ids = set(job_ids) | set(self._jobs)
        out = []
        for p in psutil.process_iter(["status"]):
            try:
                if p.pid == os.getpid() or p.info["status"] == psutil.STATUS_ZOMBIE:
                    continue
                jid = p.environ().get("SLURM_RL_JOB_ID")
            except psutil.Error:
                continue
            if jid in ids:
                out.append((p, jid))
        return out

    def survivors(self, run_name: str, job_ids: list[str]) -> dict[str, str]:
        out = {}
        for p, jid in self._job_processes(job_ids):
            try:
                what = " ".join(p.cmdline())[:120]
            except psutil.Error:
                what = "?"
            out[str(p.pid)] = f"pid {p.pid} of job {jid} ({what})"
        return out

    def finish_off(self, survivors: dict[str, str]) -> None:
        """SIGKILL each one still there (looked up again: a pid is killed only while it is the job's)."""
        for p, _ in self._job_processes([]):
            if str(p.pid) in survivors:
                try:
                    p.send_signal(signal.SIGCONT)
                    p.kill()
                except psutil.Error:
                    pass

    def inject(self, job_id: str, fault: FaultKind, *, exit_code: int = 1, node: str | None = None,
               pid: int | None = None) -> str:
        with self._lock:
            self._count("inject")
            j = self._jobs.get(job_id)
            if j is None:
                raise BackendError(f"job {job_id} is not a job of this run")
            target = node if node in j.all_nodes else j.node
            if fault in (FaultKind.CRASH, FaultKind.HANG) and pid is not None:
                self._signal_rank(j, pid, signal.SIGKILL if fault is FaultKind.CRASH else signal.SIGSTOP)
            elif fault is FaultKind.CRASH:
                self._signal(j, signal.SIGKILL)
            elif fault is FaultKind.HANG:
                self._signal(j, signal.SIGSTOP)
            elif fault is FaultKind.NODE_DOWN:
                self._set_node(target, state="down", until=time.time() + self.cfg.node_down_s,
                               reason="slurm-rl inject node-down")
                for other in self._jobs.values():
                    if target in other.all_nodes:     # a node failure ends every job on it (NODE_FAIL)
                        self._signal(other, signal.SIGKILL)
            elif fault is FaultKind.DRAIN:
                self._set_node(target, state="drain", reason="slurm-rl inject drain")
            else:
                raise BackendError(f"the local backend cannot inject {fault.value} itself; the controller sends "
                                   "exit faults over the control plane")
            return target

    def _signal_rank(self, j: _Job, pid: int, sig: int) -> None:
        """One rank of a live multi-rank job: a process of the job's group."""
        if not self._alive(j):
            raise BackendError(f"job {j.job_id} is not running")
        try:
            if os.getpgid(pid) != j.pid:
                raise BackendError(f"process {pid} is not part of job {j.job_id}")
            os.kill(pid, sig)
        except ProcessLookupError:
            raise BackendError(f"process {pid} of job {j.job_id} is gone") from None

    def resume_node(self, node: str) -> None:
        """Undo a drain or node-down (what `scontrol update state=resume` does on Slurm)."""
        with self._lock:
            self._set_node(node, state="ok")

    @property
    def call_counts(self) -> dict[str, int]:
        return dict(self._calls)
