"""Views of a sweep: the live table of its runs and the summary at the end (`slurm-rl sweep`).

Both tables choose their columns from the width they get: the run name, its state and its step
always; then figures and the swept settings by priority, as many as fit (the CSV has them all).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from rich import box
from rich.console import Console, ConsoleOptions, RenderResult
from rich.table import Table
from rich.text import Text

from slurm_rl.sweep import METRICS, RunPhase, SweepRun, SweepRunner, SweepSpec
from slurm_rl.ui.columns import Col, fit, table
from slurm_rl.ui.status import progress_bar
from slurm_rl.ui.theme import RUN_STYLE, fmt_age


def _short_keys(keys: Sequence[str]) -> list[str]:
    """Column headers for the varying keys: the last segment, the full key where two would clash."""
    last = [k.rsplit(".", 1)[-1] for k in keys]
    return [s if last.count(s) == 1 else k for k, s in zip(keys, last)]


def _val(v: Any) -> str:
    return "-" if v is None else str(v)


def _phase_text(r: SweepRun) -> Text:
    label = r.phase.value + (" (earlier)" if r.reused else "")
    return Text(label, style=RUN_STYLE.get(r.phase.value, "red" if r.phase is RunPhase.ERROR else ""))


def _key_cols(spec: SweepSpec, priority: int) -> list[Col[SweepRun]]:
    return [Col(h, (lambda r, k=k: _val(dict(r.point.varying).get(k))), priority, max_width=16)
            for h, k in zip(_short_keys(spec.keys), spec.keys)]


class SweepView:
    """Every run of the sweep while it goes: settings, state, step, reward, ETTR, faults, time."""

    def __init__(self, runner: SweepRunner):
        self.runner = runner

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        spec: SweepSpec = self.runner.spec
        counts = self.runner.counts()
        yield Text.assemble(("sweep ", "dim"), (spec.name, "bold"), "  ",
                            ", ".join(f"{n} {k}" for k, n in counts.items()),
                            (f"   (at most {spec.max_concurrent} at a time)", "dim"))
        plain = console.no_color or console.color_system is None
        now = time.time()

        def step(r: SweepRun) -> Text:
            if r.report is not None:
                return Text(str(r.report.get("steps")))
            st = r.status or {}
            if not st:
                return Text("-", style="dim")
            done, total = int(st.get("step") or 0), st.get("steps_total")
            return Text.assemble(progress_bar(done, total, 8, plain=plain), f" {done}/{total or '?'}")

        def live(name: str, key: str) -> Callable[[SweepRun], str]:
            # the status's figure until the run's report exists
            return lambda r: METRICS[name].show(r.metric(name) if r.report is not None
                                                else (r.status or {}).get(key))

        cols = [Col("run", lambda r: r.point.name, 0, max_width=28), Col("state", _phase_text, 0),
                Col("step", step, 0), Col("reward", live("reward", "reward"), 1, right=True),
                Col("ETTR", live("ettr", "ettr"), 2, right=True), *_key_cols(spec, 4),
                Col("time", lambda r: "-" if r.t_start is None else fmt_age((r.t_end or now) - r.t_start), 3,
                     right=True),
                Col("faults", lambda r: _val(r.metric("faults")), 5, right=True)]
        keep, _ = fit(cols, self.runner.runs, options.max_width)
        yield table(keep, self.runner.runs)
        for r in self.runner.runs:
            if r.error:
                yield Text.assemble((f"{r.point.name}: ", "bold"), (r.error, "red"))


class SummaryView:
    """The table at the end of a sweep: each run's settings, how it ended, the chosen metrics."""

    def __init__(self, runner: SweepRunner):
        self.runner = runner

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        spec = self.runner.spec
        ok = sum(1 for r in self.runner.runs if r.phase is RunPhase.FINISHED)
        title = f"sweep {spec.name}: {ok} of {len(self.runner.runs)} runs finished"
        if self.runner.interrupted:
            title += " (interrupted)"
        cols = [Col("run", lambda r: r.point.name, 0, max_width=32), Col("state", _phase_text, 0)]
        # the first three metrics, then the swept settings, then the other metrics
        cols += [Col(METRICS[m].label, (lambda r, m=m: METRICS[m].show(r.metric(m))), 1 + i + (i >= 3), right=True)
                 for i, m in enumerate(spec.metrics)]
        cols += _key_cols(spec, 4)
        keep, dropped = fit(cols, self.runner.runs, options.max_width)
        # settings right after the name, as in the live table
        order = [c for c in cols if c in keep and c.priority == 0] + [c for c in cols[2 + len(spec.metrics):]
                                                                        if c in keep]
        order += [c for c in keep if c not in order]
        yield table(order, self.runner.runs, title=title)
        if dropped:
            yield Text(f"({dropped} more column{'s' if dropped > 1 else ''} in the CSV; a wider terminal shows "
                       f"them)", style="dim")
        for r in self.runner.runs:
            if r.error:
                yield Text.assemble((f"{r.point.name}: ", "bold"), (r.error, "red"))


class PlanView:
    """`slurm-rl sweep --dry-run`: the runs a sweep file makes, before any starts."""

    def __init__(self, spec: SweepSpec):
        self.spec = spec

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        s = self.spec
        yield Text.assemble(("sweep ", "dim"), (s.name, "bold"), f"  {len(s.points)} runs from {s.base}, "
                            f"at most {s.max_concurrent} at a time, in {s.dir}")
        t = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, padding=(0, 1))
        t.add_column("run", overflow="fold")
        for h in _short_keys(s.keys):
            t.add_column(h, overflow="fold")
        for p in s.points:
            ov = dict(p.varying)
            t.add_row(p.name, *(_val(ov.get(k)) for k in s.keys))
        yield t
        yield Text.assemble(("summary ", "dim"), str(s.summary))


__all__ = ["PlanView", "SummaryView", "SweepView"]
