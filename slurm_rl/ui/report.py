"""Rich renderings of a report and of the run list."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text


def _f(v: Any, spec: str = ".2f") -> str:
    return "-" if v is None else format(v, spec)


def render_report(rep: dict[str, Any]) -> Group:
    head = Table.grid(padding=(0, 2))
    head.add_column(style="dim")
    head.add_column()
    t = rep["trajectories"]
    head.add_row("run", Text(f"{rep['run']}  ({rep['state']}" + (f": {rep['end_reason']}" if rep.get("end_reason")
                                                                   else "") + ")", style="bold"))
    head.add_row("backend / recovery", f"{rep.get('backend')} / {rep.get('recovery')}")
    head.add_row("steps", f"{rep['steps']} kept ({rep['steps_computed']} computed)")
    head.add_row("wall time", f"{rep['wall_s']:.1f}s  (+{rep['startup_s']:.1f}s start-up, not counted)")
    head.add_row("ETTR", Text(f"{rep['ettr']:.1%}", style="bold"))
    b = rep["badput"]
    head.add_row("badput", f"recovery {b['recovery_s']:.1f}s  replay {b['replay_s']:.1f}s  idle {b['idle_s']:.1f}s")
    head.add_row("reward", f"first 10 steps {_f(rep['reward']['first'], '.3f')} -> last 10 {_f(rep['reward']['last'], '.3f')}")
    head.add_row("trajectories", f"generated {t['generated']} = consumed {t['consumed']} + dropped stale "
                                 f"{t['dropped_stale']} + rolled back {t['dropped_rollback']} + queued {t['queued']}"
                                 f"   lost {t['lost']}" + ("" if t["accounted"] else "   (NOT ACCOUNTED)"))
    r = rep["restarts"]
    head.add_row("restarts", f"trainer {r['trainer']}  rollout {r['rollout']}  spare {r['spare']}  full {r['full']}")
    parts: list[Any] = [head]
    if rep["mttr"]:
        m = Table(title="MTTR by role and fault (seconds)", title_justify="left")
        for c in ("role", "fault", "count", "MTTR", "detect", "schedule", "load", "sync"):
            m.add_column(c, justify="right" if c not in ("role", "fault") else "left")
        for row in rep["mttr"]:
            m.add_row(row["role"], row["kind"], str(row["count"]), _f(row["mttr_s"]), _f(row["detect_s"]),
                      _f(row["schedule_s"]), _f(row["load_s"]), _f(row["sync_s"]))
        parts.append(m)
    if rep["faults"]:
        f = Table(title="faults", title_justify="left")
        for c in ("#", "role", "kind", "node", "at", "detected", "recovered", "action"):
            f.add_column(c)
        for x in rep["faults"]:
            f.add_row(str(x["id"]), x["slot"], x["kind"], x["node"] or "-", _f(x["t_fault"], ".1f"),
                      f"+{_f(x['detect_s'])}s", "-" if x["recover_s"] is None else f"+{x['recover_s']:.2f}s",
                      x["action"] or "-")
        parts.append(f)
    return Group(*parts)


def list_runs(root: Path) -> list[dict[str, Any]]:
    """Runs under `root` with their state and key figures (from each run's store)."""
    from slurm_rl.report import report_dict
    from slurm_rl.rundir import RunDir

    rows = []
    if not root.is_dir():
        return rows
    for d in sorted(root.iterdir()):
        run = RunDir(d)
        if not run.exists() or not run.db.exists():
            continue
        try:
            rep = report_dict(run)
        except Exception as e:  # a damaged run must not hide the others
            rows.append({"run": d.name, "path": str(d), "state": f"unreadable ({e.__class__.__name__})"})
            continue
        meta = run.read_meta()
        rows.append({"run": d.name, "path": str(d), "state": rep["state"], "backend": meta.get("backend"),
                     "recovery": meta.get("recovery"), "created": meta.get("created"), "steps": rep["steps"],
                     "ettr": rep["ettr"], "reward_last": rep["reward"]["last"], "faults": len(rep["faults"])})
    return rows


def render_runs(rows: list[dict[str, Any]]) -> Table:
    t = Table()
    for c in ("run", "state", "backend", "recovery", "steps", "reward", "ETTR", "faults", "path"):
        t.add_column(c)
    for r in rows:
        t.add_row(r["run"], r["state"], str(r.get("backend") or "-"), str(r.get("recovery") or "-"),
                  str(r.get("steps", "-")), _f(r.get("reward_last"), ".3f"),
                  "-" if r.get("ettr") is None else f"{r['ettr']:.1%}", str(r.get("faults", "-")), r["path"])
    return t


__all__ = ["render_report", "list_runs", "render_runs"]
