"""A controller killed while a recovery is under way, then resumed: the faults it had open are given
back to their slots, so the recovery closes them (found by bench/soak.py's controller episode: two
faults stayed open for the rest of the run, and the same deaths were recorded a second time)."""

from __future__ import annotations

import time
from pathlib import Path

from slurm_rl.controller.faults import Faults
from slurm_rl.states import Phase, RoleState
from tests.rooms import lineage_rooms


def test_open_faults_go_back_to_their_slots_on_resume(tmp_path: Path) -> None:
    ctx, registry, faults, _ = lineage_rooms(tmp_path)
    t = time.time()
    ro = registry.get("rollout/0")
    tr = registry.get("trainer/0")
    sp = registry.get("spare/0")
    assert ro is not None and tr is not None and sp is not None
    f_ro = ctx.store.open_fault("rollout/0", "crash", "n1", True, t)
    f_tr = ctx.store.open_fault("trainer/0", "hang", "n2", True, t)
    f_sp = ctx.store.open_fault("spare/0", "exit", "n3", True, t)
    f_done = ctx.store.open_fault("rollout/0", "exit", "n1", True, t - 10)
    ctx.store.update_fault(f_done, t_recovered=t - 5)

    # the resumed controller's rooms: fresh slots, nothing in memory of those faults
    again = Faults(ctx, registry)
    for s in registry:
        s.fault_ids = []
    ro.state, ro.phase = RoleState.READY, Phase.SYNCING_WEIGHTS      # still recovering: stays open
    tr.state, tr.phase = RoleState.STARTING, Phase.RESTORING
    sp.state, sp.phase = RoleState.READY, Phase.IDLE                 # a standby ready: recovered already
    assert again.reattach(t + 1) == 3
    assert ro.fault_ids == [f_ro] and tr.fault_ids == [f_tr] and sp.fault_ids == []
    rows = {r["id"]: r for r in ctx.store.faults()}
    assert rows[f_sp]["t_recovered"] is not None and rows[f_ro]["t_recovered"] is None
    assert rows[f_done]["t_recovered"] == t - 5                       # a closed fault stays as it was

    # the slot's recovery now closes the fault the dead controller opened
    again.recovered(ro, t + 2, "generating again")
    assert {r["id"]: r for r in ctx.store.faults()}[f_ro]["t_recovered"] == t + 2
    # a second resume finds nothing more to give back but the trainer's
    for s in registry:
        s.fault_ids = []
    assert Faults(ctx, registry).reattach(t + 3) == 1 and tr.fault_ids == [f_tr]


def test_a_promotion_and_its_redirect_survive_a_controller_death(tmp_path: Path) -> None:
    """spare/0's process becomes rollout/1; the controller dies before any periodic write. The
    resumed registry has the process in rollout/1's slot, and the process, still speaking as the
    spare, is redirected to its new identity (soak: it was told superseded and exited, and a cold
    job replaced a warm standby)."""
    from slurm_rl import protocol as P
    from slurm_rl.controller.registry import Registry
    from tests.rooms import Rooms

    r = Rooms(tmp_path)
    try:
        spare, ro = r.registry.get("spare/0"), r.registry.get("rollout/1")
        assert spare is not None and ro is not None
        spare.job_id, spare.state, spare.incarnation = "J-spare", RoleState.READY, 1
        ro.job_id, ro.state, ro.incarnation = "J-dead", RoleState.DEAD, 1
        r.registry.flush(force=True)
        r.registry._last_flush = time.time()        # a periodic write just happened: the next is a second away
        r.rec._promote(spare, ro, time.time(), "replace dead rollout/1", resume_step=-1)
        # the controller dies here; a new one rebuilds its registry from the store
        again = Registry(r.ctx)
        again.resume(r.lineage.committed)
        got = again.get("rollout/1")
        assert got is not None and got.job_id == "J-spare" and got.incarnation == 2
        cmd = again.redirect_for(P.Ident(kind="spare", index=0, incarnation=1))
        assert cmd is not None and (cmd.op, cmd.kind, cmd.index, cmd.incarnation) == ("become", "rollout", 1, 2)
    finally:
        r.close()
