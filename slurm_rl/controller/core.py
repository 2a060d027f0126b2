"""The controller: role registry, data broker, weight-holder directory and recovery loop.

One thread runs the loop: receive control messages, apply scheduler poll results and probe
results, call the pure `policy.decide`, apply its actions. Scheduler calls (submit, cancel,
poll, inject) and liveness probes run on helper threads and post results back, so the loop
never blocks on Slurm. The SQLite store is written only from the loop thread.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import random
import socket
import statistics
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import msgspec

from slurm_rl import protocol as P
from slurm_rl.backends.base import Backend, JobStatus, LaunchSpec, Snapshot
from slurm_rl.config import RecoveryPolicy, RunConfig
from slurm_rl.controller import chaos as chaos_mod
from slurm_rl.controller import policy as pol
from slurm_rl.controller.prober import Prober
from slurm_rl.controlplane import ControlServer
from slurm_rl.errors import SlurmRLError
from slurm_rl.liveness import LinkWatcher
from slurm_rl.rundir import ControllerAddress, RunDir
from slurm_rl.states import FaultKind, JobState, NodeHealth, Phase, RoleKind, RoleState
from slurm_rl.store import Store

log = logging.getLogger("slurm_rl.controller")

_ACTIVE_PHASES_READY = {Phase.IDLE, Phase.WAITING_FOR_DATA, Phase.STEPPING, Phase.CHECKPOINTING, Phase.PUBLISHING,
                        Phase.GENERATING, Phase.SYNCING_WEIGHTS}

# CPU seconds a process must use between pulses to count as running (a deadlocked process's idle
# threads use a few milliseconds)
_CPU_MOVED_S = 0.05


@dataclass
class Slot:
    """Controller-side record of one role slot (mutable; the policy sees a frozen SlotView)."""

    kind: RoleKind
    index: int
    state: RoleState = RoleState.PENDING
    incarnation: int = 0
    job_id: str | None = None
    node: str | None = None
    pid: int | None = None
    host_id: str = ""
    connected: bool = False
    phase: Phase = Phase.LOADING
    phase_since: float | None = None
    progress: int = 0
    detail: str = ""
    last_hb: float | None = None
    progress_at: float | None = None
    suspect_since: float | None = None
    suspect_reason: str = ""
    state_before_suspect: RoleState = RoleState.STARTING
    probe: pol.ProbeResult | None = None
    probe_at: float | None = None
    probe_pending: bool = False
    job: JobStatus | None = None
    job_running_since: float | None = None
    version: int = -1                 # held weight version (valid lineage), -1 none
    sync_addrs: dict[str, str] = field(default_factory=dict)
    live_addr: str = ""               # the role process's liveness port (slurm_rl.liveness)
    link_lost_at: float | None = None  # when the controller's connection to it ended
    proc_state: str = ""              # the process as its job's batch agent last saw it (P.Pulse)
    proc_at: float | None = None
    proc_cpu: float | None = None     # CPU seconds at cpu_moved_at
    cpu_moved_at: float | None = None
    restarts: list[float] = field(default_factory=list)
    moving: bool = False
    reserved_for: str | None = None
    stop_requested: bool = False
    goodbye: bool = False
    extra: bool = False
    commands: list[P.Command] = field(default_factory=list)
    assign: P.Command | None = None
    fault_ids: list[int] = field(default_factory=list)   # open faults this slot's incarnation recovers from
    submitted_at: float | None = None
    submitted_inc: int = -1           # the incarnation submitted then, until it is ready (a start sample)
    submit_retry_at: float | None = None
    submit_failures: int = 0
    exclude: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return f"{self.kind.value}/{self.index}"

    def holder(self) -> str:
        return f"{self.name}#{self.incarnation}"

    def reset_runtime(self) -> None:
        self.connected = False
        self.phase = Phase.LOADING
        self.phase_since = None
        self.progress = 0
        self.detail = ""
        self.last_hb = None
        self.progress_at = None
        self.job_running_since = None
        self.suspect_since = None
        self.suspect_reason = ""
        self.probe = None
        self.probe_at = None
        self.probe_pending = False
        self.job = None
        self.version = -1
        self.sync_addrs = {}
        self.live_addr = ""
        self.link_lost_at = None
        self.proc_state = ""
        self.proc_at = self.proc_cpu = self.cpu_moved_at = None
        self.moving = False
        self.stop_requested = False
        self.goodbye = False
        self.commands = []
        self.pid = None
        self.node = None
        self.host_id = ""


@dataclass
class SubmitDone:
    slot: str
    incarnation: int
    job_id: str | None
    error: str = ""


@dataclass
class CancelDone:
    job_ids: list[str]
    error: str = ""


class Controller:
    def __init__(self, run: RunDir, cfg: RunConfig, backend: Backend, *, resume: bool = False):
        self.run = run
        self.cfg = cfg
        self.backend = backend
        self.store = Store(run.db)
        self.resume = resume
        self.slots: dict[str, Slot] = {}
        self.redirects: dict[tuple[str, int], P.Command] = {}   # old identity -> become command
        self.wepoch = int(self.store.get_meta("wepoch", 0))
        self.epoch_bases: list[int] = list(self.store.get_meta("epoch_bases", [0]))
        self.committed = int(self.store.get_meta("committed", 0))
        self.trainer_version = int(self.store.get_meta("trainer_version", 0))
        self.full_restarts = int(self.store.get_meta("full_restarts", 0))
        self.node_failures: dict[str, int] = dict(self.store.get_meta("node_failures", {}))
        self.excluded: set[str] = set(self.store.get_meta("excluded_nodes", []))
        self.restarting_until: float | None = None
        self.stopping: tuple[str, bool] | None = None
        self.stop_deadline: float | None = None
        self.exit_code: int | None = None
        self.pending_faults: dict[str, list[int]] = {}  # slot -> injected faults awaiting detection
        self.chaos_plan = chaos_mod.schedule(cfg.chaos, cfg.algorithm.steps) if cfg.chaos.enabled else []
        self.chaos_next = int(self.store.get_meta("chaos_next", 0))
        self.chaos_rng = random.Random(cfg.chaos.seed + 1)
        self.chaos_due: float | None = None            # when the next planned fault fires (mid-step)
        self._pace: tuple[int, float] = (-1, 0.0)       # (trainer version seen, when)
        self._step_gaps: deque[float] = deque(maxlen=7)  # seconds between recent trainer versions
        self._rr = 0
        self._dirty = True
        self._last_flush = 0.0
        self._last_expire = 0.0
        self.backend_results: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._exec = ThreadPoolExecutor(max_workers=1, thread_name_prefix="backend")
        self._poll_stop = threading.Event()
        self._poll_jobs: list[str] = []
        self._poll_lock = threading.Lock()
        self.prober = Prober(cfg.recovery.probe_timeout_s)
        self.links = LinkWatcher(cfg.recovery.probe_timeout_s)
        self.server: ControlServer | None = None
        self.thresholds = pol.Thresholds(
            suspect_after_s=cfg.recovery.suspect_after_s, hang_after_s=cfg.recovery.hang_after_s,
            phase_timeouts=dict(cfg.recovery.phase_timeouts),
            restart_budget=cfg.recovery.restart_budget, exclude_node_after=cfg.recovery.exclude_node_after,
            max_full_restarts=cfg.recovery.max_full_restarts, standby=cfg.recovery.standby,
            full_restart_policy=cfg.recovery.policy is RecoveryPolicy.FULL_RESTART,
            spare_replicas=cfg.spare.replicas, hang_idle_after_s=cfg.recovery.hang_idle_after_s,
            use_process_state=cfg.recovery.process_state,
            stopped_after_s=2 * cfg.recovery.heartbeat_interval_s)
        self.buffer_limit = max(1, int(cfg.algorithm.buffer_steps * cfg.algorithm.prompts_per_step))
        self.node_health: dict[str, NodeHealth] = {}
        self.full_restart_faults: list[int] = []      # faults a full restart in progress answers
        self.move_faults: dict[str, int] = {}         # slot -> injected drain fault its move answers
        self.final_state = "stopped"
        self._dying: set[str] = set()
        self.job_endings: dict[str, JobState] = {}
        self.ckpt_checked: dict[int, str] = {}        # checkpoint step -> problem ('' intact)
        self.ckpt_reported: set[int] = set()
        self.job_slots: dict[str, str] = {}           # job id -> slot it was started for
        self.start_times = pol.StartTimes()           # submission -> ready, per kind of start
        self.poll_interval = cfg.controller.poll_interval_s or (0.2 if backend.name == "local" else 2.0)

    # ================================================================== lifecycle
    def serve(self) -> int:
        """Run until the run finishes, fails or is stopped. Returns the exit code."""
        cfg = self.cfg
        host = controller_host(cfg)
        bind = cfg.controller.bind or host
        port = cfg.controller.port
        if self.resume and port == 0:
            old = self.store.get_meta("controller_port", 0)
            port = int(old or 0)
        try:
            self.server = ControlServer(self.run, bind=bind, port=port, max_message_mb=cfg.controller.max_message_mb)
        except Exception:
            if port and self.resume:
                # the old port is taken: any free port works, roles re-read controller.json
                self.server = ControlServer(self.run, bind=bind, port=0,
                                            max_message_mb=cfg.controller.max_message_mb)
            else:
                raise
        self.store.set_meta("controller_port", self.server.port)
        self.run.write_controller(ControllerAddress(
            host=host, port=self.server.port, pid=os.getpid(),
            server_public_key=self.server.public_key, started=time.time(), hostname=socket.gethostname()))
        poller = threading.Thread(target=self._poll_loop, name="poller", daemon=True)
        poller.start()
        try:
            if self.resume:
                self._resume_state()
            else:
                self._start_fresh()
            while self.exit_code is None:
                self._loop_once()
        finally:
            self._poll_stop.set()
            self._flush(force=True)
            self.prober.close()
            self.links.close()
            self._exec.shutdown(wait=True)
            self.run.clear_controller()
            self.server.close()
            self.backend.close()
            self.store.close()
        return self.exit_code

    def _start_fresh(self) -> None:
        now = time.time()
        self.store.set_metas(run_state="running", started=now, wepoch=0, epoch_bases=[0], committed=0,
                             trainer_version=0)
        self.event("run_started", f"run {self.run.name} started on backend {self.cfg.backend.value} "
                                  f"(recovery {self.cfg.recovery.policy.value})")
        for kind in (RoleKind.TRAINER, RoleKind.ROLLOUT, RoleKind.SPARE):
            for i in range(self.cfg.replicas(kind)):
                slot = Slot(kind=kind, index=i)
                self.slots[slot.name] = slot
                self._submit(slot, "initial launch")

    def _resume_state(self) -> None:
        """Rebuild the registry from the store and re-attach to live jobs without restarting them."""
        now = time.time()
        rows = self.store.roles()
        jobs = {r["job_id"]: r for r in self.store.jobs()}
        for r in rows:
            kind = RoleKind(r["kind"])
            slot = Slot(kind=kind, index=r["idx"], state=RoleState(r["state"]), incarnation=r["incarnation"],
                        job_id=r["job_id"], node=r["node"], restarts=[0.0] * int(r["restarts"] or 0))
            slot.extra = kind is RoleKind.SPARE and slot.index >= self.cfg.spare.replicas
            if slot.state.alive and slot.job_id:
                # assume alive until a signal says otherwise: heartbeats resume within a second
                slot.connected = slot.state not in (RoleState.PENDING,)
                slot.state = RoleState.READY if slot.connected else RoleState.PENDING
                slot.last_hb = now
                slot.progress_at = now
                slot.phase = Phase(r["phase"]) if r["phase"] else Phase.LOADING
                slot.assign = P.Command(op="assign", kind=kind.value, index=slot.index,
                                        incarnation=slot.incarnation, resume_step=self.committed)
            self.slots[slot.name] = slot
            if slot.job_id and slot.job_id in jobs:
                slot.submitted_at = jobs[slot.job_id]["submitted"]
        # slots the config wants that the store lacks (should not happen) are started
        for kind in (RoleKind.TRAINER, RoleKind.ROLLOUT, RoleKind.SPARE):
            for i in range(self.cfg.replicas(kind)):
                name = f"{kind.value}/{i}"
                if name not in self.slots:
                    self.slots[name] = Slot(kind=kind, index=i)
                    self._submit(self.slots[name], "missing after resume")
        self.store.set_meta("run_state", "running")
        self.event("controller_resumed", f"controller resumed; re-attached to "
                   f"{sum(1 for s in self.slots.values() if s.state.alive and s.job_id)} live role jobs")
        self._update_poll_jobs()

    # ================================================================== loop
    def _loop_once(self) -> None:
        assert self.server is not None
        deadline = time.monotonic() + self.cfg.controller.tick_s
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            got = self.server.recv(left)
            if got is None:
                continue
            peer, env = got
            try:
                reply = self._handle(env.body)
            except SlurmRLError as e:
                reply = P.Reply(ok=False, error=str(e))
            except Exception as e:  # a bug must not take the controller down
                log.exception("error handling %s", type(env.body).__name__)
                reply = P.Reply(ok=False, error=f"internal error: {e.__class__.__name__}: {e}")
            self.server.reply(peer, env.req_id, reply)
        self._tick()

    def _tick(self) -> None:
        now = time.time()
        self._drain_backend_results(now)
        self._drain_probes()
        self._drain_links()
        if self.stopping is not None:
            self._tick_stopping(now)
            return
        if self.restarting_until is not None and now >= self.restarting_until:
            self.restarting_until = None
        actions = pol.decide(now, self._view())
        # roles found dead together (a node going down) are gone before anyone restores from them
        self._dying = {a.slot for a in actions if isinstance(a, pol.Dead)}
        for a in actions:
            self._apply(a, now)
        self._dying = set()
        self._retry_submits(now)
        if now - self._last_expire > 5.0:
            self._last_expire = now
            n = self.store.expire_leases(now)
            if n:
                self.event("leases_expired", f"{n} prompt leases expired and went back to the queue")
        self._chaos(now)
        self._check_done()
        self._flush()

    # ================================================================== messages
    def _handle(self, msg: P.Request) -> P.Reply:
        now = time.time()
        if isinstance(msg, P.StatusRequest):
            return P.Reply(payload=json.dumps(self.status(msg.events)).encode())
        if isinstance(msg, P.InjectRequest):
            return self._inject(msg, now)
        if isinstance(msg, P.StopRequest):
            self._begin_stop(msg.reason, failed=False, user=True)
            return P.Reply()
        if isinstance(msg, P.Pulse):
            self._pulse(msg, now)
            return P.Reply()
        ident = msg.ident
        slot = self.slots.get(ident.slot)
        if slot is None or slot.incarnation != ident.incarnation:
            redirect = self.redirects.get((ident.slot, ident.incarnation))
            if redirect is not None:
                # a promoted process still speaking under its old name is alive: that counts for
                # the slot it is taking over (it switches once its current batch is done)
                target = self.slots.get(f"{redirect.kind}/{redirect.index}")
                if target is not None and target.incarnation == redirect.incarnation:
                    target.last_hb = now
                return P.Reply(commands=[redirect], weights=self._weights_info())
            if isinstance(msg, P.SubmitGroups):
                # leases of a superseded incarnation were requeued; the store rejects its groups
                return self._submit_groups(msg, ident, now)
            return P.Reply(ok=False, error="superseded",
                           commands=[P.Command(op="exit", exit_code=0, reason=f"{ident.slot} incarnation "
                                               f"{ident.incarnation} was replaced")])
        if isinstance(msg, P.Hello):
            return self._hello(slot, msg, now)
        self._seen(slot, now)
        if isinstance(msg, P.Heartbeat):
            return self._heartbeat(slot, msg, now)
        if isinstance(msg, P.LeaseRequest):
            return self._lease(slot, msg, now)
        if isinstance(msg, P.SubmitGroups):
            return self._submit_groups(msg, ident, now)
        if isinstance(msg, P.ReleaseLeases):
            self.store.release(slot.holder(), msg.item_ids)
            return self._reply(slot)
        if isinstance(msg, P.FetchBatch):
            return self._fetch(slot, msg)
        if isinstance(msg, P.StepDone):
            return self._step_done(slot, msg, now)
        if isinstance(msg, P.VersionHeld):
            self._held(slot, msg.version, msg.wepoch, msg.sync_addrs)
            return self._reply(slot)
        if isinstance(msg, P.CheckpointSaved):
            self.store.add_checkpoint(msg.step, msg.path, now)
            self.event("checkpoint", f"checkpoint at step {msg.step} saved", slot=slot.name,
                       data={"step": msg.step, "path": msg.path})
            self._commit(msg.step)
            return self._reply(slot)
        if isinstance(msg, P.RoleEvent):
            self.event(msg.kind, msg.msg, slot=slot.name, data=dict(msg.data))
            return self._reply(slot)
        if isinstance(msg, P.Goodbye):
            slot.goodbye = True
            slot.connected = False
            self.event("goodbye", f"{slot.name} stopped: {msg.reason}", slot=slot.name)
            self._dirty = True
            return P.Reply()
        return P.Reply(ok=False, error=f"unexpected message {type(msg).__name__}")

    def _seen(self, slot: Slot, now: float) -> None:
        slot.last_hb = now
        if not slot.connected and slot.state.alive and not slot.goodbye:
            slot.connected = True        # e.g. after a controller resume
            if slot.state is RoleState.PENDING:
                slot.state = RoleState.STARTING
            slot.progress_at = now

    def _reply(self, slot: Slot, **kw: Any) -> P.Reply:
        cmds, slot.commands = slot.commands, []
        return P.Reply(commands=cmds, weights=self._weights_info(slot), **kw)

    def _hello(self, slot: Slot, msg: P.Hello, now: float) -> P.Reply:
        slot.connected = True
        slot.state = RoleState.STARTING
        slot.node = msg.node or slot.node
        slot.pid = msg.pid
        slot.host_id = msg.host_id
        slot.sync_addrs = dict(msg.sync_addrs)
        self._watch(slot, msg.live_addr)
        slot.last_hb = now
        slot.progress_at = now
        slot.phase = Phase.LOADING
        slot.phase_since = now
        if msg.job_id and slot.job_id is None:
            slot.job_id = msg.job_id
        self.event("connected", f"{slot.name} connected from {msg.node} (job {msg.job_id}, pid {msg.pid})",
                   slot=slot.name, job_id=msg.job_id, node=msg.node)
        self._faults(slot, t_scheduled=now)
        self._dirty = True
        cmds = [slot.assign] if slot.assign else []
        cmds += slot.commands
        slot.commands = []
        return P.Reply(commands=cmds, weights=self._weights_info(slot))

    def _heartbeat(self, slot: Slot, msg: P.Heartbeat, now: float) -> P.Reply:
        phase = Phase(msg.phase)
        if phase != slot.phase or msg.progress != slot.progress:
            slot.progress_at = now
        if phase != slot.phase or slot.phase_since is None:
            slot.phase_since = now
        prev_phase = slot.phase
        slot.phase = phase
        slot.progress = msg.progress
        slot.detail = msg.detail
        if msg.sync_addrs:
            slot.sync_addrs = dict(msg.sync_addrs)
        if msg.live_addr != slot.live_addr:
            self._watch(slot, msg.live_addr)       # e.g. after a controller resume
        self._held(slot, msg.version, msg.wepoch, None)
        if slot.state is RoleState.STARTING and phase in _ACTIVE_PHASES_READY:
            slot.state = RoleState.READY
            if slot.submitted_inc == slot.incarnation and slot.submitted_at is not None:
                self.start_times.add(slot.kind, now - slot.submitted_at)      # the policy weighs starts by these
                slot.submitted_inc = -1
            self.event("ready", f"{slot.name} is ready ({phase.value})", slot=slot.name, job_id=slot.job_id,
                       node=slot.node)
            self._faults(slot, t_loaded=now)
            if slot.kind is RoleKind.SPARE and slot.fault_ids:
                self._recovered(slot, now, "standby ready again")
        if slot.fault_ids and slot.kind is RoleKind.ROLLOUT and phase is Phase.GENERATING \
                and prev_phase is not Phase.GENERATING:
            self._recovered(slot, now, "generating again")
        self._dirty = True
        return self._reply(slot)

    def _lease(self, slot: Slot, msg: P.LeaseRequest, now: float) -> P.Reply:
        if slot.kind is not RoleKind.ROLLOUT:
            return self._reply(slot, pause="not a rollout")
        if slot.stop_requested:
            return self._reply(slot, pause="stopping")
        valid = self._valid(msg.wepoch, msg.version)
        newest = self._newest_version()
        if not valid or (self.trainer_version - msg.version > self.cfg.algorithm.max_staleness and newest > msg.version):
            return self._reply(slot, pause="sync weights first")
        waiting = self.store.queued_groups() + self.store.leases_held()
        if waiting >= self.buffer_limit:
            return self._reply(slot, pause=f"buffer full ({waiting} groups waiting for the trainer)")
        n = min(msg.max_items, self.buffer_limit - waiting)
        leases = self.store.lease(slot.holder(), n, now, self.cfg.recovery.lease_timeout_s)
        return self._reply(slot, leases=leases)

    def _submit_groups(self, msg: P.SubmitGroups, ident: P.Ident, now: float) -> P.Reply:
        groups = [g for g in msg.groups]
        valid_groups = [g for g in groups if self._valid(g.wepoch, g.version)]
        invalid = [g.group_id for g in groups if not self._valid(g.wepoch, g.version)]
        holder = f"{ident.slot}#{ident.incarnation}"
        accepted, rejected = self.store.submit_groups(
            holder, ident.slot, ident.incarnation, valid_groups, now, trainer_version=self.trainer_version,
            max_staleness=self.cfg.algorithm.max_staleness, wepoch=self.wepoch, committed=self.committed)
        if invalid:
            # generated with weights lost with a dead trainer: never acknowledged, prompts go back
            item_ids = [g.item_id for g in groups if g.group_id in set(invalid)]
            self.store.release(holder, item_ids)
        slot = self.slots.get(ident.slot)
        base = self._reply(slot) if slot is not None and slot.incarnation == ident.incarnation else P.Reply()
        return msgspec.structs.replace(base, accepted=accepted, rejected=rejected + invalid)

    def _fetch(self, slot: Slot, msg: P.FetchBatch) -> P.Reply:
        if slot.kind is not RoleKind.TRAINER:
            return self._reply(slot)
        groups = self.store.fetch_batch(slot.holder(), msg.step, msg.n_groups, self.cfg.algorithm.max_staleness)
        return self._reply(slot, groups=groups)

    def _step_done(self, slot: Slot, msg: P.StepDone, now: float) -> P.Reply:
        self.store.step_done(msg, slot.holder())
        self.trainer_version = msg.version
        slot.version = msg.version
        self.store.set_meta("trainer_version", self.trainer_version)
        if slot.fault_ids:
            self._recovered(slot, now, f"committed step {msg.version}")
        self._recover_full_restart_faults(now, msg.version)
        self._dirty = True
        return self._reply(slot)

    def _held(self, slot: Slot, version: int, wepoch: int, addrs: dict[str, str] | None) -> None:
        if addrs:
            slot.sync_addrs = dict(addrs)
        if version < 0 or not self._valid(wepoch, version):
            slot.version = -1
            return
        if version != slot.version:
            slot.version = version
            self._faults(slot, t_synced=time.time())
            if slot.kind is not RoleKind.TRAINER:
                self._commit(version)

    def _commit(self, version: int) -> None:
        """Another holder (or a checkpoint) has `version`: steps up to it survive a trainer loss."""
        version = min(version, self.trainer_version)
        if version > self.committed:
            self.store.commit_through(version)
            self.committed = version
            self.store.set_meta("committed", version)

    # ================================================================== weights directory
    def _valid(self, wepoch: int, version: int) -> bool:
        """Is (lineage, version) part of the current weight lineage?"""
        if version < 0 or wepoch > self.wepoch or wepoch < 0:
            return False
        if wepoch == self.wepoch:
            return version <= max(self.trainer_version, self.epoch_bases[-1])
        return version <= min(self.epoch_bases[wepoch + 1:])

    def _newest_version(self) -> int:
        """Newest version some healthy holder can serve (a SUSPECT holder may be hung: not listed)."""
        vs = [s.version for s in self.slots.values() if s.connected and s.version >= 0
              and s.state in (RoleState.READY, RoleState.STARTING, RoleState.MOVING)]
        return max(vs, default=0)

    def _weights_info(self, for_slot: Slot | None = None) -> P.WeightsInfo:
        newest = self._newest_version()
        holders = [s for s in self.slots.values()
                   if s.connected and s.state in (RoleState.READY, RoleState.STARTING) and s.version == newest
                   and s.sync_addrs and (for_slot is None or s.name != for_slot.name)]
        # relays first (keep the trainer's link free), rotated so pullers spread over holders
        relays = [s for s in holders if s.kind is not RoleKind.TRAINER]
        trainers = [s for s in holders if s.kind is RoleKind.TRAINER]
        if relays:
            self._rr = (self._rr + 1) % len(relays)
            relays = relays[self._rr:] + relays[:self._rr]
        ordered = relays + trainers
        return P.WeightsInfo(version=newest, wepoch=self.wepoch, holders=[dict(s.sync_addrs) for s in ordered],
                             holder_hosts=[s.host_id for s in ordered])

    # ================================================================== policy view & actions
    def _view(self) -> pol.View:
        now = time.time()
        window = self.cfg.recovery.budget_window_s
        views = []
        for s in self.slots.values():
            node_health = NodeHealth.OK
            views.append(pol.SlotView(
                kind=s.kind, index=s.index, state=s.state, incarnation=s.incarnation, job_id=s.job_id, node=s.node,
                connected=s.connected, phase=s.phase, last_hb=s.last_hb, progress_at=s.progress_at,
                suspect_since=s.suspect_since, suspect_reason=s.suspect_reason, probe=s.probe, probe_at=s.probe_at,
                link_lost_at=s.link_lost_at, proc_state=s.proc_state, proc_at=s.proc_at,
                cpu_moved_at=s.cpu_moved_at,
                probe_pending=s.probe_pending, job_state=s.job.state if s.job else None,
                job_running_since=s.job_running_since,
                job_exit=_exit_text(s.job), node_health=self.node_health.get(s.node or "", node_health),
                version=s.version, restarts_in_window=sum(1 for t in s.restarts if now - t < window),
                moving=s.moving, reserved_for=s.reserved_for, stop_requested=s.stop_requested, goodbye=s.goodbye,
                extra=s.extra, starting_since=s.submitted_at if s.submitted_inc == s.incarnation
                and s.state in (RoleState.PENDING, RoleState.STARTING) else None))
        return pol.View(slots=views, thresholds=self.thresholds, committed_version=self.committed,
                        full_restarts=self.full_restarts, node_failures=dict(self.node_failures),
                        excluded_nodes=frozenset(self.excluded), restarting=self.restarting_until is not None,
                        stopping=self.stopping is not None,
                        start_s=self.start_times.estimates() if self.cfg.recovery.weigh_start_times else {})

    def _apply(self, a: pol.Action, now: float) -> None:
        log.info("action %s: %s", type(a).__name__, a.reason)
        if isinstance(a, pol.Suspect):
            s = self.slots[a.slot]
            s.state_before_suspect = s.state if s.state is not RoleState.SUSPECT else s.state_before_suspect
            s.state = RoleState.SUSPECT
            s.suspect_since = now
            s.suspect_reason = a.reason
            self.event("suspect", f"{s.name} is SUSPECT: {a.reason}", slot=s.name, job_id=s.job_id, node=s.node)
            self._probe(s)
        elif isinstance(a, pol.Probe):
            self._probe(self.slots[a.slot])
        elif isinstance(a, pol.Clear):
            s = self.slots[a.slot]
            # back to what it was: a role still loading when it went quiet is not READY (a spare
            # cleared mid-load was once promoted as a warm standby and the restore waited for its engine)
            s.state = s.state_before_suspect if s.connected else RoleState.STARTING
            s.suspect_since = None
            if s.link_lost_at is not None:         # alive after all: watch it again
                s.link_lost_at = None
                self.links.watch(s.live_addr)
            self.event("cleared", f"{s.name} is fine again: {a.reason}", slot=s.name)
        elif isinstance(a, pol.Dead):
            self._dead(self.slots[a.slot], a, now)
        elif isinstance(a, pol.ExcludeNode):
            self.excluded.add(a.node)
            self.store.set_meta("excluded_nodes", sorted(self.excluded))
            self.event("node_excluded", f"node {a.node} excluded from new role jobs: {a.reason}", node=a.node)
        elif isinstance(a, pol.PromoteSpare):
            self._promote(self.slots[a.spare], self.slots[a.target], now, a.reason, resume_step=-1,
                          awaited=a.awaited)
        elif isinstance(a, pol.AwaitSpare):
            spare, target = self.slots[a.spare], self.slots[a.target]
            spare.reserved_for = target.name
            self._faults(target, action=f"await {spare.name}")
            self.event("awaiting_spare", f"{target.name} waits for {spare.name}: {a.reason}", slot=target.name)
        elif isinstance(a, pol.PromoteTrainer):
            # resume where the restore point ended up (it may be below what the policy saw)
            self._promote(self.slots[a.standby], self.slots["trainer/0"], now, a.reason, resume_step=self.committed)
        elif isinstance(a, pol.Submit):
            s = self.slots[a.slot]
            s.exclude = a.exclude
            self._submit(s, a.reason)
        elif isinstance(a, pol.AddSpare):
            idx = max((s.index for s in self.slots.values() if s.kind is RoleKind.SPARE), default=-1) + 1
            spare = Slot(kind=RoleKind.SPARE, index=idx, extra=True, reserved_for=a.for_slot)
            self.slots[spare.name] = spare
            self._submit(spare, a.reason)
        elif isinstance(a, pol.StartMove):
            s = self.slots[a.slot]
            spare = self.slots[a.spare]
            spare.reserved_for = s.name
            s.moving = True
            s.stop_requested = True
            s.state = RoleState.MOVING
            s.commands.append(P.Command(op="stop", reason=a.reason))
            fid = self.move_faults.get(s.name)
            if fid is not None:
                self.store.update_fault(fid, t_detect=now, t_decide=now, action=f"move to {spare.name}")
            self.event("move_started", f"moving {s.name} off {s.node}: {a.reason}", slot=s.name, node=s.node)
        elif isinstance(a, pol.FinishMove):
            s = self.slots[a.slot]
            spare = self.slots[a.spare]
            old_job = s.job_id
            resume = self.committed if s.kind is RoleKind.TRAINER else -1
            self._promote(spare, s, now, a.reason, resume_step=resume, planned=True)
            fid = self.move_faults.pop(s.name, None)
            s.fault_ids = [fid] if fid is not None else []
            self._faults(s, t_scheduled=now)
            self.event("moved", f"{s.name} moved off its draining node: {a.reason}", slot=s.name, node=s.node)
            if old_job:
                self._cancel([old_job])
            if not spare.extra and spare.index < self.cfg.spare.replicas:
                self._submit(spare, f"backfill {spare.name} after the move")
        elif isinstance(a, pol.FullRestart):
            self._full_restart(a.reason, now)
        elif isinstance(a, pol.StopRun):
            self._begin_stop(a.reason, failed=a.failed)
        self._dirty = True

    def _probe(self, s: Slot) -> None:
        s.probe_pending = True
        self.prober.submit(s.name, s.incarnation, s.sync_addrs.get("tcp"))

    def _dead(self, s: Slot, a: pol.Dead, now: float) -> None:
        prev_state = s.state
        s.state = RoleState.DEAD
        s.restarts.append(now)
        fids = self.pending_faults.pop(s.name, [])
        if not fids:
            t_fault = s.last_hb if s.last_hb is not None else now
            kind = "node_down" if "node down" in a.signals else ("exit" if s.job and s.job.state.terminal else "crash")
            fids = [self.store.open_fault(s.name, f"detected:{kind}", s.node, False, min(t_fault, now))]
        for fid in fids:
            self.store.update_fault(fid, t_detect=now, t_decide=now, reason=a.reason)
        if s.node and not (s.goodbye and s.stop_requested):
            self.node_failures[s.node] = self.node_failures.get(s.node, 0) + 1
        self.event("dead", f"{s.name} is DEAD: {a.reason}", slot=s.name, job_id=s.job_id, node=s.node,
                   data={"signals": list(a.signals), "was": prev_state.value})
        if s.job_id and not (s.job and s.job.state.terminal):
            self._cancel([s.job_id])
        if s.kind is RoleKind.ROLLOUT:
            n = self.store.requeue_holder_prefix(s.name)
            if n:
                self.event("leases_requeued", f"{n} prompt leases of {s.name} went back to the queue", slot=s.name)
        elif s.kind is RoleKind.TRAINER:
            replay = self._trainer_lost(now)
            for fid in fids:
                self.store.update_fault(fid, replay_s=replay / len(fids))
        s.fault_ids = s.fault_ids + fids     # a replacement dying before it recovered: both stay open
        s.reserved_for = None                # a dead spare keeps no promise (a slot waiting for it resubmits)
        s.version = -1
        s.connected = False
        # redirects owed to the dead process are void
        self.redirects = {k: v for k, v in self.redirects.items() if k[0] != s.name}

    def _restore_point(self) -> int:
        """Newest version a new trainer can still get: from a live holder or an intact checkpoint.

        Normally the committed version; less when every holder of it died too (a node with the
        trainer and the rollouts that held its newest weights went down at once).
        """
        held = [s.version for s in self.slots.values()
                if s.kind is not RoleKind.TRAINER and s.connected and s.state.alive and s.name not in self._dying
                and s.version >= 0]
        best = max(held + [0])
        if best < self.committed:
            best = max(best, self._newest_checkpoint(self.committed))
        return min(best, self.committed)

    def _newest_checkpoint(self, at_most: int | None = None) -> int:
        """Step of the newest intact checkpoint (verified against its hashes); 0 if none.

        Damaged ones are skipped with an event and marked invalid in the store, once each.
        """
        from slurm_rl import checkpoint as ckpt

        found, skipped = ckpt.newest_valid(self.run.checkpoints, at_most, cache=self.ckpt_checked)
        for msg in skipped:
            step = int(msg.split()[1].rstrip(":"))
            if step not in self.ckpt_reported:
                self.ckpt_reported.add(step)
                self.store.invalidate_checkpoint(step)
                self.event("checkpoint_fallback", f"checkpoint {msg}; using an older one")
        return found.step if found is not None else 0

    def _trainer_lost(self, now: float) -> float:
        """Roll back to the newest restorable committed step; the lineage gets a new epoch from there."""
        point = self._restore_point()
        if point < self.committed:
            self.event("commit_lost", f"every holder of committed step {self.committed} is gone; the newest "
                       f"version still held or checkpointed is {point}",
                       data={"committed": self.committed, "restore_point": point})
            self.committed = point
            self.store.set_meta("committed", point)
        steps, groups, replay = self.store.rollback_after(self.committed, regenerate=False, now=now)
        lost = self.trainer_version - self.committed
        self.trainer_version = self.committed
        self.wepoch += 1
        self.epoch_bases.append(self.committed)
        self.store.set_metas(wepoch=self.wepoch, epoch_bases=self.epoch_bases, trainer_version=self.trainer_version)
        self.event("trainer_rollback", f"trainer lost: resuming at committed step {self.committed}; "
                   f"{lost} uncommitted step(s) undone, {groups} trajectory groups back in the queue",
                   data={"committed": self.committed, "steps_lost": lost, "groups_requeued": groups})
        for s in self.slots.values():
            if s.version > self.committed and s.kind is not RoleKind.TRAINER:
                s.version = -1
        return replay

    def _promote(self, standby: Slot, target: Slot, now: float, reason: str, *, resume_step: int,
                 planned: bool = False, awaited: bool = False) -> None:
        """Hand standby's live process to target's slot, and tell the process its new identity."""
        old_ident = (standby.name, standby.incarnation)
        if standby.kind is RoleKind.ROLLOUT:
            self.store.requeue_holder_prefix(standby.name)
        fault_ids = [] if planned else list(target.fault_ids)
        # the same live process carries on: it keeps the phase (and its timeout) it last reported, so
        # a standby that hung just before its promotion is found as fast as any hung role
        standby_phase = standby.phase
        target.incarnation += 1
        target.reset_runtime()
        target.state = RoleState.STARTING
        target.connected = True
        target.job_id = standby.job_id
        target.job = standby.job
        target.node = standby.node
        target.pid = standby.pid
        target.host_id = standby.host_id
        target.sync_addrs = dict(standby.sync_addrs)
        target.live_addr, target.link_lost_at = standby.live_addr, standby.link_lost_at
        target.proc_state, target.proc_at = standby.proc_state, standby.proc_at
        target.proc_cpu, target.cpu_moved_at = standby.proc_cpu, standby.cpu_moved_at
        target.version = standby.version
        target.last_hb = standby.last_hb if standby.last_hb is not None else now
        target.progress_at = now
        target.phase = standby_phase
        target.phase_since = now
        target.fault_ids = fault_ids
        cmd = P.Command(op="become", kind=target.kind.value, index=target.index, incarnation=target.incarnation,
                        resume_step=resume_step, reason=reason)
        target.assign = P.Command(op="assign", kind=target.kind.value, index=target.index,
                                  incarnation=target.incarnation, resume_step=resume_step)
        self.redirects[old_ident] = cmd
        if target.job_id:
            self.store.update_job(target.job_id, slot=target.name, incarnation=target.incarnation)
        # the standby's slot is now empty until backfilled; its old identity is stale from now on, so
        # the process is redirected (told its new role) rather than answered as the standby
        standby.incarnation += 1
        standby.state = RoleState.STOPPED
        standby.job_id = None
        standby.job = None
        standby.reserved_for = None
        standby.reset_runtime()
        # an awaited spare: the decision was the wait (at the death); its end is when the slot is filled
        self._faults(target, **({} if awaited else {"t_decide": now}), t_scheduled=now,
                     action=f"promote {old_ident[0]}")
        kind = "trainer_restored" if target.kind is RoleKind.TRAINER else "promoted"
        self.event(kind, f"{old_ident[0]} -> {target.name}: {reason}", slot=target.name, job_id=target.job_id,
                   node=target.node)

    def _submit(self, s: Slot, reason: str) -> None:
        now = time.time()
        s.incarnation += 1
        s.reset_runtime()
        s.state = RoleState.PENDING
        s.job_id = None
        s.submitted_at = now
        s.submitted_inc = s.incarnation
        s.submit_retry_at = None
        resume = self.committed if s.kind is RoleKind.TRAINER else -1
        s.assign = P.Command(op="assign", kind=s.kind.value, index=s.index, incarnation=s.incarnation,
                             resume_step=resume)
        self._faults(s, action=f"submit {s.name}")
        spec = LaunchSpec(
            run_name=self.run.name, run_dir=self.run.path, role=s.kind, index=s.index, incarnation=s.incarnation,
            argv=(sys.executable, "-m", "slurm_rl.roles.worker", str(self.run.path), s.kind.value, str(s.index),
                  "--incarnation", str(s.incarnation)),
            resources=self.cfg.resources(s.kind), env=_role_env(),
            extra_exclude=tuple(sorted(set(s.exclude) | self.excluded)))
        self.event("submitted", f"{s.name} incarnation {s.incarnation} submitted: {reason}", slot=s.name,
                   data={"exclude": list(spec.extra_exclude)})
        name, inc = s.name, s.incarnation

        def work() -> None:
            try:
                job_id = self.backend.submit(spec)
                self.backend_results.put(SubmitDone(name, inc, job_id))
            except Exception as e:
                self.backend_results.put(SubmitDone(name, inc, None, f"{e.__class__.__name__}: {e}"))

        self._exec.submit(work)

    def _retry_submits(self, now: float) -> None:
        for s in self.slots.values():
            if s.state is RoleState.PENDING and s.submit_retry_at is not None and now >= s.submit_retry_at:
                s.incarnation -= 1        # _submit bumps it again: same incarnation, new try
                self._submit(s, f"retry after a failed submission ({s.submit_failures} so far)")

    def _cancel(self, job_ids: list[str]) -> None:
        ids = [j for j in job_ids if j]
        if not ids:
            return

        def work() -> None:
            try:
                self.backend.cancel(ids)
                self.backend_results.put(CancelDone(ids))
            except Exception as e:
                self.backend_results.put(CancelDone(ids, f"{e.__class__.__name__}: {e}"))

        self._exec.submit(work)

    def _full_restart(self, reason: str, now: float) -> None:
        step = self._newest_checkpoint()
        self.full_restarts += 1
        jobs = [s.job_id for s in self.slots.values() if s.job_id]
        self._cancel(jobs)
        steps, groups, replay = self.store.rollback_after(step, regenerate=True, now=now)
        lost = max(0, self.trainer_version - step)
        self.trainer_version = step
        self.committed = step
        self.wepoch += 1
        self.epoch_bases.append(step)
        requeued = self.store.requeue_holder_prefix("%")
        self.store.set_metas(wepoch=self.wepoch, epoch_bases=self.epoch_bases, trainer_version=step, committed=step,
                             full_restarts=self.full_restarts)
        self.event("full_restart", f"full restart #{self.full_restarts} from checkpoint step {step}: {reason}; "
                   f"{lost} step(s) to replay, {groups} groups dropped, {requeued} leases returned",
                   data={"step": step, "steps_lost": lost, "groups_dropped": groups})
        open_faults = [f for s in self.slots.values() for f in s.fault_ids]
        open_faults += [f for fs in self.pending_faults.values() for f in fs]
        self.pending_faults.clear()
        self.redirects.clear()
        self.full_restart_faults = [f for f in open_faults if f is not None]
        for fid in self.full_restart_faults:
            self.store.update_fault(fid, t_decide=now, action="full restart",
                                    replay_s=replay / max(1, len(self.full_restart_faults)))
        for s in list(self.slots.values()):
            if s.extra:
                s.state = RoleState.STOPPED
                s.job_id = None
                continue
            s.fault_ids = []
            s.reserved_for = None
            s.exclude = ()
            self._submit(s, "full restart")
        # give the cancelled jobs a moment to go before judging the new ones
        self.restarting_until = now + 2.0

    def _recover_full_restart_faults(self, now: float, version: int) -> None:
        if self.full_restart_faults:
            for fid in self.full_restart_faults:
                self.store.update_fault(fid, t_recovered=now)
            self.event("recovered", f"run recovered by full restart: committed step {version}")
            self.full_restart_faults = []

    def _recovered(self, slot: Slot, now: float, what: str) -> None:
        rows = {r["id"]: r for r in self.store.faults()}
        self._faults(slot, t_recovered=now)
        first = min((rows[f]["t_fault"] for f in slot.fault_ids if f in rows), default=None)
        took = f" {now - first:.1f}s after the fault" if first is not None else ""
        self.event("recovered", f"{slot.name} recovered: {what}{took}", slot=slot.name, node=slot.node)
        slot.fault_ids = []

    def _faults(self, slot: Slot, **fields: Any) -> None:
        """Record a recovery milestone on every open fault the slot is recovering from."""
        for fid in slot.fault_ids:
            self.store.update_fault(fid, **fields)

    # ================================================================== scheduler results
    def _poll_loop(self) -> None:
        while not self._poll_stop.is_set():
            with self._poll_lock:
                ids = list(self._poll_jobs)
            try:
                snap = self.backend.poll(ids)
                self.backend_results.put(snap)
            except Exception as e:
                log.warning("scheduler poll failed: %s", e)
            self._poll_stop.wait(self.poll_interval)

    def _update_poll_jobs(self) -> None:
        ids = [s.job_id for s in self.slots.values() if s.job_id]
        # and every job we started whose end was not seen yet: a role declared dead by the fast
        # signals (probe, heartbeat) is replaced before Slurm reports its job's exit code
        ids += [j for j in self.job_slots if j not in self.job_endings and j not in ids]
        with self._poll_lock:
            self._poll_jobs = ids

    def _drain_backend_results(self, now: float) -> None:
        for r in _drained(self.backend_results):
            if isinstance(r, Snapshot):
                self._apply_snapshot(r)
            elif isinstance(r, SubmitDone):
                s = self.slots.get(r.slot)
                if s is None or s.incarnation != r.incarnation:
                    if r.job_id:
                        self._cancel([r.job_id])       # superseded while being submitted
                    continue
                if r.job_id is None:
                    s.submit_failures += 1
                    s.submit_retry_at = now + min(60.0, 5.0 * s.submit_failures)
                    self.event("submit_failed", f"submitting {s.name} failed: {r.error}", slot=s.name)
                    if s.submit_failures >= 5:
                        self._begin_stop(f"{s.name} could not be submitted 5 times: {r.error}", failed=True)
                    continue
                s.submit_failures = 0
                s.job_id = r.job_id
                self.job_slots[r.job_id] = s.name
                self.store.record_job(r.job_id, s.name, s.incarnation, self.backend.name, "PENDING", now)
                self._update_poll_jobs()
                self._dirty = True
            elif isinstance(r, CancelDone):
                if r.error:
                    self.event("cancel_failed", f"cancelling {', '.join(r.job_ids)} failed: {r.error}")

    def _apply_snapshot(self, snap: Snapshot) -> None:
        self.node_health = {n: st.health for n, st in snap.nodes.items()}
        for s in self.slots.values():
            if not s.job_id:
                continue
            js = snap.jobs.get(s.job_id)
            if js is None:
                continue
            changed = s.job is None or s.job.state != js.state
            s.job = js
            if js.proc_state and js.cpu_s is not None:
                self._saw_process(s, js.proc_state, js.cpu_s, time.time())
            if js.state is JobState.RUNNING and s.job_running_since is None:
                s.job_running_since = time.time()
            if js.nodes and not s.node:
                s.node = js.nodes[0]
            if changed:
                fields: dict[str, Any] = {"state": js.state.value, "nodes": ",".join(js.nodes)}
                if js.state is JobState.RUNNING:
                    fields["started"] = time.time()
                if js.state.terminal:
                    fields.update(ended=time.time(), exit_code=js.exit_code, signal=js.signal)
                    self.job_endings[s.job_id] = js.state
                self.store.update_job(s.job_id, **fields)
                self._dirty = True
        # jobs no slot owns any more (replaced after a death, cancelled): record how they ended,
        # which often arrives after the fast signals (probe, heartbeat) already declared the death
        owned = {s.job_id for s in self.slots.values()}
        for jid, js in snap.jobs.items():
            if jid in owned or not js.state.terminal or self.job_endings.get(jid) == js.state:
                continue
            self.job_endings[jid] = js.state
            self._update_poll_jobs()
            self.store.update_job(jid, state=js.state.value, exit_code=js.exit_code, signal=js.signal, ended=time.time())
            slot = self.job_slots.get(jid, "")
            self.event("job_ended", f"job {jid} ({slot or 'unknown role'}) ended {js.state.value}"
                       + (f" ({_exit_text(js)})" if _exit_text(js) else ""), slot=slot or None, job_id=jid,
                       data={"state": js.state.value, "exit_code": js.exit_code, "signal": js.signal})

    def _pulse(self, msg: P.Pulse, now: float) -> None:
        """The role process as its job's batch agent sees it (slurm_rl.roles.agent)."""
        s = next((x for x in self.slots.values() if x.job_id == msg.job_id), None)
        if s is not None:                            # else a job no role holds (ended, replaced)
            self._saw_process(s, msg.state, msg.cpu_s, now)

    def _saw_process(self, s: Slot, state: str, cpu_s: float, now: float) -> None:
        """Its process's state letter and CPU time, from its batch agent or the local backend."""
        if not s.state.alive:
            return
        if s.proc_cpu is None or not s.proc_cpu <= cpu_s < s.proc_cpu + _CPU_MOVED_S:
            s.proc_cpu, s.cpu_moved_at = cpu_s, now
        s.proc_state, s.proc_at = state, now

    def _watch(self, slot: Slot, live_addr: str) -> None:
        if slot.live_addr and slot.live_addr != live_addr:
            self.links.unwatch(slot.live_addr)
        slot.live_addr = live_addr
        slot.link_lost_at = None
        self.links.watch(live_addr)

    def _drain_links(self) -> None:
        for lost in _drained(self.links.lost):
            for s in self.slots.values():
                if s.live_addr == lost.address and s.connected and s.state.alive:
                    s.link_lost_at = lost.at
                    log.info("%s: liveness connection %s", s.name, lost.why)

    def _drain_probes(self) -> None:
        for p in _drained(self.prober.results):
            s = self.slots.get(p.slot)
            if s is None or s.incarnation != p.incarnation:
                continue
            s.probe_pending = False
            s.probe = p.result
            s.probe_at = time.time()

    # ================================================================== faults, chaos
    def _inject(self, msg: P.InjectRequest, now: float) -> P.Reply:
        s = self.slots.get(msg.slot)
        if s is None:
            known = ", ".join(sorted(n for n, x in self.slots.items() if x.state.alive))
            return P.Reply(ok=False, error=f"no role {msg.slot!r} in this run (live roles: {known})")
        try:
            fault = FaultKind(msg.fault)
        except ValueError:
            return P.Reply(ok=False, error=f"unknown fault {msg.fault!r}; use one of "
                                           f"{', '.join(f.value for f in FaultKind)}")
        if not s.state.alive or not s.job_id:
            return P.Reply(ok=False, error=f"{s.name} has no running job to inject into (state {s.state.value})")
        node = s.node
        if fault is FaultKind.EXIT:
            s.commands.append(P.Command(op="exit", exit_code=msg.exit_code, reason="injected fault"))
        else:
            try:
                node = self.backend.inject(s.job_id, fault, exit_code=msg.exit_code, node=s.node) or s.node
            except SlurmRLError as e:
                return P.Reply(ok=False, error=str(e))
        fid = self.store.open_fault(s.name, fault.value, node, True, now,
                                    data={"exit_code": msg.exit_code} if fault is FaultKind.EXIT else {})
        if fault is FaultKind.NODE_DOWN:
            # every role on that node is hit
            for other in self.slots.values():
                if other is not s and other.node == node and other.state.alive:
                    self.pending_faults.setdefault(other.name, []).append(
                        self.store.open_fault(other.name, fault.value, node, True, now))
        if fault is FaultKind.DRAIN:
            self.move_faults[s.name] = fid        # answered by the move, not by a death
        else:
            self.pending_faults.setdefault(s.name, []).append(fid)
        self.event("fault_injected", f"injected {fault.value} into {s.name} on {node}", slot=s.name,
                   job_id=s.job_id, node=node, data={"fault": fault.value})
        return P.Reply(payload=json.dumps({"slot": s.name, "fault": fault.value, "node": node,
                                           "job_id": s.job_id}).encode())

    def _chaos(self, now: float) -> None:
        if not self.chaos_plan or self.chaos_next >= len(self.chaos_plan) or self.restarting_until is not None:
            return
        f = self.chaos_plan[self.chaos_next]
        seen, t_seen = self._pace
        if self.trainer_version != seen:
            if seen >= 0 and self.trainer_version == seen + 1:
                self._step_gaps.append(now - t_seen)
            self._pace = (self.trainer_version, now)
        if self.trainer_version < f.at_step:
            return
        if self.chaos_due is None:
            # a fraction of the way into the next step, as a fault arriving at a random time would;
            # the median of recent step gaps ignores the one that a recovery stretched
            step_s = statistics.median(self._step_gaps) if self._step_gaps else 0.0
            self.chaos_due = now + f.at_fraction * step_s
        if now < self.chaos_due:
            return
        live = sorted((s for s in self.slots.values() if s.kind is f.role and s.state is RoleState.READY
                       and s.job_id), key=lambda s: s.index)
        if not live:
            return
        target = live[int(f.replica_pick * len(live))]
        self.chaos_next += 1
        self.chaos_due = None
        self.store.set_meta("chaos_next", self.chaos_next)
        reply = self._inject(P.InjectRequest(slot=target.name, fault=f.kind.value), now)
        if not reply.ok:
            self.event("chaos_skipped", f"chaos could not inject {f.kind.value} into {target.name}: {reply.error}")

    # ================================================================== completion, stop
    def _check_done(self) -> None:
        steps = self.cfg.algorithm.steps
        if self.trainer_version >= steps and self.committed >= steps:
            self._begin_stop(f"finished {steps} steps", failed=False, finished=True)

    def _begin_stop(self, reason: str, *, failed: bool, user: bool = False, finished: bool = False) -> None:
        if self.stopping is not None:
            return
        self.stopping = (reason, failed)
        self.final_state = "finished" if finished else ("failed" if failed else "stopped")
        self.stop_deadline = time.time() + 20.0
        for s in self.slots.values():
            if s.state.alive:
                s.stop_requested = True
                s.commands.append(P.Command(op="stop", reason=reason))
        self.store.set_meta("run_state", "stopping")
        self.event("stopping", f"stopping the run: {reason}")

    def _tick_stopping(self, now: float) -> None:
        assert self.stopping is not None
        alive = [s for s in self.slots.values() if s.state.alive and s.job_id and not s.goodbye
                 and not (s.job and s.job.state.terminal)]
        if alive and self.stop_deadline is not None and now < self.stop_deadline:
            self._flush()
            return
        reason, failed = self.stopping
        jobs = [s.job_id for s in self.slots.values() if s.job_id]
        # and jobs no slot owns any more whose end was never seen (a replaced role's old job):
        # cancelling a finished job is harmless, and the final poll records how each one ended
        jobs += [r["job_id"] for r in self.store.jobs(active_only=True) if r["job_id"] not in jobs]
        if jobs:
            try:
                self.backend.cancel(jobs)
                self._apply_snapshot(self.backend.poll(jobs))     # record how each job ended
            except SlurmRLError as e:
                log.warning("final cancel failed: %s", e)
        for s in self.slots.values():
            if s.state.alive:
                s.state = RoleState.STOPPED
        self.store.set_metas(run_state=self.final_state, ended=now, end_reason=reason)
        self.event(f"run_{self.final_state}", f"run {self.final_state}: {reason}")
        self._flush(force=True)
        self.exit_code = 1 if self.final_state != "finished" else 0

    # ================================================================== status & persistence
    def event(self, kind: str, msg: str, *, slot: str | None = None, job_id: str | None = None,
              node: str | None = None, data: dict[str, Any] | None = None) -> None:
        log.info("[%s] %s", kind, msg)
        self.store.event(time.time(), kind, msg, slot=slot, job_id=job_id, node=node, data=data)

    def _flush(self, force: bool = False) -> None:
        now = time.time()
        if not force and (not self._dirty or now - self._last_flush < 1.0):
            return
        self._last_flush = now
        self._dirty = False
        window = self.cfg.recovery.budget_window_s
        rows = [(s.name, s.kind.value, s.index, s.state.value, s.incarnation, s.job_id, s.node, s.phase.value,
                 s.progress, s.version, s.last_hb, len(s.restarts), s.detail, now, s.phase_since)
                for s in self.slots.values()]
        self.store.upsert_roles(rows)
        self.store.set_metas(node_failures=self.node_failures, heartbeat=now,
                             scheduler_calls=self.backend.call_counts, restarts_window=window)

    def status(self, n_events: int = 10) -> dict[str, Any]:
        from slurm_rl.report import status_dict

        self._flush(force=True)
        return status_dict(self.run, live=True, n_events=n_events)


def controller_host(cfg: RunConfig) -> str:
    """The address roles dial: loopback locally; on Slurm this host's name resolved to an address."""
    if cfg.controller.host != "auto":
        return cfg.controller.host
    if cfg.backend.value == "local":
        return "127.0.0.1"
    try:
        return socket.gethostbyname(socket.getfqdn())
    except OSError:
        return socket.gethostbyname(socket.gethostname())


def _drained(q: queue.SimpleQueue[Any]) -> Iterator[Any]:
    """Everything a helper thread has posted to `q` so far, without waiting."""
    while True:
        try:
            yield q.get_nowait()
        except queue.Empty:
            return


def _exit_text(js: JobStatus | None) -> str:
    if js is None:
        return ""
    if js.signal:
        return f"signal {js.signal}"
    if js.exit_code is not None and js.state.terminal:
        return f"exit {js.exit_code}"
    return js.reason


def _role_env() -> tuple[tuple[str, str], ...]:
    keep = ("PATH", "HOME", "USER", "LANG", "PYTHONPATH", "VIRTUAL_ENV", "TMPDIR", "VLLM_CPU_KVCACHE_SPACE",
            "SLURM_RL_LAB")
    env = {k: os.environ[k] for k in keep if k in os.environ}
    env.setdefault("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "1"))
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env["PYTHONUNBUFFERED"] = "1"
    return tuple(sorted(env.items()))


__all__ = ["Controller", "Slot"]
