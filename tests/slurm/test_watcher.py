"""The batched watcher and the client, against the scripted fake (no cluster)."""

from __future__ import annotations

import pytest

from slurm_rl.errors import BackendError
from slurm_rl.slurm.query import CommandResult, JobWatcher, SlurmClient
from slurm_rl.states import JobState, NodeHealth
from tests.slurm.fakes import FakeSlurm


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def make(n_jobs: int = 0, **kw):
    fake = FakeSlurm()
    for i in range(n_jobs):
        fake.add(str(10 + i), name=f"slurm-rl/run/rollout/{i}")
    clock = Clock()
    watcher = JobWatcher(SlurmClient(fake), clock=clock, **kw)
    return fake, watcher, clock


@pytest.mark.parametrize("n", [1, 2, 16, 200])
def test_poll_cost_does_not_grow_with_jobs(n):
    _, watcher, _ = make(n)
    ids = [str(10 + i) for i in range(n)]
    for _ in range(5):
        snap = watcher.poll(ids)
    assert set(snap.jobs) == set(ids) and all(s.state is JobState.RUNNING for s in snap.jobs.values())
    assert set(snap.nodes) == {"n1", "n2", "n3", "n4"}
    assert watcher.client.call_counts == {"squeue": 5, "sinfo": 5}


def test_terminal_state_from_squeue_is_cached_and_never_asked_again():
    fake, watcher, _ = make(2)
    fake.jobs["10"].state, fake.jobs["10"].wait_status = "FAILED", 3 << 8
    snap = watcher.poll(["10", "11"])
    assert (snap.jobs["10"].state, snap.jobs["10"].exit_code) == (JobState.FAILED, 3)
    fake.calls.clear()
    snap = watcher.poll(["10", "11"])
    squeue_ids = [a for c in fake.calls if c[0] == "squeue" for a in c if a.startswith("--jobs=")]
    assert squeue_ids == ["--jobs=11"]            # the finished job is not asked about again
    assert snap.jobs["10"].exit_code == 3 and fake.count("sacct") == 0


def test_purged_jobs_cost_one_sacct_for_all_then_nothing():
    fake, watcher, _ = make(16)
    ids = [str(10 + i) for i in range(16)]
    for j in ids[:8]:
        fake.jobs[j].state, fake.jobs[j].exit_code, fake.jobs[j].in_squeue = "NODE_FAIL", "0:0", False
    snap = watcher.poll(ids)
    assert fake.count("sacct") == 1 and fake.count("squeue") == 1
    assert all(snap.jobs[j].state is JobState.NODE_FAIL for j in ids[:8])
    watcher.poll(ids)
    assert fake.count("sacct") == 1               # final states cached


def test_sacct_lag_then_unknown_after_bound():
    fake, watcher, clock = make(1, unknown_after_s=30, unknown_after_polls=3)
    fake.jobs["10"].in_squeue = fake.jobs["10"].in_sacct = False
    snap = watcher.poll(["10"])
    assert "10" not in snap.jobs                  # not known yet: absent, asked again next poll
    clock.t += 10
    fake.jobs["10"].in_sacct, fake.jobs["10"].state, fake.jobs["10"].exit_code = True, "FAILED", "0:9"
    snap = watcher.poll(["10"])                   # sacct caught up
    assert (snap.jobs["10"].state, snap.jobs["10"].signal) == (JobState.FAILED, 9)

    fake2, watcher2, clock2 = make(1, unknown_after_s=30, unknown_after_polls=3)
    fake2.jobs["10"].in_squeue = fake2.jobs["10"].in_sacct = False
    for _ in range(3):
        assert "10" not in watcher2.poll(["10"]).jobs
        clock2.t += 5
    clock2.t += 30
    snap = watcher2.poll(["10"])
    assert snap.jobs["10"].state is JobState.UNKNOWN
    n = fake2.count("sacct")
    watcher2.poll(["10"])
    assert fake2.count("sacct") == n              # gave up: no more sacct for it


def test_accounting_disabled_reports_unknown_and_stops_asking():
    fake, watcher, _ = make(2)
    fake.accounting = False
    fake.jobs["10"].in_squeue = False
    snap = watcher.poll(["10", "11"])
    assert snap.jobs["10"].state is JobState.UNKNOWN and "accounting" in snap.jobs["10"].reason
    fake.jobs["11"].in_squeue = False
    watcher.poll(["10", "11"])
    assert fake.count("sacct") == 1


def test_all_ids_unknown_to_squeue_is_not_an_error():
    fake, watcher, _ = make(0)
    fake.accounting = False
    snap = watcher.poll(["5", "6"])
    assert {s.state for s in snap.jobs.values()} == {JobState.UNKNOWN}


def test_node_states_in_snapshot():
    fake, watcher, _ = make(1)
    fake.nodes["n2"] = ("allocated+drain", "draining", "slurm-rl inject")
    fake.nodes["n3"] = ("down+not_responding", "down*", "Not responding")
    nodes = watcher.poll(["10"]).nodes
    assert nodes["n2"].health is NodeHealth.DRAIN and nodes["n2"].reason == "slurm-rl inject"
    assert nodes["n3"].health is NodeHealth.DOWN and nodes["n1"].health is NodeHealth.OK


def test_empty_poll_costs_only_sinfo():
    _, watcher, _ = make(0)
    watcher.poll([])
    assert watcher.client.call_counts == {"sinfo": 1}


# ------------------------------------------------------------------------------------ client errors
def test_missing_command_is_backend_error_naming_it():
    fake = FakeSlurm()
    fake.missing.add("squeue")
    with pytest.raises(BackendError, match="`squeue` not found") as e:
        SlurmClient(fake).squeue(["1"])
    assert e.value.exit_code == 3 and "module load slurm" in str(e.value)


def test_timeout_is_backend_error():
    fake = FakeSlurm()
    fake.hang.add("sinfo")
    with pytest.raises(BackendError, match="did not answer"):
        SlurmClient(fake, timeout_s=2).sinfo()


def test_controller_down_is_backend_error_with_hint():
    fake = FakeSlurm()
    fake.responses["squeue"] = CommandResult(
        ("squeue",), 1, "", "slurm_load_jobs error: Unable to contact slurm controller (connect failure)\n")
    with pytest.raises(BackendError, match="slurmctld does not answer") as e:
        SlurmClient(fake).squeue(["1"])
    assert "scontrol ping" in str(e.value)


def test_garbled_squeue_output_is_backend_error_not_indexerror():
    fake = FakeSlurm()
    fake.responses["squeue"] = CommandResult(("squeue",), 0, "this is not squeue output\n", "")
    with pytest.raises(BackendError, match="squeue"):
        JobWatcher(SlurmClient(fake)).poll(["1"])


def test_scancel_of_finished_jobs_is_fine_but_permission_is_not():
    fake = FakeSlurm()
    fake.responses["scancel"] = CommandResult(
        ("scancel",), 1, "", "scancel: error: Kill job error on job id 12: Invalid job id specified\n")
    SlurmClient(fake).scancel(["12"])
    fake.responses["scancel"] = CommandResult(
        ("scancel",), 1, "", "scancel: error: Kill job error on job id 12: Access/permission denied\n")
    with pytest.raises(BackendError, match="permission"):
        SlurmClient(fake).scancel(["12"])


def test_name_prefix_query_filters_client_side():
    fake = FakeSlurm()
    fake.add("1", name="slurm-rl/a/rollout/0")
    fake.add("2", name="slurm-rl/ab/rollout/0")
    fake.add("3", name="slurm-rl/a/trainer/0")
    recs = SlurmClient(fake).squeue_by_name_prefix("slurm-rl/a/")
    assert sorted(r.job_id for r in recs) == ["1", "3"]
    assert fake.count("squeue") == 1


def test_non_job_ids_never_reach_slurm():
    fake, watcher, _ = make(1)
    snap = watcher.poll(["10", "abc", "12.batch", ""])
    assert snap.jobs["abc"].state is JobState.UNKNOWN and snap.jobs["10"].state is JobState.RUNNING
    assert [a for c in fake.calls for a in c if a.startswith("--jobs=")] == ["--jobs=10"]
