"""The discrete-event model: invariants, the policy's rules, and hand-checked timelines."""

from __future__ import annotations

import dataclasses
import math
import sqlite3
from collections.abc import Sequence

import pytest

from slurm_rl import report
from slurm_rl import store as store_schema
from slurm_rl.config import ChaosConfig
from slurm_rl.controller import chaos
from slurm_rl.sim import (ChaosSchedule, ControllerRules, NodeFailures, RecoveryPolicy, RecoveryTimes, SimConfig,
                          Standby, Topology, Work, cluster_config, rate_for_fraction_failing, simulate)
from slurm_rl.sim.metrics import FaultRecord, StepRecord, StepState, ettr_breakdown
from slurm_rl.states import FaultKind, RoleKind

ROLE, FULL = RecoveryPolicy.ROLE_BASED, RecoveryPolicy.FULL_RESTART
DAY = 86_400.0


def cluster(rate: float, *, spares: int = 0, days: float = 1.0) -> SimConfig:
    return cluster_config(spares=spares, per_node_per_day=rate, days=days)


def one_fault(role: RoleKind, kind: FaultKind, at_step: int) -> ChaosSchedule:
    """Exactly one planned fault at `at_step` (a vanishing mean interval puts it right at the start)."""
    return ChaosSchedule(mean_interval_steps=1e-9, roles=(role,), kinds=(kind,), start_after_steps=at_step,
                         max_faults=1, seed=0)


def tiny(**over: object) -> SimConfig:
    """One trainer, fast rollouts (the buffer is always full), fixed times: easy to check by hand."""
    cfg = SimConfig(
        topology=Topology(gpus_per_node=1, trainer_nodes=1, rollout_replicas=2, rollout_nodes=1, spare_replicas=0),
        work=Work(step_compute_s=10.0, groups_per_step=4, rollout_groups_per_s=100.0, total_steps=100,
                  duration_s=None, checkpoint_every=10, checkpoint_write_s=0.0, commit_delay_s=0.0),
        times=RecoveryTimes(detect_s={FaultKind.CRASH: 7.0, FaultKind.HANG: 40.0, FaultKind.NODE_DOWN: 3.0},
                            queue_s={RoleKind.TRAINER: 50.0, RoleKind.ROLLOUT: 20.0, RoleKind.SPARE: 20.0},
                            load_s={RoleKind.TRAINER: 30.0, RoleKind.ROLLOUT: 5.0, RoleKind.SPARE: 5.0},
                            sync_s=1.0, promote_s={RoleKind.ROLLOUT: 2.0, RoleKind.TRAINER: 4.0}, restore_s=6.0,
                            teardown_s=11.0, full_queue_s=13.0),
        rules=ControllerRules(standby=Standby.NONE))
    return cfg.replace(**over)


# --------------------------------------------------------------------------- basics


def test_no_failures_ettr_is_one() -> None:
    r = simulate(tiny(), ROLE, 0)
    assert r.finished and r.steps == 100 and r.faults == 0
    assert r.ettr == pytest.approx(1.0)
    assert r.wall_s == pytest.approx(100 * 10.0)
    for policy in (ROLE, FULL):
        c = simulate(cluster(0.0), policy, 3)
        assert c.faults == 0 and c.ettr > 0.998     # only the step cut off by the wall-time end is lost


def test_deterministic_per_seed() -> None:
    cfg = cluster(0.2)
    a, b = simulate(cfg, ROLE, 11), simulate(cfg, ROLE, 11)
    assert a.to_dict() == b.to_dict()
    assert simulate(cfg, ROLE, 12).to_dict() != a.to_dict()


def test_ettr_falls_as_failures_rise() -> None:
    for policy in (ROLE, FULL):
        means = []
        for rate in (0.0, 0.05, 0.2, 0.6):
            runs = [simulate(cluster(rate), policy, s) for s in range(4)]
            means.append(sum(r.ettr for r in runs) / len(runs))
        assert means == sorted(means, reverse=True), (policy, means)
        assert means[0] > means[-1] + 0.02


def test_role_based_beats_full_restart_on_the_same_failures() -> None:
    for seed in range(6):
        cfg = cluster(0.3)
        rb, fr = simulate(cfg, ROLE, seed), simulate(cfg, FULL, seed)
        assert rb.fault_events == fr.fault_events or abs(rb.fault_events - fr.fault_events) <= 2
        assert rb.ettr >= fr.ettr, seed
    for seed in range(4):      # the local benchmark's chaos plan: the very same injections
        cfg = tiny(failures=ChaosSchedule(mean_interval_steps=8, seed=seed),
                   rules=ControllerRules(standby=Standby.SPARE_THEN_ROLLOUT))
        assert simulate(cfg, ROLE, seed).ettr >= simulate(cfg, FULL, seed).ettr


def test_spares_help() -> None:
    # generation-bound work, faults on rollouts only: a spare replaces a rollout in seconds
    # instead of a queue wait, and the trainer starves less
    work = Work(step_compute_s=10.0, groups_per_step=20, rollout_groups_per_s=1.0, total_steps=300, duration_s=None,
                checkpoint_every=10, checkpoint_write_s=0.0, commit_delay_s=1.0)
    fail = ChaosSchedule(mean_interval_steps=15, roles=(RoleKind.ROLLOUT,), kinds=(FaultKind.CRASH,), seed=4)
    no = tiny(work=work, failures=fail)
    yes = no.replace(topology=dataclasses.replace(no.topology, spare_replicas=1))
    r0, r1 = simulate(no, ROLE, 4, keep_trace=True), simulate(yes, ROLE, 4, keep_trace=True)
    assert r0.fault_events == r1.fault_events > 5
    assert r1.ettr > r0.ettr + 0.02
    assert r1.badput.idle_s < r0.badput.idle_s
    assert any((f.action or "").startswith("promote spare/") for f in r1.trace.faults)
    # at cluster scale, over the same failure streams, spares never make role-based recovery worse on average
    c0 = [simulate(cluster(0.3, spares=0), ROLE, s).ettr for s in range(4)]
    c2 = [simulate(cluster(0.3, spares=2), ROLE, s).ettr for s in range(4)]
    assert sum(c2) >= sum(c0) - 0.004


# --------------------------------------------------------------------------- hand-checked


def test_one_trainer_crash_role_based_cold_restart_exact() -> None:
    """Steps 1..25 (10 s each), crash right after step 25 is published, detect 7, queue 50,
    load 30 + restore 6, then steps 26..100. Committed = 25 (commit delay 0): nothing replayed."""
    cfg = tiny(failures=one_fault(RoleKind.TRAINER, FaultKind.CRASH, 25))
    r = simulate(cfg, ROLE, 0, keep_trace=True)
    (f,) = r.trace.faults
    assert f.action == "submit trainer/0" and f.t_detect - f.t_fault == pytest.approx(7.0)
    assert f.t_scheduled - f.t_decide == pytest.approx(50.0) and f.t_loaded - f.t_scheduled == pytest.approx(36.0)
    outage = 7.0 + 50.0 + 30.0 + 6.0
    assert r.wall_s == pytest.approx(1000.0 + outage)
    assert r.ettr == pytest.approx(1000.0 / (1000.0 + outage))
    assert r.badput.replay_s == 0 and r.badput.idle_s == 0
    assert r.badput.recovery_s == pytest.approx(outage)
    assert f.recover_s == pytest.approx(outage + 10.0)        # recovered = the first step after it


def test_one_trainer_crash_full_restart_exact() -> None:
    """The same fault under full restart: teardown 11 + queue 13, trainer load 30 + restore 6,
    and steps 21..25 (after checkpoint 20) computed again."""
    cfg = tiny(failures=one_fault(RoleKind.TRAINER, FaultKind.CRASH, 25))
    r = simulate(cfg, FULL, 0, keep_trace=True)
    outage = 7.0 + 11.0 + 13.0 + 30.0 + 6.0
    assert r.full_restarts == 1 and r.steps_computed == 105
    assert r.wall_s == pytest.approx(1050.0 + outage)
    assert r.ettr == pytest.approx(1000.0 / (1050.0 + outage))
    assert r.badput.replay_s == pytest.approx(50.0)
    # a real report folds the recomputed steps into recovery (one row per step number)
    assert r.as_reported.replay_s == 0 and r.as_reported.recovery_s == pytest.approx(outage + 50.0)


def test_trainer_promoted_on_a_spare_and_the_spare_backfilled() -> None:
    cfg = tiny(failures=one_fault(RoleKind.TRAINER, FaultKind.CRASH, 25),
               topology=Topology(gpus_per_node=1, trainer_nodes=1, rollout_replicas=2, rollout_nodes=1,
                                 spare_replicas=1),
               rules=ControllerRules(standby=Standby.SPARE_THEN_ROLLOUT))
    r = simulate(cfg, ROLE, 0, keep_trace=True)
    (f,) = r.trace.faults
    assert f.action == "promote spare/0"
    outage = 7.0 + 4.0 + 6.0                  # detect, promotion, optimizer restore
    assert r.ettr == pytest.approx(1000.0 / (1000.0 + outage))


def test_uncommitted_steps_are_replayed() -> None:
    # a version is committed 25 s after it is published: the crash right after step 25 loses
    # steps 24 and 25 (published 10 s and 0 s before it)
    cfg = tiny(failures=one_fault(RoleKind.TRAINER, FaultKind.CRASH, 25),
               work=dataclasses.replace(tiny().work, commit_delay_s=15.0))
    r = simulate(cfg, ROLE, 0, keep_trace=True)
    assert r.steps_computed == 102 and r.badput.replay_s == pytest.approx(20.0)


def test_rollout_fault_without_spare_starves_the_trainer_exact() -> None:
    """Two rollouts make exactly one batch per step (buffer of one batch). One dies right after
    step 20 (t=T); its replacement generates again at T+33 (detect 7, queue 20, load 5, sync 1).
    Step 22 waits 10 s (one rollout: 20 s per batch), step 23 waits 6.5 s, of which 3 s fall
    inside the fault window: idle = 13 s, the other 3.5 s are outside the window (productive)."""
    work = Work(step_compute_s=10.0, groups_per_step=20, rollout_groups_per_s=1.0, buffer_steps=1.0, total_steps=60,
                duration_s=None, checkpoint_every=10, checkpoint_write_s=0.0, commit_delay_s=0.0)
    cfg = tiny(work=work, failures=one_fault(RoleKind.ROLLOUT, FaultKind.CRASH, 20))
    r = simulate(cfg, ROLE, 0, keep_trace=True)
    (f,) = r.trace.faults
    assert f.action in ("submit rollout/0", "submit rollout/1")
    assert f.recover_s == pytest.approx(33.0)
    assert [s.wait_s for s in r.trace.steps[20:23]] == pytest.approx([0.0, 10.0, 6.5])
    assert r.wall_s == pytest.approx(600.0 + 16.5)
    assert r.badput.idle_s == pytest.approx(13.0)
    assert r.ettr == pytest.approx((616.5 - 13.0) / 616.5)
    assert r.badput.recovery_s == pytest.approx(0.0, abs=1e-9) and r.steps == 60


def test_node_down_takes_every_role_on_the_node() -> None:
    # a pool of 2 nodes: the trainer shares its node with a rollout
    cfg = tiny(topology=Topology(gpus_per_node=1, trainer_nodes=1, rollout_replicas=2, rollout_nodes=1,
                                 cluster_nodes=2, node_down_s=30.0),
               failures=one_fault(RoleKind.TRAINER, FaultKind.NODE_DOWN, 25))
    r = simulate(cfg, ROLE, 0, keep_trace=True)
    assert sorted(f.slot for f in r.trace.faults) == ["rollout/1", "trainer/0"]
    assert {f.node for f in r.trace.faults} == {"local1"}
    assert r.finished


def test_full_restart_policy_restarts_everything_on_a_rollout_fault() -> None:
    cfg = tiny(failures=one_fault(RoleKind.ROLLOUT, FaultKind.HANG, 33))
    r = simulate(cfg, FULL, 0, keep_trace=True)
    (f,) = r.trace.faults
    assert f.action == "full restart" and f.t_detect - f.t_fault == pytest.approx(40.0)
    assert r.full_restarts == 1 and r.steps_computed > 100      # back to checkpoint 30 (or 40), replayed
    assert r.restarts[RoleKind.ROLLOUT] == 1


def test_restart_budget_escalates_to_a_full_restart_then_stops() -> None:
    cfg = tiny(failures=ChaosSchedule(mean_interval_steps=2, roles=(RoleKind.TRAINER,), kinds=(FaultKind.CRASH,),
                                      start_after_steps=3, seed=1),
               rules=ControllerRules(standby=Standby.NONE, restart_budget=2, budget_window_s=10_000.0,
                                     max_full_restarts=1))
    r = simulate(cfg, ROLE, 1)
    assert r.full_restarts == 1 and not r.finished
    assert "restart budget" in r.end_reason and "max_full_restarts" in r.end_reason


def test_multi_node_trainer_cannot_be_hosted_by_a_one_node_spare() -> None:
    cfg = tiny(topology=Topology(gpus_per_node=8, trainer_nodes=4, rollout_replicas=2, rollout_nodes=1,
                                 spare_replicas=1),
               rules=ControllerRules(standby=Standby.SPARE_THEN_ROLLOUT),
               failures=one_fault(RoleKind.TRAINER, FaultKind.CRASH, 25))
    r = simulate(cfg, ROLE, 0, keep_trace=True)
    assert r.trace.faults[0].action == "submit trainer/0"
    big = cfg.replace(topology=dataclasses.replace(cfg.topology, spare_nodes=4))
    assert simulate(big, ROLE, 0, keep_trace=True).trace.faults[0].action == "promote spare/0"


def test_chaos_plan_is_the_controllers() -> None:
    sched = ChaosSchedule(mean_interval_steps=9, seed=5)
    cfg = tiny(failures=sched, topology=Topology(gpus_per_node=1, trainer_nodes=1, rollout_replicas=2,
                                                 rollout_nodes=1, spare_replicas=1, cluster_nodes=8),
               rules=ControllerRules(standby=Standby.SPARE_THEN_ROLLOUT))
    plan = chaos.schedule(ChaosConfig(enabled=True, mean_interval_steps=9, seed=5), 100)
    r = simulate(cfg, ROLE, 123, keep_trace=True)         # the schedule's own seed wins
    got = [(f.role, f.kind) for f in r.trace.faults]
    want = [(p.role, p.kind.value) for p in plan]
    assert got[: len(want)] == want[: len(got)] and len(got) >= len(want) // 2


def test_node_failure_rate_matches_exposure() -> None:
    rate = 0.5
    cfg = cluster(rate, days=4.0)
    n = [simulate(cfg, ROLE, s).fault_events for s in range(4)]
    expected = rate * cfg.topology.nodes * 4.0
    assert 0.75 * expected < sum(n) / len(n) < 1.25 * expected
    assert rate_for_fraction_failing(0.10, 3 * DAY) == pytest.approx(-math.log(0.9) / 3)


# --------------------------------------------------------------------------- ETTR = report.py's


def _report_ettr(steps: Sequence, faults: Sequence, end: float, finished: bool, started: float = -1.0
                 ) -> dict[str, float]:
    conn = sqlite3.connect(":memory:")
    conn.row_factory = sqlite3.Row
    conn.executescript(store_schema.SCHEMA)        # the store's own tables: the formula reads them as they are
    conn.executemany("INSERT INTO steps(step, wepoch, state, t_start, t_end, wait_s, trainer) VALUES(?,0,?,?,?,?,?)",
                     [(s.step, s.state.value, s.t_start, s.t_end, s.wait_s, s.trainer) for s in steps])
    conn.executemany("INSERT INTO faults(slot, kind, injected, t_fault, t_recovered) VALUES('x', 'crash', 1, ?, ?)",
                     [(f.t_fault, f.t_recovered) for f in faults])
    meta = {"started": started, "run_state": "finished" if finished else "running", "ended": end}
    return report.ettr_breakdown(conn, meta, now=end)


@pytest.mark.parametrize("policy", [ROLE, FULL])
def test_ettr_is_the_reports_formula(policy: RecoveryPolicy) -> None:
    cfg = tiny(failures=ChaosSchedule(mean_interval_steps=6, seed=2),
               topology=Topology(gpus_per_node=1, trainer_nodes=1, rollout_replicas=2, rollout_nodes=1,
                                 spare_replicas=1, cluster_nodes=4, node_down_s=30.0),
               work=Work(step_compute_s=0.06, groups_per_step=16, rollout_groups_per_s=80.0, total_steps=200,
                         duration_s=None, checkpoint_every=10, checkpoint_write_s=0.1, commit_delay_s=0.2),
               rules=ControllerRules(standby=Standby.SPARE_THEN_ROLLOUT, max_full_restarts=100))
    r = simulate(cfg, policy, 2, keep_trace=True)
    t = r.trace
    assert r.faults > 5 and r.badput.idle_s > 0
    want = _report_ettr(t.steps, t.faults, t.end, t.finished)
    got = ettr_breakdown(t.steps, t.faults, end=t.end, finished=t.finished)
    assert got.ettr == pytest.approx(want["ettr"], abs=1e-9)
    assert got.productive_s == pytest.approx(want["productive_s"])
    assert got.idle_s == pytest.approx(want["idle_s"])
    assert got.replay_s == pytest.approx(want["replay_s"])
    assert got.recovery_s == pytest.approx(want["recovery_s"])
    assert r.ettr == pytest.approx(want["ettr"], abs=1e-9)


def test_the_first_steps_wait_for_the_rollouts_is_start_up() -> None:
    """Training starts when the trainer has its first batch: its wait before that (the rollouts still
    loading their engines) is start-up, not training time. Schema-1 reports counted it productive."""
    def step(n: int, t0: float, t1: float, wait: float = 0.0, inc: int = 1) -> StepRecord:
        return StepRecord(step=n, trainer=f"trainer/0#{inc}", t_start=t0, t_end=t1, wait_s=wait,
                          state=StepState.COMMITTED)

    t = 100.0      # the report reads a time of 0 as missing
    steps = [step(1, t, t + 20.0, wait=18.0)] + [step(n, t + 16.0 + 2 * n, t + 18.0 + 2 * n) for n in range(2, 6)]
    steps += [step(6, t + 40.0, t + 42.0, inc=2)] + [step(n, t + 28.0 + 2 * n, t + 30.0 + 2 * n, inc=2)
                                                       for n in range(7, 11)]
    faults = [FaultRecord(id=1, slot="trainer/0", role=RoleKind.TRAINER, kind="crash", node=None, injected=True,
                          t_fault=t + 30.0, t_recovered=t + 42.0)]
    want = _report_ettr(steps, faults, t + 50.0, True, started=t - 1.0)
    # wall 50 - 18; productive: 2 s of step 1 after its data came, steps 2-5, steps 6-10
    assert want["wall_s"] == pytest.approx(32.0)
    assert want["productive_s"] == pytest.approx(2.0 + 8.0 + 10.0)
    assert want["startup_s"] == pytest.approx(19.0) and want["trainer_startup_s"] == pytest.approx(1.0)
    got = ettr_breakdown(steps, faults, end=t + 50.0, finished=True)
    assert got.ettr == pytest.approx(want["ettr"]) == pytest.approx(20.0 / 32.0)
    assert got.recovery_s == pytest.approx(want["recovery_s"]) == pytest.approx(12.0)
    v1 = ettr_breakdown(steps, faults, end=t + 50.0, finished=True, startup_wait=False)
    assert v1.wall_s == pytest.approx(50.0) and v1.ettr == pytest.approx(38.0 / 50.0)


def test_rollback_to_step_zero_and_the_reports_wall_time() -> None:
    """A full restart before the first checkpoint goes back to step 0; steps 1.. are computed
    again and overwrite their rows, so a report's wall time (from the earliest row) starts at the
    restart. The model's ETTR keeps the first request for data as its start."""
    cfg = tiny(failures=one_fault(RoleKind.TRAINER, FaultKind.CRASH, 5))
    r = simulate(cfg, FULL, 0, keep_trace=True)
    outage = 7.0 + 11.0 + 13.0 + 30.0           # detect, teardown, queue, load (step 0: no restore)
    assert r.ettr == pytest.approx(1000.0 / (1050.0 + outage))
    assert r.badput.replay_s == pytest.approx(50.0)
    assert r.ettr_as_reported == pytest.approx(1.0)          # what `slurm-rl report` would print


def test_bad_config_is_reported() -> None:
    from slurm_rl.errors import BadInput

    with pytest.raises(BadInput, match="one of total_steps and duration_s, not both"):
        Work(total_steps=10, duration_s=60.0)
    assert Work().duration_s == 3 * DAY and Work(total_steps=10).duration_s is None
    with pytest.raises(BadInput, match="per_node_per_day"):
        NodeFailures(per_node_per_day=-1)


# --------------------------------------------------------------------------- badput by cause


def test_badput_split_of_the_hand_checked_timelines() -> None:
    """The exact cases above, by cause: a role-based cold restart is detect 7, queue 50, load 30 +
    restore 6; a full restart is detect 7, teardown 11 + queue 13, the same load, and the 5 steps
    since checkpoint 20 replayed."""
    cfg = tiny(failures=one_fault(RoleKind.TRAINER, FaultKind.CRASH, 25))
    rb, fr = simulate(cfg, ROLE, 0), simulate(cfg, FULL, 0)
    assert rb.split.to_dict() == {"detect_s": 7.0, "schedule_s": 50.0, "load_s": 36.0, "sync_s": 0.0,
                                  "replay_s": 0.0, "idle_s": 0.0}
    assert fr.split.to_dict() == {"detect_s": 7.0, "schedule_s": 24.0, "load_s": 36.0, "sync_s": 0.0,
                                  "replay_s": 50.0, "idle_s": 0.0}
    for r in (rb, fr):
        assert r.split.total_s == pytest.approx(r.badput.total_s)


def test_a_restored_trainer_takes_its_weights_from_a_holder_else_from_the_checkpoint() -> None:
    """Role-based: the rollouts hold the committed step, so the new trainer pulls its shards (2 s);
    a full restart leaves no holder, so it reads them from the checkpoint (9 s). A promoted standby
    already holds them (only the optimizer, 6 s)."""
    times = dataclasses.replace(tiny().times, weights_from_holder_s=2.0, weights_from_checkpoint_s=9.0)
    cfg = tiny(failures=one_fault(RoleKind.TRAINER, FaultKind.CRASH, 25), times=times)
    assert simulate(cfg, ROLE, 0).split.load_s == pytest.approx(30.0 + 6.0 + 2.0)
    assert simulate(cfg, FULL, 0).split.load_s == pytest.approx(30.0 + 6.0 + 9.0)
    spare = cfg.replace(topology=dataclasses.replace(cfg.topology, spare_replicas=1),
                        rules=ControllerRules(standby=Standby.SPARE_THEN_ROLLOUT))
    r = simulate(spare, ROLE, 0)
    assert r.split.load_s == pytest.approx(4.0 + 6.0) and r.split.schedule_s == 0


def test_after_a_full_restart_rollouts_pull_from_the_restored_trainer() -> None:
    """Nobody holds the restart point's weights until the trainer has restored it: rollouts that
    loaded sooner wait for it, then pull (sync 1 s) before they generate."""
    from slurm_rl.sim.model import Run

    cfg = tiny(failures=one_fault(RoleKind.TRAINER, FaultKind.CRASH, 25))
    run = Run(cfg, FULL, 0)
    run.run()
    (ready,) = [t for t, label in run.trainer_marks if label == "work"][-1:]     # the restored trainer's start
    pulling = [t for t, waiting in run.sync_marks if waiting]
    done = [t for t, waiting in run.sync_marks if not waiting]
    # every rollout was loaded (load 5 s) long before the trainer (30 + 6 s) and waited for it
    assert pulling[-1] < ready and done[-1] == pytest.approx(ready + cfg.times.sync_s)


def test_split_badput_attributes_gaps_and_starvation() -> None:
    """By hand: steps 1-2 kept (0-20), the trainer dies at 25 while computing step 3 (started 20),
    is detected at 27, queues to 37, loads to 47, then waits 13 s for data while the rollouts pull
    weights for the first 5 s of it; the starved part (10 s) is split 5/13 sync, 8/13 idle."""
    from slurm_rl.sim.blame import split_badput

    kept = [StepRecord(step=1, trainer="t#1", t_start=0.0, t_end=10.0, wait_s=0.0),
            StepRecord(step=2, trainer="t#1", t_start=10.0, t_end=20.0, wait_s=0.0),
            StepRecord(step=3, trainer="t#2", t_start=47.0, t_end=70.0, wait_s=13.0)]
    marks = [(0.0, "work"), (25.0, "detect"), (27.0, "schedule"), (37.0, "load"), (47.0, "work")]
    sync = [(0.0, False), (47.0, True), (52.0, False)]
    s = split_badput(kept=kept, rolled=[], t0=0.0, t_end=70.0, recovery_s=27.0, replay_s=0.0, idle_s=10.0,
                     starved=[([(47.0, 60.0)], 10.0)], trainer_marks=marks, sync_marks=sync)
    assert s.replay_s == pytest.approx(5.0)             # step 3's first attempt, 20-25
    assert (s.detect_s, s.schedule_s, s.load_s) == pytest.approx((2.0, 10.0, 10.0))
    assert s.sync_s == pytest.approx(10.0 * 5 / 13) and s.idle_s == pytest.approx(10.0 * 8 / 13)
    assert s.total_s == pytest.approx(37.0)
