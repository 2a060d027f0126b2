"""The recovery policy is a pure function: every rule tested without processes."""

from __future__ import annotations

import dataclasses

import pytest

from slurm_rl.controller import policy as pol
from slurm_rl.controller.policy import ProbeResult, SlotView, View
from slurm_rl.states import JobState, NodeHealth, Phase, RoleKind, RoleState

NOW = 1000.0
TIMEOUTS = {p: 30.0 for p in Phase} | {Phase.LOADING: 180.0, Phase.CHECKPOINTING: 300.0}


def th(**kw) -> pol.Thresholds:
    base = dict(suspect_after_s=1.0, hang_after_s=10.0, phase_timeouts=TIMEOUTS, restart_budget=3, exclude_node_after=2,
                max_full_restarts=2, standby="spare-then-rollout", full_restart_policy=False, spare_replicas=1)
    base.update(kw)
    return pol.Thresholds(**base)


def slot(kind: RoleKind, index: int = 0, **kw) -> SlotView:
    base = dict(kind=kind, index=index, state=RoleState.READY, incarnation=1, job_id=f"{kind.value}{index}",
                node=f"n{index + 1}" if kind is not RoleKind.SPARE else "n9", connected=True,
                phase=Phase.GENERATING if kind is RoleKind.ROLLOUT else (Phase.IDLE if kind is RoleKind.SPARE
                                                                       else Phase.STEPPING),
                last_hb=NOW - 0.2, progress_at=NOW - 0.5, job_state=JobState.RUNNING, version=5)
    base.update(kw)
    return SlotView(**base)


def cluster(*extra: SlotView, **over: SlotView) -> list[SlotView]:
    slots = {"trainer/0": slot(RoleKind.TRAINER), "rollout/0": slot(RoleKind.ROLLOUT, 0),
             "rollout/1": slot(RoleKind.ROLLOUT, 1, version=4), "spare/0": slot(RoleKind.SPARE, 0)}
    slots.update(over)
    return list(slots.values()) + list(extra)


def view(slots: list[SlotView], **kw) -> View:
    return View(slots=slots, thresholds=kw.pop("thresholds", th()), committed_version=kw.pop("committed", 5), **kw)


def kinds(actions) -> list[str]:
    return [type(a).__name__ for a in actions]


def test_healthy_run_needs_nothing():
    assert pol.decide(NOW, view(cluster())) == []


# ----------------------------------------------------------------------------- detection
def test_silence_makes_suspect_then_probe_refused_confirms_dead():
    r1 = slot(RoleKind.ROLLOUT, 1, last_hb=NOW - 1.5)
    acts = pol.decide(NOW, view(cluster(**{"rollout/1": r1})))
    assert kinds(acts) == ["Suspect"] and acts[0].slot == "rollout/1"
    # suspect, probe pending: wait
    r1 = dataclasses.replace(r1, state=RoleState.SUSPECT, suspect_since=NOW, probe_pending=True,
                             suspect_reason="no heartbeat")
    assert pol.decide(NOW + 0.1, view(cluster(**{"rollout/1": r1}))) == []
    # probe came back refused: dead, with both signals named
    r1 = dataclasses.replace(r1, probe_pending=False, probe=ProbeResult.REFUSED, probe_at=NOW + 0.2)
    acts = pol.decide(NOW + 0.3, view(cluster(**{"rollout/1": r1})))
    dead = [a for a in acts if isinstance(a, pol.Dead)]
    assert dead and dead[0].slot == "rollout/1" and "probe refused" in dead[0].signals
    assert "heartbeat lost" in dead[0].signals


def test_a_lost_liveness_link_makes_suspect_at_once_and_a_refused_probe_confirms():
    """A crash ends the controller's idle connection: no need to wait for heartbeat silence."""
    t = slot(RoleKind.TRAINER, last_hb=NOW - 0.1, link_lost_at=NOW - 0.05)
    acts = pol.decide(NOW, view(cluster(**{"trainer/0": t})))
    assert kinds(acts) == ["Suspect"] and "liveness connection" in acts[0].reason
    t = dataclasses.replace(t, state=RoleState.SUSPECT, suspect_since=NOW, suspect_reason=acts[0].reason,
                            probe=ProbeResult.REFUSED, probe_at=NOW + 0.01)
    dead = [a for a in pol.decide(NOW + 0.02, view(cluster(**{"trainer/0": t}))) if isinstance(a, pol.Dead)]
    assert dead and dead[0].slot == "trainer/0" and "probe refused" in dead[0].signals
    # the link ended but the process answers and keeps beating (a network blip): cleared
    t = dataclasses.replace(t, probe=ProbeResult.OK, last_hb=NOW + 0.3)
    assert kinds(pol.decide(NOW + 0.4, view(cluster(**{"trainer/0": t})))) == ["Clear"]
    # the probe still connects (a child holding the port) but nothing was heard since the link
    # closed: gone once the silence passes the suspect threshold, not only at the hang timeout
    t = dataclasses.replace(t, probe=ProbeResult.OK, last_hb=NOW - 0.1)
    assert not any(isinstance(a, pol.Dead) for a in pol.decide(NOW + 0.5, view(cluster(**{"trainer/0": t}))))
    dead = [a for a in pol.decide(NOW + 1.0, view(cluster(**{"trainer/0": t}))) if isinstance(a, pol.Dead)]
    assert dead and "liveness link closed" in dead[0].signals


def test_a_silent_process_its_agent_sees_stopped_is_dead_at_once():
    """The job's batch agent sees the process from outside its step: stopped (T) means it cannot run."""
    t = slot(RoleKind.TRAINER, last_hb=NOW - 1.3, proc_state="T", proc_at=NOW - 0.1, cpu_moved_at=NOW - 1.4)
    dead = [a for a in pol.decide(NOW, view(cluster(**{"trainer/0": t}))) if isinstance(a, pol.Dead)]
    assert dead and dead[0].slot == "trainer/0" and "process stopped" in dead[0].signals
    # stopped is hung in any phase, loading included
    loading = dataclasses.replace(t, phase=Phase.LOADING)
    assert any(isinstance(a, pol.Dead) for a in pol.decide(NOW, view(cluster(**{"trainer/0": loading}))))
    # not before two heartbeats are missed, not on a view older than the silence or stale, not if
    # Slurm suspended it
    for over in (dict(last_hb=NOW - 0.4), dict(proc_at=NOW - 1.35), dict(proc_at=NOW - 2.0),
                 dict(job_state=JobState.SUSPENDED)):
        v = dataclasses.replace(t, **over)
        acts = pol.decide(NOW, view(cluster(**{"trainer/0": v})))
        assert not any(isinstance(a, pol.Dead) for a in acts), over


def test_a_silent_process_using_no_cpu_is_hung_after_hang_idle_but_a_busy_one_waits():
    idle = slot(RoleKind.ROLLOUT, 1, state=RoleState.SUSPECT, suspect_since=NOW - 4, last_hb=NOW - 5.2,
                probe=ProbeResult.OK, probe_at=NOW - 3.9, proc_state="S", proc_at=NOW - 0.2, cpu_moved_at=NOW - 6)
    dead = [a for a in pol.decide(NOW, view(cluster(**{"rollout/1": idle}))) if isinstance(a, pol.Dead)]
    assert dead and "no CPU use" in dead[0].signals
    early = dataclasses.replace(idle, last_hb=NOW - 4.0)            # 4 s < hang_idle_after_s (5 s)
    assert not any(isinstance(a, pol.Dead) for a in pol.decide(NOW, view(cluster(**{"rollout/1": early}))))
    # using CPU (a long native call holding the interpreter): only hang_after_s (10 s) confirms
    busy = dataclasses.replace(idle, proc_state="R", cpu_moved_at=NOW - 0.3)
    assert not any(isinstance(a, pol.Dead) for a in pol.decide(NOW, view(cluster(**{"rollout/1": busy}))))
    restoring = dataclasses.replace(idle, phase=Phase.RESTORING)    # may sleep on a slow file system
    assert not any(isinstance(a, pol.Dead) for a in pol.decide(NOW, view(cluster(**{"rollout/1": restoring}))))
    sleeping_but_busy = dataclasses.replace(idle, cpu_moved_at=NOW - 0.3)   # CPU moved since the last beat
    assert not any(isinstance(a, pol.Dead) for a in pol.decide(NOW, view(cluster(**{"rollout/1": sleeping_but_busy}))))
    later = NOW - 5.2 + 10.5
    busy_late = dataclasses.replace(busy, proc_at=later - 0.2, cpu_moved_at=later - 0.3)
    dead = [a for a in pol.decide(later, view(cluster(**{"rollout/1": busy_late}))) if isinstance(a, pol.Dead)]
    assert dead and "hang timeout" in dead[0].signals


def test_suspect_alive_probe_waits_for_the_hang_timeout():
    """SIGSTOP: the kernel still accepts connections, so only time (hang_after_s) confirms."""
    r1 = slot(RoleKind.ROLLOUT, 1, state=RoleState.SUSPECT, suspect_since=NOW - 2, last_hb=NOW - 3,
              probe=ProbeResult.OK, probe_at=NOW - 1.5, suspect_reason="no heartbeat")
    assert pol.decide(NOW, view(cluster(**{"rollout/1": r1}))) == []
    later = NOW - 3 + 10.5
    acts = [a for a in pol.decide(later, view(cluster(**{"rollout/1": r1}))) if getattr(a, "slot", "") == "rollout/1"]
    assert kinds(acts)[0] == "Dead" and "hang timeout" in acts[0].signals


def test_a_shorter_phase_timeout_wins_and_loading_gets_its_own():
    r1 = slot(RoleKind.ROLLOUT, 1, state=RoleState.SUSPECT, suspect_since=NOW - 2, last_hb=NOW - 5.5,
              probe=ProbeResult.OK, probe_at=NOW - 1.5)
    short = dict(TIMEOUTS) | {Phase.GENERATING: 5.0}
    acts = pol.decide(NOW, view(cluster(**{"rollout/1": r1}), thresholds=th(phase_timeouts=short)))
    assert any(isinstance(a, pol.Dead) and a.slot == "rollout/1" for a in acts)
    loading = slot(RoleKind.ROLLOUT, 1, state=RoleState.SUSPECT, phase=Phase.LOADING, suspect_since=NOW - 30,
                   last_hb=NOW - 60, probe=ProbeResult.OK, probe_at=NOW - 29)
    acts = pol.decide(NOW, view(cluster(**{"rollout/1": loading})))
    assert not any(isinstance(a, pol.Dead) and a.slot == "rollout/1" for a in acts)   # 60 s < 180 s loading


def test_heartbeats_resume_clears_suspect():
    r1 = slot(RoleKind.ROLLOUT, 1, state=RoleState.SUSPECT, suspect_since=NOW - 1, last_hb=NOW - 0.1,
              probe=ProbeResult.OK, probe_at=NOW - 0.5)
    acts = pol.decide(NOW, view(cluster(**{"rollout/1": r1})))
    assert kinds(acts) == ["Clear"]


def test_suspect_without_probe_asks_for_one():
    r1 = slot(RoleKind.ROLLOUT, 1, state=RoleState.SUSPECT, suspect_since=NOW - 0.5, last_hb=NOW - 1.6)
    assert kinds(pol.decide(NOW, view(cluster(**{"rollout/1": r1})))) == ["Probe"]


@pytest.mark.parametrize("state,exit_text", [(JobState.FAILED, "exit 3"), (JobState.NODE_FAIL, ""),
                                             (JobState.CANCELLED, ""), (JobState.TIMEOUT, ""),
                                             (JobState.OUT_OF_MEMORY, "")])
def test_terminal_job_state_is_conclusive(state, exit_text):
    r0 = slot(RoleKind.ROLLOUT, 0, job_state=state, job_exit=exit_text)
    acts = pol.decide(NOW, view(cluster(**{"rollout/0": r0})))
    assert isinstance(acts[0], pol.Dead) and state.value in acts[0].reason


def test_node_down_is_conclusive_even_with_recent_heartbeat():
    r0 = slot(RoleKind.ROLLOUT, 0, node_health=NodeHealth.DOWN)
    acts = pol.decide(NOW, view(cluster(**{"rollout/0": r0})))
    assert isinstance(acts[0], pol.Dead) and "DOWN" in acts[0].reason


@pytest.mark.parametrize("phase", [Phase.IDLE, Phase.WAITING_FOR_DATA])
def test_waiting_is_never_a_fault(phase):
    """A rollout idle for lack of prompts or a trainer waiting for data: no progress is fine."""
    kind = RoleKind.ROLLOUT if phase is Phase.IDLE else RoleKind.TRAINER
    s = slot(kind, 0, phase=phase, progress_at=NOW - 10_000)
    name = f"{kind.value}/0"
    assert pol.decide(NOW, view(cluster(**{name: s}))) == []


def test_checkpointing_trainer_has_its_own_longer_timeout():
    t = slot(RoleKind.TRAINER, phase=Phase.CHECKPOINTING, progress_at=NOW - 200)
    assert pol.decide(NOW, view(cluster(**{"trainer/0": t}))) == []
    t = slot(RoleKind.TRAINER, phase=Phase.STEPPING, progress_at=NOW - 200)
    acts = pol.decide(NOW, view(cluster(**{"trainer/0": t})))
    assert isinstance(acts[0], pol.Dead) and "no progress" in acts[0].reason


def test_pending_job_is_not_judged():
    """Queue wait is not a fault: an unconnected slot is only judged by its job state."""
    r1 = slot(RoleKind.ROLLOUT, 1, state=RoleState.PENDING, connected=False, last_hb=None,
              job_state=JobState.PENDING)
    assert pol.decide(NOW, view(cluster(**{"rollout/1": r1}))) == []


def test_goodbye_after_a_stop_request_is_not_a_fault():
    r1 = slot(RoleKind.ROLLOUT, 1, goodbye=True, stop_requested=True, last_hb=NOW - 100,
              job_state=JobState.COMPLETED)
    assert pol.decide(NOW, view(cluster(**{"rollout/1": r1}))) == []


def test_a_role_leaving_on_its_own_is_dead():
    """A trainer that cannot restore says goodbye and exits: that is a failure, not a stop."""
    t = slot(RoleKind.TRAINER, goodbye=True, last_hb=NOW - 0.1)
    acts = pol.decide(NOW, view(cluster(**{"trainer/0": t})))
    assert kinds(acts)[:2] == ["Dead", "PromoteTrainer"] and "on its own" in acts[0].reason


# ----------------------------------------------------------------------------- recovery
def test_dead_rollout_promotes_spare_and_backfills_it():
    r1 = slot(RoleKind.ROLLOUT, 1, job_state=JobState.FAILED)
    acts = pol.decide(NOW, view(cluster(**{"rollout/1": r1})))
    assert kinds(acts) == ["Dead", "PromoteSpare", "Submit"]
    assert acts[1].spare == "spare/0" and acts[1].target == "rollout/1"
    assert acts[2].slot == "spare/0" and acts[2].backfill
    assert "n2" in acts[2].exclude            # the dead role's node is avoided


def test_a_standby_not_heard_from_lately_is_not_promoted():
    """It may have hung a moment ago (not SUSPECT yet): promoting it would stall the recovery."""
    r1 = slot(RoleKind.ROLLOUT, 1, job_state=JobState.FAILED)
    quiet_spare = slot(RoleKind.SPARE, 0, last_hb=NOW - 0.9)
    acts = pol.decide(NOW, view(cluster(**{"rollout/1": r1, "spare/0": quiet_spare})))
    assert kinds(acts) == ["Dead", "Submit"] and acts[1].slot == "rollout/1"


def test_dead_rollout_without_spare_resubmits_excluding_its_node():
    r1 = slot(RoleKind.ROLLOUT, 1, job_state=JobState.NODE_FAIL)
    slots = [s for s in cluster(**{"rollout/1": r1}) if s.kind is not RoleKind.SPARE]
    acts = pol.decide(NOW, view(slots))
    assert kinds(acts) == ["Dead", "Submit"]
    assert acts[1].slot == "rollout/1" and acts[1].exclude == ("n2",)


def test_dead_trainer_restored_on_spare_at_committed_step():
    t = slot(RoleKind.TRAINER, job_state=JobState.FAILED)
    acts = pol.decide(NOW, view(cluster(**{"trainer/0": t}), committed=7))
    assert kinds(acts) == ["Dead", "PromoteTrainer", "Submit"]
    assert acts[1].standby == "spare/0" and acts[1].resume_step == 7
    assert acts[2].slot == "spare/0"


def test_dead_trainer_without_spare_takes_freshest_rollout():
    t = slot(RoleKind.TRAINER, job_state=JobState.FAILED)
    slots = [s for s in cluster(**{"trainer/0": t}) if s.kind is not RoleKind.SPARE]
    acts = pol.decide(NOW, view(slots))
    assert kinds(acts) == ["Dead", "PromoteTrainer", "Submit"]
    assert acts[1].standby == "rollout/0"     # version 5 beats rollout/1's version 4
    assert acts[2].slot == "rollout/0"        # its capacity is backfilled


def _lonely_rollout(**kw) -> list[SlotView]:
    """A dead trainer, no spare, rollout/0 generating, rollout/1 down to a job still starting."""
    t = slot(RoleKind.TRAINER, job_state=JobState.FAILED)
    r1 = slot(RoleKind.ROLLOUT, 1, state=RoleState.PENDING, connected=False, last_hb=None, job_state=JobState.PENDING,
              version=-1, **kw)
    return [s for s in cluster(**{"trainer/0": t, "rollout/1": r1}) if s.kind is not RoleKind.SPARE]


@pytest.mark.parametrize("r1_starting_for, cold_s, promoted", [
    (None, 8.0, False),     # no rollout starting: promoted, the trainer waits a whole engine start (20 s)
    (5.0, 8.0, False),      # the next rollout is ~15 s away: a cold trainer (8 s) is sooner
    (15.0, 8.0, True),      # ~5 s away: promote, the trainer waits less than a cold start takes
    (None, 25.0, True),     # a cold trainer is slower than a new rollout: promote
])
def test_the_only_rollout_generating_is_promoted_only_if_no_cold_trainer_is_sooner(r1_starting_for, cold_s,
                                                                                     promoted):
    since = None if r1_starting_for is None else NOW - r1_starting_for
    slots = _lonely_rollout(starting_since=since)
    acts = pol.decide(NOW, view(slots, start_s={RoleKind.TRAINER: cold_s, RoleKind.ROLLOUT: 20.0}))
    if promoted:
        assert kinds(acts) == ["Dead", "PromoteTrainer", "Submit"] and acts[1].standby == "rollout/0"
    else:
        assert kinds(acts) == ["Dead", "Submit"] and acts[1].slot == "trainer/0"
        assert "rollout/0, the only rollout generating, keeps generating" in acts[1].reason


def test_a_spare_a_rollout_slot_waits_for_counts_as_a_rollout_coming_back():
    dead_r1 = slot(RoleKind.ROLLOUT, 1, state=RoleState.DEAD, connected=False, job_state=JobState.CANCELLED,
                   version=-1)
    t = slot(RoleKind.TRAINER, job_state=JobState.FAILED)
    start_s = {RoleKind.TRAINER: 8.0, RoleKind.ROLLOUT: 20.0}
    for spare, promoted in ((_spare_starting(18.0, reserved_for="rollout/1"), True),    # ~2 s away
                            (_spare_starting(1.0, reserved_for="rollout/1"), False),    # ~19 s away
                            (slot(RoleKind.SPARE, 0, reserved_for="rollout/1"), True)):  # ready: fills it now
        acts = pol.decide(NOW, view(cluster(**{"trainer/0": t, "rollout/1": dead_r1, "spare/0": spare}),
                                    start_s=start_s))
        trainer = [a for a in acts if getattr(a, "standby", None) or getattr(a, "slot", None) == "trainer/0"]
        assert isinstance(trainer[-1], pol.PromoteTrainer if promoted else pol.Submit), (spare, acts)


def test_the_only_rollout_is_promoted_without_measured_start_times_or_beside_another():
    acts = pol.decide(NOW, view(_lonely_rollout(), start_s={RoleKind.ROLLOUT: 20.0}))     # no trainer start seen
    assert kinds(acts) == ["Dead", "PromoteTrainer", "Submit"] and acts[1].standby == "rollout/0"
    t = slot(RoleKind.TRAINER, job_state=JobState.FAILED)
    both = [s for s in cluster(**{"trainer/0": t}) if s.kind is not RoleKind.SPARE]
    acts = pol.decide(NOW, view(both, start_s={RoleKind.TRAINER: 1.0, RoleKind.ROLLOUT: 20.0}))
    assert kinds(acts) == ["Dead", "PromoteTrainer", "Submit"]       # rollout/1 keeps generating


def test_start_times_pool_engines_and_keep_the_newest():
    st = pol.StartTimes(keep=3)
    assert st.estimates() == {}
    for v in (30.0, 10.0, 12.0):
        st.add(RoleKind.ROLLOUT, v)
    st.add(RoleKind.SPARE, 14.0)                       # a spare starts an engine too; the 30 s one drops out
    st.add(RoleKind.TRAINER, 6.0)
    assert st.estimates() == {RoleKind.ROLLOUT: 12.0, RoleKind.TRAINER: 6.0}


def _spare_starting(for_s: float | None, **kw) -> SlotView:
    return slot(RoleKind.SPARE, 0, state=RoleState.STARTING, phase=Phase.LOADING,
                starting_since=None if for_s is None else NOW - for_s, **kw)


@pytest.mark.parametrize("spare_started_s, start_s, waits", [
    (15.0, {RoleKind.ROLLOUT: 20.0}, True),      # ready in ~5 s: a new job would take 20
    (2.0, {RoleKind.ROLLOUT: 20.0}, False),      # ~18 s left saves too little: a new job starts beside it
    (15.0, {}, False),                           # no start measured yet
    (None, {RoleKind.ROLLOUT: 20.0}, False),     # not starting (its start was not seen)
])
def test_a_dead_rollout_waits_for_a_starting_spare_only_when_clearly_sooner(spare_started_s, start_s, waits):
    r1 = slot(RoleKind.ROLLOUT, 1, job_state=JobState.FAILED)
    acts = pol.decide(NOW, view(cluster(**{"rollout/1": r1, "spare/0": _spare_starting(spare_started_s)}),
                                start_s=start_s))
    if waits:
        assert kinds(acts) == ["Dead", "AwaitSpare"]
        assert (acts[1].spare, acts[1].target) == ("spare/0", "rollout/1") and "ready in ~5s" in acts[1].reason
    else:
        assert kinds(acts) == ["Dead", "Submit"] and acts[1].slot == "rollout/1"


def test_a_waiting_rollout_slot_takes_its_spare_once_ready_or_resubmits_if_it_dies():
    dead_r1 = slot(RoleKind.ROLLOUT, 1, state=RoleState.DEAD, connected=False, job_state=JobState.CANCELLED)
    # still starting: the slot keeps waiting
    spare = _spare_starting(10.0, reserved_for="rollout/1")
    assert pol.decide(NOW, view(cluster(**{"rollout/1": dead_r1, "spare/0": spare}))) == []
    # ready and heard from: promoted (the wait was the decision), its own slot backfilled
    spare = slot(RoleKind.SPARE, 0, reserved_for="rollout/1")
    acts = pol.decide(NOW, view(cluster(**{"rollout/1": dead_r1, "spare/0": spare})))
    assert kinds(acts) == ["PromoteSpare", "Submit"] and acts[0].awaited
    assert (acts[0].spare, acts[0].target, acts[1].slot) == ("spare/0", "rollout/1", "spare/0")
    # the spare dies while starting: the rollout's own replacement after all, and the spare's
    spare = _spare_starting(10.0, reserved_for="rollout/1", job_state=JobState.FAILED)
    acts = pol.decide(NOW, view(cluster(**{"rollout/1": dead_r1, "spare/0": spare})))
    assert kinds(acts) == ["Dead", "Submit", "Submit"]
    assert {a.slot for a in acts[1:]} == {"spare/0", "rollout/1"} and "is gone" in acts[2].reason
    # a dead rollout slot that nothing is coming for (its spare's promise was lost) is resubmitted
    acts = pol.decide(NOW, view(cluster(**{"rollout/1": dead_r1})))
    assert kinds(acts) == ["Submit"] and acts[0].slot == "rollout/1"


def test_a_spare_two_dead_rollouts_could_wait_for_goes_to_one():
    r0 = slot(RoleKind.ROLLOUT, 0, job_state=JobState.FAILED)
    r1 = slot(RoleKind.ROLLOUT, 1, job_state=JobState.FAILED)
    acts = pol.decide(NOW, view(cluster(**{"rollout/0": r0, "rollout/1": r1, "spare/0": _spare_starting(15.0)}),
                                start_s={RoleKind.ROLLOUT: 20.0}))
    assert kinds(acts) == ["Dead", "AwaitSpare", "Dead", "Submit"]
    assert acts[1].target == "rollout/0" and acts[3].slot == "rollout/1"


def test_spare_only_standby_policy_restarts_trainer_cold_without_spare():
    t = slot(RoleKind.TRAINER, job_state=JobState.FAILED)
    slots = [s for s in cluster(**{"trainer/0": t}) if s.kind is not RoleKind.SPARE]
    acts = pol.decide(NOW, view(slots, thresholds=th(standby="spare-only")))
    assert kinds(acts) == ["Dead", "Submit"] and acts[1].slot == "trainer/0"


def test_trainer_and_rollout_dying_together_do_not_share_the_spare():
    t = slot(RoleKind.TRAINER, job_state=JobState.FAILED)
    r0 = slot(RoleKind.ROLLOUT, 0, job_state=JobState.FAILED)
    acts = pol.decide(NOW, view(cluster(**{"trainer/0": t, "rollout/0": r0})))
    promos = [a for a in acts if isinstance(a, (pol.PromoteTrainer, pol.PromoteSpare))]
    assert isinstance(promos[0], pol.PromoteTrainer) and promos[0].standby == "spare/0"
    # the rollout gets the next standby in line: rollout/1 becomes trainer? no: rollout/0 is dead,
    # so the dead rollout is resubmitted (no second spare)
    assert not any(isinstance(a, pol.PromoteSpare) for a in acts)
    assert any(isinstance(a, pol.Submit) and a.slot == "rollout/0" for a in acts)


def test_dead_spare_is_replaced():
    sp = slot(RoleKind.SPARE, 0, job_state=JobState.FAILED)
    acts = pol.decide(NOW, view(cluster(**{"spare/0": sp})))
    assert kinds(acts) == ["Dead", "Submit"] and acts[1].slot == "spare/0"


def test_node_failing_twice_is_excluded():
    r1 = slot(RoleKind.ROLLOUT, 1, job_state=JobState.NODE_FAIL, node="n7")
    acts = pol.decide(NOW, view(cluster(**{"rollout/1": r1}), node_failures={"n7": 1}))
    ex = [a for a in acts if isinstance(a, pol.ExcludeNode)]
    assert ex and ex[0].node == "n7"
    acts = pol.decide(NOW, view(cluster(**{"rollout/1": r1}), node_failures={}))
    assert not any(isinstance(a, pol.ExcludeNode) for a in acts)


def test_excluded_nodes_are_passed_to_replacements():
    r1 = slot(RoleKind.ROLLOUT, 1, job_state=JobState.FAILED, node="n2")
    slots = [s for s in cluster(**{"rollout/1": r1}) if s.kind is not RoleKind.SPARE]
    acts = pol.decide(NOW, view(slots, excluded_nodes=frozenset({"n5"})))
    sub = next(a for a in acts if isinstance(a, pol.Submit))
    assert set(sub.exclude) == {"n2", "n5"}


def test_restart_budget_escalates_to_full_restart_then_stop():
    r1 = slot(RoleKind.ROLLOUT, 1, job_state=JobState.FAILED, restarts_in_window=3)
    acts = pol.decide(NOW, view(cluster(**{"rollout/1": r1})))
    assert kinds(acts) == ["Dead", "FullRestart"] and "budget" in acts[1].reason
    acts = pol.decide(NOW, view(cluster(**{"rollout/1": r1}), full_restarts=2))
    assert kinds(acts) == ["Dead", "StopRun"] and acts[1].failed


def test_full_restart_policy_restarts_everything_on_any_death():
    r1 = slot(RoleKind.ROLLOUT, 1, job_state=JobState.FAILED)
    acts = pol.decide(NOW, view(cluster(**{"rollout/1": r1}), thresholds=th(full_restart_policy=True)))
    assert kinds(acts) == ["Dead", "FullRestart"]


def test_no_decisions_while_restarting_or_stopping():
    r1 = slot(RoleKind.ROLLOUT, 1, job_state=JobState.FAILED)
    assert pol.decide(NOW, view(cluster(**{"rollout/1": r1}), restarting=True)) == []
    assert pol.decide(NOW, view(cluster(**{"rollout/1": r1}), stopping=True)) == []


# ----------------------------------------------------------------------------- drain
def test_drain_moves_role_via_ready_spare():
    r0 = slot(RoleKind.ROLLOUT, 0, node_health=NodeHealth.DRAIN)
    acts = pol.decide(NOW, view(cluster(**{"rollout/0": r0})))
    assert kinds(acts) == ["StartMove"] and acts[0].slot == "rollout/0" and acts[0].spare == "spare/0"


def test_drain_without_spare_starts_one_first():
    r0 = slot(RoleKind.ROLLOUT, 0, node_health=NodeHealth.DRAIN)
    slots = [s for s in cluster(**{"rollout/0": r0}) if s.kind is not RoleKind.SPARE]
    acts = pol.decide(NOW, view(slots))
    assert kinds(acts) == ["AddSpare"] and acts[0].for_slot == "rollout/0"
    # the extra spare is still starting: nothing more to do
    extra = slot(RoleKind.SPARE, 1, state=RoleState.STARTING, reserved_for="rollout/0", extra=True)
    assert pol.decide(NOW, view(slots + [extra])) == []
    # once ready, the move starts
    extra = dataclasses.replace(extra, state=RoleState.READY)
    acts = pol.decide(NOW, view(slots + [extra]))
    assert kinds(acts) == ["StartMove"] and acts[0].spare == "spare/1"


def test_move_finishes_when_the_old_role_said_goodbye():
    r0 = slot(RoleKind.ROLLOUT, 0, node_health=NodeHealth.DRAIN, state=RoleState.MOVING, moving=True,
              stop_requested=True, goodbye=True)
    sp = slot(RoleKind.SPARE, 0, reserved_for="rollout/0")
    acts = pol.decide(NOW, view(cluster(**{"rollout/0": r0, "spare/0": sp})))
    assert kinds(acts) == ["FinishMove"] and acts[0].spare == "spare/0"


def test_moving_role_that_dies_uses_its_reserved_spare():
    r0 = slot(RoleKind.ROLLOUT, 0, state=RoleState.MOVING, moving=True, job_state=JobState.NODE_FAIL)
    sp = slot(RoleKind.SPARE, 0, reserved_for="rollout/0")
    acts = pol.decide(NOW, view(cluster(**{"rollout/0": r0, "spare/0": sp})))
    assert kinds(acts)[:2] == ["Dead", "PromoteSpare"] and acts[1].spare == "spare/0"


def test_a_trainer_restore_waits_for_a_standby_on_its_own_node_to_be_heard_from():
    """Node-down kills the trainer and a rollout beside it; the trainer is found first. Promoting that
    rollout (about to be found dead too) would lose the restore: wait until it is heard from."""
    dead_t = slot(RoleKind.TRAINER, node="n3", state=RoleState.SUSPECT, suspect_since=NOW - 0.1,
                  link_lost_at=NOW - 0.12, last_hb=NOW - 0.2, probe=ProbeResult.REFUSED, probe_at=NOW - 0.05)
    neighbour = slot(RoleKind.ROLLOUT, 1, node="n3", last_hb=NOW - 0.2, version=5)
    other = slot(RoleKind.ROLLOUT, 0, node="n1", last_hb=NOW - 0.1, version=4)
    no_spare = slot(RoleKind.SPARE, 0, state=RoleState.PENDING, connected=False, last_hb=None, job_state=None)
    slots = {"trainer/0": dead_t, "rollout/0": other, "rollout/1": neighbour, "spare/0": no_spare}
    assert pol.decide(NOW, view(cluster(**slots))) == []                  # not yet: wait for the neighbour
    # it answered after the death: alive, and the freshest standby, so it is the one promoted
    heard = dataclasses.replace(neighbour, last_hb=NOW + 0.1)
    acts = pol.decide(NOW + 0.15, view(cluster(**(slots | {"rollout/1": heard}))))
    promote = [a for a in acts if isinstance(a, pol.PromoteTrainer)]
    assert "Dead" in kinds(acts) and promote and promote[0].standby == "rollout/1"
    # silent past the wait (dead with its node, its own death not yet confirmed): the other one
    acts = pol.decide(NOW + 0.6, view(cluster(**slots)))
    promote = [a for a in acts if isinstance(a, pol.PromoteTrainer)]
    assert promote and promote[0].standby == "rollout/0"


def test_a_multi_node_trainer_waits_for_a_trainer_shaped_standby_sharing_any_of_its_nodes():
    """Rank 1's node went down under the trainer; the standby's rank 1 shares that node (not rank 0's):
    it is promoted only once heard from after the death."""
    dead_t = slot(RoleKind.TRAINER, node="n1", nodes=("n1", "n2"), shape=(2, 1), state=RoleState.SUSPECT,
                  suspect_since=NOW - 0.1, link_lost_at=NOW - 0.12, last_hb=NOW - 0.2, probe=ProbeResult.REFUSED,
                  probe_at=NOW - 0.05)
    shaped = _shaped(node="n7", nodes=("n7", "n2"), last_hb=NOW - 0.2)
    assert pol.decide(NOW, view(cluster(shaped, **{"trainer/0": dead_t}), trainer_shape=(2, 1))) == []
    heard = dataclasses.replace(shaped, last_hb=NOW + 0.1)
    acts = pol.decide(NOW + 0.15, view(cluster(heard, **{"trainer/0": dead_t}), trainer_shape=(2, 1)))
    assert [a.standby for a in acts if isinstance(a, pol.PromoteTrainer)] == ["trainer-spare/0"]
    # on nodes of its own it is promoted at once
    apart = _shaped(node="n7", nodes=("n7", "n8"), last_hb=NOW - 0.2)
    acts = pol.decide(NOW, view(cluster(apart, **{"trainer/0": dead_t}), trainer_shape=(2, 1)))
    assert [a.standby for a in acts if isinstance(a, pol.PromoteTrainer)] == ["trainer-spare/0"]


def test_a_dead_rollout_prefers_a_spare_off_its_node_among_equals():
    dead_r = slot(RoleKind.ROLLOUT, 1, node="n3", last_hb=NOW - 20, job_state=JobState.FAILED)
    near = slot(RoleKind.SPARE, 0, node="n3", version=5)
    far = slot(RoleKind.SPARE, 1, node="n2", version=5)
    acts = pol.decide(NOW, view(cluster(far, **{"rollout/1": dead_r, "spare/0": near})))
    promote = [a for a in acts if isinstance(a, pol.PromoteSpare)]
    assert promote and promote[0].spare == "spare/1"


def test_the_controller_clears_a_suspect_back_to_the_state_it_had():
    """A spare that went quiet while still loading its engine and then beat again is still loading:
    it must not come back READY (it was once promoted as a warm standby, and the restore waited
    for its engine)."""
    from slurm_rl.controller.detect import Detector
    from slurm_rl.controller.registry import Registry
    from slurm_rl.controller.slot import Slot

    class _Null:
        def submit(self, *a, **k):
            pass

        watch = event = submit

    registry = Registry.__new__(Registry)
    registry.slots = {"spare/0": Slot(kind=RoleKind.SPARE, index=0, state=RoleState.STARTING, connected=True,
                                      phase=Phase.LOADING),
                      "rollout/0": Slot(kind=RoleKind.ROLLOUT, index=0, state=RoleState.READY, connected=True,
                                        phase=Phase.GENERATING)}
    detect = Detector.__new__(Detector)
    detect.registry, detect.ctx, detect.prober, detect.links = registry, _Null(), _Null(), _Null()
    for name in registry.slots:
        detect.apply(pol.Suspect("no heartbeat for 1.1s", name), NOW)
        assert registry[name].state is RoleState.SUSPECT
        detect.apply(pol.Clear("heartbeats resumed", name), NOW + 0.5)
    assert registry["spare/0"].state is RoleState.STARTING
    assert registry["rollout/0"].state is RoleState.READY


def test_a_job_whose_process_is_stopped_before_it_connects_is_dead_without_the_loading_timeout():
    starting = slot(RoleKind.SPARE, 0, state=RoleState.PENDING, connected=False, last_hb=None,
                    job_running_since=NOW - 3, proc_state="T", proc_at=NOW - 0.1, cpu_moved_at=NOW - 2.5)
    dead = [a for a in pol.decide(NOW, view(cluster(**{"spare/0": starting}))) if isinstance(a, pol.Dead)]
    assert dead and dead[0].slot == "spare/0" and "process stopped" in dead[0].signals
    # just stopped (CPU moved a moment ago), a stale view, or a sleeping process: the loading timeout's call
    for over in (dict(cpu_moved_at=NOW - 0.5), dict(proc_at=NOW - 2), dict(proc_state="S")):
        s = dataclasses.replace(starting, **over)
        assert not any(isinstance(a, pol.Dead) for a in pol.decide(NOW, view(cluster(**{"spare/0": s})))), over


# ----------------------------------------------------------------------------- a multi-rank trainer
def test_a_multi_rank_trainer_is_restored_only_on_a_standby_of_its_shape():
    """A one-node spare or rollout cannot hold the shards of a 2-node trainer: the trainer is re-formed
    as a new job of its own shape (away from its node), and no rollout is taken from generating."""
    dead = slot(RoleKind.TRAINER, job_state=JobState.FAILED, job_exit="exit 1")
    one = pol.decide(NOW, view(cluster(**{"trainer/0": dead})))
    assert "PromoteTrainer" in kinds(one)          # the same death of a one-rank trainer takes the spare
    acts = pol.decide(NOW, view(cluster(**{"trainer/0": dataclasses.replace(dead, shape=(2, 1))}),
                                trainer_shape=(2, 1)))
    assert "PromoteTrainer" not in kinds(acts) and "PromoteSpare" not in kinds(acts)
    sub = [a for a in acts if isinstance(a, pol.Submit)]
    assert [a.slot for a in sub] == ["trainer/0"] and "n1" in sub[0].exclude
    assert "shape (2 node(s) x 1 rank(s))" in sub[0].reason


def test_a_draining_node_under_a_multi_rank_trainer_starts_no_move_to_a_one_node_spare():
    t = slot(RoleKind.TRAINER, node_health=NodeHealth.DRAIN, shape=(2, 1))
    acts = pol.decide(NOW, view(cluster(**{"trainer/0": t}), trainer_shape=(2, 1)))
    assert not [a for a in acts if isinstance(a, (pol.StartMove, pol.AddSpare))]
    # a one-rank trainer on a draining node is moved to the spare as before
    acts = pol.decide(NOW, view(cluster(**{"trainer/0": slot(RoleKind.TRAINER, node_health=NodeHealth.DRAIN)})))
    assert "StartMove" in kinds(acts)


def _shaped(**kw) -> SlotView:
    """The trainer-shaped standby (spare.trainer_nodes) of a 2-node trainer, built and waiting."""
    return slot(RoleKind.TRAINER_SPARE, 0, **{"node": "n7", "phase": Phase.IDLE, "version": -1, "shape": (2, 1),
                                              **kw})


def test_a_multi_rank_trainer_is_restored_on_the_trainer_shaped_standby_and_it_is_backfilled():
    dead = slot(RoleKind.TRAINER, job_state=JobState.FAILED, shape=(2, 1))
    acts = pol.decide(NOW, view(cluster(_shaped(), **{"trainer/0": dead}), trainer_shape=(2, 1), committed=9))
    assert kinds(acts) == ["Dead", "PromoteTrainer", "Submit"]
    assert acts[1].standby == "trainer-spare/0" and acts[1].resume_step == 9
    assert acts[2].slot == "trainer-spare/0" and acts[2].backfill    # a new standby is queued
    # recovery.standby speaks of spares and rollouts: "none" still takes the configured standby
    none = pol.decide(NOW, view(cluster(_shaped(), **{"trainer/0": dead}), trainer_shape=(2, 1),
                                thresholds=th(standby="none")))
    assert [a.standby for a in none if isinstance(a, pol.PromoteTrainer)] == ["trainer-spare/0"]
    # a one-rank trainer takes it before the spare too: the spare's engine stays free for rollouts
    acts = pol.decide(NOW, view(cluster(_shaped(shape=(1, 1)), **{"trainer/0": slot(
        RoleKind.TRAINER, job_state=JobState.FAILED)})))
    assert acts[1].standby == "trainer-spare/0"


def test_a_trainer_shaped_standby_not_ready_means_a_cold_trainer_and_says_why():
    dead = slot(RoleKind.TRAINER, job_state=JobState.FAILED, shape=(2, 1))
    loading = _shaped(state=RoleState.STARTING, phase=Phase.LOADING)
    acts = pol.decide(NOW, view(cluster(loading, **{"trainer/0": dead}), trainer_shape=(2, 1)))
    sub = [a for a in acts if isinstance(a, pol.Submit)]
    assert [a.slot for a in sub] == ["trainer/0"]
    assert "trainer-shaped standby trainer-spare/0 is not ready (STARTING)" in sub[0].reason
    # silent for longer than a heartbeat or two: not promoted either (it may have just hung)
    quiet = _shaped(last_hb=NOW - 0.9)
    assert "PromoteTrainer" not in kinds(pol.decide(NOW, view(cluster(quiet, **{"trainer/0": dead}),
                                                              trainer_shape=(2, 1))))


def test_a_dead_trainer_shaped_standby_is_replaced_and_never_becomes_a_rollout():
    acts = pol.decide(NOW, view(cluster(_shaped(job_state=JobState.FAILED)), trainer_shape=(2, 1)))
    assert kinds(acts) == ["Dead", "Submit"] and acts[1].slot == "trainer-spare/0"
    # a dead rollout with no spare gets a new job, not the trainer-shaped standby
    r0 = slot(RoleKind.ROLLOUT, 0, job_state=JobState.FAILED)
    slots = [s for s in cluster(_shaped(), **{"rollout/0": r0}) if s.kind is not RoleKind.SPARE]
    acts = pol.decide(NOW, view(slots, trainer_shape=(2, 1)))
    assert [(type(a).__name__, a.slot) for a in acts] == [("Dead", "rollout/0"), ("Submit", "rollout/0")]


def test_a_draining_node_under_a_multi_rank_trainer_moves_it_to_the_trainer_shaped_standby():
    t = slot(RoleKind.TRAINER, node_health=NodeHealth.DRAIN, shape=(2, 1))
    acts = pol.decide(NOW, view(cluster(_shaped(), **{"trainer/0": t}), trainer_shape=(2, 1)))
    moves = [a for a in acts if isinstance(a, pol.StartMove)]
    assert [(a.slot, a.spare) for a in moves] == [("trainer/0", "trainer-spare/0")]
    # a draining node under the standby itself moves nothing
    acts = pol.decide(NOW, view(cluster(_shaped(node_health=NodeHealth.DRAIN)), trainer_shape=(2, 1)))
    assert acts == []


def test_a_trainer_is_promoted_only_onto_a_standby_with_its_resources():
    """A one-node trainer on a GPU: a spare job without a GPU cannot stand in; a rollout with one can
    (spare-then-rollout); with neither, a cold trainer job, and the reason says what was missing."""
    dead = slot(RoleKind.TRAINER, job_state=JobState.FAILED, job_exit="exit 1")
    no_gpu = "a spare job has 0 GPU(s); the trainer needs 1"
    acts = pol.decide(NOW, view(cluster(**{"trainer/0": dead}), standby_misfit={RoleKind.SPARE: no_gpu}))
    promoted = [a for a in acts if isinstance(a, pol.PromoteTrainer)]
    assert [a.standby for a in promoted] == ["rollout/0"]
    small = "a rollout job has 64 GB of memory; the trainer asks for 200"
    acts = pol.decide(NOW, view(cluster(**{"trainer/0": dead}),
                                standby_misfit={RoleKind.SPARE: no_gpu, RoleKind.ROLLOUT: small}))
    assert "PromoteTrainer" not in kinds(acts)
    sub = [a for a in acts if isinstance(a, pol.Submit) and a.slot == "trainer/0"]
    assert sub and no_gpu in sub[0].reason and small in sub[0].reason
    # spare-only: the spare's misfit alone sends it to a cold job, rollouts are not considered
    acts = pol.decide(NOW, view(cluster(**{"trainer/0": dead}), thresholds=th(standby="spare-only"),
                                standby_misfit={RoleKind.SPARE: no_gpu}))
    assert "PromoteTrainer" not in kinds(acts)
    assert any(isinstance(a, pol.Submit) and a.slot == "trainer/0" and no_gpu in a.reason for a in acts)
    # and a draining node under it starts no move onto the unfit spare
    t = slot(RoleKind.TRAINER, node_health=NodeHealth.DRAIN)
    acts = pol.decide(NOW, view(cluster(**{"trainer/0": t}), standby_misfit={RoleKind.SPARE: no_gpu}))
    assert not [a for a in acts if isinstance(a, (pol.StartMove, pol.AddSpare))]
