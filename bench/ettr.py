#!/usr/bin/env python3
"""ETTR under injected faults: role-based recovery against full restart, side by side.

    python bench/ettr.py                      # real local Slurm cluster (needs root: it starts the lab)
    python bench/ettr.py --backend local      # same on local processes
    python bench/ettr.py --json --out bench/results/ettr.json

One invocation runs the same config and seed twice, `recovery.policy: role-based` then
`full-restart`, under the same fault schedule: chaos mode draws a fault on average every
`--mean-interval` trainer steps (exponential gaps, seeded), on a trainer or a rollout, of the kinds
crash (SIGKILL), node-down (the node's namespace is killed) and hang (SIGSTOP). Crashed nodes are
repaired (restarted) after `--repair-s` seconds, as an admin would, so capacity comes back.

ETTR = productive training time / wall time (exact definition: slurm_rl/report.py): wall time runs
from the trainer's first request for data to the last committed step; productive time is the time
of trainer steps that were kept, less starvation caused by faults. Start-up is excluded for both.
Prints ETTR of each policy, their ratio, end-to-end time, MTTR per role and fault kind, and the
badput split; `--out` writes both reports (the simulator's calibration input).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from slurm_rl.report import RESTORE_PARTS, report_dict  # noqa: E402
from slurm_rl.rundir import RunDir  # noqa: E402

POLICIES = ("role-based", "full-restart")


def lab_dir() -> Path:
    return Path(os.environ.get("SLURM_RL_LAB") or Path(os.environ.get("TMPDIR", "/tmp")) / "slurm-rl-lab")


def ensure_lab(nodes: int, cpus: int) -> Path:
    """The lab cluster with `nodes` nodes of `cpus` CPUs (cluster-up.sh rebuilds it if it differs)."""
    lab = lab_dir()
    subprocess.run(["bash", str(ROOT / "scripts/slurm-lab/cluster-up.sh")], check=True,
                   env=dict(os.environ, LAB=str(lab), NODES=str(nodes), CPUS=str(cpus)), stdout=subprocess.DEVNULL)
    os.environ["SLURM_RL_LAB"] = str(lab)
    return lab


class Repairer(threading.Thread):
    """Brings crashed lab nodes back after a delay and resumes drained ones (the admin's job)."""

    def __init__(self, lab: Path, delay_s: float):
        super().__init__(daemon=True)
        self.lab, self.delay_s = lab, delay_s
        self.stop = threading.Event()
        self.down_since: dict[str, float] = {}

    def run(self) -> None:
        while not self.stop.wait(1.0):
            out = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %t"], capture_output=True, text=True).stdout
            now = time.time()
            for line in out.splitlines():
                node, state = line.split()[:2]
                if "down" in state or state.endswith("*"):
                    t0 = self.down_since.setdefault(node, now)
                    if now - t0 >= self.delay_s:
                        # down, start, resume: jobs cancelled while it was dead must not hold its CPUs
                        subprocess.run([str(self.lab / "nodectl.sh"), "repair", node], capture_output=True)
                        self.down_since.pop(node, None)
                else:
                    self.down_since.pop(node, None)


def run_policy(policy: str, args: argparse.Namespace, runs_dir: Path, *, label: str = "",
               extra: tuple[str, ...] = ()) -> dict:
    label = label or policy
    name = f"ettr-{label.replace('+', '-plus-').replace('=', '-').replace('.', '-')}"
    sets = [f"runs_dir={runs_dir}", f"recovery.policy={policy}", f"algorithm.steps={args.steps}",
            f"rollout.engine={args.engine}", f"seed={args.seed}", "chaos.enabled=true",
            f"chaos.mean_interval_steps={args.mean_interval}", f"chaos.seed={args.seed}",
            "chaos.kinds=[crash, node-down, hang]", "chaos.roles=[rollout, trainer]",
            f"chaos.start_after_steps={args.start_after}",
            # injected node faults are not flaky hardware: keep every lab node usable
            "recovery.exclude_node_after=1000", "recovery.restart_budget=1000", "recovery.max_full_restarts=1000",
            # timeouts scaled to this workload (a step takes 2-3 s, slower while replacements start up):
            # a hang is confirmed after the phase timeout, the same for both policies
            f"recovery.phase_timeouts.generating={args.hang_timeout}",
            f"recovery.phase_timeouts.stepping={args.hang_timeout}",
            f"recovery.phase_timeouts.idle={args.hang_timeout}",
            f"recovery.phase_timeouts.waiting_for_data={args.hang_timeout}",
            f"recovery.phase_timeouts.syncing_weights={args.hang_timeout}",
            f"recovery.phase_timeouts.publishing={args.hang_timeout}",
            f"trainer.checkpoint_every={args.checkpoint_every}"]
    if args.backend == "slurm":
        sets += ["controller.host=127.0.0.1", f"slurm.cpus_per_task={args.cpus_per_task}"]
    sets += args.set + list(extra)
    cmd = [sys.executable, "-m", "slurm_rl.cli", "launch", str(ROOT / args.config), "--backend", args.backend,
           "--name", name, "--quiet"]
    for s in sets:
        cmd += ["--set", s]
    t0 = time.time()
    print(f"[ettr] {label}: launching ({' '.join(cmd[3:])})", file=sys.stderr, flush=True)
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=args.timeout)
    if proc.returncode != 0:
        print(proc.stdout[-3000:], proc.stderr[-3000:], file=sys.stderr)
        raise SystemExit(f"[ettr] {label} run failed (exit {proc.returncode})")
    rep = report_dict(RunDir(runs_dir / name))
    rep["end_to_end_s"] = round(time.time() - t0, 1)
    print(f"[ettr] {label}: ETTR {rep['ettr']:.3f}, {len(rep['faults'])} faults, {rep['end_to_end_s']}s",
          file=sys.stderr, flush=True)
    return rep


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backend", choices=["slurm", "local"], default="slurm")
    p.add_argument("--config", default="configs/bench-ettr.yaml")
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--hang-timeout", type=float, default=10.0, help="phase timeouts (s) that confirm a hang")
    p.add_argument("--mean-interval", type=float, default=10.0, help="mean trainer steps between faults")
    p.add_argument("--start-after", type=int, default=5)
    p.add_argument("--checkpoint-every", type=int, default=10)
    p.add_argument("--engine", choices=["vllm", "hf"], default="vllm")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lab-nodes", type=int, default=8,
                   help="Slurm lab nodes: the 5 roles plus room for replacements while crashed nodes are repaired")
    p.add_argument("--lab-cpus", type=int, default=4, help="CPUs each lab node advertises (all share this machine's cores)")
    p.add_argument("--cpus-per-task", type=int, default=4,
                   help="Slurm CPUs per role: 4 = one role per lab node, as GPU roles hold whole nodes on a "
                        "cluster (a node-down kills one role); 2 packs two roles per node (it kills both)")
    p.add_argument("--policies", default="role-based,full-restart",
                   help="comma-separated; both (the default) for the side-by-side comparison")
    p.add_argument("--repair-s", type=float, default=15.0, help="restart a crashed lab node after this long")
    p.add_argument("--runs-dir", default=None)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--variant", action="append", default=[], metavar="KEY=VALUE",
                   help="also run role-based with this override (repeatable: all in one variant), beside the "
                        "others under the same fault plan, e.g. --variant spare.trainer_nodes=2")
    p.add_argument("--timeout", type=float, default=3600)
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--out", help="write both reports and the summary to this JSON file")
    args = p.parse_args()

    policies = [x.strip() for x in args.policies.split(",") if x.strip()]
    bad = [x for x in policies if x not in POLICIES]
    if bad or not policies:
        p.error(f"--policies: {', '.join(bad) or 'none given'}; choose from {', '.join(POLICIES)}")
    runs_dir = Path(args.runs_dir or f"/tmp/slurm-rl-bench-{int(time.time())}")
    repairer = None
    if args.backend == "slurm":
        lab = ensure_lab(args.lab_nodes, args.lab_cpus)
        repairer = Repairer(lab, args.repair_s)
        repairer.start()
    try:
        reports = {}
        for pol in policies:
            reports[pol] = run_policy(pol, args, runs_dir)
            if pol == "role-based" and args.variant:
                label = "role-based+" + ",".join(args.variant)
                reports[label] = run_policy(pol, args, runs_dir, label=label, extra=tuple(args.variant))
    finally:
        if repairer is not None:
            repairer.stop.set()
    fr = reports.get("full-restart")
    summary = {
        "backend": args.backend, "engine": args.engine, "steps": args.steps, "seed": args.seed,
        "mean_interval_steps": args.mean_interval,
        "lab": {"nodes": args.lab_nodes, "cpus_per_node": args.lab_cpus, "cpus_per_task": args.cpus_per_task}
        if args.backend == "slurm" else None,
        "ettr": {pol: r["ettr"] for pol, r in reports.items()},
        "ratio": round(reports["role-based"]["ettr"] / fr["ettr"], 3)
        if fr and fr["ettr"] and "role-based" in reports else None,
        "end_to_end_s": {pol: r["end_to_end_s"] for pol, r in reports.items()},
        "wall_s": {pol: r["wall_s"] for pol, r in reports.items()},
        "faults": {pol: len(r["faults"]) for pol, r in reports.items()},
        "badput": {pol: r["badput"] for pol, r in reports.items()},
        "mttr": {pol: r["mttr"] for pol, r in reports.items()},
        "machine": machine(),
    }
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"summary": summary, "reports": reports}, indent=2))
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print_tables(summary)
    return 0


def machine() -> dict:
    import platform

    return {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
            "mem_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)}


def print_tables(s: dict) -> None:
    c = Console()
    t = Table(title=f"ETTR under faults ({s['backend']}, {s['engine']}, {s['steps']} steps, a fault every "
                    f"~{s['mean_interval_steps']:g} steps, seed {s['seed']})")
    for col in ("policy", "ETTR", "vs full restart", "end-to-end s", "train wall s", "faults", "recovery s",
                "replay s", "idle s"):
        t.add_column(col, justify="right" if col != "policy" else "left")
    base = s["ettr"].get("full-restart")
    for pol in s["ettr"]:
        b = s["badput"][pol]
        ratio = f"{s['ettr'][pol] / base:.2f}x" if base else "-"
        t.add_row(pol, f"{s['ettr'][pol]:.3f}", ratio, f"{s['end_to_end_s'][pol]:.0f}",
                  f"{s['wall_s'][pol]:.0f}", str(s["faults"][pol]), f"{b['recovery_s']:.1f}",
                  f"{b['replay_s']:.1f}", f"{b['idle_s']:.1f}")
    c.print(t)
    m = Table(title="MTTR by role and fault kind (seconds: total = detect + schedule + load + sync + ...; "
                    "a trainer's load = build + verify + weights + optimizer + the rest)")
    for col in ("policy", "role", "fault", "n", "MTTR", "detect", "schedule", "load", "build", "verify", "weights",
                "optimizer", "sync"):
        m.add_column(col, justify="right" if col not in ("policy", "role", "fault") else "left")
    for pol in s["mttr"]:
        for r in s["mttr"][pol]:
            def f(v):
                return "-" if v is None else f"{v:.2f}"
            m.add_row(pol, r["role"], r["kind"], str(r["count"]), f(r["mttr_s"]), f(r["detect_s"]),
                      f(r["schedule_s"]), f(r["load_s"]), *(f(r.get(k)) for k in RESTORE_PARTS), f(r["sync_s"]))
    c.print(m)


if __name__ == "__main__":
    sys.exit(main())
