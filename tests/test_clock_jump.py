"""The controller's timeouts run on a monotonic clock (issue 17): a wall-clock step (NTP, an admin's
`date -s`) of +10 s used to make every live role's last heartbeat 10 s old at the next tick (hang
timeout: all DEAD), and one of -10 s hid a role's silence for 10 s. Here a controller with live
roles (real rooms and store, heartbeats through its message handler, no processes) sees the wall
clock jump; what it stores for readers (heartbeat times, events) stays wall-clock time."""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest

from slurm_rl import protocol as P
from slurm_rl.config import RunConfig
from slurm_rl.controller.loop import Controller
from slurm_rl.rundir import RunDir
from slurm_rl.states import Phase, RoleKind, RoleState
from slurm_rl.store import read_events
from tests.rooms import Backend

pytestmark = pytest.mark.timeout(120)

SUSPECT_S = 3.0       # heartbeat silence that makes a role SUSPECT here (a loaded CI machine stalls for less)
PHASES = {RoleKind.TRAINER: Phase.WAITING_FOR_DATA, RoleKind.ROLLOUT: Phase.GENERATING, RoleKind.SPARE: Phase.IDLE}


@pytest.fixture
def controller(tmp_path):
    run = RunDir(tmp_path / "run")
    run.path.mkdir(parents=True)
    cfg = RunConfig.model_validate({"controller": {"tick_s": 0.01},
                                    "recovery": {"suspect_after_s": SUSPECT_S, "hang_after_s": 10.0}})
    c = Controller(run, cfg, Backend())  # type: ignore[arg-type]
    c.lineage.start(run_state="running")
    c.registry.create()
    c.server = SimpleNamespace(recv=lambda timeout: None)
    progress = {"n": 0}

    def beat(skip: tuple[str, ...] = ()) -> None:
        progress["n"] += 1
        for s in c.registry:
            if s.name not in skip:
                c._handle(P.Heartbeat(ident=P.Ident(s.kind.value, s.index, s.incarnation), phase=PHASES[s.kind].value,
                                      progress=progress["n"], version=0, wepoch=c.lineage.wepoch))

    for i, s in enumerate(c.registry):
        s.job_id = f"J{i}"
        c._handle(P.Hello(ident=P.Ident(s.kind.value, s.index, s.incarnation), job_id=s.job_id, node="n1",
                          pid=100 + i, host_id="h", sync_addrs={}))
    beat()
    c.beat = beat  # type: ignore[attr-defined]
    yield c
    c.detect.close()
    c.recover.close()
    c.store.close()


@pytest.fixture
def wall(monkeypatch):
    """Steps the wall clock (time.time, everywhere) by `wall.jump(seconds)`; time.monotonic is untouched."""
    real = time.time
    offset = {"s": 0.0}
    monkeypatch.setattr(time, "time", lambda: real() + offset["s"])
    return SimpleNamespace(jump=lambda s: offset.__setitem__("s", offset["s"] + s))


def _verdicts(c: Controller) -> list[str]:
    return [f"{e.kind}: {e.msg}" for e in read_events(c.store.conn) if e.kind in ("suspect", "dead")]


def _run_for(c: Controller, seconds: float, *, skip: tuple[str, ...] = ()) -> None:
    """Ticks, with every role but `skip` beating every 0.1 s, for `seconds`."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        c.beat(skip)
        c._tick()
        time.sleep(0.1)


@pytest.mark.parametrize("jump_s", [10.0, -10.0])
def test_a_wall_clock_jump_declares_no_live_role_dead(controller, wall, jump_s) -> None:
    c = controller
    _run_for(c, 0.5)
    assert _verdicts(c) == [] and all(s.state.alive and s.state is not RoleState.SUSPECT for s in c.registry)
    wall.jump(jump_s)
    c._tick()                  # the first tick after the step, before any new heartbeat
    _run_for(c, 1.0)
    assert _verdicts(c) == []
    assert all(s.state.alive and s.state is not RoleState.SUSPECT for s in c.registry), \
        {s.name: s.state for s in c.registry}
    # what readers get is wall-clock time, in the stepped clock they read too
    c.registry.flush(force=True)
    for r in c.store.roles():
        assert abs(float(r["last_hb"]) - time.time()) < 30, dict(r)
        assert abs(float(r["updated"]) - time.time()) < 30, dict(r)


def test_after_a_backward_jump_a_silent_role_is_still_suspected_in_time(controller, wall) -> None:
    c = controller
    _run_for(c, 0.5)
    wall.jump(-10.0)
    t0 = time.monotonic()
    while c.registry.get("rollout/0").state is not RoleState.SUSPECT:
        # on the wall clock its last heartbeat lies 10 s in the future: it was SUSPECT only after 10 + 3 s
        assert time.monotonic() - t0 < SUSPECT_S + 6.0, "rollout/0 silent and not suspected"
        _run_for(c, 0.1, skip=("rollout/0",))
    assert [v for v in _verdicts(c) if "rollout/0" not in v] == []


def test_restarts_from_before_a_resume_are_outside_the_budget_window(controller) -> None:
    c = controller
    s = c.registry.get("rollout/1")
    s.restarts = [time.monotonic()] * 2
    c.registry.flush(force=True)
    c.registry.slots.clear()
    c.registry.resume(c.lineage.committed)
    v = c.detect.view(committed=0, full_restarts=0, node_failures={}, excluded=set(), restarting=False,
                      stopping=False)
    # their times are not stored, only their number; the budget counts restarts within its window
    assert next(x for x in v.slots if x.slot == "rollout/1").restarts_in_window == 0
    assert len(c.registry.get("rollout/1").restarts) == 2
