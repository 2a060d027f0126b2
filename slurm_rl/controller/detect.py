"""Detection: everything the controller learns about a role's health and turns into the policy's
view. Hellos and heartbeats (phase, progress, readiness), the liveness links and probes, the batch
agents' process pulses, and the scheduler's poll snapshots (job states, exit codes, node health).
`view()` is the frozen snapshot `policy.decide` judges; Suspect/Clear/Probe actions land here."""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from slurm_rl import protocol as P
from slurm_rl.backends.base import Snapshot
from slurm_rl.config import RecoveryPolicy
from slurm_rl.controller import clock
from slurm_rl.controller import view as V
from slurm_rl.controller.context import Context
from slurm_rl.controller.faults import Faults
from slurm_rl.controller.prober import Prober
from slurm_rl.controller.registry import Registry
from slurm_rl.controller.slot import RankSeen, Slot, exit_text
from slurm_rl.controller.weights import Lineage
from slurm_rl.liveness import LinkWatcher
from slurm_rl.states import JobState, NodeHealth, Phase, RoleKind, RoleState

log = logging.getLogger("slurm_rl.controller")

_ACTIVE_PHASES_READY = {Phase.IDLE, Phase.WAITING_FOR_DATA, Phase.STEPPING, Phase.CHECKPOINTING, Phase.PUBLISHING,
                        Phase.GENERATING, Phase.SYNCING_WEIGHTS}

# a multi-rank role's node health is its worst node's
_HEALTH_ORDER = [NodeHealth.OK, NodeHealth.UNKNOWN, NodeHealth.DRAIN, NodeHealth.DOWN]

# CPU seconds a process must use between pulses to count as running (a deadlocked process's idle
# threads use a few milliseconds)
_CPU_MOVED_S = 0.05


def drained(q: queue.SimpleQueue[Any]) -> Iterator[Any]:
    """Everything a helper thread has posted to `q` so far, without waiting."""
    while True:
        try:
            yield q.get_nowait()
        except queue.Empty:
            return


class Poller:
    """The scheduler poll on its own thread: one batched call for every tracked job per interval,
    its snapshots posted to `results` for the loop thread."""

    def __init__(self, ctx: Context, results: queue.SimpleQueue[Any], interval_s: float):
        self.ctx = ctx
        self.results = results
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._jobs: list[str] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, name="poller", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def track(self, job_ids: list[str]) -> None:
        with self._lock:
            self._jobs = list(job_ids)

    def stop(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                ids = list(self._jobs)
            try:
                self.results.put(self.ctx.backend.poll(ids))
            except Exception as e:
                log.warning("scheduler poll failed: %s", e)
            self._stop.wait(self.interval_s)


def _link_key(ctx: Context) -> bytes | None:
    """The run's key the liveness links are authenticated with (none in a bare test run dir)."""
    try:
        return ctx.run.sync_key()
    except OSError:
        return None


class Detector:
    def __init__(self, ctx: Context, registry: Registry, lineage: Lineage, faults: Faults,
                 on_jobs_changed: Callable[[], None]):
        self.ctx = ctx
        self.registry = registry
        self.lineage = lineage
        self.faults = faults
        self.on_jobs_changed = on_jobs_changed
        rc = ctx.cfg.recovery
        self.prober = Prober(rc.probe_timeout_s)
        self.links = LinkWatcher(rc.probe_timeout_s, key=_link_key(ctx))
        self.node_health: dict[str, NodeHealth] = {}
        self.start_times = V.StartTimes()              # submission -> ready, per kind of start
        self.thresholds = V.Thresholds(
            suspect_after_s=rc.suspect_after_s, hang_after_s=rc.hang_after_s, phase_timeouts=dict(rc.phase_timeouts),
            restart_budget=rc.restart_budget, exclude_node_after=rc.exclude_node_after,
            max_full_restarts=rc.max_full_restarts, standby=rc.standby,
            full_restart_policy=rc.policy is RecoveryPolicy.FULL_RESTART, spare_replicas=ctx.cfg.spare.replicas,
            hang_idle_after_s=rc.hang_idle_after_s, use_process_state=rc.process_state,
            stopped_after_s=2 * rc.heartbeat_interval_s)
        self.standby_misfit = {k: why for k in (RoleKind.SPARE, RoleKind.ROLLOUT)
                               if (why := ctx.cfg.standby_misfit(k))}

    def close(self) -> None:
        self.prober.close()
        self.links.close()

    # ---- messages from roles (`now`: their arrival on the controller's monotonic clock, clock.mono)
    def seen(self, slot: Slot, now: float) -> None:
        slot.last_hb = now
        if not slot.connected and slot.state.alive and not slot.goodbye:
            slot.connected = True        # e.g. after a controller resume
            if slot.state is RoleState.PENDING:
                slot.state = RoleState.STARTING
            slot.progress_at = now

    def hello(self, slot: Slot, msg: P.Hello, now: float) -> None:
        slot.connected = True
        slot.state = RoleState.STARTING
        slot.node = msg.node or slot.node
        slot.pid = msg.pid
        slot.host_id = msg.host_id
        slot.sync_addrs = dict(msg.sync_addrs)
        self.watch(slot, msg.live_addr)
        slot.last_hb = now
        slot.progress_at = now
        slot.phase = Phase.LOADING
        slot.phase_since = now
        if msg.job_id and slot.job_id is None:
            slot.job_id = msg.job_id
        slot.world_size, slot.rdzv = max(1, msg.world_size), msg.rdzv
        ranks = f", {msg.world_size} ranks" if msg.world_size > 1 else ""
        self.ctx.event("connected", f"{slot.name} connected from {msg.node} (job {msg.job_id}, pid {msg.pid}{ranks})",
                       slot=slot.name, job_id=msg.job_id, node=msg.node,
                       data={"rank": 0, "node": msg.node, "world_size": msg.world_size})
        self.faults.milestone(slot, t_scheduled=time.time())
        self.registry.touch()

    def rank_hello(self, slot: Slot, msg: P.Hello, now: float) -> None:
        """A rank > 0 of a multi-rank role: alive from now on, watched like rank 0."""
        seen = RankSeen(node=msg.node or None, pid=msg.pid, live_addr=msg.live_addr, last_hb=now,
                        sync_addrs=dict(msg.sync_addrs), host_id=msg.host_id)
        old = slot.ranks.get(msg.rank)
        if old is not None and old.live_addr and old.live_addr != msg.live_addr:
            self.links.unwatch(old.live_addr)
        slot.ranks[msg.rank] = seen
        if msg.live_addr:
            self.links.watch(msg.live_addr)
        if old is None:
            self.ctx.event("rank_connected", f"{slot.name} rank {msg.rank} connected from {msg.node} (pid {msg.pid})",
                           slot=slot.name, job_id=msg.job_id, node=msg.node,
                           data={"rank": msg.rank, "node": msg.node, "pid": msg.pid})

    def rank_heartbeat(self, slot: Slot, msg: P.Heartbeat, now: float) -> None:
        seen = slot.ranks.get(msg.rank)
        if seen is None:                    # its hello was lost (a controller resume): it is alive
            seen = slot.ranks[msg.rank] = RankSeen(node=None, pid=None)
        seen.last_hb = now
        if msg.sync_addrs:
            seen.sync_addrs = dict(msg.sync_addrs)
        if msg.live_addr and msg.live_addr != seen.live_addr:
            if seen.live_addr:
                self.links.unwatch(seen.live_addr)
            seen.live_addr, seen.link_lost_at = msg.live_addr, None
            self.links.watch(msg.live_addr)

    def heartbeat(self, slot: Slot, msg: P.Heartbeat, now: float) -> None:
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
            self.watch(slot, msg.live_addr)       # e.g. after a controller resume
        self.lineage.held(slot, msg.version, msg.wepoch, None, msg.parts)
        if slot.state is RoleState.STARTING and phase in _ACTIVE_PHASES_READY:
            slot.state = RoleState.READY
            if slot.submitted_inc == slot.incarnation and slot.submitted_at is not None:
                self.start_times.add(slot.kind, now - slot.submitted_at)      # the policy weighs starts by these
                slot.submitted_inc = -1
            self.ctx.event("ready", f"{slot.name} is ready ({phase.value})", slot=slot.name, job_id=slot.job_id,
                           node=slot.node)
            self.faults.milestone(slot, once=("t_loaded",), t_loaded=time.time())
            if slot.kind in (RoleKind.SPARE, RoleKind.TRAINER_SPARE) and slot.fault_ids:
                self.faults.recovered(slot, time.time(), "standby ready again")
        if slot.fault_ids and slot.kind is RoleKind.ROLLOUT and phase is Phase.GENERATING \
                and prev_phase is not Phase.GENERATING:
            self.faults.recovered(slot, time.time(), "generating again")
        self.registry.touch()

    def pulse(self, msg: P.Pulse, now: float) -> None:
        """The role process as its job's batch agent sees it (slurm_rl.roles.agent)."""
        s = self.registry.by_job(msg.job_id)
        if s is not None:                            # else a job no role holds (ended, replaced)
            self._saw_process(s, msg.state, msg.cpu_s, now)

    def _saw_process(self, s: Slot, state: str, cpu_s: float, now: float) -> None:
        """Its process's state letter and CPU time, from its batch agent or the local backend."""
        if not s.state.alive:
            return
        if s.proc_cpu is None or not s.proc_cpu <= cpu_s < s.proc_cpu + _CPU_MOVED_S:
            s.proc_cpu, s.cpu_moved_at = cpu_s, now
        s.proc_state, s.proc_at = state, now

    # ---- links and probes
    def watch(self, slot: Slot, live_addr: str) -> None:
        if slot.live_addr and slot.live_addr != live_addr:
            self.links.unwatch(slot.live_addr)
        slot.live_addr = live_addr
        slot.link_lost_at = None
        self.links.watch(live_addr)

    def probe(self, s: Slot) -> None:
        """Probe the rank that looks worst: the one whose link closed, else the longest silent."""
        s.probe_pending = True
        addr = s.sync_addrs.get("tcp")
        if s.ranks:
            worst = min(s.ranks.values(), key=lambda r: (r.link_lost_at is None, r.last_hb or 0.0))
            if worst.live_addr and (worst.link_lost_at is not None or (worst.last_hb or 0.0) < (s.last_hb or 0.0)):
                addr = worst.live_addr
        self.prober.submit(s.name, s.incarnation, addr)

    def drain(self) -> None:
        """Apply what the prober and the link watcher found since the last tick."""
        for p in drained(self.prober.results):
            s = self.registry.get(p.slot)
            if s is None or s.incarnation != p.incarnation:
                continue
            s.probe_pending = False
            s.probe = p.result
            s.probe_at = clock.mono()
        for lost in drained(self.links.lost):
            for s in self.registry:
                if not (s.connected and s.state.alive):
                    continue
                if s.live_addr == lost.address:
                    s.link_lost_at = lost.at
                    log.info("%s: liveness connection %s", s.name, lost.why)
                for r, seen in s.ranks.items():
                    if seen.live_addr == lost.address:
                        seen.link_lost_at = lost.at
                        log.info("%s rank %d: liveness connection %s", s.name, r, lost.why)

    # ---- scheduler snapshots
    def snapshot(self, snap: Snapshot) -> None:
        self.node_health = {n: st.health for n, st in snap.nodes.items()}
        store = self.ctx.store
        for s in self.registry:
            if not s.job_id:
                continue
            js = snap.jobs.get(s.job_id)
            if js is None:
                continue
            changed = s.job is None or s.job.state != js.state
            had_nodes = bool(s.job and s.job.nodes)
            s.job = js
            if js.proc_state and js.cpu_s is not None:
                self._saw_process(s, js.proc_state, js.cpu_s, clock.mono())
            if js.state is JobState.RUNNING and s.job_running_since is None:
                s.job_running_since = clock.mono()
            if js.nodes and not s.node:
                s.node = js.nodes[0]
            if changed:
                fields: dict[str, Any] = {"state": js.state.value}
                # the allocation is what RUNNING lists: a COMPLETING job lists only the nodes still
                # completing, so a later, shorter list must not overwrite it
                if js.nodes and (js.state is JobState.RUNNING or not had_nodes):
                    fields["nodes"] = ",".join(js.nodes)
                if js.state is JobState.RUNNING:
                    fields["started"] = time.time()
                if js.state.terminal:
                    fields.update(ended=time.time(), exit_code=js.exit_code, signal=js.signal)
                    self.registry.job_endings[s.job_id] = js.state
                store.update_job(s.job_id, **fields)
                self.registry.touch()
        # jobs no slot owns any more (replaced after a death, cancelled): record how they ended,
        # which often arrives after the fast signals (probe, heartbeat) already declared the death
        owned = {s.job_id for s in self.registry}
        endings = self.registry.job_endings
        for jid, js in snap.jobs.items():
            if jid in owned or not js.state.terminal or endings.get(jid) == js.state:
                continue
            endings[jid] = js.state
            self.on_jobs_changed()
            store.update_job(jid, state=js.state.value, exit_code=js.exit_code, signal=js.signal, ended=time.time())
            slot = self.registry.job_slots.get(jid, "")
            how = exit_text(js)
            self.ctx.event("job_ended", f"job {jid} ({slot or 'unknown role'}) ended {js.state.value}"
                           + (f" ({how})" if how else ""), slot=slot or None, job_id=jid,
                           data={"state": js.state.value, "exit_code": js.exit_code, "signal": js.signal})

    # ---- the policy's view, and the detection actions
    def view(self, *, committed: int, full_restarts: int, node_failures: dict[str, int], excluded: set[str],
             restarting: bool, stopping: bool) -> V.View:
        now = clock.mono()
        window = self.ctx.cfg.recovery.budget_window_s
        views = []
        trainer_shape = self.ctx.cfg.trainer_shape()
        for s in self.registry:
            # a multi-rank role is as alive as its weakest rank: the oldest heartbeat, the first
            # closed link, the worst node
            last_hb, link_lost_at = s.last_hb, s.link_lost_at
            for r in s.ranks.values():
                if r.last_hb is not None and (last_hb is None or r.last_hb < last_hb):
                    last_hb = r.last_hb
                if r.link_lost_at is not None and (link_lost_at is None or r.link_lost_at < link_lost_at):
                    link_lost_at = r.link_lost_at
            health = max((self.node_health.get(n, NodeHealth.OK) for n in s.nodes() or [""]), key=_HEALTH_ORDER.index)
            views.append(V.SlotView(
                kind=s.kind, index=s.index, state=s.state, incarnation=s.incarnation, job_id=s.job_id, node=s.node,
                connected=s.connected, phase=s.phase, last_hb=last_hb, progress_at=s.progress_at,
                suspect_since=s.suspect_since, suspect_reason=s.suspect_reason, probe=s.probe, probe_at=s.probe_at,
                link_lost_at=link_lost_at, proc_state=s.proc_state, proc_at=s.proc_at,
                cpu_moved_at=s.cpu_moved_at,
                probe_pending=s.probe_pending, job_state=s.job.state if s.job else None,
                job_running_since=s.job_running_since,
                job_exit=exit_text(s.job), node_health=health,
                shape=trainer_shape if s.kind in (RoleKind.TRAINER, RoleKind.TRAINER_SPARE) else (1, 1),
                nodes=tuple(s.nodes()), version=s.version, restarts_in_window=sum(1 for t in s.restarts if now - t < window),
                moving=s.moving, reserved_for=s.reserved_for, stop_requested=s.stop_requested, goodbye=s.goodbye,
                extra=s.extra, starting_since=s.submitted_at if s.submitted_inc == s.incarnation
                and s.state in (RoleState.PENDING, RoleState.STARTING) else None))
        return V.View(slots=views, thresholds=self.thresholds, committed_version=committed,
                      full_restarts=full_restarts, node_failures=dict(node_failures),
                      excluded_nodes=frozenset(excluded), restarting=restarting, stopping=stopping,
                      start_s=self.start_times.estimates() if self.ctx.cfg.recovery.weigh_start_times else {},
                      trainer_shape=trainer_shape, standby_misfit=self.standby_misfit)

    def apply(self, a: V.Action, now: float) -> None:
        """Suspect, Clear and Probe: the detection state of one slot."""
        s = self.registry[a.slot]       # type: ignore[attr-defined]
        if isinstance(a, V.Suspect):
            s.state_before_suspect = s.state if s.state is not RoleState.SUSPECT else s.state_before_suspect
            s.state = RoleState.SUSPECT
            s.suspect_since = now
            s.suspect_reason = a.reason
            self.ctx.event("suspect", f"{s.name} is SUSPECT: {a.reason}", slot=s.name, job_id=s.job_id, node=s.node)
            self.probe(s)
        elif isinstance(a, V.Probe):
            self.probe(s)
        elif isinstance(a, V.Clear):
            # back to what it was: a role still loading when it went quiet is not READY
            s.state = s.state_before_suspect if s.connected else RoleState.STARTING
            s.suspect_since = None
            if s.link_lost_at is not None:         # alive after all: watch it again
                s.link_lost_at = None
                self.links.watch(s.live_addr)
            self.ctx.event("cleared", f"{s.name} is fine again: {a.reason}", slot=s.name)
        self.registry.touch()


DETECTION_ACTIONS = (V.Suspect, V.Clear, V.Probe)
