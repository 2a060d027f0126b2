"""ETTR at cluster scale, from a discrete-event model fed with times measured on the real system.

    python bench/simulate.py                      # validation on tests/sim/data + the 256-GPU table
    python bench/simulate.py --measured ROLE.json FULL.json --bench-config runs/NAME/config.yaml
    python bench/simulate.py --no-validate --spares 4 --days 7 --rates 0.01,0.05,0.1 --trials 10
    python bench/simulate.py --json > sim.json
    python bench/simulate.py --scenario paper      # validation + the paper's setting (Qwen3-8B, 256 GPUs)
    python bench/simulate.py --scenario paper --no-validate --paper-set fs_total_gbps=5 --trials 20

(1) Validation: the local benchmark (role-based and full-restart runs on one seed and fault plan,
    `slurm-rl report RUN --json`) simulated with the recovery times measured in those same runs,
    on the same fault plan; simulated vs measured ETTR, target |diff| <= 0.05. Without --measured,
    every pair under tests/sim/data/*/ (role-based.json, full-restart.json, config.yaml).
(2) Cluster table: ETTR vs per-node failure rate for role-based and full restart, with 0 and with
    N spares, mean ± std over --trials seeds. Defaults (docs/simulation.md justifies each): 8 GPUs
    per node, a 16-node trainer, 16 one-node rollouts (256 GPUs), 3 days, checkpoint every 20
    steps of ~94 s (~30 min), queue waits and loads of minutes.
(3) --scenario paper, instead of (2): the paper's setting (RobustRL, arXiv 2512.22492: Qwen3-8B
    GRPO on 256 GPUs, "10% failure injection frequency"), every component time from a cited
    source or our measurements (slurm_rl/sim/paper.py, docs/simulation.md): which reading of the
    fault frequency puts full restart at the paper's 0.60, then role-based with and without spares.

Exit codes: 0 done, 2 bad input (arguments, files).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))     # runnable from a checkout

from slurm_rl.errors import BadInput  # noqa: E402
from slurm_rl.sim import (DEFAULT_RATES, LocalBenchmark, NodeFailures, RecoveryTimes, SimConfig,  # noqa: E402
                          Standby, Topology, Work, load_reports, table, validate)
from slurm_rl.sim.config import ControllerRules, config_dict  # noqa: E402
from slurm_rl.sim.measured import MeasuredTimes  # noqa: E402
from slurm_rl.sim.paper import PaperSetting, paper_report  # noqa: E402
from slurm_rl.sim.render import format_paper, format_table, format_validation  # noqa: E402
from slurm_rl.states import FaultKind, RoleKind  # noqa: E402

DATA = Path(__file__).resolve().parents[1] / "tests" / "sim" / "data"


class _Help(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    pass


def _floats(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of numbers") from None


def _kinds(text: str) -> dict[FaultKind, float]:
    out: dict[FaultKind, float] = {}
    for item in text.split(","):
        name, _, w = item.partition("=")
        try:
            out[FaultKind(name.strip())] = float(w or 1.0)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{item!r}: write KIND=WEIGHT with KIND one of {', '.join(k.value for k in FaultKind)}") from None
    return out


def build_parser() -> argparse.ArgumentParser:
    d_top, d_work, d_times = Topology(), Work(), RecoveryTimes()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=_Help,
                                epilog=__doc__.split("\n\n", 1)[1])
    g = p.add_argument_group("what to print")
    g.add_argument("--measured", nargs=2, metavar=("ROLE_REPORT", "FULL_REPORT"),
                   help="two `slurm-rl report --json` files of one benchmark (default: tests/sim/data/*/)")
    g.add_argument("--bench-config", metavar="CONFIG_YAML",
                   help="the measured runs' resolved config (runs/NAME/config.yaml); default: the demo benchmark")
    g.add_argument("--no-validate", action="store_true", help="skip the validation table")
    g.add_argument("--no-table", action="store_true", help="skip the cluster table")
    g.add_argument("--json", action="store_true", help="machine-readable output on stdout")
    g.add_argument("--seed", type=int, default=0, help="first seed (default 0)")
    g.add_argument("--trials", type=int, default=None,
                   help="seeds per table cell: mean ± std (default 5; 10 for --scenario paper)")
    g.add_argument("--scenario", choices=["paper"], default=None,
                   help="print this scenario instead of the cluster table (paper: docs/simulation.md)")
    g.add_argument("--paper-set", action="append", default=[], metavar="FIELD=VALUE",
                   help="override one field of the paper setting (slurm_rl.sim.paper.PaperSetting), repeatable")

    g = p.add_argument_group("cluster topology")
    g.add_argument("--gpus-per-node", type=int, default=d_top.gpus_per_node)
    g.add_argument("--trainer-nodes", type=int, default=d_top.trainer_nodes)
    g.add_argument("--rollouts", type=int, default=d_top.rollout_replicas, help="rollout replicas")
    g.add_argument("--rollout-nodes", type=int, default=d_top.rollout_nodes, help="nodes per rollout replica")
    g.add_argument("--spares", type=int, default=2, help="N in the 'with N spares' columns (default 2)")
    g.add_argument("--spare-nodes", type=int, default=None, help="nodes per spare (default: a rollout's)")
    g.add_argument("--trainer-spare", action="store_true",
                   help="a trainer-shaped standby in every run (spare.trainer_nodes)")
    g.add_argument("--standby", choices=[s.value for s in Standby], default=Standby.SPARE_THEN_ROLLOUT.value)

    g = p.add_argument_group("work")
    g.add_argument("--days", type=float, default=3.0, help="wall time of the run (default 3)")
    g.add_argument("--step-s", type=float, default=d_work.step_compute_s, help="trainer compute per step")
    g.add_argument("--groups-per-step", type=int, default=d_work.groups_per_step)
    g.add_argument("--rollout-groups-per-s", type=float, default=d_work.rollout_groups_per_s,
                   help="generation rate of one rollout replica")
    g.add_argument("--buffer-steps", type=float, default=d_work.buffer_steps)
    g.add_argument("--checkpoint-every", type=int, default=d_work.checkpoint_every, help="steps")
    g.add_argument("--checkpoint-write-s", type=float, default=d_work.checkpoint_write_s)
    g.add_argument("--commit-delay-s", type=float, default=d_work.commit_delay_s)

    g = p.add_argument_group("failures")
    g.add_argument("--rates", type=_floats, default=list(DEFAULT_RATES), help="failures per node per day, a,b,c")
    g.add_argument("--fraction-failing", type=float, default=0.10,
                   help="add a row at the rate where this fraction of nodes fails during the run (default 0.10)")
    g.add_argument("--kinds", type=_kinds, default=dict(NodeFailures(per_node_per_day=0).kinds),
                   help="fault kind mix, e.g. node-down=0.6,crash=0.25,hang=0.15")

    g = p.add_argument_group("recovery times (seconds)")
    g.add_argument("--detect-crash-s", type=float, default=d_times.detect_s[FaultKind.CRASH])
    g.add_argument("--detect-node-down-s", type=float, default=d_times.detect_s[FaultKind.NODE_DOWN])
    g.add_argument("--detect-hang-s", type=float, default=d_times.detect_s[FaultKind.HANG])
    g.add_argument("--queue-trainer-s", type=float, default=d_times.queue_s[RoleKind.TRAINER])
    g.add_argument("--queue-rollout-s", type=float, default=d_times.queue_s[RoleKind.ROLLOUT])
    g.add_argument("--queue-cv", type=float, default=1.0, help="spread of queue waits (0 fixed, 1 exponential)")
    g.add_argument("--load-trainer-s", type=float, default=d_times.load_s[RoleKind.TRAINER])
    g.add_argument("--load-rollout-s", type=float, default=d_times.load_s[RoleKind.ROLLOUT])
    g.add_argument("--sync-s", type=float, default=d_times.sync_s)
    g.add_argument("--promote-rollout-s", type=float, default=d_times.promote_s[RoleKind.ROLLOUT])
    g.add_argument("--promote-trainer-s", type=float, default=d_times.promote_s[RoleKind.TRAINER])
    g.add_argument("--restore-s", type=float, default=d_times.restore_s)
    g.add_argument("--teardown-s", type=float, default=d_times.teardown_s)
    g.add_argument("--full-queue-s", type=float, default=d_times.full_queue_s,
                   help="full restart: queue wait until the whole allocation runs again")
    return p


def cluster_from_args(a: argparse.Namespace) -> SimConfig:
    detect = {FaultKind.CRASH: a.detect_crash_s, FaultKind.EXIT: a.detect_crash_s,
              FaultKind.NODE_DOWN: a.detect_node_down_s, FaultKind.HANG: a.detect_hang_s,
              FaultKind.DRAIN: a.detect_crash_s}
    return SimConfig(
        topology=Topology(gpus_per_node=a.gpus_per_node, trainer_nodes=a.trainer_nodes, rollout_replicas=a.rollouts,
                          rollout_nodes=a.rollout_nodes, spare_nodes=a.spare_nodes,
                          trainer_spares=int(a.trainer_spare)),
        work=Work(step_compute_s=a.step_s, groups_per_step=a.groups_per_step,
                  rollout_groups_per_s=a.rollout_groups_per_s, buffer_steps=a.buffer_steps,
                  duration_s=a.days * 86_400.0, checkpoint_every=a.checkpoint_every,
                  checkpoint_write_s=a.checkpoint_write_s, commit_delay_s=a.commit_delay_s),
        failures=NodeFailures(per_node_per_day=0.0, kinds=a.kinds),      # the kind mix; each row sets its rate
        times=RecoveryTimes(detect_s=detect,
                            queue_s={RoleKind.TRAINER: a.queue_trainer_s, RoleKind.ROLLOUT: a.queue_rollout_s,
                                     RoleKind.SPARE: a.queue_rollout_s}, queue_cv=a.queue_cv,
                            load_s={RoleKind.TRAINER: a.load_trainer_s, RoleKind.ROLLOUT: a.load_rollout_s,
                                    RoleKind.SPARE: a.load_rollout_s}, sync_s=a.sync_s,
                            promote_s={RoleKind.ROLLOUT: a.promote_rollout_s, RoleKind.TRAINER: a.promote_trainer_s},
                            restore_s=a.restore_s, teardown_s=a.teardown_s, full_queue_s=a.full_queue_s),
        rules=ControllerRules(standby=Standby(a.standby)))


def measured_pairs(a: argparse.Namespace) -> list[tuple[str, MeasuredTimes, LocalBenchmark]]:
    if a.measured:
        bench = LocalBenchmark.from_config_file(a.bench_config) if a.bench_config else LocalBenchmark()
        return [(Path(a.measured[0]).stem, load_reports(*a.measured), bench)]
    out = []
    dirs = sorted(p for p in DATA.iterdir() if p.is_dir() and (p / "role-based.json").exists()) if DATA.exists() else []
    for d in dirs:
        cfg = d / "config.yaml"
        bench = LocalBenchmark.from_config_file(cfg) if cfg.exists() else LocalBenchmark()
        out.append((d.name, load_reports(d / "role-based.json", d / "full-restart.json"), bench))
    if not out:
        raise BadInput(f"no measured reports under {DATA}",
                       hint="pass --measured ROLE.json FULL.json, or --no-validate")
    return out


def paper_setting(items: list[str]) -> PaperSetting:
    """PaperSetting with FIELD=VALUE overrides (numbers; a pair as A,B)."""
    import dataclasses

    fields = {f.name: f for f in dataclasses.fields(PaperSetting)}
    over: dict[str, Any] = {}
    for item in items:
        name, sep, text = item.partition("=")
        name = name.strip()
        if not sep or name not in fields:
            raise BadInput(f"--paper-set {item!r}: write FIELD=VALUE with FIELD one of {', '.join(fields)}")
        default = getattr(PaperSetting(), name)
        try:
            if isinstance(default, tuple):
                over[name] = tuple(float(x) for x in text.split(","))
            else:
                over[name] = type(default)(text)
        except ValueError:
            raise BadInput(f"--paper-set {item!r}: {text!r} is not a {type(default).__name__}") from None
    return PaperSetting(**over)


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    if a.trials is None:
        a.trials = 10 if a.scenario == "paper" else 5
    if a.trials < 1:
        print("error: --trials must be at least 1", file=sys.stderr)
        return 2
    out: dict[str, Any] = {}
    try:
        if not a.no_validate:
            t0 = time.perf_counter()
            pairs = []
            for name, mt, bench in measured_pairs(a):
                pairs.append((name, mt, bench, validate(mt, bench, trials=a.trials if a.trials > 1 else 1,
                                                        seed=a.seed + 1)))
            out["validation"] = [{"pair": n, "measured_components": mt.to_dict(),
                                  "rows": [r.to_dict() for r in rows]} for n, mt, _, rows in pairs]
            out["validation_s"] = round(time.perf_counter() - t0, 2)
            if not a.json:
                print(format_validation(pairs), end="\n\n")
        if a.scenario == "paper":
            t0 = time.perf_counter()
            rep = paper_report(paper_setting(a.paper_set), trials=a.trials, seed=a.seed)
            out["paper"] = rep.to_dict()
            out["paper_s"] = round(time.perf_counter() - t0, 2)
            if not a.json:
                print(format_paper(rep))
                print(f"({out['paper_s']:.1f} s)")
        elif not a.no_table:
            base = cluster_from_args(a)
            t0 = time.perf_counter()
            t = table(base, rates=a.rates, fraction_failing=a.fraction_failing or None, spares=(0, a.spares),
                      trials=a.trials, seed=a.seed)
            out["table"] = t.to_dict() | {"config": config_dict(base)}
            out["table_s"] = round(time.perf_counter() - t0, 2)
            if not a.json:
                print(format_table(t, a.spares))
                print(f"({len(t.rows) * t.trials} simulated runs in {out['table_s']:.1f} s)")
    except BadInput as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    if a.json:
        json.dump(out, sys.stdout, indent=1)
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
