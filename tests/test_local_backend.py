"""The local backend's process handling, with plain shell jobs (no roles)."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import psutil

from slurm_rl.backends.base import LaunchSpec, Resources
from slurm_rl.backends.local import LocalBackend
from slurm_rl.config import LocalConfig
from slurm_rl.states import JobState, RoleKind

# the job's leader dies of SIGTERM; its child ignores SIGTERM (inherited across exec) and sleeps on
STUBBORN_CHILD = '( trap "" TERM; exec sleep 600 ) & echo "child $!"; sleep 600'


def group_members(pgid: int) -> list[psutil.Process]:
    out = []
    for p in psutil.process_iter(["status"]):
        try:
            if os.getpgid(p.pid) == pgid and p.info["status"] != psutil.STATUS_ZOMBIE:
                out.append(p)
        except (OSError, psutil.Error):
            continue
    return out


def test_cancel_leaves_no_process_of_the_job_even_one_that_ignores_sigterm(tmp_path: Path) -> None:
    be = LocalBackend(tmp_path, LocalConfig())
    spec = LaunchSpec(run_name="t", run_dir=tmp_path, role=RoleKind.ROLLOUT, index=0, incarnation=1,
                      argv=("bash", "-c", STUBBORN_CHILD), resources=Resources(time_min=10), env=())
    job = be.submit(spec)
    pid = be._jobs[job].pid
    deadline = time.time() + 10
    while len(group_members(pid)) < 2 and time.time() < deadline:
        time.sleep(0.05)
    assert len(group_members(pid)) >= 2, "the job's child did not start"
    be.cancel([job])
    assert group_members(pid) == []
    assert be.poll([job]).jobs[job].state is JobState.CANCELLED


def test_cancel_of_an_ended_job_returns_at_once(tmp_path: Path) -> None:
    be = LocalBackend(tmp_path, LocalConfig())
    spec = LaunchSpec(run_name="t", run_dir=tmp_path, role=RoleKind.ROLLOUT, index=0, incarnation=1,
                      argv=(sys.executable, "-c", "pass"), resources=Resources(time_min=10), env=())
    job = be.submit(spec)
    be._jobs[job].proc.wait(timeout=10)
    t0 = time.monotonic()
    be.cancel([job])
    assert time.monotonic() - t0 < 2.0


# a rank that records what it was told, then sleeps (or, rank 1 with FAIL set, fails at once)
RANK_SCRIPT = ("import os, sys, time\n"
               "r = os.environ['SLURM_RL_RANK']\n"
               "open(os.path.join(sys.argv[1], 'rank' + r), 'w').write(' '.join(os.environ[k] for k in "
               "('SLURM_RL_RANK', 'SLURM_RL_WORLD_SIZE', 'SLURM_RL_LOCAL_RANK', 'SLURM_RL_NODE')) + ' ' + str(os.getpid()))\n"
               "if r == '1' and os.environ.get('FAIL'): sys.exit(3)\n"
               "time.sleep(600)\n")


def _rank_job(tmp_path: Path, *, nodes: int, per_node: int, fail: bool = False) -> tuple[LocalBackend, str]:
    be = LocalBackend(tmp_path, LocalConfig(nodes=4))
    out = tmp_path / "out"
    out.mkdir()
    spec = LaunchSpec(run_name="t", run_dir=tmp_path, role=RoleKind.TRAINER, index=0, incarnation=1,
                      argv=(sys.executable, "-c", RANK_SCRIPT, str(out)),
                      resources=Resources(time_min=10, nodes=nodes, tasks_per_node=per_node),
                      env=(("FAIL", "1"),) if fail else ())
    return be, be.submit(spec)


def _ranks_seen(tmp_path: Path, n: int) -> dict[int, list[str]]:
    deadline = time.time() + 20
    while time.time() < deadline:
        files = sorted((tmp_path / "out").glob("rank*"))
        if len(files) == n and all(f.read_text() for f in files):
            return {int(f.name[4:]): f.read_text().split() for f in files}
        time.sleep(0.05)
    raise AssertionError(f"{n} ranks did not start")


def test_a_multi_rank_job_starts_one_process_per_rank_on_distinct_nodes(tmp_path: Path) -> None:
    be, job = _rank_job(tmp_path, nodes=2, per_node=2)
    try:
        seen = _ranks_seen(tmp_path, 4)
        assert [v[:3] for _, v in sorted(seen.items())] == [["0", "4", "0"], ["1", "4", "1"], ["2", "4", "0"],
                                                             ["3", "4", "1"]]
        nodes = [v[3] for _, v in sorted(seen.items())]
        assert nodes[0] == nodes[1] and nodes[2] == nodes[3] and nodes[0] != nodes[2]
        st = be.poll([job]).jobs[job]
        assert st.state is JobState.RUNNING and set(st.nodes) == set(nodes)
    finally:
        be.cancel([job])
    assert be.poll([job]).jobs[job].state is JobState.CANCELLED


def test_one_rank_failing_ends_the_whole_job_with_its_code(tmp_path: Path) -> None:
    be, job = _rank_job(tmp_path, nodes=1, per_node=2, fail=True)
    deadline = time.time() + 20
    while be.poll([job]).jobs[job].state is JobState.RUNNING and time.time() < deadline:
        time.sleep(0.05)
    st = be.poll([job]).jobs[job]
    assert st.state is JobState.FAILED and st.exit_code == 3
    assert group_members(be._jobs[job].pid) == []


def test_a_fault_aimed_at_one_rank_hits_that_process(tmp_path: Path) -> None:
    from slurm_rl.errors import BackendError
    from slurm_rl.states import FaultKind

    be, job = _rank_job(tmp_path, nodes=2, per_node=1)
    try:
        seen = _ranks_seen(tmp_path, 2)
        pid1, node1 = int(seen[1][4]), seen[1][3]
        assert be.inject(job, FaultKind.HANG, node=node1, pid=pid1) == node1
        deadline = time.time() + 10
        while psutil.Process(pid1).status() != psutil.STATUS_STOPPED and time.time() < deadline:
            time.sleep(0.05)
        assert psutil.Process(pid1).status() == psutil.STATUS_STOPPED
        assert psutil.Process(int(seen[0][4])).status() != psutil.STATUS_STOPPED
        try:
            be.inject(job, FaultKind.CRASH, pid=os.getpid())
            raise AssertionError("a process outside the job was signalled")
        except BackendError as e:
            assert "not part of job" in str(e)
        be.inject(job, FaultKind.CRASH, node=node1, pid=pid1)   # the rank dies: the job with it
        deadline = time.time() + 20
        while be.poll([job]).jobs[job].state is JobState.RUNNING and time.time() < deadline:
            time.sleep(0.05)
        assert be.poll([job]).jobs[job].signal == 9
    finally:
        be.cancel([job])
