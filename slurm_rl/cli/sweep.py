"""`slurm-rl sweep`: one run per point of a grid or list of overrides."""

from __future__ import annotations

import json
import signal
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import click
from rich.console import Console

from slurm_rl.cli.base import INTERRUPTED, _console, _example, _quiet_hf, cli


@cli.command(short_help="Run a grid/list of config variants.",
             epilog=_example("slurm-rl sweep configs/sweep-example.yaml",
                             "slurm-rl sweep configs/sweep-example.yaml --dry-run",
                             "slurm-rl sweep my-sweep.yaml --max-concurrent 4 --set algorithm.steps=50 --json > s.json",
                             "slurm-rl sweep my-sweep.yaml --resume          # after Ctrl-C: run what did not finish"))
@click.argument("sweep_file", metavar="SWEEP.yaml", type=click.Path(dir_okay=False))
@click.option("--max-concurrent", type=click.IntRange(min=1),
              help="Runs at the same time (default: the file's, else 1).")
@click.option("--runs-dir",
              help="Where the sweep's directory goes (default: the file's runs_dir, else the base config's).")
@click.option("--summary", "summary", type=click.Path(dir_okay=False),
              help="CSV summary path (default: <runs_dir>/<name>/summary.csv).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a config value in every run.")
@click.option("--backend", type=click.Choice(["local", "slurm"]), help="Override the backend of every run.")
@click.option("--dry-run", is_flag=True, help="Validate the file and list its runs; start nothing.")
@click.option("--resume", is_flag=True, help="Keep runs of this sweep that finished; run the others again "
                                              "(their old directories are kept as NAME.old-N).")
@click.option("--json", "as_json", is_flag=True, help="Print the summary (or with --dry-run the plan) as JSON "
                                                      "(docs/schemas/sweep.json).")
@click.option("--quiet", is_flag=True, help="No live table; one line per run start and end.")
def sweep(sweep_file: str, max_concurrent: int | None, runs_dir: str | None, summary: str | None,
          overrides: tuple[str, ...], backend: str | None, dry_run: bool, resume: bool, as_json: bool,
          quiet: bool) -> None:
    """Run one training run per point of a grid and/or list of config overrides (SWEEP.yaml,
    format in docs/cli.md), at most --max-concurrent at a time, each launched like
    `slurm-rl launch --detach`; follow them to the end, then print a summary table and write it
    as CSV. Ctrl-C stops the sweep's runs.

    Exit code 0 when every run finished, 1 when one failed, was stopped or could not start.
    """
    from slurm_rl.sweep import SweepRunner, load_sweep
    from slurm_rl.ui.sweep import PlanView, SweepView

    spec = load_sweep(sweep_file, runs_dir=runs_dir, max_concurrent=max_concurrent, summary=summary,
                      extra_sets=overrides, backend=backend)
    if dry_run:
        if as_json:
            click.echo(json.dumps(spec.plan(), indent=2))
        else:
            _console().print(PlanView(spec))
        return
    runner = SweepRunner(spec, resume=resume)
    err = _console(stderr=True)
    live_table = err.is_terminal and not quiet
    _quiet_hf()
    code = 0
    with _deferred_interrupt() as interrupted:
        if live_table:
            from rich.live import Live

            # transient: the summary printed below replaces the live table
            with Live(SweepView(runner), console=err, refresh_per_second=4, transient=True) as live:
                while not runner.done and not interrupted():
                    runner.tick()
                    live.update(SweepView(runner))
                    if not runner.done:
                        time.sleep(0.5)
        else:
            _follow_quiet(runner, err, interrupted)
        if interrupted():
            code = INTERRUPTED
            asked = runner.stop("sweep interrupted (Ctrl-C in slurm-rl sweep)")
            err.print(f"interrupted: stopping {len(asked)} running run(s) (Ctrl-C again to leave them running)")
            try:
                runner.wait_stopped(timeout_s=90)
            except KeyboardInterrupt:
                err.print("leaving them running: `slurm-rl ls` lists them, `slurm-rl stop RUN` stops one")
    path = runner.write_csv()
    if as_json:
        click.echo(json.dumps(runner.summary(), indent=2))
    else:
        from slurm_rl.ui.sweep import SummaryView

        _console().print(SummaryView(runner))
    err.print(f"summary written to {path}", soft_wrap=True)
    sys.exit(code or (0 if runner.ok else 1))


@contextmanager
def _deferred_interrupt() -> Iterator[Any]:
    """Ctrl-C (or SIGTERM) during a sweep only raises a flag, read between two steps of the loop, so
    a run half-way through its start is never left behind; a second one interrupts at once."""
    hits = [0]

    def handler(signum: int, frame: Any) -> None:
        hits[0] += 1
        if hits[0] > 1:
            raise KeyboardInterrupt

    old = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield lambda: hits[0] > 0
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)


def _follow_quiet(runner: Any, err: Console, interrupted: Any) -> None:
    """A sweep without a terminal: one line per run start and end."""
    seen: dict[str, str] = {}
    while not interrupted():
        runner.tick()
        for r in runner.runs:
            before = seen.get(r.point.name)
            if before != r.phase.value:
                seen[r.point.name] = r.phase.value
                if r.phase.value in ("queued",) and before is None:
                    continue
                extra = ""
                if r.report is not None:
                    extra = f"  steps {r.report['steps']}  ETTR {r.report['ettr']:.1%}"
                if r.error:
                    extra += f"  ({r.error})"
                err.print(f"{r.point.name}: {r.phase.value}{extra}", soft_wrap=True, markup=False)
        if runner.done:
            return
        time.sleep(0.5)

