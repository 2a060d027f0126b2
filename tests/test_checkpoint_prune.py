"""Pruning keeps the checkpoints of the current lineage: after a rollback the trainer writes a step
below a surviving checkpoint of the undone steps, and the one just written must be kept (issue 17)."""

from __future__ import annotations

import os

from slurm_rl.checkpoint import Checkpointer
from tests.test_checkpoint import newest, opt_state, weights


def _save(c: Checkpointer, *steps: int) -> None:
    for s in steps:
        assert c.save(s, weights(s), opt_state(s), {}).path is not None


def test_the_checkpoint_just_written_survives_a_stale_higher_one(tmp_path):
    c = Checkpointer(tmp_path / "ck", keep=1)
    try:
        _save(c, 10, 15)          # step 15 then rolled back: the new lineage resumes at 10
        _save(c, 12)
        assert c.steps() == [12]            # the undone step 15 is gone, not the new 12
        assert newest(c) == (12, [])
    finally:
        c.close()


def test_stale_higher_checkpoints_do_not_crowd_out_the_lineage(tmp_path):
    c = Checkpointer(tmp_path / "ck", keep=2)
    try:
        _save(c, 10, 15, 12, 14)
        assert c.steps() == [12, 14]
    finally:
        c.close()


def test_a_restored_trainer_sets_aside_checkpoints_of_undone_steps(tmp_path):
    """Resumed at 10 with an undone step 15 on disk: once the new lineage reaches 15 again (committed
    by a holder, not checkpointed yet) a restore at 15 must not take the old lineage's weights."""
    c = Checkpointer(tmp_path / "ck", keep=5)
    try:
        _save(c, 10, 15)
        c.set_aside_after(10)
        assert c.steps() == [10]
        assert newest(c, at_most=15) == (10, [])
        _save(c, 11)                       # the next save deletes what was set aside
        assert sorted(p.name for p in c.root.iterdir()) == ["step-000010", "step-000011"]
    finally:
        c.close()


def test_prune_without_a_step_keeps_the_newest_written(tmp_path):
    c = Checkpointer(tmp_path / "ck", keep=5)
    try:
        _save(c, 10, 12, 15)
        # as if 15 were of an undone lineage and 12 written after it (by a saver that prunes with no step)
        for i, step in enumerate((10, 15, 12)):
            os.utime(c.root / f"step-{step:06d}" / "meta.json", (1000.0 + i, 1000.0 + i))
        c.keep = 1
        c.prune()
        assert c.steps() == [12]
    finally:
        c.close()
