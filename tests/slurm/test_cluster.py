"""SlurmBackend on the real lab cluster (scripts/slurm-lab): submit, place, watch, break, cancel.

Every test leaves the lab reset (jobs cancelled, nodes up and idle). The one node crash costs
~16-19 s (SlurmdTimeout=10, MessageTimeout=5); everything else takes a few seconds.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from slurm_rl.backends.base import LaunchSpec, Resources, Snapshot
from slurm_rl.backends.slurm import SlurmBackend
from slurm_rl.errors import BackendError, ConfigError
from slurm_rl.slurm.query import CommandResult, JobWatcher, SlurmClient, subprocess_runner
from slurm_rl.slurm.submit import script_path, slurm_log_path
from slurm_rl.states import FaultKind, JobState, NodeHealth, RoleKind

pytestmark = pytest.mark.slurm

REPO = Path(__file__).resolve().parents[2]
log = logging.getLogger("slurm_rl.tests.slurm")

# A role-like process: says where it runs, then ticks (or exits with argv[1]).
ROLE = r"""
import os, socket, sys, time
print(f"host={socket.gethostname()} node={os.environ.get('SLURMD_NODENAME')} "
      f"var={os.environ.get('SLURM_RL_TEST_VAR')} restarts={os.environ.get('SLURM_RESTART_COUNT')}", flush=True)
if len(sys.argv) > 1:
    sys.exit(int(sys.argv[1]))
i = 0
while True:
    print(f"tick {i}", flush=True)
    i += 1
    time.sleep(0.1)
"""


@pytest.fixture
def lab(slurm_cluster):
    yield slurm_cluster
    slurm_cluster.reset()


@pytest.fixture
def backend(lab):
    be = SlurmBackend(partitions=["main"])
    yield be
    be.close()


def make_spec(run_dir: Path, index: int, *args: str, role: RoleKind = RoleKind.ROLLOUT, run_name: str = "it",
              **res) -> LaunchSpec:
    return LaunchSpec(run_name=run_name, run_dir=run_dir, role=role, index=index, incarnation=0,
                      argv=(sys.executable, "-c", ROLE, *args), resources=Resources(time_min=10, **res),
                      env=(("SLURM_RL_TEST_VAR", "hello world"),))


def wait_until(backend: SlurmBackend, ids: Sequence[str], pred: Callable[[Snapshot], bool],
               timeout: float = 30, what: str = "") -> Snapshot:
    end = time.monotonic() + timeout
    while True:
        snap = backend.poll(list(ids))
        if pred(snap):
            return snap
        if time.monotonic() > end:
            raise AssertionError(f"timeout ({timeout:.0f} s) waiting for {what or pred}: {snap}")
        time.sleep(0.3)


def all_in(state: JobState, ids: Sequence[str]) -> Callable[[Snapshot], bool]:
    return lambda s: all(j in s.jobs and s.jobs[j].state is state for j in ids)


def wait_file(path: Path, needle: str, timeout: float = 20) -> str:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if path.exists() and needle in (text := path.read_text()):
            return text
        time.sleep(0.2)
    raise AssertionError(f"{needle!r} never appeared in {path}")


# ------------------------------------------------------------------------------------ basics
def test_role_job_runs_on_a_node_and_cancels(backend, tmp_path):
    backend.preflight()
    run_name = f"it-{time.time_ns()}"                               # finished jobs of other runs stay in squeue
    spec = make_spec(tmp_path / "run", 0, run_name=run_name)
    job = backend.submit(spec)
    snap = wait_until(backend, [job], all_in(JobState.RUNNING, [job]), what="RUNNING")
    (node,) = snap.jobs[job].nodes
    assert snap.nodes[node].health is NodeHealth.OK
    text = wait_file(spec.log_path, "tick 1")                      # role stdout goes to log_path
    assert f"node={node}" in text and "var=hello world" in text    # env reached the role process
    assert "restarts=None" in text                                 # first run, never requeued
    if "NODE_NS=1" in Path("/etc/slurm/slurm.conf").read_text():
        assert f"host={node}" in text                              # lab nodes have their own hostname
    assert script_path(spec).is_file()                             # the script users read
    assert "#SBATCH --no-requeue" in script_path(spec).read_text()
    (rec,) = backend.find_run_jobs(run_name)                        # by name, without the id
    assert (rec.job_id, rec.name) == (job, spec.job_name) == (job, f"slurm-rl/{run_name}/rollout/0")

    backend.cancel([job])
    snap = wait_until(backend, [job], all_in(JobState.CANCELLED, [job]), what="CANCELLED")
    assert slurm_log_path(spec).exists()


def test_exclude_and_nodelist_are_honoured(backend, tmp_path):
    # a hostlist expression in exclude also checks the #SBATCH quoting of brackets
    avoid = make_spec(tmp_path / "run", 0, exclude=("n[1-2]",))
    avoid = LaunchSpec(**{**{f: getattr(avoid, f) for f in avoid.__dataclass_fields__}, "extra_exclude": ("n3",)})
    pinned = make_spec(tmp_path / "run", 1, nodelist=("n2",))
    ids = [backend.submit(avoid), backend.submit(pinned)]
    snap = wait_until(backend, ids, all_in(JobState.RUNNING, ids), what="both RUNNING")
    assert snap.jobs[ids[0]].nodes == ("n4",)
    assert snap.jobs[ids[1]].nodes == ("n2",)
    backend.cancel(ids)


def test_bad_partition_is_config_error(backend, tmp_path):
    with pytest.raises(ConfigError, match="main"):
        SlurmBackend(partitions=["main", "nope"]).preflight()
    with pytest.raises(ConfigError, match="invalid partition"):
        backend.submit(make_spec(tmp_path / "run", 0, partition="nope"))
    with pytest.raises(ConfigError, match="node configuration is not available"):
        backend.submit(make_spec(tmp_path / "run", 0, exclude=("n[1-4]",)))


def test_preflight_without_slurm_on_path(lab, monkeypatch, tmp_path):
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    with pytest.raises(BackendError, match="sbatch") as e:
        SlurmBackend().preflight()
    assert e.value.exit_code == 3


def test_preflight_when_slurmctld_does_not_answer(lab, monkeypatch, tmp_path):
    conf = Path("/etc/slurm/slurm.conf").read_text().splitlines()
    bad = tmp_path / "slurm.conf"   # the lab's config, pointing at a port nobody listens on
    bad.write_text("\n".join("SlurmctldPort=16999" if ln.startswith("SlurmctldPort=") else ln for ln in conf))
    monkeypatch.setenv("SLURM_CONF", str(bad))
    with pytest.raises(BackendError, match="slurmctld does not answer") as e:
        SlurmBackend(partitions=["main"]).preflight()
    assert e.value.exit_code == 3


# ------------------------------------------------------------------------------------ exits and faults
def test_exit_code_kill_signal_and_hang(backend, tmp_path):
    run = tmp_path / "run"
    exit3 = backend.submit(make_spec(run, 0, "3"))
    victim = backend.submit(make_spec(run, 1))
    hung_spec = make_spec(run, 2)
    hung = backend.submit(hung_spec)
    wait_until(backend, [victim, hung], all_in(JobState.RUNNING, [victim, hung]), what="RUNNING")
    wait_file(hung_spec.log_path, "tick 3")

    node = backend.inject(victim, FaultKind.CRASH)
    assert node in backend.poll([victim]).nodes
    node_h = backend.inject(hung, FaultKind.HANG)
    assert node_h in backend.poll([hung]).nodes

    snap = wait_until(backend, [exit3, victim], lambda s: all(s.jobs[j].state.terminal for j in (exit3, victim)),
                      what="exit3 and victim ended")
    assert (snap.jobs[exit3].state, snap.jobs[exit3].exit_code, snap.jobs[exit3].signal) == (JobState.FAILED, 3, None)
    assert (snap.jobs[victim].state, snap.jobs[victim].signal) == (JobState.FAILED, 9)

    # the hung role: still RUNNING for Slurm, but silent
    size = hung_spec.log_path.stat().st_size
    time.sleep(1.0)
    assert backend.poll([hung]).jobs[hung].state is JobState.RUNNING
    assert hung_spec.log_path.stat().st_size == size
    backend.cancel([hung])
    wait_until(backend, [hung], lambda s: s.jobs[hung].state.terminal, timeout=30, what="hung job ends")

    # the same final states through sacct, as when slurmctld has already purged the jobs
    def purged_squeue(argv: Sequence[str], *, timeout: float, env=None) -> CommandResult:
        if argv[0] == "squeue":
            return CommandResult(tuple(argv), 1, "", "slurm_load_jobs error: Invalid job id specified\n")
        return subprocess_runner(argv, timeout=timeout, env=env)

    watcher = JobWatcher(SlurmClient(purged_squeue), unknown_after_s=20)
    end = time.monotonic() + 20
    while (len(jobs := watcher.poll([exit3, victim]).jobs) < 2) and time.monotonic() < end:
        time.sleep(0.3)
    assert (jobs[exit3].state, jobs[exit3].exit_code) == (JobState.FAILED, 3)
    assert (jobs[victim].state, jobs[victim].signal) == (JobState.FAILED, 9)
    assert watcher.client.call_counts["sacct"] >= 1


def test_drain_is_seen_and_job_keeps_running(backend, tmp_path):
    job = backend.submit(make_spec(tmp_path / "run", 0))
    wait_until(backend, [job], all_in(JobState.RUNNING, [job]), what="RUNNING")
    node = backend.inject(job, FaultKind.DRAIN)
    snap = backend.poll([job])
    assert snap.nodes[node].health is NodeHealth.DRAIN
    assert snap.nodes[node].reason == "slurm-rl inject"
    assert "drain" in snap.nodes[node].state
    assert snap.jobs[job].state is JobState.RUNNING                # a drain is a warning, not a failure


def test_node_down_is_node_fail_and_down_and_not_requeued(backend, lab, tmp_path):
    run = tmp_path / "run"
    victim = backend.submit(make_spec(run, 0, nodelist=("n3",)))
    bystander = backend.submit(make_spec(run, 1, role=RoleKind.TRAINER, nodelist=("n1",)))
    ids = [victim, bystander]
    wait_until(backend, ids, all_in(JobState.RUNNING, ids), what="RUNNING")
    # the lab's record of the node's namespace may be lost (a start outrun by a busy machine once
    # left none, and every later node-down of that node killed nothing): found from the processes
    (lab.lab_dir / "run" / "node-n3.init").unlink()
    t0 = time.monotonic()
    node = backend.inject(victim, FaultKind.NODE_DOWN)             # lab: nodectl.sh crash n3
    assert node == "n3" and "n3" not in lab.nodes_up()
    first_down: float | None = None

    def seen(s: Snapshot) -> bool:
        nonlocal first_down
        if first_down is None and s.nodes[node].health is NodeHealth.DOWN:
            first_down = time.monotonic() - t0
        return s.jobs[victim].state is JobState.NODE_FAIL and s.nodes[node].health is NodeHealth.DOWN

    snap = wait_until(backend, ids, seen, timeout=60, what="NODE_FAIL + node DOWN")
    detect = time.monotonic() - t0
    # measurements, shown with --log-cli-level=INFO
    log.info("node-down: node DOWN (not responding) after %.1f s, job NODE_FAIL + node down after %.1f s",
             first_down or detect, detect)
    assert snap.jobs[bystander].state is JobState.RUNNING          # only the failed role's job
    assert snap.nodes[node].state.startswith(("down", "idle", "mixed", "alloc"))
    # JobRequeue=1 on the lab, like most clusters: --no-requeue keeps Slurm from restarting it
    time.sleep(3)
    (rec,) = SlurmClient().squeue([victim])
    assert rec.state is JobState.NODE_FAIL
    restarts = subprocess.run(["scontrol", "show", "job", victim], capture_output=True, text=True).stdout
    assert "Restarts=0" in restarts


# ------------------------------------------------------------------------------------ scheduler friendliness
def test_poll_cost_is_the_same_for_2_and_16_jobs(backend, tmp_path):
    run = tmp_path / "run"
    sleeper = make_spec(run, 0)
    specs = [LaunchSpec(**{**{f: getattr(sleeper, f) for f in sleeper.__dataclass_fields__},
                           "index": i, "argv": ("sleep", "300")}) for i in range(16)]
    ids = [backend.submit(s) for s in specs]                      # 16 x 1 CPU = the whole lab
    wait_until(backend, ids, all_in(JobState.RUNNING, ids), what="16 RUNNING")

    def cost(job_ids: list[str], polls: int = 5) -> dict[str, int]:
        be = SlurmBackend()
        for _ in range(polls):
            snap = be.poll(job_ids)
            assert all(snap.jobs[j].state is JobState.RUNNING for j in job_ids)
            assert len(snap.nodes) == 4
        return be.call_counts

    two, sixteen = cost(ids[:2]), cost(ids)
    log.info("Slurm calls for 5 polls: 2 jobs %s, 16 jobs %s", two, sixteen)
    assert two == sixteen == {"squeue": 5, "sinfo": 5}

    # jobs ending: still one squeue per poll; finished jobs are cached and never asked about again
    be = SlurmBackend()
    be.cancel(ids)
    assert be.call_counts == {"scancel": 1}
    wait_until(be, ids, all_in(JobState.CANCELLED, ids), what="16 CANCELLED")
    polls = be.call_counts["sinfo"]
    assert be.call_counts["squeue"] <= polls and be.call_counts.get("sacct", 0) == 0
    before = dict(be.call_counts)
    be.poll(ids)
    assert be.call_counts["squeue"] == before["squeue"]            # all final: no squeue at all
    # a job slurmctld no longer knows costs one sacct per poll, for all such jobs together
    be.poll([*ids, "999991", "999992"])
    after = be.call_counts
    assert after["sacct"] - before.get("sacct", 0) == 1 and after["squeue"] - before["squeue"] == 1


def test_launch_sbatch_header_is_valid(lab, tmp_path):
    # --test-only parses every #SBATCH line and asks the scheduler, without submitting
    res = subprocess.run(["sbatch", "--test-only", str(REPO / "sbatch" / "launch.sbatch"), "configs/demo.yaml"],
                         capture_output=True, text=True, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "to start at" in res.stderr
