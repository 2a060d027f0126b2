"""A new trainer job's resume step is checked again when it says hello: the rollouts that held the
committed step may have moved on to a newer version that the trainer's loss undid (their reports
crossed the loss), and then nothing can serve that step. Seen in the fsdp-lab ETTR bench: the new
trainer died with "cannot restore version 23: no holder, no checkpoint"."""

from __future__ import annotations

from pathlib import Path

import pytest

from slurm_rl.states import RoleState
from tests.rooms import NOW, Rooms


@pytest.fixture
def rooms(tmp_path: Path):
    r = Rooms(tmp_path)
    yield r
    r.close()


def _holding(rooms: Rooms, name: str, version: int) -> None:
    s = rooms.registry.slots[name]
    s.connected, s.state = True, RoleState.READY
    rooms.lineage.held(s, version, rooms.lineage.wepoch, {"tcp": f"tcp://{name}:1"})


def test_a_resume_step_nobody_holds_any_more_is_lowered_before_the_trainer_tries(rooms: Rooms) -> None:
    lin, trainer = rooms.lineage, rooms.registry.trainer()
    rooms.train(6, commit=0)
    _holding(rooms, "spare/0", 2)
    _holding(rooms, "rollout/0", 4)            # committed 4: the rollout holds it
    assert lin.committed == 4
    lin.trainer_lost(NOW, {"trainer/0"})
    rooms.rec.submit(trainer, "restart trainer cold")
    assert trainer.assign is not None and trainer.assign.resume_step == 4
    # the rollout's report of version 6 (pulled just before the trainer died) arrives now: it is of
    # the undone lineage, and the rollout no longer serves 4
    rooms.lineage.held(rooms.registry.slots["rollout/0"], 6, 0, None)
    assert rooms.registry.slots["rollout/0"].version == -1
    wepoch = lin.wepoch
    lin.recheck_resume(trainer, NOW + 5)      # the new trainer's hello
    assert trainer.assign.resume_step == 2 == lin.committed == lin.trainer_version
    assert lin.wepoch == wepoch + 1 and lin.epoch_bases[-1] == 2
    lost = [e for e in rooms.store.conn.execute("SELECT kind, msg FROM events") if e[0] == "commit_lost"]
    assert lost and "committed step 4" in lost[-1][1]


def test_a_resume_step_still_held_is_kept(rooms: Rooms) -> None:
    lin, trainer = rooms.lineage, rooms.registry.trainer()
    rooms.train(6, commit=0)
    _holding(rooms, "rollout/0", 4)
    lin.trainer_lost(NOW, {"trainer/0"})
    rooms.rec.submit(trainer, "restart trainer cold")
    wepoch = lin.wepoch
    lin.recheck_resume(trainer, NOW + 5)
    assert trainer.assign is not None and trainer.assign.resume_step == 4 == lin.committed and lin.wepoch == wepoch
