"""The run's plots (`slurm-rl report --plot DIR`): reward, goodput with fault windows, recovery parts."""

from __future__ import annotations

import time
from pathlib import Path

from slurm_rl.report import _fault_rows, _meta, _steps, ettr_breakdown, fault_badput, open_store
from slurm_rl.report_eval import write_eval_plot
from slurm_rl.rundir import RunDir

# one colour per recovery part, the same in every plot
_PART_COLOURS = {"detect": "#d62728", "schedule": "#9467bd", "load": "#8c564b", "sync": "#1f77b4",
                 "replay": "#ff7f0e", "idle": "#7f7f7f"}


def write_plots(run: RunDir, out_dir: Path) -> list[Path]:
    """reward.png (reward per step), goodput.png (steps kept over wall time, fault windows shaded),
    eval.png when the run had held-out evals, and, when the run had faults, recovery.png (each
    fault's recovery split into its parts)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    out_dir.mkdir(parents=True, exist_ok=True)
    conn = open_store(run)
    try:
        meta = _meta(conn)
        t0 = float(meta.get("started") or 0.0)
        steps = _steps(conn)
        faults = _fault_rows(conn, t0)
        attributed = fault_badput(conn, meta)
        br = ettr_breakdown(conn, meta)
        eval_png = write_eval_plot(run.name, conn, out_dir)
    finally:
        conn.close()
    kept = [s for s in steps if s["state"] in ("done", "committed") and s["reward"] is not None]
    paths = [eval_png] if eval_png is not None else []

    # --- reward per step, with the step each fault hit at
    fig, ax = plt.subplots(figsize=(8, 4))
    xs = [s["step"] for s in kept]
    ax.plot(xs, [s["reward"] for s in kept], lw=1.0, alpha=0.6, label="mean reward")
    if len(kept) >= 10:
        r = np.array([s["reward"] for s in kept], dtype=float)
        ax.plot(xs[9:], np.convolve(r, np.ones(10) / 10, mode="valid"), lw=2.2, label="10-step mean")
    ends = np.array([float(s["t_end"]) - t0 for s in kept])
    for i, f in enumerate(faults):
        if f["t_fault"] is None or not len(ends):
            continue
        at = xs[min(int(np.searchsorted(ends, f["t_fault"])), len(xs) - 1)]
        ax.axvline(at, color="tab:red", lw=0.8, alpha=0.6, ls=":", label="fault" if i == 0 else None)
    ax.set_xlabel("trainer step")
    ax.set_ylabel("reward (0-1)")
    ax.set_title(f"{run.name}: reward per step")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=9)
    fig.tight_layout()
    p = out_dir / "reward.png"
    fig.savefig(p, dpi=120)
    plt.close(fig)
    paths.append(p)

    # --- goodput: steps kept over wall time; start-up and every fault window (fault -> recovered) shaded
    fig, ax = plt.subplots(figsize=(8, 4))
    ts = [float(s["t_end"]) - t0 for s in kept]
    if steps and br["startup_s"] > 0:
        ax.axvspan(0, br["startup_s"], color="grey", alpha=0.12, lw=0, label="start-up (not counted)")
    ax.step(ts, range(1, len(ts) + 1), where="post", lw=1.6, color="tab:blue", label="steps kept (goodput)")
    rolled = [s for s in steps if s["state"] == "rolled_back"]
    if rolled:
        ax.scatter([float(s["t_end"]) - t0 for s in rolled], [s["step"] for s in rolled], marker="x", s=14,
                   color="tab:orange", label="steps computed, then rolled back (replay)")
    top = max(len(ts), max((s["step"] for s in steps), default=1))
    end_rel = (float(meta.get("ended") or time.time()) - t0) if t0 else None
    if meta.get("run_state") == "finished" and kept and t0:
        end_rel = max(float(s["t_end"]) for s in kept) - t0     # as ettr_breakdown: teardown is not the run
    for i, f in enumerate(faults):
        if f["t_fault"] is None:
            continue
        t_end = f["t_recovered"] if f["t_recovered"] is not None else end_rel
        if t_end is not None:
            ax.axvspan(f["t_fault"], t_end, color="tab:red", alpha=0.12, lw=0,
                       label="fault -> recovered" if i == 0 else None)
        ax.axvline(f["t_fault"], color="tab:red", lw=1.0)
        if f["t_recovered"] is not None:
            ax.axvline(f["t_recovered"], color="tab:green", lw=1.0, ls="--")
        ax.annotate(f"{f['slot']} {f['kind']}", (f["t_fault"], top), xytext=(2, -2), textcoords="offset points",
                    rotation=90, va="top", ha="left", fontsize=7, color="tab:red")
    ax.set_xlabel("wall time since launch (s)")
    ax.set_ylabel("trainer steps kept")
    ax.set_title(f"{run.name}: goodput over time (ETTR {br['ettr']:.1%}, {len(faults)} fault"
                 f"{'' if len(faults) == 1 else 's'})")
    ax.set_xlim(left=0)
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    p = out_dir / "goodput.png"
    fig.savefig(p, dpi=120)
    plt.close(fig)
    paths.append(p)

    # --- recovery: per fault, the time to recover split into its parts (upper bar, as long as the
    # MTTR) and the badput it caused (lower bar): replay of rolled-back steps, trainer idle
    if faults:
        fig, ax = plt.subplots(figsize=(8, max(2.6, 0.6 * len(faults) + 1.5)))
        labels: list[str] = []
        seen: set[str] = set()

        def seg(y: float, v: float | None, left: float, name: str, colour: str) -> float:
            if not v:
                return left
            ax.barh(y, v, left=left, height=0.36, color=colour, edgecolor="white", lw=0.5)
            seen.add(name)
            return left + v

        for y, f in enumerate(faults):
            extra = attributed.get(int(f["id"]), {})
            left = 0.0
            for name in ("detect", "schedule", "load", "sync"):
                left = seg(y - 0.19, f[f"{name}_s"], left, name, _PART_COLOURS[name])
            if f["recover_s"] is not None:
                seg(y - 0.19, max(0.0, f["recover_s"] - left), left, "other (decide, ready)", "#dddddd")
            else:
                ax.text(left, y - 0.19, "  not recovered", va="center", fontsize=8, color="tab:red")
            left = seg(y + 0.19, extra.get("replay_s"), 0.0, "replay", _PART_COLOURS["replay"])
            seg(y + 0.19, extra.get("idle_s"), left, "idle", _PART_COLOURS["idle"])
            labels.append(f"#{f['id']} {f['slot']} {f['kind']}")
        ax.set_yticks(range(len(faults)), labels, fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel("seconds")
        # the legend in the order of a recovery, whatever order the bars met the parts in
        from matplotlib.patches import Patch

        order = ["detect", "schedule", "load", "sync", "other (decide, ready)", "replay", "idle"]
        colours = {**_PART_COLOURS, "other (decide, ready)": "#dddddd"}
        handles = [Patch(color=colours[n], label=n) for n in order if n in seen]
        ax.set_title(f"{run.name}: time to recover (upper bar) and badput caused (lower bar) per fault",
                     fontsize=10)
        ax.grid(axis="x", alpha=0.3)
        ax.legend(handles=handles, loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, frameon=False)
        fig.tight_layout()
        p = out_dir / "recovery.png"
        fig.savefig(p, dpi=120, bbox_inches="tight")
        plt.close(fig)
        paths.append(p)
    return paths
