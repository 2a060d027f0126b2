"""The soak's disk-full episode (bench/soak.py --disk-full, or `diskfull` in --episodes).

The run lives on a tmpfs of its own (mounting one needs root, as tests/test_checkpoint.py's full
checkpoint disk). The episode fills it with a ballast file until the kernel says ENOSPC: a real full
disk under the store, the logs, the checkpoints and the rollouts' ack journals. The controller must
stop itself cleanly: exit 75 (EX_TEMPFAIL), no traceback, and the run left resumable, while the roles
keep their work (a rollout whose ack journal is full stops as a fault, recovered after the resume).
Then the ballast goes, `slurm-rl resume` re-attaches, and the soak's invariants cover the rest.

The controller's exit code: a detached controller is re-parented when the CLI that started it exits;
the driver makes itself the child subreaper (prctl), so it is re-parented to the driver, which reaps
it and reads its status (and reaps every other orphan at once, as init would: a zombie still counts
as a process for `slurm-rl stop`). The driver's own subprocesses go through `run_own`, whose pids the
reaper leaves alone (their status is subprocess's).
"""

from __future__ import annotations

import ctypes
import errno
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from soak import Injection, Soak

EXIT_DISK_FULL = 75
PR_SET_CHILD_SUBREAPER = 36
OWN: set[int] = set()          # pids of the driver's own subprocesses, in flight


@dataclass
class DiskFull:
    episode: int
    controller_pid: int | None
    filled_mib: float = 0.0
    stop_s: float | None = None           # from the disk full to the controller gone
    exit_code: int | None = None          # the controller's, reaped by the driver
    event: bool = False                   # the disk_full event made it into the store
    run_state: str = ""                   # run_state once space was back, before the resume
    roles_kept: int = 0                   # role processes alive across the stop
    roles_before: int = 0
    resumed: bool = False
    error: str = ""


def unavailable(backend: str) -> str:
    """'' if the episode can be played here, else why not."""
    if backend != "local":
        return "the disk-full episode runs on the local backend only"
    if not sys.platform.startswith("linux"):
        return "the disk-full episode needs Linux (tmpfs, prctl)"
    if os.geteuid() != 0:
        return "the disk-full episode needs root (it mounts a tmpfs for the run)"
    return ""


def mount(path: Path, mib: int) -> None:
    path.mkdir(parents=True, exist_ok=True)
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={mib}m", "tmpfs", str(path)],
                         capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise SystemExit(f"cannot mount a tmpfs at {path}: {res.stderr.strip()}")


def umount(path: Path) -> None:
    subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)


def used_mib(path: Path) -> float:
    st = os.statvfs(path)
    return (st.f_blocks - st.f_bfree) * st.f_frsize / (1 << 20)


def run_own(argv: list[str], timeout: float, **kw: Any) -> subprocess.CompletedProcess[str]:
    """subprocess.run, the child's pid kept out of the reaper's way while it runs."""
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw) as p:
        OWN.add(p.pid)
        try:
            out, err = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.communicate()
            raise
        finally:
            OWN.discard(p.pid)
    return subprocess.CompletedProcess(argv, p.returncode, out, err)


def become_subreaper() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise SystemExit(f"prctl(PR_SET_CHILD_SUBREAPER): {os.strerror(ctypes.get_errno())}")


class Reaper:
    """Exit codes of the orphans re-parented to this process (controllers, roles of a killed one)."""

    def __init__(self) -> None:
        self.codes: dict[int, int] = {}

    def reap(self) -> None:
        import psutil

        try:
            children = psutil.Process().children()
        except psutil.Error:
            return
        for child in children:
            if child.pid in OWN:
                continue
            try:
                pid, status = os.waitpid(child.pid, os.WNOHANG)
            except ChildProcessError:
                continue
            if pid:
                self.codes[pid] = os.waitstatus_to_exitcode(status)

    def wait(self, pid: int, timeout: float) -> int | None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            self.reap()
            if pid in self.codes:
                return self.codes[pid]
            time.sleep(0.05)
        return None


def fill(path: Path) -> int:
    """Write a ballast file at `path` until the file system is full (chunks down to 512 bytes)."""
    written = 0
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        chunk = 1 << 20
        while chunk >= 512:
            try:
                n = os.write(fd, b"\0" * chunk)
                written += n
                if n < chunk:
                    chunk //= 2
            except OSError as e:
                if e.errno not in (errno.ENOSPC, errno.EDQUOT):
                    raise
                chunk //= 2
    finally:
        os.close(fd)
    return written


def play(soak: Soak, ep: int, cli: Callable[..., subprocess.CompletedProcess[str]], inj: Injection) -> DiskFull:
    """Fill the run's disk, see the controller stop itself, free the disk, resume (`inj`: its record)."""
    addr = soak.run.read_controller()
    pid = addr.pid if addr else soak.controller_pid
    rec = DiskFull(ep, pid)
    soak.disk_episodes.append(rec)
    soak.injections.append(inj)
    roles = _role_pids(soak)
    rec.roles_before = len(roles)
    ballast = soak.disk_root / "ballast"
    t0 = time.time()
    try:
        rec.filled_mib = fill(ballast) / (1 << 20)
        if pid:
            rec.exit_code = soak.reaper.wait(pid, timeout=60.0)
            rec.stop_s = round(time.time() - t0, 2) if rec.exit_code is not None else None
        if rec.exit_code is None:
            rec.error = f"the controller (pid {pid}) did not stop within 60 s of the disk filling"
    finally:
        ballast.unlink(missing_ok=True)
    rec.event = bool(soak.query("SELECT 1 FROM events WHERE kind='disk_full' AND t >= ? LIMIT 1", (t0 - 1,)))
    rows = soak.query("SELECT value FROM meta WHERE key='run_state'")
    rec.run_state = rows[0][0].strip('"') if rows else ""
    rec.roles_kept = sum(1 for p in roles if _alive(p))
    if rec.exit_code is None and pid and _alive(pid):
        inj.ok = False
        inj.error = rec.error
        soak.stuck.append(f"episode {ep}: {rec.error}")
        return rec
    res = cli("resume", str(soak.run.path), "--detach", timeout=120)
    rec.resumed = res.returncode == 0
    if not rec.resumed:
        rec.error = f"resume exited {res.returncode}: {(res.stdout + res.stderr)[-500:]}"
        soak.stuck.append(f"episode {ep}: {rec.error}")
    new = soak.run.read_controller()
    soak.controller_pid = new.pid if new else None
    print(f"  [{time.strftime('%H:%M:%S')}] ep {ep:3d} diskfull filled {rec.filled_mib:.0f} MiB; controller "
          f"stopped in {rec.stop_s}s with exit {rec.exit_code} (event {'yes' if rec.event else 'no'}, run_state "
          f"{rec.run_state}); {rec.roles_kept}/{rec.roles_before} role processes kept; resumed as pid "
          f"{soak.controller_pid}" + (f"  FAILED: {rec.error}" if rec.error else ""), flush=True)
    return rec


def _role_pids(soak: Soak) -> list[int]:
    """The run's role worker processes (their arguments name the run dir; the controller's too)."""
    import psutil

    root = str(soak.run.path)
    out = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        args = p.info["cmdline"] or []
        if "slurm_rl.roles.worker" in args and any(a == root or a.startswith(root + "/") for a in args):
            out.append(p.info["pid"])
    return out


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False
