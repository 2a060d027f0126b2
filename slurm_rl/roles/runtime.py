"""What every role process has: identity, controller connection, heartbeats, commands, weights.

The heartbeat thread runs beside the role's work loop, carrying the current phase and a progress
counter, so a rollout waiting for prompts or a trainer writing a checkpoint still looks alive. Long
calls (a generate of thousands of tokens, a trainer step of many micro-batches, a weight pull) move
the counter while they run (`advance`), so the controller's no-progress rule (the phase timeout)
stays short for a wedged loop and never fires on a long healthy one.
Commands from the controller (assign, become, stop, exit) arrive in any reply and are queued
for the work loop; `exit` (an injected fault) ends the process at once.

Every role serves the weight version it holds on its own weight server, so any holder can feed
a newcomer (relay). The same listening port is the controller's liveness probe target; a second
port (slurm_rl.liveness) holds one idle connection from the controller, whose end is the crash signal.
"""

from __future__ import annotations

import logging
import os
import queue
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from slurm_rl import protocol as P
from slurm_rl.config import BackendKind, RunConfig
from slurm_rl.controlplane import ControlClient
from slurm_rl.errors import EnvironmentProblem, ProtocolError, SyncError
from slurm_rl.liveness import LivenessListener
from slurm_rl.rl.dist import RankInfo
from slurm_rl.rundir import RunDir
from slurm_rl.states import Phase
from slurm_rl.sync import BandwidthMeter, Parts, WeightServer, WeightSet, choose_address, host_id, pull_parts

log = logging.getLogger("slurm_rl.roles")


def bind_host(cfg: RunConfig) -> str:
    """Address other roles reach this one at (weight server)."""
    if cfg.sync.host != "auto":
        return cfg.sync.host
    if cfg.backend is BackendKind.LOCAL:
        return "127.0.0.1"
    try:
        return socket.gethostbyname(socket.gethostname())
    except OSError:
        return "127.0.0.1"


class RoleRuntime:
    def __init__(self, run: RunDir, cfg: RunConfig, ident: P.Ident, *, job_id: str, node: str,
                 rank: RankInfo | None = None, rdzv: str = "", pg_store: Any = None):
        self.run = run
        self.cfg = cfg
        self._ident = ident
        self.rank = rank or RankInfo()      # a multi-rank trainer's rank; ranks > 0 only heartbeat
        self.rdzv = rdzv                    # rank 0: where its process-group store listens
        self.pg_store = pg_store
        self._lock = threading.Lock()
        self.job_id = job_id
        self.node = node
        self.phase = Phase.LOADING
        self.progress = 0               # units of work done: a rollout's tokens, a trainer's micro-batches
        self._partial = 0               # progress inside the call under way, not yet bumped for
        self._progress_lock = threading.Lock()
        self.detail = ""
        self.commands: queue.SimpleQueue[P.Command] = queue.SimpleQueue()
        self.newest: P.WeightsInfo | None = None
        self.held: Parts | None = None          # a whole version (every part of it), served to others
        self.held_version = -1
        self.held_wepoch = 0
        self.held_parts = 1                     # the parts the held version is in
        self.host_id = host_id()
        transports = ["tcp"]
        if cfg.sync.transport in ("auto", "shm"):
            transports.append("shm")
        if cfg.sync.transport in ("auto", "ucx"):
            transports.append("ucx")
        # every rank of a sharded trainer serves its own part of each version (slurm_rl.sync.parts)
        self.server = WeightServer(host=bind_host(cfg), transports=tuple(transports), auth_key=run.sync_key())
        self.addrs = self.server.start()
        self.liveness = LivenessListener(bind_host(cfg), key=run.sync_key())   # the controller's links prove it
        self.client = ControlClient(run, name=f"{ident.slot}/main")
        self._hb_client = ControlClient(run, name=f"{ident.slot}/hb")
        self._stop = threading.Event()
        self._hb = threading.Thread(target=self._hb_loop, name="heartbeat", daemon=True)
        self.controller_reachable = True
        self.is_superseded = False      # the controller gave this identity to another process
        self.pull_meter = BandwidthMeter()
        self._model_bytes: int | None = None

    # ---------------------------------------------------------------- identity
    @property
    def ident(self) -> P.Ident:
        with self._lock:
            return self._ident

    def set_ident(self, ident: P.Ident) -> None:
        with self._lock:
            self._ident = ident
        log.info("now %s (incarnation %d)", ident.slot, ident.incarnation)

    # ---------------------------------------------------------------- lifecycle
    def start(self, timeout_s: float = 300.0) -> P.Command:
        """Say hello and get this process's assignment (which role, which step to resume)."""
        deadline = time.time() + timeout_s
        hello = P.Hello(ident=self.ident, job_id=self.job_id, node=self.node, pid=os.getpid(),
                        host_id=self.host_id, sync_addrs=self.addrs, live_addr=self.liveness.address,
                        world_size=self.rank.world_size, rdzv=self.rdzv)
        while True:
            try:
                reply = self.client.request(hello, timeout_s=5.0, attempts=1)
                break
            except EnvironmentProblem:
                if time.time() > deadline:
                    raise
        if not reply.ok and reply.error == "superseded":
            self._superseded(reply)
        assign = None
        for cmd in reply.commands:
            if cmd.op == "assign":
                assign = cmd
            else:
                self._command(cmd)
        if reply.weights is not None:
            self.newest = reply.weights
            self.held_wepoch = reply.weights.wepoch
        if assign is None:
            assign = P.Command(op="assign", kind=self.ident.kind, index=self.ident.index,
                               incarnation=self.ident.incarnation)
        self._hb.start()
        return assign

    def join_as_rank(self, timeout_s: float) -> str:
        """A rank > 0: say hello until the controller knows where rank 0's process group is; returns
        that address (host:port) and starts heartbeating. A replaced incarnation exits."""
        deadline = time.time() + timeout_s
        hello = P.Hello(ident=self.ident, job_id=self.job_id, node=self.node, pid=os.getpid(), host_id=self.host_id,
                        sync_addrs=self.addrs, live_addr=self.liveness.address, rank=self.rank.rank,
                        world_size=self.rank.world_size)
        while True:
            try:
                reply = self.client.request(hello, timeout_s=5.0, attempts=1)
                if not reply.ok and reply.error == "superseded":
                    self._superseded(reply)
                if reply.rdzv:
                    self._hb.start()
                    return reply.rdzv
            except EnvironmentProblem:
                pass
            if time.time() > deadline:
                raise EnvironmentProblem(f"rank {self.rank.rank}: rank 0 of {self.ident.slot} did not say where "
                                         f"its process group is within {timeout_s:.0f}s")
            time.sleep(0.2)

    def _superseded(self, reply: P.Reply) -> None:
        """This identity belongs to another process now: leave quietly (a goodbye would end the other)."""
        why = next((c.reason for c in reply.commands if c.op == "exit"), "replaced")
        log.warning("the controller says this process is superseded: %s", why)
        self.is_superseded = True
        raise SystemExit(0)

    def close(self, reason: str, *, fatal: str = "") -> None:
        """Say goodbye (with `fatal`, the kind of error no restart fixes) and release everything."""
        self._stop.set()
        if self.is_superseded:
            pass                        # the identity is another process's now: say nothing
        elif self.rank.leader or fatal:  # rank 0 speaks for the role; a goodbye of rank 1 would end it
            try:
                self.client.request(P.Goodbye(ident=self.ident, reason=reason[:2000], fatal=fatal), timeout_s=2.0,
                                    attempts=1)
            except (EnvironmentProblem, ProtocolError):
                pass
        if self._hb.ident is not None:
            self._hb.join(timeout=2)
        self.liveness.close()
        self.server.stop()
        self.client.close()
        self._hb_client.close()

    # ---------------------------------------------------------------- phase & progress
    def set_phase(self, phase: Phase, detail: str = "") -> None:
        if phase != self.phase:
            log.debug("phase %s -> %s %s", self.phase.value, phase.value, detail)
        self.phase = phase
        self.detail = detail

    def bump(self, n: int = 1) -> None:
        """`n` units of work done. Counts what `advance` reported for the same call once: the larger."""
        with self._progress_lock:
            self.progress += max(n, self._partial)
            self._partial = 0

    def advance(self, n: int = 1) -> None:
        """Progress inside a long call whose caller bumps when it ends (an engine's generate reports
        tokens as they come): heartbeats carry it at once."""
        with self._progress_lock:
            self._partial += n

    @property
    def progress_now(self) -> int:
        with self._progress_lock:
            return self.progress + self._partial

    # ---------------------------------------------------------------- controller calls
    def call(self, msg: P.Request, *, timeout_s: float = 10.0, attempts: int = 3) -> P.Reply | None:
        """Request/reply; None when the controller is unreachable (the caller keeps its work)."""
        try:
            reply = self.client.request(msg, timeout_s=timeout_s, attempts=attempts)
        except (EnvironmentProblem, ProtocolError) as e:
            if self.controller_reachable:
                log.warning("controller unreachable: %s", e)
            self.controller_reachable = False
            return None
        self.controller_reachable = True
        self._absorb(reply)
        return reply

    def _absorb(self, reply: P.Reply) -> None:
        for cmd in reply.commands:
            self._command(cmd)
        if reply.weights is not None:
            self.newest = reply.weights

    def _command(self, cmd: P.Command) -> None:
        if cmd.op == "exit":
            log.error("controller says exit %d: %s", cmd.exit_code, cmd.reason)
            _write_exit_record(cmd.exit_code)
            os._exit(cmd.exit_code)
        self.commands.put(cmd)

    def next_command(self) -> P.Command | None:
        try:
            return self.commands.get_nowait()
        except queue.Empty:
            return None

    def wait_command(self, *ops: str) -> P.Command:
        """Idle until a command of one of `ops` arrives (others are dropped), and return it."""
        while True:
            cmd = self.next_command()
            if cmd is not None and cmd.op in ops:
                return cmd
            time.sleep(0.05)

    def _hb_loop(self) -> None:
        interval = self.cfg.recovery.heartbeat_interval_s
        while not self._stop.wait(interval):
            hb = P.Heartbeat(ident=self.ident, phase=self.phase.value, progress=self.progress_now,
                             version=self.held_version, wepoch=self.held_wepoch, detail=self.detail[:200],
                             sync_addrs=self.addrs, live_addr=self.liveness.address, rank=self.rank.rank,
                             parts=self.held_parts)
            try:
                reply = self._hb_client.request(hb, timeout_s=max(1.0, 2 * interval), attempts=1)
            except (EnvironmentProblem, ProtocolError):
                continue
            self._absorb(reply)

    # ---------------------------------------------------------------- weights
    def hold(self, ws: WeightSet | Parts, wepoch: int, *, report: bool = True) -> None:
        """Serve this version (whole, or every part of it) to others from now on, and tell the
        controller we hold it."""
        parts = ws if isinstance(ws, Parts) else Parts.whole(ws)
        self.server.publish(parts.sets)
        self.held = parts
        self.held_version = ws.version
        self.held_wepoch = wepoch
        self.held_parts = parts.count
        if report:
            self.call(P.VersionHeld(ident=self.ident, version=ws.version, wepoch=wepoch, sync_addrs=self.addrs,
                                    parts=parts.count), timeout_s=5.0, attempts=2)

    def needs_sync(self) -> bool:
        w = self.newest
        servable = w is not None and (bool(w.holders) or (bool(w.part_holders) and all(w.part_holders)))
        if w is None or w.version < 0 or not servable or w.version != self.held_version:
            return w is not None and w.version >= 0 and servable
        # the same number: the same weights in the same epoch, or in an older one up to its fork (a
        # rollout holding the committed step a restored trainer resumed from); beyond the fork, a
        # rollback made the number name other weights
        return not (w.wepoch == self.held_wepoch or (
            self.held_wepoch < w.wepoch and P.shared_with_later_epochs(w.epoch_bases, self.held_wepoch, w.version)))

    def sync_newest(self, apply: Callable[[Parts], None]) -> bool:
        """Pull the newest version (every part, in parallel) from any holders and apply it; False if
        none could serve it."""
        w = self.newest
        if w is None or not self.needs_sync():
            return False
        relays, ranks = self.sources(w)
        if not relays and not all(ranks):
            return False
        self.set_phase(Phase.SYNCING_WEIGHTS, f"v{w.version}")

        def progress(done: int, total: int) -> None:
            self.detail = f"v{w.version} {100 * done // max(total, 1)}%"
            self.bump(1)

        deadline, stall = self.pull_deadline()
        try:
            # one holder that hangs before a good one is cut at `stall` and the next gets the rest
            got = pull_parts(relays, ranks, w.version, w.parts, deadline_s=deadline, progress=progress,
                             auth_key=self.run.sync_key(), total_deadline_s=deadline + stall, stall_s=stall,
                             meter=self.pull_meter)
        except SyncError as e:
            log.warning("could not pull version %d from %d holder(s): %s", w.version, len(relays) + len(ranks), e)
            self.set_phase(Phase.IDLE, f"v{w.version} unavailable; keeping v{self.held_version}")
            self.bump()
            return False
        assert isinstance(got, Parts)
        apply(got)
        self.hold(got, w.wepoch)
        log.info("now holding version %d (%d part(s))", got.version, got.count)
        return True

    def sources(self, w: P.WeightsInfo) -> tuple[list[str], list[str]]:
        """(relays: each serves every part, ranks: part p from ranks[p] only, "" where unusable),
        the addresses this process can reach, best first."""
        def addr(h: dict[str, str]) -> str:
            try:
                return choose_address(h, prefer=self.cfg.sync.transport, local_host_id=self.host_id)
            except SyncError:
                return ""
        relays = [a for a in (addr(h) for h in w.holders) if a]
        return relays, [addr(h) for h in w.part_holders]

    def pull_newest(self, *, part: int | None = None, parts: int | None = None) -> Parts | WeightSet:
        """The newest version from any holders, every part or `part` alone (a restored rank's own
        shard), taken as in `parts` parts (default: as the controller says); raises SyncError
        (`PartCount` where the version is in another number of parts)."""
        w = self.newest
        if w is None:
            raise SyncError("the controller named no weights to pull")
        relays, ranks = self.sources(w)
        n = w.parts if parts is None else parts
        deadline, stall = self.pull_deadline()
        return pull_parts(relays, ranks if n == w.parts else [], w.version, n, deadline_s=deadline,
                          auth_key=self.run.sync_key(), total_deadline_s=deadline + stall, stall_s=stall,
                          meter=self.pull_meter, only=part, progress=lambda done, total: self.bump(1))


    def pull_deadline(self) -> tuple[float, float]:
        """(total, stall) seconds for pulling the next version.

        total: `sync.deadline_slack` times the bytes to move over the bandwidth this process
        measured on its earlier pulls (`sync.assumed_gbps` before the first), at least
        `sync.deadline_s`. stall: a holder that delivers no bucket for 0.6 x the syncing phase timeout
        is given up on, so the controller never takes this healthy puller for hung (each bucket
        that arrives is progress).
        """
        sc = self.cfg.sync
        phase_limit = float(self.cfg.recovery.phase_timeouts.get(Phase.SYNCING_WEIGHTS, 30.0))
        total = self.pull_meter.deadline_s(self.expected_pull_bytes(), floor_s=sc.deadline_s, slack=sc.deadline_slack,
                                           assumed_bytes_per_s=sc.assumed_gbps * 1e9)
        return total, 0.6 * phase_limit

    def expected_pull_bytes(self) -> int:
        """Bytes of one version: what this process holds, else the model's weight files on disk."""
        if self.held is not None:
            return int(self.held.nbytes)
        if self._model_bytes is None:
            try:
                self._model_bytes = sum(p.stat().st_size for p in self.run.model.glob("*.safetensors"))
            except OSError:
                self._model_bytes = 0
        return self._model_bytes


def _write_exit_record(code: int) -> None:
    path = os.environ.get("SLURM_RL_EXIT_FILE")
    if path and os.environ.get("SLURM_RL_RANK", "0") == "0":     # one record per job: rank 0's
        try:
            with open(path, "w") as f:
                f.write(str(code))
        except OSError:
            pass


def write_exit_record(code: int) -> None:
    _write_exit_record(code)


__all__ = ["RoleRuntime", "bind_host", "write_exit_record"]
