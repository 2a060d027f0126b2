"""The lineage invariant on a real run: no consumed group is newer than the step that consumed it.

A group records the weights it was made with (`version`, `wepoch`) and, once trained on, `step`:
the version the consuming step started from. Across a trainer loss (a warm spare promoted at the
committed step, a new weight epoch) and a full restart (every role resubmitted, back to a
checkpoint below the committed step, another epoch), every consumed group must have been made
with weights no newer than its step's, and of the same lineage: a group of an older epoch only
with a version that epoch shares with the step's (at or below every fork in between).
tests/test_drain_stop_checkpoint.py pins the same at the store level.
"""

from __future__ import annotations

import json

import pytest

from tests import runs

pytest_slow = pytest.mark.slow


def _violations(run) -> list[str]:
    bases = runs.meta(run, "epoch_bases", [0])
    step_epoch = {r["step"]: r["wepoch"] for r in runs.q(run, "SELECT step, wepoch FROM steps WHERE state='committed'")}
    bad = []
    for g in runs.q(run, "SELECT id, version, wepoch, step FROM groups WHERE state='consumed'"):
        v, ge, s = g["version"], g["wepoch"], g["step"]
        se = step_epoch.get(s + 1)            # the step that started from version s made version s + 1
        if se is None:
            bad.append(f"{g['id']}: consumed by step {s + 1}, which is not committed")
        elif v > s:
            bad.append(f"{g['id']}: version {v} trained on by the step from version {s}")
        elif ge > se or (ge < se and v > min(bases[ge + 1:se + 1])):
            bad.append(f"{g['id']}: version {v} of epoch {ge} trained on in epoch {se} (forks {bases})")
    return bad


@pytest_slow
def test_no_consumed_group_is_newer_than_its_step_across_a_trainer_loss_and_a_full_restart(tmp_path):
    # restart_budget=1: the first trainer crash is a role-based loss (the spare promoted), the
    # second a full restart. No periodic checkpoint: the restart goes back to the one the promoted
    # trainer writes of its resume step at once, well below the committed step by then.
    run = runs.launch(tmp_path, "algorithm.steps=100000", "recovery.restart_budget=1",
                      "trainer.checkpoint_every=100000", "recovery.phase_timeouts.stepping=30", name="lin")
    try:
        runs.wait_ready(run)
        runs.wait_for(lambda: runs.committed(run) >= 8, 90, "8 committed steps", run)
        runs.inject(run, "trainer/0", "crash")
        runs.wait_for(lambda: runs.events(run, "trainer_rollback"), 30, "the trainer loss", run)
        k1 = json.loads(runs.events(run, "trainer_rollback")[0]["data"])["committed"]
        runs.wait_for(lambda: runs.slot_events(run, "recovered", "trainer/0"), 60, "trainer restored", run)
        runs.wait_for(lambda: runs.q(run, "SELECT step FROM checkpoints WHERE step=?", (k1,)), 30,
                      f"the promoted trainer's checkpoint of step {k1}", run)
        runs.wait_for(lambda: runs.committed(run) >= k1 + 8, 90, "8 more committed steps", run)

        runs.inject(run, "trainer/0", "crash")
        runs.wait_for(lambda: runs.events(run, "full_restart"), 30, "the full restart", run)
        c = int(json.loads(runs.events(run, "full_restart")[0]["data"])["step"])
        assert c == k1, runs.events(run, "full_restart")[0]["msg"]
        runs.wait_for(lambda: runs.meta(run, "run_state") != "running" or runs.committed(run) >= c + 10, 180,
                      "10 committed steps after the full restart", run)
        assert runs.meta(run, "run_state") == "running", runs.meta(run, "end_reason")
        # the restart had something to get wrong: groups made with weights past its step
        newer = runs.q(run, "SELECT COUNT(*) FROM groups WHERE version > ? AND wepoch < ?",
                       (c, runs.meta(run, "wepoch")))[0][0]
        assert newer > 0
        runs.stop_and_audit(run)
        assert runs.q(run, "SELECT COUNT(*) FROM groups WHERE state='consumed'")[0][0] >= 20
        assert _violations(run) == []
    finally:
        runs.cleanup(run)
    assert runs.run_processes(run) == []
