"""A trainer-shaped warm standby (spare.trainer_nodes) on the local backend: a job of the trainer's
own shape (here 1 node x 2 gloo ranks) whose ranks form their process group, build their shards and
wait. When any rank of the trainer fails, the standby becomes the trainer at once (no new job, no
build), pulls its parts of the committed version from the rollouts, and a new standby is queued;
the rollouts keep generating throughout."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from slurm_rl.cli import cli
from tests import runs

SHAPED = ("trainer.ranks_per_node=2", "trainer.checkpoint_every=4", "spare.replicas=0", "spare.trainer_nodes=1")


def test_a_dead_trainer_rank_is_replaced_by_the_trainer_shaped_standby(tmp_path: Path) -> None:
    # more steps than the test waits for: it stops the run once the standby is backfilled
    run = runs.launch(tmp_path, *SHAPED, "algorithm.steps=100000")
    try:
        runs.wait_for(lambda: runs.committed(run) >= 6 and runs.role(run, "trainer-spare/0")["state"] == "READY",
                      300, "six committed steps and a ready trainer-shaped standby", run)
        standby_job = runs.role(run, "trainer-spare/0")["job_id"]
        at_fault = runs.committed(run)
        res = CliRunner().invoke(cli, ["inject", str(run.path), "trainer/0", "--fault", "crash", "--rank", "1"])
        assert res.exit_code == 0, res.output
        runs.wait_for(lambda: runs.events(run, "trainer_restored"), 120, "the trainer restored", run)
        # the standby's replacement is queued and gets ready again, as a spare's backfill does
        runs.wait_for(lambda: len(runs.slot_events(run, "ready", "trainer-spare/0")) >= 2, 300,
                      "the standby backfilled", run)
        runs.wait_for(lambda: runs.committed(run) >= at_fault + 4, 120, "four more committed steps", run)
        rep = runs.stop_and_audit(run)
    finally:
        runs.cleanup(run)
    assert rep["steps"] >= at_fault + 4, rep["end_reason"]
    assert [(f["role"], f["kind"]) for f in rep["faults"]] == [("trainer", "crash")]
    assert rep["restarts"]["trainer"] == 1 and rep["restarts"]["rollout"] == 0 and rep["restarts"]["full"] == 0
    assert rep["restarts"]["trainer_spare"] == 0
    # the standby's own job became the trainer's: no cold trainer job was submitted after the fault
    promoted = runs.events(run, "trainer_restored")
    assert len(promoted) == 1 and json.loads(promoted[0]["data"])["from"] == "trainer-spare/0", promoted
    assert promoted[0]["job_id"] == standby_job
    assert len(runs.slot_events(run, "submitted", "trainer/0")) == 1
    restore = json.loads(runs.events(run, "trainer_restore")[-1]["data"])
    assert restore["staged"] == "yes" and restore["weights"] == "live holders (each rank its own part)", restore
    # the shards were built while standing by: the restore's build share is a broadcast or two
    assert float(restore["build_s"]) < 0.5, restore
    f = rep["faults"][0]
    assert f["action"].startswith("promote trainer-spare/0") and f["recover_s"] is not None, f
    assert rep["trainer"]["world_size"] == 2


def test_a_one_process_trainer_takes_its_trainer_shaped_standby_before_the_spare(tmp_path: Path) -> None:
    """A one-process trainer's standby runs no engine: it builds the trainer on its own device and
    waits; the spare (with an engine) stays free for a rollout."""
    run = runs.launch(tmp_path, "spare.trainer_nodes=1", "algorithm.steps=100000")
    try:
        runs.wait_for(lambda: runs.committed(run) >= 4 and runs.role(run, "trainer-spare/0")["state"] == "READY"
                      and runs.role(run, "spare/0")["state"] == "READY", 300, "a ready standby and spare", run)
        at_fault = runs.committed(run)
        runs.inject(run, "trainer/0", "crash")
        runs.wait_for(lambda: runs.committed(run) >= at_fault + 3, 180, "three more committed steps", run)
        rep = runs.stop_and_audit(run)
    finally:
        runs.cleanup(run)
    promoted = runs.events(run, "trainer_restored")
    assert [json.loads(e["data"])["from"] for e in promoted] == ["trainer-spare/0"], promoted
    assert runs.role(run, "spare/0")["incarnation"] == 1          # the spare was not used
    restore = runs.events(run, "trainer_restore")[-1]
    assert "trainer staged by the standby" in restore["msg"], restore["msg"]
    assert rep["restarts"]["trainer"] == 1 and rep["restarts"]["rollout"] == 0 and rep["restarts"]["full"] == 0


def test_a_trainer_spare_of_another_shape_is_refused(tmp_path: Path) -> None:
    res = CliRunner().invoke(cli, ["launch", "configs/demo.yaml", "--set", "trainer.nodes=2", "--set",
                                   "spare.trainer_nodes=1", "--set", f"runs_dir={tmp_path}", "--check"])
    assert res.exit_code == 2, res.output
    assert "spare.trainer_nodes=1 but the trainer runs on 2 node(s)" in res.output
    assert "Traceback" not in res.output
