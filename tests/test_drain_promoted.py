"""A drain into a standby's node answered after the standby was promoted: the soak (seed 7) drained a
rollout's node the instant the trainer crashed; the rollout became the trainer before the drain was
seen, the trainer was then moved off the node, and the drain fault, kept for the rollout slot's move
that never came, stayed open for ever."""

from __future__ import annotations

from pathlib import Path

from slurm_rl.states import RoleState
from tests.rooms import Rooms


def test_a_drain_of_a_promoted_standby_is_answered_by_its_move_under_the_new_slot(tmp_path: Path) -> None:
    r = Rooms(tmp_path)
    try:
        r.train(4, commit=4)
        ro, trainer, spare = r.registry["rollout/0"], r.registry.trainer(), r.registry["spare/0"]
        for s in (ro, spare):
            s.state, s.connected, s.version, s.job_id = RoleState.READY, True, 4, f"J-{s.name}"
        fid = r.store.open_fault("rollout/0", "drain", "n4", True, 1000.0)    # what an injected drain opens
        r.faults.moves["rollout/0"] = fid
        trainer.state = RoleState.DEAD
        r.rec._promote(ro, trainer, 1000.1, "restore trainer on warm rollout/0", resume_step=4)
        trainer.state = RoleState.READY
        r.rec._start_move(trainer, spare, "node n4 is draining", 1001.0)       # the process is on n4
        trainer.goodbye = True
        r.rec._finish_move(trainer, spare, "stopped on draining n4", 1002.0)
        r.faults.recovered(r.registry.trainer(), 1003.0, "ready")
        row = next(f for f in r.store.faults() if f["id"] == fid)
        assert row["t_recovered"] == 1003.0 and "move to spare/0" in (row["action"] or ""), dict(row)
        assert r.faults.moves == {}
    finally:
        r.close()
