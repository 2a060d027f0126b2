"""A full disk under the run directory: the controller's store writes raise sqlite3.OperationalError
("database or disk is full"), its file writes OSError(ENOSPC). Then the controller stops itself
cleanly and leaves the run resumable: nothing it could not write is answered as done, the roles keep
their work, and `slurm-rl resume` picks up once there is space (issue 17)."""

from __future__ import annotations

import errno
import sqlite3
from types import SimpleNamespace

import pytest

from slurm_rl import launcher
from slurm_rl import protocol as P
from slurm_rl.config import RunConfig
from slurm_rl.controller.loop import Controller
from slurm_rl.rundir import RunDir
from slurm_rl.store import read_events
from tests.rooms import Backend


class _Server:
    """One request, then silence; records the replies."""

    def __init__(self, msg: P.Request | None):
        self.pending = [] if msg is None else [(b"peer", SimpleNamespace(body=msg, req_id=1))]
        self.replies: list[P.Reply] = []

    def recv(self, timeout: float):
        return self.pending.pop() if self.pending else None

    def reply(self, peer: bytes, req_id: int, reply: P.Reply) -> None:
        self.replies.append(reply)


@pytest.fixture
def controller(tmp_path):
    run = RunDir(tmp_path / "run")
    run.path.mkdir(parents=True)
    c = Controller(run, RunConfig.model_validate({"controller": {"tick_s": 0.01}}), Backend())  # type: ignore[arg-type]
    c.lineage.start(run_state="running")
    c.registry.create()
    yield c
    c.recover.close()
    c.store.close()


def _full(*_a, **_k):
    raise sqlite3.OperationalError("database or disk is full")


def _enospc(*_a, **_k):
    raise OSError(errno.ENOSPC, "No space left on device")


def _assert_suspended(c: Controller) -> None:
    assert c.exit_code is not None and c.exit_code != 0
    assert launcher.run_state(c.run) not in launcher.TERMINAL_STATES     # `slurm-rl resume` accepts it
    reason = c.store.get_meta("end_reason")
    assert "disk" in reason and "full" in reason and "slurm-rl resume" in reason, reason
    ev = [e for e in read_events(c.store.conn) if e.kind == "disk_full"]
    assert ev and "slurm-rl resume" in ev[0].msg


def test_a_full_disk_while_storing_groups_stops_the_controller_and_acks_nothing(controller, monkeypatch):
    c = controller
    slot = c.registry.get("rollout/0")
    msg = P.SubmitGroups(ident=P.Ident("rollout", 0, slot.incarnation), groups=[])
    c.server = _Server(msg)
    monkeypatch.setattr(c.broker, "submit_groups", _full)
    c._loop_once()
    assert c.server.replies == []          # no answer: the rollout retries, after `resume`, and is acked then
    _assert_suspended(c)


def test_a_full_disk_in_the_tick_stops_the_controller(controller, monkeypatch):
    c = controller
    c.server = _Server(None)
    monkeypatch.setattr(c.store, "upsert_roles", lambda rows: _enospc())
    c.registry.touch()
    c.registry._last_flush = 0.0
    c._loop_once()
    _assert_suspended(c)


def test_when_nothing_can_be_written_it_still_stops(controller, monkeypatch):
    c = controller
    c.server = _Server(None)
    monkeypatch.setattr(c.store, "upsert_roles", lambda rows: _full())
    monkeypatch.setattr(c.store, "set_metas", _full)
    monkeypatch.setattr(c.store, "event", _full)
    c.registry.touch()
    c.registry._last_flush = 0.0
    c._loop_once()
    assert c.exit_code is not None and c.exit_code != 0
    c._flush(force=True)                  # what serve() does last: must not raise either


def test_other_errors_are_not_taken_for_a_full_disk(controller, monkeypatch):
    c = controller
    c.server = _Server(None)
    monkeypatch.setattr(c.store, "upsert_roles", lambda rows: (_ for _ in ()).throw(sqlite3.OperationalError("no such table")))
    c.registry.touch()
    c.registry._last_flush = 0.0
    with pytest.raises(sqlite3.OperationalError):
        c._loop_once()
    assert c.exit_code is None


def _statvfs_with(free: int):
    real = __import__("os").statvfs

    def fake(path):
        st = real(path)
        return SimpleNamespace(f_bavail=free // st.f_frsize, f_frsize=st.f_frsize)
    return fake


def test_no_space_left_is_a_full_disk_before_the_store_says_so(controller, monkeypatch):
    """SQLite's WAL reuses pages it already has, so on a full disk the store went on for seconds
    (soak: 20 s) while the roles' own writes failed, and the controller replaced them with jobs that
    died of it too. The tick looks at the free space first, and decides nothing on a full disk."""
    from slurm_rl.controller import loop, policy

    c = controller
    c.server = _Server(None)
    monkeypatch.setattr(loop.os, "statvfs", _statvfs_with(0))
    decided = []
    monkeypatch.setattr(policy, "decide", lambda *a, **k: decided.append(1) or [])
    c._loop_once()
    _assert_suspended(c)
    assert decided == []


def test_some_space_left_is_not_a_full_disk(controller, monkeypatch):
    from slurm_rl.controller import loop

    c = controller
    c.server = _Server(None)
    monkeypatch.setattr(loop.os, "statvfs", _statvfs_with(64 << 20))
    c._loop_once()
    assert c.exit_code is None
