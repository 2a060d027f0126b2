"""`slurm-rl simulate`: cluster-scale ETTR from the discrete-event model."""

from __future__ import annotations

import json
import time
from typing import Any

import click

from slurm_rl.cli.base import _console, _example, _progress, cli
from slurm_rl.errors import BadInput


def _floats(ctx: click.Context, param: click.Parameter, value: str | None) -> list[float] | None:
    if value is None:
        return None
    try:
        return [float(x) for x in value.split(",") if x.strip()]
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a comma-separated list of numbers, e.g. 0,0.01,0.05") from None


def _kinds(ctx: click.Context, param: click.Parameter, value: str | None) -> dict[Any, float] | None:
    from slurm_rl.states import FaultKind

    if value is None:
        return None
    out: dict[Any, float] = {}
    for item in value.split(","):
        name, _, w = item.partition("=")
        try:
            out[FaultKind(name.strip())] = float(w or 1.0)
        except ValueError:
            raise click.BadParameter(f"{item!r}: write KIND=WEIGHT with KIND one of "
                                     f"{', '.join(k.value for k in FaultKind)}") from None
    return out


@cli.command(short_help="ETTR at cluster scale (discrete-event model).",
             epilog=_example("slurm-rl simulate                                  # 256 GPUs, 3 days, both policies",
                             "slurm-rl simulate --rates 0.01,0.05,0.1 --spares 4 --trials 10 --days 7",
                             "slurm-rl report runs/rb --json > rb.json; slurm-rl report runs/fr --json > fr.json",
                             "slurm-rl simulate --measured rb.json fr.json --bench-config runs/rb/config.yaml",
                             "slurm-rl simulate --json | jq '.table.rows[] | {label, policy, spares, ettr}'",
                             "slurm-rl simulate --scenario paper           # Qwen3-8B, 256 GPUs: the paper's setting"))
@click.option("--rates", callback=_floats, metavar="R1,R2,...",
              help="Failures per node per day, one table row each (default 0,0.005,0.01,0.02,0.05,0.1,0.2).")
@click.option("--fraction-failing", type=click.FloatRange(0, 1, max_open=True), default=0.10, show_default=True,
              help="Add a row at the rate where this fraction of nodes fails during the run (0: none).")
@click.option("--kinds", callback=_kinds, metavar="KIND=W,...", help="Fault kind mix, e.g. node-down=0.6,crash=0.4.")
@click.option("--spares", type=click.IntRange(min=0), default=2, show_default=True,
              help="N in the 'with N spares' columns.")
@click.option("--trials", type=click.IntRange(min=1), default=None,
              help="Seeds per cell (mean ± std); default 5, 10 for --scenario paper.")
@click.option("--seed", type=int, default=0, show_default=True, help="First seed.")
@click.option("--days", type=click.FloatRange(min=0, min_open=True), default=3.0, show_default=True,
              help="Wall time of each simulated run.")
@click.option("--gpus-per-node", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--trainer-nodes", type=click.IntRange(min=1), default=16, show_default=True)
@click.option("--rollouts", type=click.IntRange(min=1), default=16, show_default=True, help="Rollout replicas.")
@click.option("--rollout-nodes", type=click.IntRange(min=1), default=1, show_default=True,
              help="Nodes per rollout replica.")
@click.option("--trainer-spare", is_flag=True,
              help="Every run also holds a trainer-shaped standby (spare.trainer_nodes): trainer-nodes idle "
                   "nodes with the trainer's process group and shards built, promoted first on a trainer fault.")
@click.option("--standby", type=click.Choice(["spare-then-rollout", "spare-only", "none"]),
              default="spare-then-rollout", show_default=True, help="Who may take over a dead trainer.")
@click.option("--step-s", type=click.FloatRange(min=0, min_open=True), help="Trainer compute per step (s).")
@click.option("--checkpoint-every", type=click.IntRange(min=1), help="Steps between checkpoints.")
@click.option("--measured", nargs=2, type=click.Path(dir_okay=False), metavar="ROLE.json FULL.json",
              help="Validate the model first: two `slurm-rl report --json` files of one benchmark "
                   "(role-based and full-restart, same seed and fault plan).")
@click.option("--bench-config", type=click.Path(dir_okay=False),
              help="The measured runs' resolved config (runs/NAME/config.yaml); default: the demo benchmark.")
@click.option("--no-table", is_flag=True, help="Only the validation (needs --measured).")
@click.option("--scenario", type=click.Choice(["paper"]), default=None,
              help="Instead of the table: the paper's setting (Qwen3-8B GRPO, 256 GPUs, cited component times; "
                   "docs/simulation.md). --trials and --seed apply.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output (docs/schemas/simulate.json).")
def simulate(rates: list[float] | None, fraction_failing: float, kinds: dict[Any, float] | None, spares: int,
             trials: int | None, seed: int, days: float, gpus_per_node: int, trainer_nodes: int, rollouts: int,
             rollout_nodes: int, trainer_spare: bool, standby: str, step_s: float | None, checkpoint_every: int | None,
             measured: tuple[str, str] | None, bench_config: str | None, no_table: bool, scenario: str | None,
             as_json: bool) -> None:
    """ETTR at cluster scale: a discrete-event simulation of a run (the real recovery policy, the
    report's ETTR) over node failure rates, role-based vs full restart, with 0 and N spares.

    With --measured, first checks the model against a real benchmark: simulated with the recovery
    times measured in it, on its own fault plan (docs/simulation.md).
    """
    import dataclasses

    from slurm_rl.sim import (
        DEFAULT_RATES,
        LocalBenchmark,
        NodeFailures,
        Standby,
        Topology,
        load_reports,
        table,
        validate,
    )
    from slurm_rl.sim.config import cluster_config, config_dict
    from slurm_rl.sim.render import format_table, format_validation

    if trials is None:
        trials = 10 if scenario == "paper" else 5
    if scenario == "paper":
        from slurm_rl.sim.paper import paper_report
        from slurm_rl.sim.render import format_paper

        t0 = time.perf_counter()
        with _progress(_console(stderr=True), "simulating", enabled=not as_json) as tick:
            rep = paper_report(trials=trials, seed=seed, progress=tick)
        if as_json:
            click.echo(json.dumps({"schema": 1, "paper": rep.to_dict(),
                                   "paper_s": round(time.perf_counter() - t0, 2)}, indent=1))
        else:
            click.echo(format_paper(rep))
        return
    if no_table and not measured:
        raise BadInput("--no-table leaves nothing to do without --measured ROLE.json FULL.json")
    out: dict[str, Any] = {"schema": 1}
    err = _console(stderr=True)
    if measured:
        bench = LocalBenchmark.from_config_file(bench_config) if bench_config else LocalBenchmark()
        mt = load_reports(*measured)
        t0 = time.perf_counter()
        rows = validate(mt, bench, trials=max(1, trials), seed=seed + 1)
        out["validation"] = [{"pair": "measured", "measured_components": mt.to_dict(),
                              "rows": [r.to_dict() for r in rows]}]
        out["validation_s"] = round(time.perf_counter() - t0, 2)
        if not as_json:
            click.echo(format_validation([("measured", mt, bench, rows)]) + "\n")
    if not no_table:
        base = cluster_config(days=days)
        base = base.replace(
            topology=Topology(gpus_per_node=gpus_per_node, trainer_nodes=trainer_nodes, rollout_replicas=rollouts,
                              rollout_nodes=rollout_nodes, trainer_spares=int(trainer_spare)),
            work=dataclasses.replace(base.work, **({"step_compute_s": step_s} if step_s else {}),
                                     **({"checkpoint_every": checkpoint_every} if checkpoint_every else {})),
            failures=NodeFailures(per_node_per_day=0.0, **({"kinds": kinds} if kinds else {})),
            rules=dataclasses.replace(base.rules, standby=Standby(standby)))
        t0 = time.perf_counter()
        with _progress(err, "simulating", enabled=not as_json) as tick:
            t = table(base, rates=rates if rates is not None else DEFAULT_RATES,
                      fraction_failing=fraction_failing or None, spares=(0, spares), trials=trials, seed=seed,
                      progress=tick)
        out["table"] = t.to_dict() | {"config": config_dict(base)}
        out["table_s"] = round(time.perf_counter() - t0, 2)
        if not as_json:
            click.echo(format_table(t, spares))
            click.echo(f"({len(t.rows) * t.trials} simulated runs in {out['table_s']:.1f} s)")
    if as_json:
        click.echo(json.dumps(out, indent=1))

