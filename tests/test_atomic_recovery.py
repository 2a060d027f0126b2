"""Issue 17, hardening of the trainer's restore bookkeeping: a rollback, the new lineage epoch and
the trainer version are written in one transaction (a controller dying between them must not leave
rolled-back steps under the old epoch). See docs/failure-model.md, "Hardening (issue 17)"."""

from __future__ import annotations

import queue
import uuid
from pathlib import Path

import pytest

from slurm_rl import protocol as P
from slurm_rl.config import RunConfig
from slurm_rl.controller.broker import Broker
from slurm_rl.controller.context import Context
from slurm_rl.controller.faults import Faults
from slurm_rl.controller.recover import Recovery
from slurm_rl.controller.registry import Registry
from slurm_rl.controller.weights import Lineage
from slurm_rl.rundir import RunDir
from slurm_rl.store import Store
from tests.rooms import Backend

NOW = 1000.0


class Rooms:
    """The controller's rooms over a real store, with a backend that starts nothing."""

    def __init__(self, tmp_path: Path, **cfg: object) -> None:
        self.run = RunDir(tmp_path)
        self.run.checkpoints.mkdir(parents=True, exist_ok=True)
        self.cfg = RunConfig.model_validate(cfg or {"spare": {"replicas": 1}})
        self.store = Store(tmp_path / "state.db")
        self.store.load_problems([(f"{i}+1=", str(i + 1)) for i in range(50)])
        self.ctx = Context(self.run, self.cfg, self.store, Backend())  # type: ignore[arg-type]
        self.registry = Registry(self.ctx)
        self.registry.create()
        self.faults = Faults(self.ctx, self.registry)
        self.lineage = Lineage(self.ctx, self.registry, self.faults)
        self.lineage.start()
        self.broker = Broker(self.ctx, self.lineage, self.faults)
        self.rec = Recovery(self.ctx, self.registry, self.lineage, self.broker, self.faults, queue.SimpleQueue(),
                            on_jobs_changed=lambda: None, stop_run=lambda reason, failed: None)

    def close(self) -> None:
        self.rec.close()
        self.store.close()

    def train(self, steps: int, *, commit: int, group_version: int | None = None) -> None:
        """`steps` trainer steps of 2 groups each (reported by trainer/0), committed through `commit`."""
        lin, store = self.lineage, self.store
        trainer = self.registry.trainer()
        for _ in range(steps):
            v = lin.trainer_version
            self.hand_in(2, version=v if group_version is None else group_version)
            got = store.fetch_batch(trainer.holder(), v, 2, 100)
            assert len(got) == 2
            store.step_done(P.StepDone(ident=P.Ident(kind="trainer", index=0, incarnation=trainer.incarnation),
                                       version=v + 1, wepoch=lin.wepoch, group_ids=[g.group_id for g in got],
                                       t_start=NOW, t_end=NOW + 1, wait_s=0.0, metrics={}), trainer.holder())
            lin.stepped(v + 1)
        lin.commit(commit)

    def hand_in(self, n: int, *, version: int) -> None:
        leases = self.store.lease("rollout/0#1", n, NOW, 60)
        groups = [P.GroupMsg(group_id=uuid.uuid4().hex, item_id=x.item_id, problem_idx=x.problem_idx,
                             prompt_ids=[1], samples=[P.SampleMsg([2], [-0.1], 1.0)], version=version,
                             wepoch=self.lineage.wepoch) for x in leases]
        acc, rej = self.store.submit_groups("rollout/0#1", "rollout/0", 1, groups, NOW,
                                            trainer_version=self.lineage.trainer_version, max_staleness=100,
                                            wepoch=self.lineage.wepoch, committed=self.lineage.committed)
        assert len(acc) == n and not rej

    def persisted(self) -> dict[str, object]:
        m = self.store.get_meta
        steps = [(r["step"], r["state"]) for r in self.store.steps()]
        return {"wepoch": m("wepoch"), "epoch_bases": m("epoch_bases"), "trainer_version": m("trainer_version"),
                "committed": m("committed"), "full_restarts": m("full_restarts", 0), "steps": steps,
                "groups": sorted(tuple(r) for r in self.store.conn.execute("SELECT id, state FROM groups"))}


@pytest.fixture
def rooms(tmp_path: Path):
    r = Rooms(tmp_path)
    yield r
    r.close()


def _fail_on_second_meta_write(monkeypatch: pytest.MonkeyPatch, store: Store) -> None:
    """The controller dies (here: raises) at its second meta write of the recovery."""
    calls = {"n": 0}
    set_meta, set_metas = store.set_meta, store.set_metas

    def boom() -> None:
        calls["n"] += 1
        if calls["n"] >= 2:
            raise RuntimeError("controller died here")

    def meta(*a: object, **k: object) -> None:
        boom()
        set_meta(*a, **k)  # type: ignore[arg-type]

    def metas(**k: object) -> None:
        boom()
        set_metas(**k)

    monkeypatch.setattr(store, "set_meta", meta)
    monkeypatch.setattr(store, "set_metas", metas)


def _fail_after_rollback(monkeypatch: pytest.MonkeyPatch, store: Store) -> None:
    """The controller dies right after the rollback of the steps, before the epoch is written."""
    rollback, set_metas = store.rollback_after, store.set_metas
    done = {"rollback": False}

    def rb(*a: object, **k: object):
        out = rollback(*a, **k)  # type: ignore[arg-type]
        done["rollback"] = True
        return out

    def metas(**k: object) -> None:
        if done["rollback"]:
            raise RuntimeError("controller died here")
        set_metas(**k)

    monkeypatch.setattr(store, "rollback_after", rb)
    monkeypatch.setattr(store, "set_metas", metas)


def test_a_trainer_loss_is_written_all_or_nothing(rooms: Rooms, monkeypatch: pytest.MonkeyPatch) -> None:
    rooms.train(5, commit=3)
    before = rooms.persisted()
    _fail_after_rollback(monkeypatch, rooms.store)
    with pytest.raises(RuntimeError, match="controller died here"):
        rooms.lineage.trainer_lost(NOW, set())
    assert rooms.persisted() == before             # nothing of it: not steps rolled back under the old epoch


def test_a_commit_lost_trainer_loss_is_written_all_or_nothing(rooms: Rooms, monkeypatch: pytest.MonkeyPatch) -> None:
    rooms.train(5, commit=4)                       # committed 4, but no live holder and no checkpoint: point 0
    before = rooms.persisted()
    _fail_on_second_meta_write(monkeypatch, rooms.store)
    with pytest.raises(RuntimeError, match="controller died here"):
        rooms.lineage.trainer_lost(NOW, set())
    assert rooms.persisted() == before


def test_a_full_restart_is_written_all_or_nothing(rooms: Rooms, monkeypatch: pytest.MonkeyPatch) -> None:
    rooms.train(5, commit=4)
    before = rooms.persisted()
    _fail_after_rollback(monkeypatch, rooms.store)
    with pytest.raises(RuntimeError, match="controller died here"):
        rooms.rec._full_restart("test", NOW)
    assert rooms.persisted() == before


def test_an_uninterrupted_trainer_loss_writes_everything(rooms: Rooms) -> None:
    rooms.train(5, commit=3)
    rooms.lineage.trainer_lost(NOW, set())         # no live holder, no checkpoint: restore point 0
    after = rooms.persisted()
    assert after["wepoch"] == 1 and after["trainer_version"] == 0 and after["committed"] == 0
    assert all(state == "rolled_back" for _, state in after["steps"])


def test_nested_transactions_commit_once_and_roll_back_whole(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.db")
    with pytest.raises(RuntimeError):
        with store.tx():
            store.set_meta("a", 1)
            with store.tx():
                store.set_meta("b", 2)
            raise RuntimeError("outer fails after the inner one finished")
    assert store.get_meta("a") is None and store.get_meta("b") is None
    with store.tx():
        store.set_meta("a", 1)
        store.set_metas(b=2)
    assert store.get_meta("a") == 1 and store.get_meta("b") == 2
    store.close()
