"""Issue 17, hardening of the trainer's restore bookkeeping: a rollback, the new lineage epoch and
the trainer version are written in one transaction (a controller dying between them must not leave
rolled-back steps under the old epoch). See docs/failure-model.md, "Hardening (issue 17)"."""

from __future__ import annotations

from pathlib import Path

import pytest

from slurm_rl.store import Store
from tests.rooms import NOW, Rooms


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
