"""`slurm-rl stop` returns only once every process of the run is gone (issue 17). Two ways a role
process outlived it: a job whose submission was still on the controller's helper thread when the run
stopped (started after the final cancel, its id never seen), and a process of a job that left the
job's process group (a helper started in a session of its own), which the group kill misses.
Every process a job starts carries its job id (SLURM_RL_JOB_ID) in its environment: that is how
they are found here, as `stop` now finds them."""

from __future__ import annotations

import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from slurm_rl.backends.base import LaunchSpec, Snapshot
from slurm_rl.backends.local import LocalBackend
from slurm_rl.backends.slurm import SlurmBackend
from slurm_rl.cli import cli
from slurm_rl.config import LocalConfig, RunConfig
from slurm_rl.controller.loop import Controller
from slurm_rl.rundir import RunDir
from slurm_rl.states import RoleKind
from slurm_rl.store import Store
from tests.runs import job_processes
from tests.slurm.fakes import FakeSlurm
from tests.test_cli import fake_run

pytestmark = pytest.mark.timeout(180)


class _SlowSubmitBackend:
    """A submission that is still running when the stop comes; records cancellations."""

    name = "local"
    call_counts: dict[str, int] = {}

    def __init__(self) -> None:
        self.release = threading.Event()
        self.cancelled: list[str] = []

    def submit(self, spec: object) -> str:
        self.release.wait(60)
        return "J-late"

    def cancel(self, ids: list[str]) -> None:
        self.cancelled += ids

    def poll(self, ids: list[str]) -> Snapshot:
        return Snapshot(jobs={}, nodes={})

    def close(self) -> None:
        pass


def test_a_job_submitted_while_the_run_stops_is_cancelled_too(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "run")
    run.path.mkdir(parents=True)
    backend = _SlowSubmitBackend()
    c = Controller(run, RunConfig.model_validate({"controller": {"tick_s": 0.01}}), backend)  # type: ignore[arg-type]
    try:
        c.lineage.start(run_state="running")
        c.registry.create()
        c.recover.submit(c.registry.get("rollout/0"), "a replacement")      # blocks on the helper thread
        c._begin_stop("stopped by a test", failed=False)
        threading.Timer(0.5, backend.release.set).start()   # the submission goes through after the stop began
        c._tick()
        assert c.exit_code is not None
        c.recover.close()
        assert "J-late" in backend.cancelled, backend.cancelled
    finally:
        backend.release.set()
        c.recover.close()
        c.store.close()


_ESCAPING_ROLE = textwrap.dedent("""
    import subprocess, sys, time
    # a helper in a session of its own: the job's process-group kill does not reach it
    subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)", sys.argv[1]], start_new_session=True)
    print("started", flush=True)
    time.sleep(600)
""")


def test_stop_kills_a_process_that_left_its_jobs_process_group(tmp_path: Path) -> None:
    run = fake_run(tmp_path, "escaping", state="running")
    backend = LocalBackend(run.path, LocalConfig())
    spec = LaunchSpec(run_name=run.name, run_dir=run.path, role=RoleKind.ROLLOUT, index=0, incarnation=1,
                      argv=(sys.executable, "-c", _ESCAPING_ROLE, str(run.path / "helper")),
                      resources=RunConfig().resources(RoleKind.ROLLOUT))
    job = backend.submit(spec)
    st = Store(run.db)
    st.record_job(job, "rollout/0", 1, "local", "RUNNING", time.time())
    st.close()
    try:
        deadline = time.monotonic() + 60
        while len(job_processes(run)) < 2:            # the role and its helper
            assert time.monotonic() < deadline, "the role never started its helper"
            time.sleep(0.05)
        res = CliRunner().invoke(cli, ["stop", str(run.path)])     # no controller: stop from the store
        assert res.exit_code == 0, res.output
        assert job_processes(run) == []
    finally:
        for p in job_processes(run):
            p.kill()
        backend.close()


def test_what_survives_a_kill_is_named_and_stop_fails(tmp_path: Path, monkeypatch) -> None:
    """A process that cannot be ended (here: the kill is a no-op) is reported, with exit 3."""
    run = fake_run(tmp_path, "stubborn", state="running")
    backend = LocalBackend(run.path, LocalConfig())
    spec = LaunchSpec(run_name=run.name, run_dir=run.path, role=RoleKind.ROLLOUT, index=0, incarnation=1,
                      argv=(sys.executable, "-c", "import time; time.sleep(600)"),
                      resources=RunConfig().resources(RoleKind.ROLLOUT))
    job = backend.submit(spec)
    st = Store(run.db)
    st.record_job(job, "rollout/0", 1, "local", "RUNNING", time.time())
    st.close()
    pid = backend._jobs[job].pid
    try:
        monkeypatch.setattr(LocalBackend, "cancel", lambda self, ids: None)
        monkeypatch.setattr(LocalBackend, "finish_off", lambda self, left: None)
        monkeypatch.setattr("slurm_rl.launcher.GONE_WAIT_S", 2.0)
        res = CliRunner().invoke(cli, ["stop", str(run.path)])
        assert res.exit_code == 3, res.output
        assert f"pid {pid}" in res.output and job in res.output and "Traceback" not in res.output
    finally:
        proc = backend._jobs[job].proc
        assert proc is not None
        proc.kill()
        proc.wait(30)
        backend.close()


def test_on_slurm_what_is_left_is_every_job_of_the_run_not_ended_yet() -> None:
    """`stop` waits on Slurm until none of the run's jobs is pending, running or completing: those the
    store knows, and any job named after the run (a submission whose id was never recorded)."""
    fake = FakeSlurm()
    fake.add("10", name="slurm-rl/r/rollout/0", state="RUNNING")
    fake.add("11", name="slurm-rl/r/trainer/0", state="COMPLETING")
    fake.add("12", name="slurm-rl/r/spare/0", state="CANCELLED")
    fake.add("13", name="slurm-rl/r/rollout/1", state="PENDING")         # not in the store
    fake.add("14", name="slurm-rl/other/rollout/0", state="RUNNING")     # another run's
    left = SlurmBackend(runner=fake).survivors("r", ["10", "11", "12"])
    assert sorted(left) == ["10", "11", "13"] and "COMPLETING" in left["11"]
    fake.jobs["10"].state = fake.jobs["11"].state = fake.jobs["13"].state = "CANCELLED"
    assert SlurmBackend(runner=fake).survivors("r", ["10", "11", "12"]) == {}
