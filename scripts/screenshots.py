"""Regenerate the README's screenshots from a real run: the live status view while the trainer
hangs (SUSPECT, before the 10-s confirmation), right after the warm spare took over, and the
report plots.

    python scripts/screenshots.py                  # writes docs/img/status-{suspect,replaced}.svg,
                                                   # goodput.png, recovery.png, reward.png
    python scripts/screenshots.py --out /tmp/img   # somewhere else

It launches configs/demo.yaml (local backend, vLLM) detached with a long step count, waits for
every role, injects `hang` into trainer/0 and, a little later, `crash` into rollout/1, takes the
pictures with the same `StatusView` `slurm-rl status` prints, then stops the run and plots it.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from slurm_rl.report import read_status  # noqa: E402
from slurm_rl.rundir import RunDir  # noqa: E402
from slurm_rl.ui.status import StatusView  # noqa: E402

WIDTH = 100


def cli(*args: str, check: bool = True) -> str:
    res = subprocess.run([sys.executable, "-m", "slurm_rl.cli", *args], capture_output=True, text=True,
                         cwd=REPO, check=False)
    if check and res.returncode != 0:
        raise SystemExit(f"slurm-rl {' '.join(args)} failed ({res.returncode}):\n{res.stdout}{res.stderr}")
    return res.stdout


def roles(run: RunDir) -> dict[str, dict]:
    return {r["slot"]: r for r in read_status(run, n_events=0)["roles"]}


def wait(pred, timeout: float, what: str):
    deadline = time.time() + timeout
    while time.time() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.1)
    raise SystemExit(f"timed out waiting for {what}")


def shot(run: RunDir, path: Path, title: str) -> None:
    console = Console(record=True, width=WIDTH, force_terminal=True, color_system="truecolor", file=open("/dev/null", "w"))
    console.print(StatusView(read_status(run, n_events=8), spinners=False))
    console.save_svg(str(path), title=title)
    print(f"wrote {path}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(REPO / "docs" / "img"))
    ap.add_argument("--runs-dir", default=None)
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    runs_dir = Path(args.runs_dir or tempfile.mkdtemp(prefix="slurm-rl-shots-"))
    cli("launch", "configs/demo.yaml", "--name", "shots", "--detach", "--set", f"runs_dir={runs_dir}",
        "--set", "algorithm.steps=100000",
        # the SUSPECT view needs the 10-s silence window: with the process state on, a stopped
        # trainer is DEAD after 1 s, too soon to catch it suspect
        "--set", "recovery.process_state=false")
    run = RunDir(runs_dir / "shots")
    try:
        wait(lambda: (r := roles(run)) and all(x["state"] == "READY" for x in r.values())
             and read_status(run, n_events=0).get("committed", 0) >= 20, 300, "every role READY and 20 steps")
        cli("inject", str(run.path), "trainer/0", "--fault", "hang")
        wait(lambda: roles(run)["trainer/0"]["state"] == "SUSPECT", 30, "trainer/0 SUSPECT")
        time.sleep(3.0)
        shot(run, out / "status-suspect.svg", "slurm-rl status: trainer/0 hung (SIGSTOP), SUSPECT")
        wait(lambda: any(e["kind"] == "recovered" and e["slot"] == "trainer/0"
                         for e in read_status(run, n_events=30)["events"]), 60, "trainer/0 recovered")
        time.sleep(1.0)
        shot(run, out / "status-replaced.svg", "slurm-rl status: trainer/0 DEAD, restored on the warm spare")
        # a second fault for the plots: a rollout crash once the spare is back
        wait(lambda: roles(run).get("spare/0", {}).get("state") == "READY", 120, "spare/0 backfilled")
        time.sleep(8.0)
        cli("inject", str(run.path), "rollout/1", "--fault", "crash")
        wait(lambda: any(e["kind"] == "recovered" and e["slot"] == "rollout/1"
                         for e in read_status(run, n_events=30)["events"]), 60, "rollout/1 recovered")
        time.sleep(8.0)
    finally:
        cli("stop", str(run.path), check=False)
    cli("report", str(run.path), "--plot", str(out))
    rep = json.loads(cli("report", str(run.path), "--json"))
    print(f"run {run.path}: {rep['steps']} steps, ETTR {rep['ettr']:.3f}, faults {len(rep['faults'])}")


if __name__ == "__main__":
    main()
