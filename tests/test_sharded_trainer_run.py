"""A trainer of 2 FSDP2 ranks (gloo) as one role of a real run on the local backend: it trains
end to end with rank 0 speaking for the role; any rank's fault is one trainer fault, recovered by
a new 2-rank trainer job (weights from a live holder or a checkpoint, optimizer shards from the
newest checkpoint) while the rollouts keep generating."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from slurm_rl import checkpoint
from slurm_rl.cli import cli
from slurm_rl.report import RESTORE_PARTS
from slurm_rl.rl.sharded_ckpt import DCP_DIR
from tests import runs

RANKS = ("trainer.ranks_per_node=2", "trainer.checkpoint_every=4")


def test_a_two_rank_trainer_runs_the_demo(tmp_path: Path) -> None:
    run = runs.launch(tmp_path, *RANKS, "algorithm.steps=16")
    rep = runs.wait_done(run, timeout=300)
    assert rep["state"] == "finished" and rep["steps"] == 16, rep["end_reason"]
    assert rep["trainer"]["world_size"] == 2 and rep["trainer"]["nodes"] == ["local1"]
    runs.assert_accounted(rep)
    assert rep["trajectories"]["lost"] == 0 and rep["faults"] == []
    # both ranks stepped (rank 1 says so in the shared role log), the checkpoints are sharded ones
    log = (run.logs / "trainer-0.1.log").read_text()
    assert "rank 1 of 2" in log and "on 2 ranks" in log
    assert (run.checkpoints / "step-000016" / DCP_DIR).is_dir()
    # saved asynchronously every 4 steps, each reported once in place, pruned to keep_checkpoints (3)
    saved = [int(e["msg"].split()[3]) for e in runs.events(run, "checkpoint")]
    assert saved == [4, 8, 12, 16]
    assert checkpoint.list_steps(run.checkpoints) == [8, 12, 16]
    assert all(checkpoint.verify(run.checkpoints, s) == "" for s in (8, 12, 16))
    assert CliRunner().invoke(cli, ["export", str(run.path), str(tmp_path / "hf")]).exit_code == 0


@pytest.mark.parametrize("fault", ["crash", "hang"])
def test_a_fault_of_rank_1_is_one_trainer_fault_recovered_without_touching_rollouts(tmp_path: Path,
                                                                                    fault: str) -> None:
    run = runs.launch(tmp_path, *RANKS, "algorithm.steps=40", "spare.replicas=0")
    try:
        runs.wait_for(lambda: runs.committed(run) >= 6, 240, "six committed steps", run)
        res = CliRunner().invoke(cli, ["inject", str(run.path), "trainer/0", "--fault", fault, "--rank", "1"])
        assert res.exit_code == 0, res.output
        rep = runs.wait_done(run, timeout=400)
    finally:
        runs.cleanup(run)
    assert rep["state"] == "finished" and rep["steps"] == 40, rep["end_reason"]
    assert [(f["role"], f["kind"]) for f in rep["faults"]] == [("trainer", fault)]
    assert rep["restarts"]["trainer"] == 1 and rep["restarts"]["rollout"] == 0 and rep["restarts"]["full"] == 0
    assert rep["trajectories"]["lost"] == 0
    runs.assert_accounted(rep)
    runs.assert_no_prompt_done_twice(run)
    restored = runs.events(run, "trainer_restore")
    assert restored and "on 2 ranks" in restored[-1]["msg"]
    # no disk read for the weights: each new rank pulled its own part from the rollouts that relay them
    assert json.loads(restored[-1]["data"])["weights"] == "live holders (each rank its own part)", restored[-1]["msg"]
    # the trainer's MTTR split: its load into build / verify / weights / optimizer, from that restore
    parts = json.loads(restored[-1]["data"])
    f = rep["faults"][0]
    assert all(f[k] == round(float(parts[k]), 3) >= 0 for k in RESTORE_PARTS), (f, parts)
    assert sum(f[k] for k in RESTORE_PARTS) <= float(parts["restore_s"]) + 0.01
    assert f["weights_s"] > 0 and (f["optimizer_s"] > 0) == (parts["optimizer_step"] != "-1")
    row = next(m for m in rep["mttr"] if m["role"] == "trainer")
    assert row["weights_s"] == f["weights_s"] and row["optimizer_s"] == f["optimizer_s"]
    assert rep["trainer"]["world_size"] == 2


def test_a_full_restart_of_a_two_rank_trainer_reads_its_weights_from_the_checkpoint(tmp_path: Path) -> None:
    """Full-restart policy: every job is cancelled, no rollout is left to pull the parts from, so
    the new ranks take the weights of the committed checkpoint from disk (the fallback path)."""
    run = runs.launch(tmp_path, *RANKS, "algorithm.steps=24", "spare.replicas=0", "recovery.policy=full-restart")
    try:
        runs.wait_for(lambda: len(runs.events(run, "checkpoint")) >= 2, 240, "two checkpoints", run)
        res = CliRunner().invoke(cli, ["inject", str(run.path), "trainer/0", "--fault", "crash", "--rank", "1"])
        assert res.exit_code == 0, res.output
        rep = runs.wait_done(run, timeout=400)
    finally:
        runs.cleanup(run)
    assert rep["state"] == "finished" and rep["steps"] == 24, rep["end_reason"]
    assert rep["restarts"]["full"] == 1
    restore = json.loads(runs.events(run, "trainer_restore")[-1]["data"])
    restart = json.loads(runs.events(run, "full_restart")[0]["data"])
    assert restore["weights"] == f"checkpoint {restart['step']}" and restore["optimizer_step"] == str(restart["step"])
    assert int(restart["step"]) >= 8 and float(restore["weights_s"]) > 0
    runs.assert_accounted(rep)
