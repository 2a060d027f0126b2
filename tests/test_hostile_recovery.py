"""Recovery bugs the soak found, each pinned by a deterministic scenario on a real local run.

Each test was a strict xfail until its fix landed; they stay as regressions. The diagnosis and
the fix of each BUG-n are in docs/failure-model.md.
"""

from __future__ import annotations

import time

import pytest

from tests import runs

pytestmark = pytest.mark.slow

SHORT = tuple(f"recovery.phase_timeouts.{p}=8" for p in ("generating", "idle", "waiting_for_data",
                                                           "syncing_weights", "stepping", "publishing"))


@pytest.fixture
def run_factory(tmp_path):
    made = []

    def make(*sets, name="r"):
        run = runs.launch(tmp_path, "algorithm.steps=100000", *SHORT, *sets, name=name)
        made.append(run)
        runs.wait_ready(run)
        return run

    yield make
    for run in made:
        runs.cleanup(run)
        assert runs.run_processes(run) == []


def dead(run, slot):
    return runs.slot_events(run, "dead", slot)


def test_drain_without_a_ready_spare_moves_the_role(run_factory):
    run = run_factory("spare.replicas=0")
    node = runs.role(run, "rollout/0")["node"]
    runs.inject(run, "rollout/0", "drain")
    runs.wait_for(lambda: runs.events(run, "moved"), 60, "the move (through an extra spare)", run)
    time.sleep(12)                                        # longer than every phase timeout
    assert not dead(run, "rollout/0"), [e["msg"] for e in dead(run, "rollout/0")]
    r = runs.role(run, "rollout/0")
    assert r["state"] == "READY" and r["node"] != node
    rep = runs.stop_and_audit(run)
    assert rep["restarts"]["rollout"] == 0


def test_a_new_trainer_that_alone_holds_the_committed_step_can_be_lost_without_undoing_it(run_factory):
    # start times not weighed: the only rollout is promoted even when a cold trainer would be sooner
    run = run_factory("spare.replicas=0", "rollout.replicas=1", "trainer.checkpoint_every=100000",
                      "recovery.weigh_start_times=false")
    runs.wait_for(lambda: runs.committed(run) >= 10, 60, "10 committed steps", run)
    runs.inject(run, "trainer/0", "crash")               # the only rollout becomes the trainer
    runs.wait_for(lambda: [e for e in runs.events(run, "recovered") if e["slot"] == "trainer/0"], 30,
                  "the rollout restored as trainer", run)
    c = runs.committed(run)
    time.sleep(1.0)                                       # a moment to secure the step; the backfill still loads
    assert runs.role(run, "rollout/0")["state"] != "READY"
    runs.inject(run, "trainer/0", "crash")
    runs.wait_for(lambda: len([e for e in runs.events(run, "recovered") if e["slot"] == "trainer/0"]) >= 2, 90,
                  "the second trainer restore", run)
    assert not runs.events(run, "commit_lost"), [e["msg"] for e in runs.events(run, "commit_lost")]
    assert runs.committed(run) >= c
    runs.stop_and_audit(run)


def test_a_replacement_that_hangs_before_it_connects_is_found(run_factory):
    run = run_factory("spare.replicas=0", "recovery.phase_timeouts.loading=15")
    runs.inject(run, "rollout/0", "crash")
    runs.wait_for(lambda: runs.role(run, "rollout/0")["state"] == "PENDING" and runs.role(run, "rollout/0")["job_id"],
                  20, "the replacement job", run)
    runs.inject(run, "rollout/0", "hang")                 # before it says hello
    runs.wait_for(lambda: len(dead(run, "rollout/0")) >= 2, 45, "the hung replacement declared dead", run)
    # its process is seen stopped: no need to wait for the 15-s loading timeout
    assert "stopped (state T) and never connected" in dead(run, "rollout/0")[1]["msg"]
    runs.wait_for(lambda: runs.role(run, "rollout/0")["state"] == "READY", 60, "rollout/0 back", run)
    runs.stop_and_audit(run)
