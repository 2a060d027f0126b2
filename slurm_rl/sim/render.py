"""Plain-text tables of simulation results (returned as strings: domain code never prints)."""

from __future__ import annotations

from collections.abc import Sequence

from slurm_rl.config import RecoveryPolicy
from slurm_rl.sim.blame import BadputSplit
from slurm_rl.sim.measured import LocalBenchmark, MeasuredTimes
from slurm_rl.sim.paper import PAPER_ETTR, PaperReport
from slurm_rl.sim.sweep import Table, ValidationRow

__all__ = ["format_paper", "format_table", "format_validation"]

ROLE, FULL = RecoveryPolicy.ROLE_BASED, RecoveryPolicy.FULL_RESTART
_PARTS = BadputSplit.PARTS


def format_validation(pairs: Sequence[tuple[str, MeasuredTimes, LocalBenchmark, Sequence[ValidationRow]]],
                      tol: float = 0.05) -> str:
    """Simulated vs measured, one line per (benchmark pair, policy), then the measured components."""
    out = ["Validation: the local benchmark, simulated with the recovery times measured in it,",
           f"on the same fault plan (target |sim - measured| <= {tol:g})"]
    hdr = (f"{'pair':<8} {'policy':<13} {'steps':>5} {'fault every':>11} {'ETTR meas':>9} {'ETTR sim':>8} "
           f"{'diff':>7} {'ok':>3} {'faults m/s':>10} {'full m/s':>8} {'recov+replay s m/s':>19} {'idle s m/s':>12}")
    out += [hdr, "-" * len(hdr)]
    for name, _, bench, rows in pairs:
        for r in rows:
            m, s = r.measured, r.sim
            every = f"{bench.chaos.mean_interval_steps:g} steps"
            spread = f"  (other plans: {r.spread.fmt()})" if r.spread is not None else ""
            # like for like: the split a report of the simulated run would print
            rep = s.as_reported
            rr_m, rr_s = m.recovery_s + m.replay_s, rep.recovery_s + rep.replay_s
            ok = "yes" if r.within(tol) else "NO"
            out.append(f"{name:<8} {r.policy.value:<13} {bench.steps:>5} {every:>11} {m.ettr:>9.3f} "
                       f"{r.sim_ettr:>8.3f} {r.diff:>+7.3f} {ok:>3} {m.faults:>4}/{s.faults:<5} "
                       f"{m.full_restarts:>3}/{s.full_restarts:<4} {rr_m:>8.1f}/{rr_s:<10.1f} "
                       f"{m.idle_s:>5.1f}/{rep.idle_s:<6.1f}{spread}")
    out.append("")
    for name, mt, _, _ in pairs:
        d = mt.to_dict()
        pad = " " * len(name)
        out.append(f"{name} measured (s): detect {d['detect_s']}")
        out.append(f"{pad} queue {d['queue_s']} load {d['load_s']} sync {d['sync_s']}")
        out.append(f"{pad} promote {d['promote_s']} full restart {d['full_restart_s']} step {d['step_s']}")
        found = mt.role_based.found + mt.full_restart.found
        if found:
            out.append(f"{pad} {found} fault row(s) were failures nobody injected (not produced by the model)")
    return "\n".join(out)


def format_table(t: Table, spares: int) -> str:
    """ETTR per failure rate (rows) for role-based/full restart with 0 and `spares` spares (columns),
    then the badput split with `spares` spares."""
    days = f", {t.days:g} days" if t.days is not None else ""
    out = [f"ETTR vs failure rate: {t.gpus} GPUs ({t.nodes} nodes){days}, mean ± std over {t.trials} seeds"]
    cols = [(ROLE, 0), (ROLE, spares), (FULL, 0), (FULL, spares)]
    names = [f"{'role' if p is ROLE else 'full'}, {n} spare{'' if n == 1 else 's'}" for p, n in cols]
    hdr = f"{'failures':<20} {'faults, 0 / ' + str(spares) + ' sp.':>16} " + " ".join(f"{n:>15}" for n in names)
    out += [hdr, "-" * len(hdr)]
    for label in t.labels:
        f0, fn = t.cell(label, ROLE, 0).faults.mean, t.cell(label, ROLE, spares).faults.mean
        out.append(f"{label:<20} {f0:>8.1f} / {fn:<5.1f} " +
                   " ".join(f"{t.cell(label, p, n).ettr.fmt():>15}" for p, n in cols))
    out += ["", f"badput, hours per run: recovery / replay / idle ({spares} spare{'' if spares == 1 else 's'})",
            f"{'failures':<20} {'role-based':>22} {'full restart':>22}"]
    for label in t.labels:
        parts = []
        for p in (ROLE, FULL):
            c = t.cell(label, p, spares)
            parts.append(f"{c.recovery_s.mean / 3600:.2f} / {c.replay_s.mean / 3600:.2f} / {c.idle_s.mean / 3600:.2f}")
        out.append(f"{label:<20} {parts[0]:>22} {parts[1]:>22}")
    return "\n".join(out)


def format_paper(rep: PaperReport) -> str:
    """The paper scenario: the component times, the readings of "10% failure injection frequency",
    then one line per policy under the chosen reading, and the badput split."""
    st = rep.setting
    paper = {ROLE: f">{PAPER_ETTR[ROLE]:.2f} (RobustRL)", FULL: f"{PAPER_ETTR[FULL]:.2f} (ByteRobust)"}
    out = [f"The paper's setting (RobustRL, arXiv 2512.22492): Qwen3-8B GRPO on {st.nodes * st.gpus_per_node} GPUs "
           f"({st.trainer_nodes} trainer nodes, {st.rollouts} rollout nodes, {st.gpus_per_node} GPUs each), "
           f"{st.steps} steps of ~{st.step_s:.0f} s; mean ± std over {rep.trials} seeds", "",
           "component times (s)"]
    for c in st.components():
        value = f"{c.seconds:8.2f}" if c.seconds else " " * 8
        out.append(f"  {c.name:<32} {value}  {c.derivation}  [{c.source}]")
    out += ["", 'which reading of "10% failure injection frequency" puts full restart at the paper\'s '
            f"{PAPER_ETTR[FULL]:.2f} (no spares):"]
    hdr = f"  {'reading':<32} {'faults/run':>10} {'full-restart':>15} {'role-based':>15} {'|full - 0.60|':>14}"
    out += [hdr, "  " + "-" * (len(hdr) - 2)]
    for r in rep.readings:
        mark = ""
        if r.reading is rep.chosen:
            mark = "  <- chosen, " + ("within 0.05" if rep.lands else "NOT within 0.05")
        out.append(f"  {r.reading.value:<32} {r.faults:>10.1f} {r.full_restart[0]:>7.3f} ± {r.full_restart[1]:.3f} "
                   f"{r.role_based[0]:>7.3f} ± {r.role_based[1]:.3f} {r.off_by:>14.3f}{mark}")
    out += ["", f'under "{rep.chosen.value}", weight sync at our {st.sync_gbps:g} GB/s:']
    lw = max((len(r.label) for r in rep.rows), default=14)
    for r in rep.rows:
        out.append(f"{r.policy.value:<13} ETTR {r.ettr[0]:.3f} ± {r.ettr[1]:.3f}   spares: {r.label:<{lw}} "
                   f"paper: {paper[r.policy]}")
    alt = " / ".join(f"{r.policy.value} {r.ettr[0]:.3f}" for r in rep.paper_sync_rows)
    out += [f"at the paper's weight sync ({st.paper_sync_gbps:.1f} GB/s: 235B in ~6 s), same rows: {alt}", "",
            "badput, minutes per run: " + " / ".join(_PARTS)]
    for r in rep.rows:
        parts = " / ".join(f"{getattr(r.split, p + '_s') / 60:.1f}" for p in _PARTS)
        out.append(f"  {r.policy.value:<13} spares {r.label:<{lw}} {parts}   (wall {r.wall_s / 3600:.1f} h, "
                   f"{r.faults:.1f} faults, {r.full_restarts:.1f} full restarts)")
    return "\n".join(out)
