"""Recovery times from real reports, the local benchmark as a simulation, and the bench script."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from slurm_rl.errors import BadInput
from slurm_rl.sim import LocalBenchmark, MeasuredTimes, RecoveryPolicy, local_config, load_reports, simulate, validate
from slurm_rl.sim.config import ChaosSchedule
from slurm_rl.states import FaultKind, RoleKind

DATA = Path(__file__).parent / "data"
PAIRS = sorted(p for p in DATA.iterdir() if (p / "role-based.json").exists())
DEMO_PAIRS = [p for p in PAIRS if p.name.startswith("pair-")]     # the demo workload, local backend


def _fault(role: str, kind: str, action: str, t: float, **spans: float | None) -> dict[str, Any]:
    """A report fault row; spans are offsets from t_fault (None: never reached)."""
    row: dict[str, Any] = {"role": role, "slot": f"{role}/0", "kind": kind, "action": action, "injected": True,
                           "t_fault": t}
    for k in ("t_detect", "t_decide", "t_scheduled", "t_loaded", "t_synced", "t_recovered"):
        v = spans.get(k)
        row[k] = None if v is None else t + v
    row["detect_s"] = None if row["t_detect"] is None else row["t_detect"] - t
    return row


def synthetic() -> tuple[dict[str, Any], dict[str, Any]]:
    rb = {"steps": 100, "productive_s": 10.0, "wall_s": 100.0, "startup_s": 12.0, "ettr": 0.1,
          "badput": {"replay_s": 0.0, "idle_s": 5.0, "recovery_s": 85.0}, "restarts": {"full": 0},
          "faults": [
              _fault("rollout", "crash", "submit rollout/0", 10.0, t_detect=1.0, t_decide=1.0, t_scheduled=5.0,
                     t_loaded=15.0, t_recovered=15.5),
              _fault("rollout", "hang", "promote spare/0", 30.0, t_detect=30.0, t_decide=30.0, t_scheduled=30.0,
                     t_loaded=30.2, t_recovered=30.5),
              _fault("trainer", "node-down", "promote spare/0", 50.0, t_detect=0.8, t_decide=0.8, t_scheduled=0.8,
                     t_loaded=None, t_recovered=1.3),       # t_loaded missing, as real rows sometimes are
              _fault("trainer", "hang", "promote rollout/1", 70.0, t_detect=40.0, t_decide=40.0,
                     t_scheduled=None, t_loaded=None, t_recovered=None),   # never recovered
              {"role": "rollout", "kind": "detected:crash", "action": "promote spare/0", "injected": False,
               "t_fault": 80.0, "t_detect": 80.1, "t_decide": 80.1, "t_recovered": 110.0, "detect_s": 0.1},
          ]}
    fr = {"steps": 100, "productive_s": 10.0, "wall_s": 150.0, "startup_s": 12.0, "ettr": 0.066,
          "badput": {"replay_s": 0.0, "idle_s": 1.0, "recovery_s": 139.0}, "restarts": {"full": 2},
          "faults": [
              _fault("trainer", "crash", "full restart", 10.0, t_detect=0.6, t_decide=0.6, t_recovered=20.6),
              # a node failure hit two roles: two rows, one restart
              _fault("rollout", "node-down", "full restart", 40.0, t_detect=1.0, t_decide=1.0, t_recovered=19.0),
              _fault("spare", "node-down", "full restart", 40.0, t_detect=None, t_decide=1.0, t_recovered=19.0),
          ]}
    return rb, fr


def test_components_from_synthetic_reports() -> None:
    m = MeasuredTimes.from_reports(*synthetic())
    assert m.detect_s[(RoleKind.ROLLOUT, FaultKind.CRASH)] == pytest.approx(1.0)
    assert m.detect_s[(RoleKind.TRAINER, FaultKind.HANG)] == pytest.approx(40.0)
    assert m.detect_s[(RoleKind.TRAINER, FaultKind.CRASH)] == pytest.approx(0.6)      # from the full-restart run
    assert (RoleKind.ROLLOUT, FaultKind("crash")) in m.detect_s
    assert m.queue_s[RoleKind.ROLLOUT] == pytest.approx(4.0)
    assert m.load_s[RoleKind.ROLLOUT] == pytest.approx(10.0)
    assert m.sync_s == pytest.approx(0.5)
    assert m.step_s == pytest.approx(0.1)
    assert m.load_s[RoleKind.TRAINER] == pytest.approx(12.0 - 4.0)                   # start-up less its queue
    assert m.promote_s[RoleKind.ROLLOUT] == pytest.approx(0.5)       # the un-injected 30-s one is left out
    assert m.promote_s[RoleKind.TRAINER] == pytest.approx(0.5 - 0.1)                 # less one step
    assert m.full_restart_s == pytest.approx((20.0 + 18.0) / 2)                       # per restart, not per row
    assert m.role_based.found == 1 and m.full_restart.full_restarts == 2
    t = m.recovery_times()
    assert t.detect(RoleKind.SPARE, FaultKind.NODE_DOWN) == pytest.approx(0.9)       # the kind, over roles
    assert t.teardown_s == pytest.approx(19.0 - (4.0 + 8.0 + 0.1))                   # queue, load, one step


def test_missing_everything_still_gives_usable_times() -> None:
    rb = {"steps": 10, "productive_s": None, "faults": [{"role": "rollout", "kind": "crash", "t_fault": None}]}
    fr = {"ettr": 0.5, "faults": None}
    m = MeasuredTimes.from_reports(rb, fr)
    t = m.recovery_times()
    assert m.full_restart_s is None and t.teardown_s == 0.0
    assert all(v >= 0 for v in t.load_s.values()) and t.sync_s > 0
    with pytest.raises(BadInput, match="not a `slurm-rl report --json` output"):
        MeasuredTimes.from_reports({"hello": 1}, fr)


@pytest.mark.parametrize("pair", DEMO_PAIRS, ids=[p.name for p in DEMO_PAIRS])
def test_example_reports_give_sane_components(pair: Path) -> None:
    m = load_reports(pair / "role-based.json", pair / "full-restart.json")
    assert m.role_based.policy == "role-based" and m.full_restart.policy == "full-restart"
    assert 0.01 < m.step_s < 2.0
    # a hang is found by a phase timeout (tens of seconds), a crash or a node loss in about a second
    assert m.detect_kind_s[FaultKind.HANG] >= 15.0
    assert m.detect_kind_s[FaultKind.CRASH] < 5.0 and m.detect_kind_s[FaultKind.NODE_DOWN] < 5.0
    assert m.queue_s[RoleKind.ROLLOUT] > 0.5 and m.load_s[RoleKind.ROLLOUT] > 1.0
    # a warm spare takes over faster than a new job starts
    if RoleKind.ROLLOUT in m.promote_s:
        assert m.promote_s[RoleKind.ROLLOUT] < m.queue_s[RoleKind.ROLLOUT] + m.load_s[RoleKind.ROLLOUT]
    assert m.full_restart_s is not None and m.full_restart_s > m.queue_s[RoleKind.TRAINER]
    bench = LocalBenchmark.from_config_file(pair / "config.yaml")
    assert bench.rollouts == 2 and bench.spares == 1 and isinstance(bench.chaos, ChaosSchedule)
    cfg = local_config(m, bench)
    assert cfg.work.total_steps == bench.steps and cfg.topology.cluster_nodes == 4


@pytest.mark.parametrize("pair", PAIRS, ids=[p.name for p in PAIRS])
def test_validation_within_target(pair: Path) -> None:
    m = load_reports(pair / "role-based.json", pair / "full-restart.json")
    rows = validate(m, LocalBenchmark.from_config_file(pair / "config.yaml"))
    assert [r.policy for r in rows] == [RecoveryPolicy.ROLE_BASED, RecoveryPolicy.FULL_RESTART]
    for r in rows:
        assert r.within(0.05), (r.policy, r.measured.ettr, r.sim.ettr)
        assert r.sim.finished and r.sim.steps == r.measured.steps
        # the fault plan is the measured one: about as many fault rows (node failures hit what
        # shares the node, which depends on placement and timing)
        assert abs(r.sim.faults - r.measured.faults) <= max(3, r.measured.faults // 3)


def test_bench_script_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_simulate", Path(__file__).parents[2] / "bench" / "simulate.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.main(["--json", "--trials", "2", "--days", "0.5", "--rates", "0,0.3", "--spares", "1"]) == 0
    out = json.loads(capsys.readouterr().out)
    rows = out["table"]["rows"]
    assert {r["label"] for r in rows} == {"0/node/day", "0.3/node/day", "10% of nodes fail"}
    assert len(rows) == 3 * 2 * 2 and all(r["ettr"]["n"] == 2 for r in rows)
    assert len(out["validation"]) == len(PAIRS)
    assert mod.main(["--no-table", "--measured", str(tmp_path / "nope.json"), str(tmp_path / "nope.json")]) == 2


def test_local_sim_is_fast_and_finishes() -> None:
    pair = PAIRS[0]
    m = load_reports(pair / "role-based.json", pair / "full-restart.json")
    cfg = local_config(m, LocalBenchmark.from_config_file(pair / "config.yaml"))
    for policy in RecoveryPolicy:
        r = simulate(cfg, policy, 0)
        assert r.finished and r.steps == cfg.work.total_steps and r.faults > 0


def test_measured_pace_calibrates_the_work() -> None:
    """The Slurm benchmark's trainer is compute-bound and its rollouts have headroom (the report's
    "pace"): the model computes the measured step and generates at the measured batch rate."""
    pair = DATA / "slurm-ettr"
    m = load_reports(pair / "role-based.json", pair / "full-restart.json")
    pace = m.role_based
    assert pace.wait_s is not None and pace.batch_s and pace.batch_groups
    cfg = local_config(m, LocalBenchmark.from_config_file(pair / "config.yaml"))
    assert cfg.work.step_compute_s == pytest.approx(m.role_based.step_s - pace.wait_s)
    assert cfg.work.rollout_groups_per_s == pytest.approx(pace.batch_groups / pace.batch_s)
    # one rollout alone covers a step's groups: losing one does not starve the trainer
    assert cfg.work.rollout_groups_per_s * cfg.work.step_compute_s > cfg.work.groups_per_step


def test_the_simulated_policy_weighs_start_times_only_as_the_run_config_says() -> None:
    """`recovery.weigh_start_times` reaches the simulated policy: on the second Slurm pair's plan a
    rollout slot waits for a starting spare (promoted later than decided) only with it on."""
    pair = DATA / "slurm-ettr-2"
    measured = load_reports(pair / "role-based.json", pair / "full-restart.json")
    bench = LocalBenchmark.from_config_file(pair / "config.yaml")
    assert bench.rules.weigh_start_times
    awaited, idle = {}, {}
    for weigh in (True, False):
        b = dataclasses.replace(bench, rules=dataclasses.replace(bench.rules, weigh_start_times=weigh))
        r = simulate(local_config(measured, b, policy=RecoveryPolicy.ROLE_BASED), RecoveryPolicy.ROLE_BASED,
                     b.chaos.seed or 0, keep_trace=True)
        assert r.trace is not None
        awaited[weigh] = [f for f in r.trace.faults if (f.action or "").startswith("promote") and f.t_decide
                          is not None and f.t_scheduled is not None and f.t_scheduled > f.t_decide]
        idle[weigh] = r.as_reported.idle_s
    assert awaited[True] and not awaited[False]
    assert idle[True] < idle[False]
