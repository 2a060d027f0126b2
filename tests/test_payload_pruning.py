"""Trajectories consumed before the oldest kept checkpoint are freed from the state store (the rows
stay for the audit); a rollback past a pruned group asks its problem again instead of queueing an
empty group."""

from __future__ import annotations

from pathlib import Path

from slurm_rl.store import Store
from tests import runs


def _group(store: Store, gid: str, problem: int, payload: bytes) -> None:
    store.conn.execute("INSERT INTO groups(id, item_id, problem_idx, version, wepoch, slot, incarnation, created, "
                       "state, step, n, reward, payload) VALUES(?,?,?,?,?,?,?,?,?,?,?,?,?)",
                       (gid, problem, problem, 0, 0, "rollout/0", 1, 0.0, "consumed", problem, 4, 0.5, payload))
    store.conn.commit()


def test_prune_then_rollback_requeues_what_it_can_and_regenerates_the_rest(tmp_path: Path) -> None:
    store = Store(tmp_path / "state.db")
    for step in (1, 2, 3, 4):
        _group(store, f"g{step}", step, b"x" * 100)
    assert store.prune_consumed_payloads(3) == 2
    sizes = dict(store.conn.execute("SELECT id, length(payload) FROM groups").fetchall())
    assert sizes == {"g1": 0, "g2": 0, "g3": 100, "g4": 100}
    items0 = store.conn.execute("SELECT COUNT(*) FROM items").fetchone()[0]
    _, affected, _ = store.rollback_after(2, regenerate=False, now=1.0)     # gives back groups of step >= 2
    states = dict(store.conn.execute("SELECT id, state FROM groups").fetchall())
    assert affected == 3 and states == {"g1": "consumed", "g2": "dropped_rollback", "g3": "queued", "g4": "queued"}
    assert store.conn.execute("SELECT COUNT(*) FROM items").fetchone()[0] == items0 + 1   # g2's problem, again


def test_a_run_frees_consumed_trajectories_and_still_accounts_for_every_one(tmp_path: Path) -> None:
    run = runs.launch(tmp_path, "algorithm.steps=24", "trainer.checkpoint_every=4", "trainer.keep_checkpoints=2")
    rep = runs.wait_done(run, timeout=300)
    assert rep["state"] == "finished"
    runs.assert_accounted(rep)
    pruned = runs.q(run, "SELECT COUNT(*) AS n, MAX(step) AS s FROM groups WHERE state='consumed' AND length(payload)=0")
    kept = runs.q(run, "SELECT MIN(step) AS s FROM groups WHERE state='consumed' AND length(payload)>0")
    assert pruned[0]["n"] > 0 and pruned[0]["s"] < kept[0]["s"]
    assert pruned[0]["s"] < 24 - 4                      # before the oldest kept checkpoint
