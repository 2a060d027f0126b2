"""Record real Slurm output from the lab cluster into this directory (for the parser unit tests).

    bash scripts/slurm-lab/cluster-up.sh && python tests/slurm/data/record.py

Runs the scenarios below on the lab (about 100 s: a TIMEOUT needs --time=1 to expire, a crashed
node needs ~19 s to be declared down) and writes, for each capture, `<name>.txt` with the exact
stdout of the command slurm-rl issues (built by SlurmClient, so the samples cannot drift from the
commands), and `commands.txt` listing name -> command. Leaves the lab reset (nodes up, idle).
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))

from slurm_rl.slurm import parse  # noqa: E402
from slurm_rl.slurm.query import CommandResult, SlurmClient, subprocess_runner  # noqa: E402

DATA = Path(__file__).resolve().parent
LAB = Path(subprocess.run(["bash", "-c", "echo ${LAB:-${TMPDIR:-/tmp}/slurm-rl-lab}"],
                          capture_output=True, text=True, check=True).stdout.strip())
NODECTL = str(LAB / "nodectl.sh")
_commands: list[str] = []
_last: dict[str, CommandResult] = {}


def runner(argv: Sequence[str], *, timeout: float, env=None) -> CommandResult:
    res = subprocess_runner(argv, timeout=timeout, env=env)
    _last["r"] = res
    return res


client = SlurmClient(runner)


def save(name: str) -> str:
    res = _last["r"]
    (DATA / f"{name}.txt").write_text(res.stdout)
    _commands.append(f"{name}: {' '.join(res.argv)}")
    print(f"--- {name}: {' '.join(res.argv)}\n{res.stdout}", flush=True)
    return res.stdout


def sh(cmd: str) -> str:
    return subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, check=True).stdout.strip()


def sbatch(name: str, opts: str, wrap: str) -> str:
    return sh(f"sbatch --parsable -J slurm-rl/rec/{name}/0 -o /dev/null {opts} --wrap {wrap!r}").split(";")[0]


def state(job: str) -> str:
    recs = client.squeue([job])
    return recs[0].state.value if recs else "GONE"


def wait(pred, timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > end:
            raise SystemExit(f"timeout waiting for {what}")
        time.sleep(0.5)


def main() -> None:
    sh("scancel --user=root || true")
    jobs = {
        "running": sbatch("running", "-w n1", "sleep 300"),
        "completed": sbatch("completed", "-w n1", "true"),
        "exit3": sbatch("exit3", "-w n1", "exit 3"),
        "kill9": sbatch("kill9", "-w n1", "kill -9 $$"),
        "cancelled": sbatch("cancelled", "-w n1", "sleep 300"),
        "timeout": sbatch("timeout", "-w n1 --time=1", "sleep 300"),
        "draining": sbatch("draining", "-w n2", "sleep 300"),
        "nodefail": sbatch("nodefail", "-w n4 --no-requeue", "sleep 300"),
        # requeueable job on the node that will crash: with JobRequeue=1 Slurm requeues it
        "requeued": sbatch("requeued", "-x n1,n2,n3 --requeue", "sleep 300"),
    }
    het = DATA / ".het.sh"
    het.write_text("#!/bin/bash\n#SBATCH -J slurm-rl/rec/het/0 -o /dev/null -N1 -w n3\n#SBATCH hetjob\n"
                   "#SBATCH -N1 -w n2\nsrun --het-group=0 sleep 300 & srun --het-group=1 sleep 300 & wait\n")
    jobs["het"] = sh(f"sbatch --parsable {het}").split(";")[0].split("+")[0]
    het.unlink()
    ids = list(jobs.values())
    wait(lambda: all(state(jobs[k]) == "RUNNING" for k in ("running", "draining", "nodefail", "requeued", "het")),
         30, "jobs running")
    wait(lambda: all(state(jobs[k]) == "FAILED" for k in ("exit3", "kill9")), 30, "exit jobs")
    sh(f"scancel {jobs['cancelled']}")
    sh("scontrol update nodename=n2 state=drain reason='slurm-rl test: drain with a job'")
    sh("scontrol update nodename=n3 state=drain reason='maintenance | disk'")
    jobs["pending"] = sbatch("pending", "-w n2", "sleep 5")   # ReqNodeNotAvail on the draining node
    ids.append(jobs["pending"])
    time.sleep(2)
    client.squeue(ids)
    save("squeue_mixed")
    client.sinfo()
    save("sinfo_drain")
    # n3 has the het job: draining; release it so n3 becomes drained (idle+drain)
    sh(f"scancel {jobs['het']}")
    wait(lambda: any(r.name == "n3" and r.state == "idle+drain" for r in client.sinfo()), 30, "n3 drained")
    client.sinfo()
    save("sinfo_drained")

    t0 = time.monotonic()
    sh(f"{NODECTL} crash n4")
    seen_star = False
    while True:
        recs = {r.name: r for r in client.sinfo()}
        if "*" in recs["n4"].state_long and not seen_star and "down" not in recs["n4"].state:
            save("sinfo_not_responding")
            seen_star = True
        if recs["n4"].state_long == "down*":
            save("sinfo_down")
            break
        if time.monotonic() - t0 > 60:
            raise SystemExit("n4 never went down")
        time.sleep(0.5)
    print(f"n4 down after {time.monotonic() - t0:.1f} s", flush=True)
    wait(lambda: state(jobs["nodefail"]) == "NODE_FAIL", 30, "NODE_FAIL")
    time.sleep(1)
    client.squeue([jobs["requeued"]])
    save("squeue_requeued")
    wait(lambda: state(jobs["timeout"]) == "TIMEOUT", 150, "TIMEOUT")
    client.squeue(ids)
    save("squeue_final")
    time.sleep(2)   # sacct lags slurmctld by a fraction of a second
    client.sacct(ids)
    save("sacct_final")
    # steps included (no --allocations): the parser must skip `12.batch`/`12.0` lines
    client.run(["sacct", "--parsable2", f"--jobs={','.join(ids)}", f"--format={','.join(parse.SACCT_FIELDS)}"])
    save("sacct_with_steps")
    client.partitions()
    save("sinfo_partitions")

    # reset the lab
    sh("scancel --user=root || true")
    sh(f"{NODECTL} start n4")
    sh("scontrol update nodename=n2,n3 state=resume")
    wait(lambda: all(r.state == "idle" for r in client.sinfo()), 60, "all idle")
    (DATA / "commands.txt").write_text(
        "# Captured by tests/slurm/data/record.py on the lab cluster (Slurm "
        + sh("sinfo --version") + ").\n# Job ids per case: "
        + " ".join(f"{k}={v}" for k, v in jobs.items()) + "\n" + "\n".join(_commands) + "\n")
    print("jobs:", jobs)


if __name__ == "__main__":
    main()
