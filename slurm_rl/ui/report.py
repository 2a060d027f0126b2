"""Rich renderings of a run report (`slurm_rl.report.report_dict`) and of the run list (`slurm-rl ls`).

Both pick their columns from the width they get, so they read in 80 columns and use 120 well.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from rich import box
from rich.console import Console, ConsoleOptions, RenderResult
from rich.table import Table
from rich.text import Text

from slurm_rl.ui.columns import Col, fit, table
from slurm_rl.ui.theme import RUN_STYLE, fmt_num

WIDE = 110


def _f(v: Any, spec: str = ".2f") -> str:
    return fmt_num(v, spec)


def _s(v: float | None) -> str:
    """Seconds in a table cell: 2 decimals under 100 s, whole seconds above."""
    if v is None:
        return "-"
    return f"{v:.2f}" if v < 100 else f"{v:.0f}"


class ReportView:
    """The report of one run: headline figures, MTTR split per role and fault kind, every fault."""

    def __init__(self, rep: dict[str, Any]):
        self.rep = rep

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        wide = options.max_width >= WIDE
        yield self._head()
        if self.rep["mttr"]:
            yield Text()
            yield self._mttr()
        if self.rep["faults"]:
            yield Text()
            yield self._faults(wide)

    def _head(self) -> Table:
        rep = self.rep
        head = Table.grid(padding=(0, 2))
        head.add_column(style="dim", no_wrap=True)
        head.add_column()
        t = rep["trajectories"]
        state = rep["state"]
        run = Text.assemble((rep["run"], "bold"), "  ", (state, RUN_STYLE.get(state, "")))
        if rep.get("end_reason"):
            run.append(f" ({rep['end_reason']})", style="dim")
        head.add_row("run", run)
        head.add_row("backend / recovery", f"{rep.get('backend')} / {rep.get('recovery')}")
        head.add_row("steps", f"{rep['steps']} kept ({rep['steps_computed']} computed)")
        head.add_row("wall time", f"{rep['wall_s']:.1f}s  (+{rep['startup_s']:.1f}s start-up, not counted)")
        head.add_row("ETTR", Text.assemble((f"{rep['ettr']:.1%}", "bold"),
                                           f"  productive {rep.get('productive_s', 0.0):.1f}s"))
        b = rep["badput"]
        head.add_row("badput", f"recovery {b['recovery_s']:.1f}s  replay {b['replay_s']:.1f}s  idle {b['idle_s']:.1f}s")
        head.add_row("reward", f"first 10 steps {_f(rep['reward']['first'], '.3f')} -> "
                               f"last 10 {_f(rep['reward']['last'], '.3f')}")
        acc = Text(f"generated {t['generated']} = consumed {t['consumed']} + dropped stale {t['dropped_stale']} "
                   f"+ rolled back {t['dropped_rollback']} + queued {t['queued']};  lost {t['lost']}")
        if not t["accounted"]:
            acc.append("  (NOT ACCOUNTED)", style="bold red")
        head.add_row("trajectories", acc)
        r = rep["restarts"]
        head.add_row("restarts",
                     f"trainer {r['trainer']}  rollout {r['rollout']}  spare {r['spare']}  full {r['full']}")
        calls = rep.get("scheduler_calls") or {}
        if calls:
            head.add_row("scheduler calls", "  ".join(f"{k} {v}" for k, v in sorted(calls.items())))
        return head

    def _mttr(self) -> Table:
        m = Table(title="MTTR by role and fault kind (mean seconds per fault)", title_justify="left",
                  box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, padding=(0, 1))
        for c in ("role", "fault", "n", "MTTR", "detect", "sched", "load", "sync", "replay", "idle"):
            m.add_column(c, justify="left" if c in ("role", "fault") else "right", no_wrap=True)
        for row in self.rep["mttr"]:
            m.add_row(row["role"], row["kind"], str(row["count"]), Text(_s(row["mttr_s"]), style="bold"),
                      _s(row["detect_s"]), _s(row["schedule_s"]), _s(row["load_s"]), _s(row["sync_s"]),
                      _s(row.get("replay_s")), _s(row.get("idle_s")))
        return m

    def _faults(self, wide: bool) -> Table:
        f = Table(title="faults (times in seconds since launch)", title_justify="left", box=box.SIMPLE_HEAD,
                  show_edge=False, pad_edge=False, padding=(0, 1))
        cols = ["#", "role", "kind", "at", "detect", "recover", "replay", "idle"]
        if wide:
            cols += ["node", "action"]
        for c in cols:
            f.add_column(c, justify="right" if c in ("#", "at", "detect", "recover", "replay", "idle") else "left",
                         no_wrap=c != "action", overflow="fold" if c == "action" else "ellipsis")
        for x in self.rep["faults"]:
            kind = x["kind"] + ("" if x.get("injected", True) else " (found)")
            cells = [str(x["id"]), x["slot"], kind, _f(x["t_fault"], ".1f"),
                     "-" if x["detect_s"] is None else f"+{x['detect_s']:.2f}",
                     Text("open", style="yellow") if x["recover_s"] is None else f"+{x['recover_s']:.2f}",
                     _s(x.get("replay_s")), _s(x.get("idle_s"))]
            if wide:
                cells += [x["node"] or "-", x["action"] or "-"]
            f.add_row(*cells)
        return f


def render_report(rep: dict[str, Any]) -> ReportView:
    return ReportView(rep)


# ----------------------------------------------------------------------------- run list
def list_runs(root: Path) -> list[dict[str, Any]]:
    """Runs under `root` (and inside sweep directories one level down) with their state and key
    figures, read from each run's store. A damaged run is listed as unreadable, never hides the others."""
    from slurm_rl import launcher
    from slurm_rl.report import report_dict
    from slurm_rl.rundir import RunDir

    rows: list[dict[str, Any]] = []
    if not root.is_dir():
        return rows

    def one(d: Path, name: str) -> None:
        run = RunDir(d)
        meta = run.read_meta()
        try:
            rep = report_dict(run)
        except Exception as e:  # noqa: BLE001 - a damaged store must not hide the other runs
            rows.append({"run": name, "path": str(d), "state": "unreadable", "error": f"{e.__class__.__name__}: {e}",
                         "backend": meta.get("backend"), "recovery": meta.get("recovery"),
                         "created": meta.get("created"), "live": False})
            return
        live = rep["state"] not in launcher.TERMINAL_STATES and launcher.controller_alive(run)
        rows.append({"run": name, "path": str(d), "state": rep["state"], "live": live,
                     "backend": meta.get("backend"), "recovery": meta.get("recovery"), "created": meta.get("created"),
                     "steps": rep["steps"], "wall_s": rep["wall_s"], "ettr": rep["ettr"],
                     "reward_last": rep["reward"]["last"], "faults": len(rep["faults"])})

    for d in sorted(root.iterdir()):
        if not d.is_dir():
            continue
        if (d / "run.json").exists() and (d / "state.db").exists():
            one(d, d.name)
        elif (d / "sweep.json").exists():
            for sub in sorted(d.iterdir()):
                if sub.is_dir() and (sub / "run.json").exists() and (sub / "state.db").exists():
                    one(sub, f"{d.name}/{sub.name}")
    return rows


class RunsView:
    """`slurm-rl ls` as a table: name, state and figures first; path and backend where there is room."""

    def __init__(self, rows: list[dict[str, Any]], root: Path):
        self.rows = rows
        self.root = root

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        if not self.rows:
            yield Text(f"no runs in {self.root}", style="dim")
            return

        def state(r: dict[str, Any]) -> Text:
            return Text(r["state"] + (" (live)" if r.get("live") else ""), style=RUN_STYLE.get(r["state"], ""))

        def created(r: dict[str, Any]) -> str:
            return time.strftime("%m-%d %H:%M", time.localtime(r["created"])) if r.get("created") else "-"

        cols: list[Col[dict[str, Any]]] = [
            Col("run", lambda r: Text(r["run"], style="bold"), 0, max_width=48, fold=True),
            Col("state", state, 0),
            Col("steps", lambda r: str(r.get("steps", "-")), 1, right=True),
            Col("ETTR", lambda r: "-" if r.get("ettr") is None else f"{r['ettr']:.1%}", 2, right=True),
            Col("reward", lambda r: _f(r.get("reward_last"), ".3f"), 3, right=True),
            Col("faults", lambda r: str(r.get("faults", "-")), 4, right=True),
            Col("recovery", lambda r: str(r.get("recovery") or "-"), 5),
            Col("created", created, 6),
            Col("backend", lambda r: str(r.get("backend") or "-"), 7),
            Col("path", lambda r: r["path"], 8, max_width=60, fold=True),
        ]
        keep, _ = fit(cols, self.rows, options.max_width)
        yield table(keep, self.rows)


def render_runs(rows: list[dict[str, Any]], root: Path | None = None) -> RunsView:
    return RunsView(rows, root or Path("."))


__all__ = ["ReportView", "RunsView", "list_runs", "render_report", "render_runs"]
