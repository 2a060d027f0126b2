"""Recovery: applying the policy's decisions. A dead role's leases go back and its faults are
recorded; a standby's live process is handed to the slot it takes over (promote); new jobs are
submitted and old ones cancelled on a helper thread, their results posted back to the loop; a full
restart cancels everything and starts over from the newest checkpoint at or before the committed
step. `policy.decide` decides; nothing here does."""

from __future__ import annotations

import logging
import os
import queue
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from slurm_rl import protocol as P
from slurm_rl.backends.base import LaunchSpec
from slurm_rl.controller import clock
from slurm_rl.controller import view as V
from slurm_rl.controller.broker import Broker
from slurm_rl.controller.context import Context
from slurm_rl.controller.faults import Faults
from slurm_rl.controller.registry import Registry
from slurm_rl.controller.slot import Slot
from slurm_rl.controller.weights import Lineage
from slurm_rl.states import RoleKind, RoleState

log = logging.getLogger("slurm_rl.controller")


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


class Recovery:
    def __init__(self, ctx: Context, registry: Registry, lineage: Lineage, broker: Broker, faults: Faults,
                 results: queue.SimpleQueue[Any], *, on_jobs_changed: Callable[[], None],
                 stop_run: Callable[[str, bool], None]):
        self.ctx = ctx
        self.registry = registry
        self.lineage = lineage
        self.broker = broker
        self.faults = faults
        self.results = results
        self.on_jobs_changed = on_jobs_changed
        self.stop_run = stop_run
        meta = ctx.store.get_meta
        self.full_restarts = int(meta("full_restarts", 0))
        self.node_failures: dict[str, int] = dict(meta("node_failures", {}))
        self.excluded: set[str] = set(meta("excluded_nodes", []))
        self.restarting_until: float | None = None
        self.dying: set[str] = set()       # roles found dead in this tick: no one restores from them
        self._exec = ThreadPoolExecutor(max_workers=1, thread_name_prefix="backend")

    def close(self) -> None:
        self._exec.shutdown(wait=True)

    # ---- decisions
    def apply(self, a: V.Action, now: float) -> None:
        reg = self.registry
        if isinstance(a, V.Dead):
            self._dead(reg[a.slot], a, now)
        elif isinstance(a, V.ExcludeNode):
            self.excluded.add(a.node)
            self.ctx.store.set_meta("excluded_nodes", sorted(self.excluded))
            self.ctx.event("node_excluded", f"node {a.node} excluded from new role jobs: {a.reason}", node=a.node)
        elif isinstance(a, V.PromoteSpare):
            self._promote(reg[a.spare], reg[a.target], now, a.reason, resume_step=-1, awaited=a.awaited)
        elif isinstance(a, V.AwaitSpare):
            spare, target = reg[a.spare], reg[a.target]
            spare.reserved_for = target.name
            self.faults.milestone(target, action=f"await {spare.name}")
            self.ctx.event("awaiting_spare", f"{target.name} waits for {spare.name}: {a.reason}", slot=target.name)
        elif isinstance(a, V.PromoteTrainer):
            # resume where the restore point ended up (it may be below what the policy saw)
            self._promote(reg[a.standby], reg.trainer(), now, a.reason, resume_step=self.lineage.committed)
        elif isinstance(a, V.Submit):
            s = reg[a.slot]
            s.exclude = a.exclude
            self.submit(s, a.reason)
        elif isinstance(a, V.AddSpare):
            self.submit(reg.add_spare(a.for_slot), a.reason)
        elif isinstance(a, V.StartMove):
            self._start_move(reg[a.slot], reg[a.spare], a.reason, now)
        elif isinstance(a, V.FinishMove):
            self._finish_move(reg[a.slot], reg[a.spare], a.reason, now)
        elif isinstance(a, V.FullRestart):
            self._full_restart(a.reason, now)
        elif isinstance(a, V.StopRun):
            self.stop_run(a.reason, a.failed)
        reg.touch()

    def _dead(self, s: Slot, a: V.Dead, now: float) -> None:
        prev_state = s.state
        s.state = RoleState.DEAD
        s.restarts.append(clock.mono())
        fids = self.faults.detected(s, a.signals, now)
        store = self.ctx.store
        for fid in fids:
            store.update_fault(fid, t_detect=now, t_decide=now, reason=a.reason)
        if s.node and not (s.goodbye and s.stop_requested):
            self.node_failures[s.node] = self.node_failures.get(s.node, 0) + 1
        self.ctx.event("dead", f"{s.name} is DEAD: {a.reason}", slot=s.name, job_id=s.job_id, node=s.node,
                       data={"signals": list(a.signals), "was": prev_state.value})
        if s.job_id and not (s.job and s.job.state.terminal):
            self.cancel([s.job_id])
        if s.kind is RoleKind.ROLLOUT:
            n = self.broker.requeue(s.name)
            if n:
                self.ctx.event("leases_requeued", f"{n} prompt leases of {s.name} went back to the queue", slot=s.name)
        elif s.kind is RoleKind.TRAINER:
            replay = self.lineage.trainer_lost(now, self.dying)
            for fid in fids:
                store.update_fault(fid, replay_s=replay / len(fids))
        s.fault_ids = s.fault_ids + fids     # a replacement dying before it recovered: both stay open
        s.reserved_for = None                # a dead spare keeps no promise (a slot waiting for it resubmits)
        s.version = -1
        s.connected = False
        self.registry.forget_redirects(s.name)

    def _promote(self, standby: Slot, target: Slot, now: float, reason: str, *, resume_step: int,
                 planned: bool = False, awaited: bool = False) -> None:
        """Hand standby's live process to target's slot, and tell the process its new identity."""
        old_ident = (standby.name, standby.incarnation)
        if standby.kind is RoleKind.ROLLOUT:
            self.broker.requeue(standby.name)
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
        target.world_size, target.rdzv, target.ranks = standby.world_size, standby.rdzv, dict(standby.ranks)
        target.last_hb = standby.last_hb if standby.last_hb is not None else clock.mono()
        target.progress_at = clock.mono()
        target.phase = standby_phase
        target.phase_since = clock.mono()
        target.fault_ids = fault_ids
        # a drain injected into the standby's node is answered by its process's move off it, now under
        # target's name (a rollout promoted to trainer before its drain was seen left the drain open)
        drain = self.faults.moves.pop(standby.name, None)
        if drain is not None and self.faults.moves.setdefault(target.name, drain) != drain:
            self.ctx.store.update_fault(drain, t_recovered=now, action=f"promoted to {target.name}")
        cmd = P.Command(op="become", kind=target.kind.value, index=target.index, incarnation=target.incarnation,
                        resume_step=resume_step, reason=reason)
        target.assign = P.Command(op="assign", kind=target.kind.value, index=target.index,
                                  incarnation=target.incarnation, resume_step=resume_step)
        self.registry.redirect(old_ident, cmd)
        if target.job_id:
            self.ctx.store.update_job(target.job_id, slot=target.name, incarnation=target.incarnation)
        # the standby's slot is empty until backfilled; its old identity is stale from now on, so the
        # process is redirected (told its new role) rather than answered as the standby
        standby.incarnation += 1
        standby.state = RoleState.STOPPED
        standby.job_id = None
        standby.job = None
        standby.reserved_for = None
        standby.reset_runtime()
        # an awaited spare: the decision was the wait (at the death); its end is when the slot is filled
        self.faults.milestone(target, **({} if awaited else {"t_decide": now}), t_scheduled=now,
                              action=f"promote {old_ident[0]}")
        kind = "trainer_restored" if target.kind is RoleKind.TRAINER else "promoted"
        self.ctx.event(kind, f"{old_ident[0]} -> {target.name}: {reason}", slot=target.name, job_id=target.job_id,
                       node=target.node, data={"from": old_ident[0], "world_size": target.world_size,
                                               "nodes": target.nodes()})
        self.registry.flush(force=True)     # who holds which slot now, before a controller death could lose it

    def _start_move(self, s: Slot, spare: Slot, reason: str, now: float) -> None:
        spare.reserved_for = s.name
        s.moving = True
        s.stop_requested = True
        s.state = RoleState.MOVING
        s.commands.append(P.Command(op="stop", reason=reason))
        fid = self.faults.moves.get(s.name)
        if fid is not None:
            self.ctx.store.update_fault(fid, t_detect=now, t_decide=now, action=f"move to {spare.name}")
        self.ctx.event("move_started", f"moving {s.name} off {s.node}: {reason}", slot=s.name, node=s.node)

    def _finish_move(self, s: Slot, spare: Slot, reason: str, now: float) -> None:
        old_job = s.job_id
        lin = self.lineage
        if s.kind is RoleKind.TRAINER and lin.trainer_version > lin.committed:
            # its stop-checkpoint failed (or it died stopping): steps only it held are undone, as for a loss
            replay = lin.trainer_lost(now, {s.name})
            fid = self.faults.moves.get(s.name)
            if fid is not None:
                self.ctx.store.update_fault(fid, replay_s=replay)
        resume = lin.committed if s.kind is RoleKind.TRAINER else -1
        self._promote(spare, s, now, reason, resume_step=resume, planned=True)
        fid = self.faults.moves.pop(s.name, None)
        s.fault_ids = [fid] if fid is not None else []
        self.faults.milestone(s, t_scheduled=now)
        self.ctx.event("moved", f"{s.name} moved off its draining node: {reason}", slot=s.name, node=s.node)
        if old_job:
            self.cancel([old_job])
        if spare.kind is RoleKind.TRAINER_SPARE or (not spare.extra and spare.index < self.ctx.cfg.spare.replicas):
            self.submit(spare, f"backfill {spare.name} after the move")

    def _full_restart(self, reason: str, now: float) -> None:
        # at or before the committed step: a newer checkpoint holds steps that were rolled back
        step = self.lineage.newest_checkpoint(at_most=self.lineage.committed)
        self.full_restarts += 1
        self.cancel([s.job_id for s in self.registry if s.job_id])
        lin = self.lineage
        with self.ctx.store.tx():          # all or nothing: no rolled-back steps under the old epoch
            lost, groups, replay = lin.restart_from(step, now)
            requeued = self.broker.requeue("%")
            self.ctx.store.set_metas(wepoch=lin.wepoch, epoch_bases=lin.epoch_bases, trainer_version=step,
                                     committed=step, full_restarts=self.full_restarts)
        self.ctx.event("full_restart", f"full restart #{self.full_restarts} from checkpoint step {step}: {reason}; "
                       f"{lost} step(s) to replay, {groups} groups dropped, {requeued} leases returned",
                       data={"step": step, "steps_lost": lost, "groups_dropped": groups})
        self.faults.start_full_restart(now, replay)
        self.registry.forget_redirects()
        for s in list(self.registry):
            if s.extra:
                s.state = RoleState.STOPPED
                s.job_id = None
                continue
            s.fault_ids = []
            s.reserved_for = None
            s.exclude = ()
            self.submit(s, "full restart")
        # give the cancelled jobs a moment to go before judging the new ones
        self.restarting_until = clock.mono() + 2.0

    # ---- jobs
    def submit(self, s: Slot, reason: str) -> None:
        """A new job for the slot's next incarnation, submitted on the helper thread."""
        s.incarnation += 1
        s.reset_runtime()
        s.state = RoleState.PENDING
        s.job_id = None
        s.submitted_at = clock.mono()
        s.submitted_inc = s.incarnation
        s.submit_retry_at = None
        resume = self.lineage.committed if s.kind is RoleKind.TRAINER else -1
        s.assign = P.Command(op="assign", kind=s.kind.value, index=s.index, incarnation=s.incarnation,
                             resume_step=resume)
        self.faults.milestone(s, action=f"submit {s.name}")
        run, cfg = self.ctx.run, self.ctx.cfg
        spec = LaunchSpec(
            run_name=run.name, run_dir=run.path, role=s.kind, index=s.index, incarnation=s.incarnation,
            argv=(sys.executable, "-m", "slurm_rl.roles.worker", str(run.path), s.kind.value, str(s.index),
                  "--incarnation", str(s.incarnation)),
            resources=cfg.resources(s.kind), env=role_env(),
            extra_exclude=tuple(sorted(set(s.exclude) | self.excluded)))
        self.ctx.event("submitted", f"{s.name} incarnation {s.incarnation} submitted: {reason}", slot=s.name,
                       data={"exclude": list(spec.extra_exclude)})
        name, inc, backend, results = s.name, s.incarnation, self.ctx.backend, self.results

        def work() -> None:
            try:
                results.put(SubmitDone(name, inc, backend.submit(spec)))
            except Exception as e:
                results.put(SubmitDone(name, inc, None, f"{e.__class__.__name__}: {e}"))

        self._exec.submit(work)

    def retry_submits(self, now: float) -> None:      # now: clock.mono()
        for s in self.registry:
            if s.state is RoleState.PENDING and s.submit_retry_at is not None and now >= s.submit_retry_at:
                s.incarnation -= 1        # submit bumps it again: same incarnation, new try
                self.submit(s, f"retry after a failed submission ({s.submit_failures} so far)")

    def cancel(self, job_ids: list[str]) -> None:
        ids = [j for j in job_ids if j]
        if not ids:
            return
        backend, results = self.ctx.backend, self.results

        def work() -> None:
            try:
                backend.cancel(ids)
                results.put(CancelDone(ids))
            except Exception as e:
                results.put(CancelDone(ids, f"{e.__class__.__name__}: {e}"))

        self._exec.submit(work)

    def job_result(self, r: SubmitDone | CancelDone, now: float) -> None:
        """A submission or cancellation the helper thread finished."""
        if isinstance(r, CancelDone):
            if r.error:
                self.ctx.event("cancel_failed", f"cancelling {', '.join(r.job_ids)} failed: {r.error}")
            return
        s = self.registry.get(r.slot)
        if s is None or s.incarnation != r.incarnation:
            if r.job_id:
                self.cancel([r.job_id])       # superseded while being submitted
            return
        if r.job_id is None:
            s.submit_failures += 1
            s.submit_retry_at = clock.mono() + min(60.0, 5.0 * s.submit_failures)
            self.ctx.event("submit_failed", f"submitting {s.name} failed: {r.error}", slot=s.name)
            if s.submit_failures >= 5:
                self.stop_run(f"{s.name} could not be submitted 5 times: {r.error}", True)
            return
        s.submit_failures = 0
        if s.job_id and s.job_id != r.job_id:
            # an earlier try of this submission went through and its process already said hello
            self.ctx.event("duplicate_job", f"job {r.job_id} duplicates {s.name}'s job {s.job_id}: cancelled",
                           slot=s.name, job_id=r.job_id)
            self.cancel([r.job_id])
            return
        s.job_id = r.job_id
        self.registry.job_started(r.job_id, s)
        self.ctx.store.record_job(r.job_id, s.name, s.incarnation, self.ctx.backend.name, "PENDING", now)
        self.on_jobs_changed()
        self.registry.touch()


def role_env() -> tuple[tuple[str, str], ...]:
    """The environment a role job gets: what it needs from ours, and single-threaded BLAS by default."""
    keep = ("PATH", "HOME", "USER", "LANG", "PYTHONPATH", "VIRTUAL_ENV", "TMPDIR", "VLLM_CPU_KVCACHE_SPACE",
            "SLURM_RL_LAB")
    env = {k: os.environ[k] for k in keep if k in os.environ}
    env.setdefault("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "1"))
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env["PYTHONUNBUFFERED"] = "1"
    return tuple(sorted(env.items()))
