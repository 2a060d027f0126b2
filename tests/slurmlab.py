"""pytest fixtures for the local Slurm lab cluster (scripts/slurm-lab/).

Tests that need Slurm are marked `@pytest.mark.slurm` and take the session-scoped `slurm_cluster`
fixture. It runs scripts/slurm-lab/cluster-up.sh (idempotent: ~0.1 s when the lab is already
healthy, ~5 s to start it, plus apt-get on a fresh machine), and tears the lab down at the end of
the session if it started it (set SLURM_RL_KEEP_CLUSTER=1 to keep it up).

Slurm tests never skip on their own: without root, or when the lab cannot start, they FAIL with
the reason. A developer without root opts out explicitly with SLURM_RL_NO_SLURM=1, which skips
every test marked `slurm`.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "scripts" / "slurm-lab"
NO_SLURM_ENV = "SLURM_RL_NO_SLURM"
KEEP_ENV = "SLURM_RL_KEEP_CLUSTER"

__all__ = ["SlurmLab", "pytest_collection_modifyitems", "slurm_cluster", "slurm_lab_dir"]


def _lab_dir() -> Path:
    return Path(os.environ.get("LAB") or Path(os.environ.get("TMPDIR") or "/tmp") / "slurm-rl-lab")


def _sh(argv: list[str], *, timeout: float = 60, check: bool = True, env: dict[str, str] | None = None
        ) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False,
                         env=env, stdin=subprocess.DEVNULL)
    if check and res.returncode != 0:
        raise RuntimeError(f"`{' '.join(argv)}` exited {res.returncode}:\n{res.stdout}\n{res.stderr}")
    return res


def _alive(pid: int) -> bool:
    """Running and not a zombie (the VM's PID 1 reaps orphans late)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


@dataclasses.dataclass
class SlurmLab:
    """The running lab: its directory, its nodes, node fault injection and a reset between tests."""

    lab_dir: Path
    nodes: tuple[str, ...]
    started_here: bool
    bringup_s: float

    def nodectl(self, cmd: str, node: str) -> str:
        """Run `nodectl.sh CMD NODE` (start, crash, stop, kill-slurmd, restart-slurmd, pids, is-up)."""
        return _sh([str(self.lab_dir / "nodectl.sh"), cmd, node], check=cmd != "is-up").stdout

    def node_states(self) -> dict[str, str]:
        """Node name -> sinfo long state (`idle`, `mixed`, `drained`, `down*`, ...)."""
        out = _sh(["sinfo", "--noheader", "--Node", "--format=%N %T"]).stdout
        return dict(line.split(None, 1) for line in out.splitlines() if line.strip())

    def wait_idle(self, timeout: float = 60) -> None:
        """Until every node is idle (no jobs, not drained/down)."""
        end = time.monotonic() + timeout
        while True:
            states = self.node_states()
            if len(states) >= len(self.nodes) and all(s == "idle" for s in states.values()):
                return
            if time.monotonic() > end:
                raise RuntimeError(f"lab nodes not idle after {timeout:.0f} s: {states}")
            time.sleep(0.3)

    def nodes_up(self) -> set[str]:
        """Nodes whose slurmd runs. One pass over /proc (nodectl.sh is-up scans it once per node)."""
        env = dict(line.split("=", 1) for line in (self.lab_dir / "lab.env").read_text().split() if "=" in line)
        run = self.lab_dir / "run"
        slurmd_ns: dict[str, int] = {}     # pid-namespace link -> host pid, of every live slurmd
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                if (proc / "comm").read_text().strip() == "slurmd" and _alive(int(proc.name)):
                    slurmd_ns[os.readlink(proc / "ns" / "pid")] = int(proc.name)
            except OSError:
                continue
        up = set()
        for node in self.nodes:
            try:
                if env.get("NODE_NS") == "1":
                    init_file = run / f"node-{node}.init"
                    if not init_file.exists():       # nodectl.sh finds the namespace from its processes
                        if _sh([str(self.lab_dir / "nodectl.sh"), "is-up", node], check=False).returncode == 0:
                            up.add(node)
                        continue
                    init = int(init_file.read_text())
                    if _alive(init) and os.readlink(f"/proc/{init}/ns/pid") in slurmd_ns:
                        up.add(node)
                elif _alive(int((run / f"slurmd-{node}.pid").read_text())):
                    up.add(node)
            except (OSError, ValueError):
                continue
        return up

    def reset(self) -> None:
        """Cancel every job, restart crashed nodes, resume drained/down ones, wait until all idle."""
        _sh(["scancel", "--user", "root"], check=False)
        up = self.nodes_up()
        for node in self.nodes:
            if node not in up:
                self.nodectl("repair", node)   # down (ends jobs left COMPLETING), start, resume
        bad = [n for n, s in self.node_states().items()
               if any(w in s for w in ("drain", "down", "fail", "*"))]
        if bad:
            _sh(["scontrol", "update", f"nodename={','.join(bad)}", "state=resume"], check=False)
        self.wait_idle()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """SLURM_RL_NO_SLURM=1 skips the `slurm` tests (developers without root); CI never sets it."""
    if os.environ.get(NO_SLURM_ENV) != "1":
        return
    skip = pytest.mark.skip(reason=f"{NO_SLURM_ENV}=1: Slurm lab tests opted out")
    for item in items:
        if item.get_closest_marker("slurm") is not None:   # not item.keywords: it holds dir names too
            item.add_marker(skip)


@pytest.fixture(scope="session")
def slurm_lab_dir() -> Path:
    """The lab directory the fixtures use (LAB env, default $TMPDIR/slurm-rl-lab)."""
    return _lab_dir()


@pytest.fixture(scope="session")
def slurm_cluster(slurm_lab_dir: Path) -> Iterator[SlurmLab]:
    """The lab cluster, up and idle; torn down at session end if this session started it."""
    if os.geteuid() != 0:
        pytest.fail("Slurm lab tests need root to start the lab cluster (scripts/slurm-lab/cluster-up.sh). "
                    f"Run pytest as root, or set {NO_SLURM_ENV}=1 to skip the tests marked `slurm`.",
                    pytrace=False)
    env = dict(os.environ, LAB=str(slurm_lab_dir))
    t0 = time.monotonic()
    try:
        res = _sh(["bash", str(SCRIPTS / "cluster-up.sh")], timeout=600, check=False, env=env)
    except subprocess.TimeoutExpired:
        pytest.fail("scripts/slurm-lab/cluster-up.sh did not finish within 600 s", pytrace=False)
    if res.returncode != 0:
        pytest.fail(f"the Slurm lab cluster could not start (scripts/slurm-lab/cluster-up.sh exited "
                    f"{res.returncode}; logs in {slurm_lab_dir}/log):\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}",
                    pytrace=False)
    bringup = time.monotonic() - t0
    started = "already up and healthy" not in res.stdout
    nodes_txt = _sh(["sinfo", "--noheader", "--Node", "--format=%N"]).stdout
    lab = SlurmLab(lab_dir=slurm_lab_dir, nodes=tuple(sorted(set(nodes_txt.split()), key=lambda n: (len(n), n))),
                   started_here=started, bringup_s=bringup)
    old = os.environ.get("SLURM_RL_LAB")
    os.environ["SLURM_RL_LAB"] = str(slurm_lab_dir)   # SlurmBackend: node-down = nodectl.sh crash
    try:
        lab.reset()
        yield lab
    finally:
        if old is None:
            os.environ.pop("SLURM_RL_LAB", None)
        else:
            os.environ["SLURM_RL_LAB"] = old
        if started and os.environ.get(KEEP_ENV) != "1":
            _sh(["bash", str(SCRIPTS / "cluster-down.sh")], timeout=120, check=False, env=env)
        else:
            lab.reset()
