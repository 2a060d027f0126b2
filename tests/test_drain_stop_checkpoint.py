"""Issue 17: a drained trainer whose stop-checkpoint failed left steps it alone held; they are undone
like a lost trainer's (rollback + new lineage epoch), and a role compares (wepoch, version) to know
it must sync. See docs/failure-model.md, "Hardening (issue 17)"."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from slurm_rl import protocol as P
from slurm_rl.roles.runtime import RoleRuntime
from slurm_rl.states import RoleState
from tests.rooms import Rooms


def test_a_move_whose_stop_checkpoint_failed_rolls_back_the_uncommitted_steps(tmp_path: Path) -> None:
    r = Rooms(tmp_path)
    try:
        r.train(5, commit=3)
        spare = r.registry["spare/0"]
        spare.state, spare.connected, spare.version = RoleState.READY, True, 3
        trainer = r.registry.trainer()
        trainer.state, trainer.connected = RoleState.READY, True
        r.rec._start_move(trainer, spare, "drain", 1000.0)
        trainer.goodbye = True                       # stopped; its stop-checkpoint of step 5 failed
        r.rec._finish_move(trainer, spare, "stopped", 1001.0)
        m = r.store.get_meta
        assert m("wepoch") == 1 and m("trainer_version") == 3 and r.lineage.committed == 3
        assert [(s["step"], s["state"]) for s in r.store.steps() if s["step"] > 3] == [(4, "rolled_back"),
                                                                                       (5, "rolled_back")]
        assert r.registry.trainer().assign.resume_step == 3
    finally:
        r.close()


def _needs(held: tuple[int, int], newest: tuple[int, int], bases: tuple[int, ...] = (0, 2)) -> bool:
    rt = SimpleNamespace(held_wepoch=held[0], held_version=held[1],
                         newest=P.WeightsInfo(version=newest[1], wepoch=newest[0], holders=[{"tcp": "x:1"}],
                                              epoch_bases=list(bases)))
    return RoleRuntime.needs_sync(rt)  # type: ignore[arg-type]


def test_a_role_syncs_when_the_epoch_differs_at_the_same_version() -> None:
    """Epoch 1 forked from step 2 of epoch 0 (a rollback to committed step 2)."""
    assert not _needs((0, 4), (0, 4))
    assert _needs((0, 4), (0, 5))
    assert _needs((0, 4), (1, 4))                    # same number past the fork: other weights
    assert not _needs((0, 2), (1, 2))                # the fork itself: the same weights, no second pull
    assert _needs((0, 2), (1, 3))
    assert _needs((0, 2), (2, 2), bases=(0, 2, 1))   # a later rollback to 1: epoch 2's step 2 is new
    assert not _needs((1, 1), (2, 1), bases=(0, 2, 1))


def _consumed_newer_than_their_step(r: Rooms) -> list[tuple[int, int]]:
    """(group version, step that consumed it) for every group trained on weights newer than its step."""
    return [(g["version"], g["step"]) for g in r.store.conn.execute(
        "SELECT version, step FROM groups WHERE state IN ('delivered','trained','consumed') AND version > step")]


def test_no_group_is_trained_on_by_a_step_older_than_its_weights_after_a_full_restart(tmp_path: Path) -> None:
    r = Rooms(tmp_path)
    try:
        r.train(5, commit=4)
        r.hand_in(4, version=4)                      # queued, made with version 4 of the old lineage
        r.rec._full_restart("test", 1000.0)          # no checkpoint: back to step 0
        r.train(2, commit=2)                         # the new trainer's steps 1, 2
        assert _consumed_newer_than_their_step(r) == []
        assert r.store.counts().groups_queued == 0 or all(
            row[0] <= r.lineage.trainer_version for row in r.store.conn.execute(
                "SELECT version FROM groups WHERE state='queued'"))
    finally:
        r.close()


def test_a_slot_saved_pending_without_a_job_is_resubmitted_on_resume(tmp_path: Path) -> None:
    from slurm_rl.controller.registry import Registry

    r = Rooms(tmp_path)
    try:
        for s in r.registry:
            s.state, s.job_id = RoleState.READY, f"J-{s.name}"
        r.registry["rollout/1"].state, r.registry["rollout/1"].job_id = RoleState.PENDING, None   # submit in flight
        r.registry.flush(force=True)
        again = Registry(r.ctx).resume(committed=0)
        assert [s.name for s in again] == ["rollout/1"]
    finally:
        r.close()
