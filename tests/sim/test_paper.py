"""The paper's setting (slurm_rl/sim/paper.py): it runs, it lands where docs/simulation.md says, and
it is the validated model with other sizes, times, topology and faults, never other behaviour."""

from __future__ import annotations

import dataclasses
import enum
import importlib.util
import json
import math
import statistics
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from click.testing import CliRunner

from slurm_rl.cli import cli
from slurm_rl.config import RecoveryPolicy
from slurm_rl.errors import BadInput
from slurm_rl.sim import ChaosSchedule, LocalBenchmark, NodeFailures, SimConfig, load_reports, local_config, simulate
from slurm_rl.sim.paper import PAPER_ETTR, VALIDATED_RULES, PaperSetting, Reading, paper_report
from slurm_rl.states import FaultKind, RoleKind

ROOT = Path(__file__).resolve().parents[2]
VALIDATED = Path(__file__).parent / "data" / "slurm-ettr-3"      # the Slurm benchmark the model matches best
ROLE, FULL = RecoveryPolicy.ROLE_BASED, RecoveryPolicy.FULL_RESTART
SEEDS = range(10)                                                 # the bench's default: --trials 10, --seed 0


def _bench() -> Any:
    spec = importlib.util.spec_from_file_location("bench_simulate", ROOT / "bench" / "simulate.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# --------------------------------------------------------------------------- it runs


def test_bench_scenario_prints_one_line_per_policy(capsys: pytest.CaptureFixture[str]) -> None:
    assert _bench().main(["--scenario", "paper", "--no-validate", "--trials", "2"]) == 0
    text = capsys.readouterr().out
    lines = {ln.split()[0]: ln for ln in text.splitlines() if ln.startswith(("role-based ", "full-restart "))}
    assert set(lines) == {"role-based", "full-restart"}
    for ln in lines.values():
        assert " ETTR " in ln and "paper: " in ln
    assert "paper: 0.60 (ByteRobust)" in lines["full-restart"] and "paper: >0.80 (RobustRL)" in lines["role-based"]
    assert 'which reading of "10% failure injection frequency"' in text and "<- chosen" in text
    assert "detect / schedule / load / sync / replay / idle" in text
    # every component time is printed with its source
    assert "rollout start (vLLM, 8B)" in text and "[vLLM PR #11005" in text and "[Slurm lab" in text


def test_bench_scenario_json_and_bad_override(capsys: pytest.CaptureFixture[str]) -> None:
    bench = _bench()
    assert bench.main(["--scenario", "paper", "--no-validate", "--trials", "1", "--json",
                       "--paper-set", "fs_total_gbps=5", "--paper-set", "detect_hang_s=90,45"]) == 0
    out = json.loads(capsys.readouterr().out)["paper"]
    assert out["setting"]["fs_total_gbps"] == 5.0 and out["setting"]["detect_hang_s"] == [90.0, 45.0]
    assert {r["policy"] for r in out["rows"]} == {"role-based", "full-restart"}
    assert all(set(r["badput_split_s"]) == {"detect_s", "schedule_s", "load_s", "sync_s", "replay_s", "idle_s"}
               for r in out["rows"])
    assert bench.main(["--scenario", "paper", "--no-validate", "--paper-set", "warp_speed=9"]) == 2
    assert "FIELD=VALUE" in capsys.readouterr().err
    assert bench.main(["--scenario", "paper", "--no-validate", "--paper-set", "steps=many"]) == 2
    with pytest.raises(BadInput, match="fs_node_gbps must be positive"):
        PaperSetting(fs_node_gbps=0)


def test_cli_scenario_json_matches_the_schema() -> None:
    res = CliRunner().invoke(cli, ["simulate", "--scenario", "paper", "--trials", "1", "--json"],
                             catch_exceptions=False)
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    schema = json.loads((ROOT / "docs" / "schemas" / "simulate.json").read_text())
    jsonschema.validate(out, schema)
    assert out["paper"]["chosen"] in {r.value for r in Reading}


# --------------------------------------------------------------------------- where it lands


def test_full_restart_lands_on_the_paper_for_one_reading_only() -> None:
    """With every component fixed in advance, "a fault on 10% of steps" puts full restart within
    0.05 of the paper's 0.60 (seeds 0-9, as docs/simulation.md reports); the other readings are
    far from it."""
    s = PaperSetting()
    full = statistics.fmean(simulate(s.config(s.failures(Reading.STEPS)), FULL, k).ettr for k in SEEDS)
    assert abs(full - PAPER_ETTR[FULL]) <= 0.05, full
    for rd in (Reading.MACHINES_HOUR, Reading.MACHINES_RUN, Reading.RUN_TENTHS):
        other = statistics.fmean(simulate(s.config(s.failures(rd)), FULL, k).ettr for k in range(3))
        assert abs(other - PAPER_ETTR[FULL]) > 0.15, (rd, other)
    # the report picks it too (on 3 seeds, to stay fast: their mean is 0.653, so `lands` is the
    # 10-seed claim above, not this one's)
    rep = paper_report(s, trials=3)
    assert rep.chosen is Reading.STEPS
    assert rep.lands is (rep.chosen_row.off_by <= 0.05)


def test_role_based_reaches_the_goal_under_the_same_faults() -> None:
    s = PaperSetting()
    cfg = s.config(s.failures(Reading.STEPS))
    for k in range(4):
        rb, fr = simulate(cfg, ROLE, k), simulate(cfg, FULL, k)
        assert rb.fault_events == fr.fault_events                  # the same chaos plan
        assert rb.ettr >= 0.90 > fr.ettr, (k, rb.ettr, fr.ettr)
        assert rb.full_restarts == 0 and fr.full_restarts == fr.fault_events
        # the badput split accounts for all of it
        for r in (rb, fr):
            assert r.split.total_s == pytest.approx(r.badput.total_s, rel=1e-6, abs=1e-3)
        # full restart loses mostly steps since the last checkpoint; role-based, the step a dying
        # trainer was computing and its restart, not the steps
        assert fr.split.replay_s > 0.5 * fr.badput.total_s
        assert rb.split.replay_s < fr.split.replay_s / 10


def test_trainer_sized_spare_removes_the_trainers_queue() -> None:
    s = PaperSetting()
    fail = s.failures(Reading.STEPS)
    cold = [simulate(s.config(fail), ROLE, k) for k in range(3)]
    warm = [simulate(s.config(fail, spares=1, spare_nodes=s.trainer_nodes), ROLE, k) for k in range(3)]
    assert sum(r.split.schedule_s for r in warm) < 0.2 * sum(r.split.schedule_s for r in cold)
    # one-node spares cannot host the 16-node trainer, only shorten rollout replacements
    small = [simulate(s.config(fail, spares=2), ROLE, k) for k in range(3)]
    assert [r.split.schedule_s for r in small] == pytest.approx([r.split.schedule_s for r in cold])
    assert sum(r.split.idle_s for r in small) <= sum(r.split.idle_s for r in cold)


def test_a_trainer_shaped_standby_removes_the_trainers_queue_and_start() -> None:
    """spare.trainer_nodes in the model: the standby has the trainer's process group and shards, so
    a trainer fault costs the switch and the restore, not a queue and a start; it never replaces a
    rollout (its node-count is the trainer's), and it is backfilled after each promotion."""
    s = PaperSetting()
    fail = s.failures(Reading.STEPS)
    cold = [simulate(s.config(fail, spares=2), ROLE, k) for k in range(3)]
    shaped = [simulate(s.config(fail, spares=2, trainer_spares=1), ROLE, k, keep_trace=True) for k in range(3)]
    assert sum(r.split.schedule_s for r in shaped) < 0.2 * sum(r.split.schedule_s for r in cold)
    assert sum(r.split.load_s for r in shaped) < 0.3 * sum(r.split.load_s for r in cold)
    assert statistics.fmean(r.ettr for r in shaped) > statistics.fmean(r.ettr for r in cold)
    acts = [f.action for r in shaped for f in r.trace.faults if f.role is RoleKind.TRAINER]
    assert acts and sum(a == "promote trainer-spare/0" for a in acts) >= len(acts) // 2, acts
    assert not [f for r in shaped for f in r.trace.faults if f.role is RoleKind.ROLLOUT
                and f.action == "promote trainer-spare/0"]
    # promoted again and again in one run: each promotion's backfill was ready for the next fault
    assert all(sum(f.action == "promote trainer-spare/0" for f in r.trace.faults) >= 2 for r in shaped)


# --------------------------------------------------------------------------- honesty


def _leaves(x: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        yield f"{path}#type", type(x).__name__
        for f in dataclasses.fields(x):
            yield from _leaves(getattr(x, f.name), f"{path}.{f.name}" if path else f.name)
    elif isinstance(x, Mapping):
        for k in sorted(x, key=str):
            yield from _leaves(x[k], f"{path}[{k}]")
    elif isinstance(x, tuple) and x and not all(isinstance(v, (int, float)) for v in x):
        yield path, tuple(sorted(map(str, x)))
    else:
        yield path, x


def _validated() -> SimConfig:
    m = load_reports(VALIDATED / "role-based.json", VALIDATED / "full-restart.json")
    return local_config(m, LocalBenchmark.from_config_file(VALIDATED / "config.yaml"))


def test_the_scenario_changes_only_sizes_times_topology_and_faults() -> None:
    """Compared leaf by leaf with the validated Slurm benchmark's configuration, the paper scenario
    differs only in numbers under topology, work, times and failures; every controller rule and
    every switch (any bool or enum) is the validated one."""
    validated = _validated()
    assert LocalBenchmark.from_config_file(VALIDATED / "config.yaml").rules == VALIDATED_RULES == validated.rules
    s = PaperSetting()
    for reading in Reading:
        for kw in ({}, {"spares": 2}, {"spares": 1, "spare_nodes": s.trainer_nodes}, {"sync_gbps": s.paper_sync_gbps}):
            cfg = s.config(s.failures(reading), **kw)
            mine, theirs = dict(_leaves(cfg)), dict(_leaves(validated))
            for path in sorted(set(mine) | set(theirs)):
                a, b = mine.get(path), theirs.get(path)
                if a == b:
                    continue
                section = path.split(".")[0].split("#")[0]
                assert section in ("topology", "work", "times", "failures"), (path, a, b)
                if section == "failures":
                    continue          # the fault process is the reading (a chaos plan or node failures)
                # a number changed, never a switch; a key the validated config lacks is a time or a size
                for v in (a, b):
                    assert v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)), (path, a, b)
                    assert not isinstance(v, enum.Enum), (path, a, b)
    # the reading the paper is compared under injects exactly as the validated benchmark does
    steps, theirs_fail = s.failures(Reading.STEPS), validated.failures
    assert isinstance(steps, ChaosSchedule) and isinstance(theirs_fail, ChaosSchedule)
    assert dataclasses.replace(steps, seed=theirs_fail.seed) == dataclasses.replace(theirs_fail, kinds=steps.kinds)
    assert set(steps.kinds) == set(theirs_fail.kinds) and set(steps.roles) == set(theirs_fail.roles)
    assert isinstance(s.failures(Reading.MACHINES_HOUR), NodeFailures)


def test_every_time_in_the_config_is_a_listed_component() -> None:
    s = PaperSetting()
    comp = {c.name: c for c in s.components()}
    assert all(c.source and c.derivation for c in comp.values())
    t = s.config(s.failures(Reading.STEPS)).times
    w = s.config(None).work
    assert t.load_s[RoleKind.TRAINER] == comp["trainer start"].seconds
    assert t.load_s[RoleKind.ROLLOUT] == pytest.approx(comp["rollout start (vLLM, 8B)"].seconds)
    assert t.restore_s == pytest.approx(comp["optimizer from DCP"].seconds)
    assert t.weights_from_holder_s == pytest.approx(comp["weights from a rollout"].seconds)
    assert t.weights_from_checkpoint_s == pytest.approx(comp["weights from DCP"].seconds)
    assert t.sync_s == pytest.approx(comp["weight sync (a rollout)"].seconds) == pytest.approx(w.commit_delay_s)
    assert t.queue_s[RoleKind.TRAINER] == comp["queue, a new trainer"].seconds
    assert t.queue_s[RoleKind.ROLLOUT] == comp["queue, a new job"].seconds
    assert t.teardown_s + t.full_queue_s == comp["full restart: teardown + queue"].seconds
    assert t.detect(RoleKind.TRAINER, FaultKind.HANG) == comp["detect hang"].seconds
    assert t.detect(RoleKind.ROLLOUT, FaultKind.NODE_DOWN) == s.detect_node_down_s[1]
    assert w.checkpoint_write_s == pytest.approx(comp["checkpoint write"].seconds)
    assert w.step_compute_s + s.trainer_wait_s == pytest.approx(comp["step"].seconds)
    # sizes from the model: 8.2B parameters, bf16 weights ~16 GB, fp32 Adam ~100 GB
    assert s.weight_gb == pytest.approx(16.4) and s.optimizer_gb == pytest.approx(98.4)
    # the rollouts deliver exactly one batch per step, so the steady step is the cited 150.6 s
    r = simulate(s.config(None), ROLE, 0)
    assert r.faults == 0 and r.wall_s / r.steps == pytest.approx(s.step_s, rel=0.01)
    assert math.isclose(r.ettr, 1.0, abs_tol=1e-6)
