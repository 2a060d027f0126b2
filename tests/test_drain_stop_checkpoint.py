"""Issue 17: a drained trainer whose stop-checkpoint failed left steps it alone held; they are undone
like a lost trainer's (rollback + new lineage epoch), and a role compares (wepoch, version) to know
it must sync. See docs/failure-model.md, "Hardening (issue 17)"."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from slurm_rl import protocol as P
from slurm_rl.roles.runtime import RoleRuntime
from slurm_rl.states import RoleState
from tests.test_atomic_recovery import Rooms


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


def _needs(held: tuple[int, int], newest: tuple[int, int]) -> bool:
    rt = SimpleNamespace(held_wepoch=held[0], held_version=held[1],
                         newest=P.WeightsInfo(version=newest[1], wepoch=newest[0], holders=[{"tcp": "x:1"}]))
    return RoleRuntime.needs_sync(rt)  # type: ignore[arg-type]


def test_a_role_syncs_when_the_epoch_differs_at_the_same_version() -> None:
    assert not _needs((0, 4), (0, 4))
    assert _needs((0, 4), (0, 5))
    assert _needs((0, 4), (1, 4))                    # same number, other lineage: other weights
