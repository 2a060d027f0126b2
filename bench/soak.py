"""Soak: one long run under a seeded schedule of many faults of every kind, then its invariants.

    python bench/soak.py                         # 60 faults on the local backend (~15 min on 2 cores)
    python bench/soak.py --faults 12 --seed 3    # a short one (what tests/test_soak.py runs)
    python bench/soak.py --backend slurm         # on the local Slurm lab (scripts/slurm-lab, root)

The driver launches a run (hf engine, small model) and injects faults through the run's control
plane (what `slurm-rl inject` does), one episode at a time, each drawn from a seeded generator:

  single     one fault: crash, hang, exit:N, node-down or drain, into the trainer, a rollout or a spare
  pair       the trainer and a rollout at the same instant (two requests, a few ms apart)
  recovery   a fault, then a second one into the replacement while it is still starting/loading
  controller a fault, then the controller SIGKILLed while that recovery is under way, and after
             0.5-3 s (the roles carry on without it) `slurm-rl resume`
  diskfull   (--disk-full, root, local backend: the run on a tmpfs of its own) the disk filled until
             ENOSPC; the controller must stop itself (exit 75, run resumable); space freed, `resume`
             (bench/soak_disk.py)

Fault kinds come from a shuffled deck, so every kind is hit about equally often. Between
episodes it waits until every fault is recovered (or gives up after --settle-timeout and says
so), then a random 0.2-4 s so faults land in every phase. A drained node is resumed once its role
has moved (what an operator does); a local node-down heals after `local.node_down_s`.

Meanwhile a sampler records, every 0.25 s, the committed step and the trainer's step (from the
state store) and the controller's RSS, and every 5 s how long the controller takes to answer a
status request. After the last episode the run is stopped with `slurm-rl stop`, and checked:

  I1 no trajectory lost         report: trajectories.lost == 0, groups.lost == 0, the accounting identity
  I2 each group consumed once   every kept step consumed exactly its n_groups groups, no group twice;
                                every prompt item done at most once, every done item has its one group
  I3 steps never go back        committed never decreases; the trainer's step never drops below a
                                committed step seen before; kept steps are 1..N, each exactly once
  I4 nothing left after stop    no process of the run, every job record terminal (Slurm: squeue empty)
  I5 controller memory flat     median RSS of the last quarter vs the first (after start-up)
  I6 every fault recovered      every fault row has t_recovered; no full restart; the run was not failed
  I7 store intact               PRAGMA integrity_check == ok
  I8 disk full, clean stop      (diskfull episodes) each time the controller exited 75 on its own, and resumed

It prints the fault count by kind, each invariant with PASS/FAIL and its figures, and the
recovery time distribution (min/median/p90/max per role and kind, from `slurm-rl report --json`).
Exit code 0 when every invariant passed, 1 otherwise. `--out FILE` writes everything as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import soak_disk
from soak_audit import KINDS, audit, distribution, print_summary

from slurm_rl import protocol as P
from slurm_rl.controlplane import ControlClient
from slurm_rl.errors import SlurmRLError
from slurm_rl.rundir import RunDir

EXIT_CODES = (0, 1, 2, 3, 42, 127, 137, 255)
# Small and fast roles (tests/runs.FAST), long enough never to finish, recovery budgets out of the way
# (the soak is about recovering every time, not escalating), tight phase timeouts so a hang costs seconds.
BASE_SETS = (
    "rollout.engine=hf", "model.hidden=64", "model.heads=2", "model.kv_heads=1", "algorithm.prompts_per_step=8",
    "rollout.prompts_per_batch=4", "algorithm.steps=10000000", "rollout.replicas=2", "spare.replicas=1",
    "recovery.restart_budget=100000", "recovery.exclude_node_after=100000", "recovery.max_full_restarts=100000",
    "trainer.checkpoint_every=10",
)
PHASE_TIMEOUT_S = 8.0
TIMEOUT_SETS = tuple(f"recovery.phase_timeouts.{p}={PHASE_TIMEOUT_S:g}" for p in (
    "generating", "idle", "waiting_for_data", "syncing_weights", "stepping", "publishing", "checkpointing")) + (
    "recovery.phase_timeouts.loading=60", "recovery.phase_timeouts.restoring=60")
LOCAL_SETS = ("local.nodes=6", "local.node_down_s=4")
SLURM_SETS = ("controller.host=127.0.0.1", "slurm.cpus_per_task=2")


@dataclass
class Injection:
    episode: int
    episode_kind: str
    t: float
    slot: str
    fault: str                       # crash | hang | exit | node-down | drain
    exit_code: int | None = None
    ok: bool = True
    error: str = ""
    node: str | None = None
    target_state: str = ""           # the slot's state and phase when hit
    target_phase: str = ""
    second: bool = False             # the second fault of a pair / recovery episode


@dataclass
class Sample:
    t: float
    committed: int
    step: int
    rss: int


@dataclass
class Soak:
    run: RunDir
    backend: str
    rng: random.Random
    n_faults: int
    settle_timeout: float
    overlap: bool = False            # next episode as soon as faults are closed, not when every slot is back
    forced: list[str] = field(default_factory=list)    # episode kinds to play first
    injections: list[Injection] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)
    status_ms: list[tuple[float, float]] = field(default_factory=list)
    stuck: list[str] = field(default_factory=list)
    drained: dict[str, float] = field(default_factory=dict)       # node -> when drained (awaiting resume)
    downed: dict[str, float] = field(default_factory=dict)        # Slurm: crashed lab node -> when
    controller_pid: int | None = None
    disk_root: Path | None = None    # the tmpfs the run lives on (diskfull episodes)
    reaper: soak_disk.Reaper | None = None
    disk_episodes: list[soak_disk.DiskFull] = field(default_factory=list)
    _deck: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    # ------------------------------------------------------------------ run plumbing
    def client(self) -> ControlClient:
        return ControlClient(self.run, "soak")

    def status(self, c: ControlClient) -> dict[str, Any]:
        reply = c.request(P.StatusRequest(events=0), timeout_s=10.0, attempts=3)
        return json.loads(reply.payload)

    def query(self, sql: str, args: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        conn = sqlite3.connect(f"file:{self.run.db}?mode=ro", uri=True, timeout=10)
        conn.row_factory = sqlite3.Row
        try:
            return conn.execute(sql, args).fetchall()
        finally:
            conn.close()

    def open_faults(self) -> int:
        return int(self.query("SELECT COUNT(*) FROM faults WHERE t_recovered IS NULL")[0][0])

    def draw_kind(self, exclude: tuple[str, ...] = ()) -> str:
        for _ in range(len(KINDS) * 2):
            if not self._deck:
                self._deck = list(KINDS)
                self.rng.shuffle(self._deck)
            k = self._deck.pop()
            if k not in exclude:
                return k
            self._deck.insert(0, k)          # keep it for a later draw
        return "crash"

    # ------------------------------------------------------------------ sampling
    def sampler(self) -> None:
        c = self.client()
        proc, pid = None, None
        last_status = 0.0
        conn = sqlite3.connect(f"file:{self.run.db}?mode=ro", uri=True, timeout=10)
        try:
            while not self._stop.wait(0.25):
                if self.reaper is not None:
                    self.reaper.reap()
                try:
                    if self.controller_pid != pid:          # a resumed controller: follow the new process
                        pid = self.controller_pid
                        proc = psutil.Process(pid) if pid else None
                    meta = dict(conn.execute("SELECT key, value FROM meta WHERE key IN ('committed', "
                                             "'trainer_version')").fetchall())
                    rss = proc.memory_info().rss if proc else 0
                except (sqlite3.Error, psutil.Error):
                    continue
                self.samples.append(Sample(time.time(), int(json.loads(meta.get("committed", "0"))),
                                           int(json.loads(meta.get("trainer_version", "0"))), rss))
                if time.time() - last_status > 5.0:
                    last_status = time.time()
                    t0 = time.perf_counter()
                    try:
                        c.request(P.StatusRequest(events=10), timeout_s=10.0, attempts=1)
                        self.status_ms.append((time.time(), 1000 * (time.perf_counter() - t0)))
                    except SlurmRLError:
                        pass
        finally:
            conn.close()
            c.close()

    # ------------------------------------------------------------------ injecting
    def inject(self, c: ControlClient, ep: int, ep_kind: str, slot: str, fault: str, st: dict[str, Any],
               *, second: bool = False) -> Injection:
        role = next((r for r in st["roles"] if r["slot"] == slot), {})
        code = self.rng.choice(EXIT_CODES) if fault == "exit" else None
        inj = Injection(ep, ep_kind, time.time(), slot, fault, code, target_state=role.get("state", ""),
                        target_phase=role.get("phase") or "", second=second)
        try:
            reply = c.request(P.InjectRequest(slot=slot, fault=fault, exit_code=code if code is not None else 1),
                              timeout_s=10.0, attempts=2)
        except SlurmRLError as e:
            reply = P.Reply(ok=False, error=str(e))
        inj.ok = reply.ok
        if reply.ok:
            inj.node = json.loads(reply.payload or b"{}").get("node")
            if fault == "drain" and inj.node:
                self.drained[inj.node] = time.time()
            if fault == "node-down" and inj.node and self.backend == "slurm":
                self.downed[inj.node] = time.time()
        else:
            inj.error = reply.error
        self.injections.append(inj)
        print(f"  [{time.strftime('%H:%M:%S')}] ep {ep:3d} {ep_kind:8s} {fault}{'' if code is None else ':' + str(code)}"
              f" -> {slot} ({inj.target_state}/{inj.target_phase})" + ("" if inj.ok else f"  REFUSED: {inj.error}"),
              flush=True)
        return inj

    def ready_slots(self, st: dict[str, Any], role: str | None = None) -> list[str]:
        return [r["slot"] for r in st["roles"] if r["state"] == "READY" and r["job_id"]
                and (role is None or r["role"] == role)]

    def pick(self, st: dict[str, Any], fault: str) -> str | None:
        roles = ["trainer", "rollout"] if fault == "drain" else ["trainer", "rollout", "rollout", "spare"]
        role = self.rng.choice(roles)
        cands = self.ready_slots(st, role) or [s for s in self.ready_slots(st) if fault != "drain"
                                               or not s.startswith("spare")]
        return self.rng.choice(sorted(cands)) if cands else None

    def episode(self, c: ControlClient, ep: int) -> None:
        st = self.status(c)
        kind = self.rng.choices(["single", "pair", "recovery", "controller", "diskfull"],
                                weights=[6, 2, 2, 1, 1 if self.disk_root else 0])[0]
        if self.forced:
            kind = self.forced.pop(0)
        if kind == "diskfull":
            soak_disk.play(self, ep, cli, Injection(ep, kind, time.time(), "controller", "disk-full"))
            return
        if kind == "controller":
            # a fault, then the controller killed (SIGKILL) while that recovery is under way, then resumed
            fault = self.draw_kind(exclude=("drain",))
            slot = self.pick(st, fault)
            if slot is not None and self.inject(c, ep, kind, slot, fault, st).ok:
                self.wait_for_detection(timeout=15.0)
                time.sleep(0.5 * self.rng.random())
                self.kill_and_resume_controller(ep)
                return
            kind = "single"
        if kind == "pair":
            rollouts = self.ready_slots(st, "rollout")
            if "trainer/0" in self.ready_slots(st) and rollouts:
                k1 = self.draw_kind()
                k2 = self.draw_kind()        # two drains at once: the second moves through an extra spare
                r = self.rng.choice(sorted(rollouts))
                self.inject(c, ep, kind, "trainer/0", k1, st)
                self.inject(c, ep, kind, r, k2, st, second=True)
                return
            kind = "single"
        if kind == "recovery":
            first = self.draw_kind(exclude=("drain",))
            slot = self.pick(st, first)
            if slot is None or slot.startswith("spare"):
                slot = "trainer/0" if self.rng.random() < 0.5 else (self.ready_slots(st, "rollout") or [None])[0]
            if slot is not None:
                self.inject(c, ep, kind, slot, first, st)
                target = self.wait_for_replacement(c, slot)
                if target is not None:
                    st = self.status(c)
                    self.inject(c, ep, kind, target, self.draw_kind(exclude=("drain",)), st, second=True)
                return
            kind = "single"
        fault = self.draw_kind()
        slot = self.pick(st, fault)
        if slot is not None:
            self.inject(c, ep, kind, slot, fault, st)

    def wait_for_detection(self, timeout: float) -> bool:
        """Until some fault is detected and not yet recovered (a recovery under way)."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.query("SELECT 1 FROM faults WHERE t_detect IS NOT NULL AND t_recovered IS NULL LIMIT 1"):
                return True
            time.sleep(0.02)
        return False

    def kill_and_resume_controller(self, ep: int) -> None:
        """SIGKILL the controller mid-recovery; after 0.5-3 s (the roles carry on alone) `slurm-rl resume`."""
        addr = self.run.read_controller()
        inj = Injection(ep, "controller", time.time(), "controller", "controller-kill", second=True)
        self.injections.append(inj)
        open_now = self.open_faults()
        try:
            pid = addr.pid if addr else self.controller_pid
            assert pid, "no controller pid"
            proc = psutil.Process(pid)
            proc.kill()
            proc.wait(timeout=30)
        except (AssertionError, psutil.Error) as e:
            inj.ok, inj.error = False, f"{e.__class__.__name__}: {e}"
            return
        time.sleep(0.5 + 2.5 * self.rng.random())
        res = cli("resume", str(self.run.path), "--detach", timeout=120)
        if res.returncode != 0:
            inj.ok, inj.error = False, f"resume exited {res.returncode}: {(res.stdout + res.stderr)[-500:]}"
            self.stuck.append(f"episode {ep}: {inj.error}")
        new = self.run.read_controller()
        self.controller_pid = new.pid if new else None
        print(f"  [{time.strftime('%H:%M:%S')}] ep {ep:3d} controller killed with {open_now} fault(s) open; "
              f"resumed as pid {self.controller_pid}" + ("" if inj.ok else f"  FAILED: {inj.error}"), flush=True)

    def wait_for_replacement(self, c: ControlClient, hit: str, timeout: float = 60.0) -> str | None:
        """The slot now starting in place of what was hit: the hit slot itself (a promoted standby
        restoring, or a new job loading), else a backfill (a spare loading). None if none shows up."""
        deadline = time.time() + timeout
        want_cold = self.rng.random() < 0.6          # most often a process still loading, else whatever starts
        seen_dead = False
        while time.time() < deadline:
            st = self.status(c)
            by = {r["slot"]: r for r in st["roles"]}
            me = by.get(hit, {})
            seen_dead = seen_dead or me.get("state") in ("DEAD", "PENDING", "STARTING")
            starting = [r["slot"] for r in st["roles"] if r["job_id"] and (
                r["state"] == "STARTING" or (r["state"] == "PENDING" and r["job_state"] in ("RUNNING", "PENDING")))]
            if seen_dead and starting:
                # rather a process still loading (or not even connected) than a warm standby just promoted
                cold = [s for s in starting if by[s]["state"] == "PENDING" or by[s]["phase"] in ("loading", "restoring")]
                if cold or not want_cold or time.time() > deadline - timeout / 2:
                    return self.rng.choice(sorted(cold or starting))
            time.sleep(0.1)
        return None

    # ------------------------------------------------------------------ between episodes
    def heal(self) -> None:
        """Operator work: resume drained nodes once their roles have moved; restart crashed lab nodes."""
        if not self.drained and not self.downed:
            return
        roles_on = Counter(r["node"] for r in self.query("SELECT node, state FROM roles")
                           if r["state"] in ("READY", "STARTING", "PENDING", "SUSPECT", "MOVING"))
        open_drains = {r["node"] for r in self.query("SELECT node FROM faults WHERE kind='drain' AND "
                                                     "t_recovered IS NULL")}
        for node, t in list(self.drained.items()):
            if node not in open_drains or time.time() - t > 90:
                self._resume(node)
                del self.drained[node]
        for node, t in list(self.downed.items()):
            if time.time() - t > 5 and not roles_on.get(node):
                lab = os.environ.get("SLURM_RL_LAB")
                if lab:     # down, start, resume: jobs cancelled while it was dead must not hold its CPUs
                    subprocess.run([f"{lab}/nodectl.sh", "repair", node], capture_output=True, timeout=60, check=False)
                else:
                    self._resume(node)
                del self.downed[node]

    def _resume(self, node: str) -> None:
        if self.backend == "local":
            from slurm_rl.backends.local import LocalBackend
            from slurm_rl.config import LocalConfig

            LocalBackend(self.run.path, LocalConfig()).resume_node(node)    # what `scontrol ... resume` does
        else:
            subprocess.run(["scontrol", "update", f"nodename={node}", "state=resume"], capture_output=True,
                           timeout=30, check=False)

    def settle(self, c: ControlClient, what: str) -> float:
        t0 = time.time()
        deadline = t0 + self.settle_timeout
        while time.time() < deadline:
            self.heal()
            try:
                st = self.status(c)
            except SlurmRLError:
                time.sleep(0.5)
                continue
            ready = {r["slot"] for r in st["roles"] if r["state"] == "READY"}
            wanted = {r["slot"] for r in st["roles"] if r["state"] != "STOPPED"}
            back = "trainer/0" in ready if self.overlap else wanted <= ready
            if self.open_faults() == 0 and back and st["state"] == "running" and not self.drained:
                return time.time() - t0
            time.sleep(0.25)
        open_rows = self.query("SELECT id, slot, kind FROM faults WHERE t_recovered IS NULL")
        self.stuck.append(f"{what}: open after {self.settle_timeout:.0f}s: "
                          + ", ".join(f"#{r['id']} {r['slot']} {r['kind']}" for r in open_rows))
        print(f"  !! {self.stuck[-1]}", flush=True)
        return time.time() - t0

    def drive(self) -> None:
        c = self.client()
        try:
            ep = 0
            while sum(1 for i in self.injections if i.ok and i.fault not in ("controller-kill", "disk-full")) \
                    < self.n_faults:
                ep += 1
                self.settle(c, f"before episode {ep}")
                time.sleep(self.rng.choice([0.2, 0.5, 1.0, 2.0, 4.0]) * self.rng.random() + 0.1)
                self.episode(c, ep)
                if ep > self.n_faults * 3:
                    print("  !! too many refused injections; giving up", flush=True)
                    break
            self.settle(c, "after the last episode")
            time.sleep(5.0)                       # some plain training at the end
        finally:
            c.close()


# ====================================================================== launch, stop, audit
def cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    # run_own: the orphan reaper of the diskfull episodes must not take this child's status
    return soak_disk.run_own([sys.executable, "-m", "slurm_rl.cli", *args], timeout, cwd=str(REPO))


def launch(runs_dir: Path, name: str, backend: str, seed: int, extra: list[str]) -> RunDir:
    sets = list(BASE_SETS + TIMEOUT_SETS + (LOCAL_SETS if backend == "local" else SLURM_SETS)) + [f"seed={seed}"] + extra
    args = ["launch", "configs/demo.yaml", "--backend", backend, "--name", name, "--detach",
            "--set", f"runs_dir={runs_dir}"]
    for s in sets:
        args += ["--set", s]
    res = cli(*args)
    if res.returncode != 0:
        raise SystemExit(f"launch failed ({res.returncode}):\n{res.stdout}\n{res.stderr}")
    return RunDir(runs_dir / name)


def wait_ready(run: RunDir, timeout: float = 240) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            conn = sqlite3.connect(f"file:{run.db}?mode=ro", uri=True, timeout=10)
            try:
                states = [r[0] for r in conn.execute("SELECT state FROM roles")]
                row = conn.execute("SELECT value FROM meta WHERE key='committed'").fetchone()
            finally:
                conn.close()
            if states and all(s == "READY" for s in states) and row and int(json.loads(row[0])) >= 1:
                return
        except sqlite3.Error:
            pass
        time.sleep(0.5)
    raise SystemExit(f"the run did not get ready within {timeout:.0f}s; see {run.logs}")


def run_processes(run: RunDir) -> list[str]:
    out = []
    root = str(run.path)
    for p in psutil.process_iter(["pid", "cmdline", "status"]):
        try:
            args = p.info["cmdline"] or []
            # an argument that is the run directory or inside it (not a substring: this driver's own
            # `--out RUNS/soak.json` is not a process of the run RUNS/soak)
            mine = any(a == root or a.startswith(root + "/") for a in args)
            if mine and p.info["status"] != psutil.STATUS_ZOMBIE and p.info["pid"] != os.getpid():
                out.append(f"{p.info['pid']}: {' '.join(args)[:120]}")
        except psutil.Error:
            continue
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--faults", type=int, default=60, help="injections to make (default 60)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--backend", choices=["local", "slurm"], default="local")
    ap.add_argument("--runs-dir", help="where the run goes (default: a new temporary directory)")
    ap.add_argument("--name", default="soak")
    ap.add_argument("--settle-timeout", type=float, default=180.0,
                    help="seconds to wait for every fault to be recovered before the next episode")
    ap.add_argument("--overlap", action="store_true",
                    help="start the next episode once faults are closed, without waiting for every slot (backfills "
                         "included) to be back: more stress, and a trainer fault may then hit while the new trainer "
                         "is the only holder of the committed step (outside the guarantee, see docs/failure-model.md)")
    ap.add_argument("--episodes", default="", metavar="KIND,KIND",
                    help="episode kinds to play first (single, pair, recovery, controller, diskfull), then random ones")
    ap.add_argument("--disk-full", action="store_true",
                    help="diskfull episodes too (implied by diskfull in --episodes): needs root, local backend")
    ap.add_argument("--disk-mib", type=int, default=1024, help="size of the run's tmpfs for --disk-full (MiB)")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                    help="extra config override (repeatable)")
    ap.add_argument("--out", help="write the results as JSON here")
    ap.add_argument("--keep", action="store_true", help="keep the run directory (default: kept only on failure)")
    args = ap.parse_args(argv)

    if args.backend == "slurm" and not os.environ.get("SLURM_RL_LAB"):
        lab = Path(os.environ.get("TMPDIR") or "/tmp") / "slurm-rl-lab"
        if (lab / "nodectl.sh").exists():
            os.environ["SLURM_RL_LAB"] = str(lab)
    forced = [e.strip() for e in args.episodes.split(",") if e.strip()]
    disk = args.disk_full or "diskfull" in forced
    if disk and (why := soak_disk.unavailable(args.backend)):
        raise SystemExit(why)
    runs_dir = Path(args.runs_dir) if args.runs_dir else Path(tempfile.mkdtemp(prefix="slurm-rl-soak-"))
    run_root = runs_dir
    if disk:
        soak_disk.become_subreaper()       # before the launch: its controller is re-parented to this process
        run_root = runs_dir / "disk"
        soak_disk.mount(run_root, args.disk_mib)
    t_start = time.time()
    print(f"soak: {args.faults} faults, seed {args.seed}, backend {args.backend}, runs dir {run_root}"
          + (f" (a {args.disk_mib} MiB tmpfs)" if disk else ""), flush=True)
    run = launch(run_root, args.name, args.backend, args.seed, args.sets)
    soak = Soak(run=run, backend=args.backend, rng=random.Random(args.seed), n_faults=args.faults,
                settle_timeout=args.settle_timeout, overlap=args.overlap, forced=forced,
                disk_root=run_root if disk else None, reaper=soak_disk.Reaper() if disk else None)
    ok = False
    try:
        addr = run.read_controller()
        soak.controller_pid = addr.pid if addr else None
        sampler = threading.Thread(target=soak.sampler, name="sampler", daemon=True)
        sampler.start()
        wait_ready(run)
        t_ready = time.time()
        print(f"ready after {t_ready - t_start:.0f}s; injecting", flush=True)
        soak.drive()
        t_end = time.time()
        stop = cli("stop", str(run.path), "--timeout", "120")
        soak._stop.set()
        sampler.join(timeout=10)
        time.sleep(1.0)
        leftovers = run_processes(run)
        rep_proc = cli("report", str(run.path), "--json")
        rep = json.loads(rep_proc.stdout)
        results = audit(soak, rep, leftovers, t_ready)
        if stop.returncode != 0:
            results["I4 no job or process left after stop"]["ok"] = False
            results["I4 no job or process left after stop"]["detail"] += f"; `slurm-rl stop` exited {stop.returncode}"
        ok = all(r["ok"] for r in results.values())
        dist = distribution(rep)
        print_summary(soak, rep, results, dist, t_ready, t_end)
        if args.out:
            Path(args.out).write_text(json.dumps({
                "args": vars(args), "run": str(run.path), "ok": ok, "wall_s": round(t_end - t_ready, 1),
                "injections": [asdict(i) for i in soak.injections], "stuck": soak.stuck,
                "invariants": results, "recovery": dist, "faults": rep["faults"],
                "disk_full": [asdict(d) for d in soak.disk_episodes],
                "report": {k: rep[k] for k in ("steps", "steps_computed", "ettr", "badput", "trajectories",
                                               "groups", "restarts", "state", "end_reason")},
                "samples": [asdict(s) for s in soak.samples[:: max(1, len(soak.samples) // 2000)]],
                "status_ms": soak.status_ms,
            }, indent=1))
            print(f"results written to {args.out}")
    finally:
        soak._stop.set()
        if run_processes(run):
            cli("stop", str(run.path), "--timeout", "60")
            for p in psutil.process_iter(["cmdline"]):
                try:
                    if str(run.path) in " ".join(p.info["cmdline"] or []):
                        p.kill()
                except psutil.Error:
                    pass
        if disk:
            print(f"run tmpfs: {soak_disk.used_mib(run_root):.0f} of {args.disk_mib} MiB used at the end")
        if ok and not args.keep:
            if disk:
                soak_disk.umount(run_root)
            if not args.runs_dir:
                shutil.rmtree(runs_dir, ignore_errors=True)
        elif not ok:
            print(f"run kept for inspection: {run.path}" + (" (on a tmpfs: `umount -l` it when done)" if disk else ""))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
