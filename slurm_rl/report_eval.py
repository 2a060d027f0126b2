"""The task side of a run's report, read from its events: held-out evals and reward errors.

rollout/0 reports each eval as an `eval` event (data: version, pass_at_1, reward_mean, n, ...)
and each batch whose reward failed as a `reward_error` event (data: count, record_ids, error).
An eval of a version reported twice (a rollout restarted, or a version redone after a trainer
restore) counts once: the newest report of that version.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from slurm_rl.store import read_events


def _f(data: dict[str, Any], key: str) -> float | None:
    try:
        return float(data[key])
    except (KeyError, TypeError, ValueError):
        return None


def eval_history(conn: sqlite3.Connection) -> list[dict[str, Any]]:
    """One row per evaluated version, in version order."""
    by_version: dict[int, dict[str, Any]] = {}
    for e in read_events(conn):
        if e.kind != "eval":
            continue
        try:
            version = int(e.data["version"])
        except (KeyError, TypeError, ValueError):
            continue
        by_version[version] = {"version": version, "t": round(e.t, 3), "pass_at_1": _f(e.data, "pass_at_1"),
                               "reward_mean": _f(e.data, "reward_mean"), "n": int(_f(e.data, "n") or 0),
                               "seconds": _f(e.data, "seconds"), "reward_errors": int(_f(e.data, "reward_errors") or 0)}
    return [by_version[v] for v in sorted(by_version)]


def eval_summary(conn: sqlite3.Connection) -> dict[str, Any]:
    """`eval` of `report --json`: pass@1 of the first and the last eval, and every eval."""
    hist = eval_history(conn)
    return {"first": hist[0]["pass_at_1"] if hist else None, "last": hist[-1]["pass_at_1"] if hist else None,
            "first_version": hist[0]["version"] if hist else None,
            "last_version": hist[-1]["version"] if hist else None, "history": hist}


def latest_eval(conn: sqlite3.Connection) -> dict[str, Any] | None:
    """The newest eval (for `status`), or None."""
    hist = eval_history(conn)
    if not hist:
        return None
    last = max(hist, key=lambda h: h["t"])
    return {"version": last["version"], "pass_at_1": last["pass_at_1"], "reward_mean": last["reward_mean"],
            "n": last["n"]}


def reward_errors(conn: sqlite3.Connection) -> dict[str, Any]:
    """`reward_errors` of `report --json`: samples whose reward raised (each scored 0), by split,
    the events that reported them, a few record ids and the first error."""
    count = 0
    by_split: dict[str, int] = {}
    records: list[str] = []
    first: str | None = None
    events = 0
    for e in read_events(conn):
        if e.kind != "reward_error":
            continue
        events += 1
        n = int(_f(e.data, "count") or 0)
        count += n
        split = str(e.data.get("split", "training"))
        by_split[split] = by_split.get(split, 0) + n
        for rid in str(e.data.get("record_ids", "")).split(","):
            if rid and rid not in records and len(records) < 20:
                records.append(rid)
        first = first or e.data.get("error")
    return {"count": count, "by_split": by_split, "events": events, "records": records, "first_error": first}


def write_eval_plot(run_name: str, conn: sqlite3.Connection, out_dir: Path) -> Path | None:
    """eval.png: pass@1 and mean reward of each eval over the version evaluated (None: no evals)."""
    hist = eval_history(conn)
    if not hist:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    xs = [h["version"] for h in hist]
    ax.plot(xs, [h["pass_at_1"] for h in hist], marker="o", lw=1.8, label="pass@1 (greedy)")
    ax.plot(xs, [h["reward_mean"] for h in hist], marker="s", lw=1.0, ls="--", alpha=0.7, label="mean reward")
    ax.set_xlabel("weight version (trainer step)")
    ax.set_ylabel("held-out eval (0-1)")
    ax.set_title(f"{run_name}: held-out eval ({hist[-1]['n']} problems)")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=9)
    fig.tight_layout()
    p = out_dir / "eval.png"
    fig.savefig(p, dpi=120)
    plt.close(fig)
    return p
