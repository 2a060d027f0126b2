"""The controller: one thread that receives control messages, hands each to the room that owns it,
applies scheduler and probe results, asks the pure `policy.decide` what to do and has the rooms do
it, then checks for the end of the run. Scheduler calls and probes run on helper threads and post
back, so the loop never blocks on Slurm; only this thread writes the store.

Rooms: registry (slots), broker (data), weights (lineage, holders), detect (health -> view),
recover (actions), faults (injection, chaos, fault records)."""

from __future__ import annotations

import errno
import json
import logging
import os
import queue
import socket
import sqlite3
import time
from typing import Any

import msgspec

from slurm_rl import protocol as P
from slurm_rl.backends.base import Backend, Snapshot
from slurm_rl.config import RunConfig
from slurm_rl.controller import clock
from slurm_rl.controller import policy as pol
from slurm_rl.controller.broker import Broker
from slurm_rl.controller.context import Context
from slurm_rl.controller.detect import DETECTION_ACTIONS, Detector, Poller, drained
from slurm_rl.controller.faults import Faults
from slurm_rl.controller.recover import Recovery, SubmitDone
from slurm_rl.controller.registry import Registry
from slurm_rl.controller.slot import Slot
from slurm_rl.controller.weights import Lineage
from slurm_rl.controlplane import ControlServer
from slurm_rl.errors import FATAL_ROLE_EXITS, SlurmRLError
from slurm_rl.metrics import MetricsSink
from slurm_rl.rundir import ControllerAddress, RunDir
from slurm_rl.states import Phase, RoleState
from slurm_rl.store import Store

log = logging.getLogger("slurm_rl.controller")

EXIT_DISK_FULL = 75          # EX_TEMPFAIL: resumable once there is space
MIN_FREE_BYTES = 1 << 20     # less available under the run dir is a full disk
SPACE_CHECK_S = 1.0


def disk_full(e: BaseException | None) -> bool:
    """Is `e` (or what caused it: a failed ROLLBACK can hide SQLite's own error) a full disk or quota?"""
    seen = 0
    while e is not None and seen < 8:
        if isinstance(e, sqlite3.OperationalError) and "disk is full" in str(e):
            return True
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        e, seen = e.__cause__ or e.__context__, seen + 1
    return False


class Controller:
    def __init__(self, run: RunDir, cfg: RunConfig, backend: Backend, *, resume: bool = False):
        self.run = run
        self.cfg = cfg
        self.backend = backend
        self.store = Store(run.db)
        self.resume = resume
        self.ctx = Context(run, cfg, self.store, backend)
        self.results: queue.SimpleQueue[Any] = queue.SimpleQueue()   # helper threads -> loop
        poll_s = cfg.controller.poll_interval_s or (0.2 if backend.name == "local" else 2.0)
        self.poller = Poller(self.ctx, self.results, poll_s)
        self.registry = Registry(self.ctx)
        self.faults = Faults(self.ctx, self.registry)
        self.lineage = Lineage(self.ctx, self.registry, self.faults)
        self.broker = Broker(self.ctx, self.lineage, self.faults)
        self.detect = Detector(self.ctx, self.registry, self.lineage, self.faults, self._jobs_changed)
        self.recover = Recovery(self.ctx, self.registry, self.lineage, self.broker, self.faults, self.results,
                                on_jobs_changed=self._jobs_changed,
                                stop_run=lambda reason, failed: self._begin_stop(reason, failed=failed))
        self.metrics = MetricsSink(run, cfg)     # metrics.jsonl, TensorBoard (and wandb) beside the store
        self.server: ControlServer | None = None
        self.stopping: tuple[str, bool] | None = None
        self.stop_deadline: float | None = None
        self.final_state = "stopped"
        self.exit_code: int | None = None
        self.disk_full = False
        self._space_checked = float("-inf")

    def _jobs_changed(self) -> None:
        self.poller.track(self.registry.poll_ids())

    # ================================================================== lifecycle
    def serve(self) -> int:
        """Run until the run finishes, fails or is stopped. Returns the exit code."""
        cfg = self.cfg
        host = controller_host(cfg)
        bind = cfg.controller.bind or host
        port = cfg.controller.port
        if self.resume and port == 0:
            port = int(self.store.get_meta("controller_port", 0) or 0)
        try:
            self.server = ControlServer(self.run, bind=bind, port=port, max_message_mb=cfg.controller.max_message_mb)
        except Exception:
            if not (port and self.resume):
                raise
            # the old port is taken: any free port works, roles re-read controller.json
            self.server = ControlServer(self.run, bind=bind, port=0, max_message_mb=cfg.controller.max_message_mb)
        self.store.set_meta("controller_port", self.server.port)
        self.run.write_controller(ControllerAddress(
            host=host, port=self.server.port, pid=os.getpid(),
            server_public_key=self.server.public_key, started=time.time(), hostname=socket.gethostname()))
        self.poller.start()
        try:
            if self.resume:
                self._resume_state()
            else:
                self._start_fresh()
            while self.exit_code is None:
                self._loop_once()
        finally:
            self.poller.stop()
            self._flush(force=True)
            try:
                self.metrics.close()
            except Exception as e:
                if not disk_full(e):
                    raise
                log.error("metrics not flushed (disk full): %s", e)
            self.detect.close()
            self.recover.close()
            self.run.clear_controller()
            self.server.close()
            self.backend.close()
            self.store.close()
        return self.exit_code

    def _start_fresh(self) -> None:
        self.lineage.start(run_state="running", started=time.time())
        self.ctx.event("run_started", f"run {self.run.name} started on backend {self.cfg.backend.value} "
                                      f"(recovery {self.cfg.recovery.policy.value})")
        for slot in self.registry.create():
            self.recover.submit(slot, "initial launch")

    def _resume_state(self) -> None:
        """Rebuild the registry from the store and re-attach to live jobs without restarting them."""
        for slot in self.registry.resume(self.lineage.committed):
            self.recover.submit(slot, "missing after resume")
        self.store.set_meta("run_state", "running")
        live = sum(1 for s in self.registry if s.state.alive and s.job_id)
        reopened = self.faults.reattach(time.time())
        self.ctx.event("controller_resumed", f"controller resumed; re-attached to {live} live role jobs"
                       + (f" and {reopened} open fault(s)" if reopened else ""))
        self._jobs_changed()

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
                if disk_full(e):
                    # not answered: what could not be written is not done; the role asks again after resume
                    self._suspend_disk_full(e)
                    return
                log.exception("error handling %s", type(env.body).__name__)
                reply = P.Reply(ok=False, error=f"internal error: {e.__class__.__name__}: {e}")
            self.server.reply(peer, env.req_id, reply)
        try:
            self._tick()
        except Exception as e:
            if not disk_full(e):
                raise
            self._suspend_disk_full(e)

    def _suspend_disk_full(self, e: BaseException) -> None:
        """The run directory's disk is full: the store cannot take what the run does, so the controller
        stops itself (as if killed, but on purpose) and the run stays resumable: the roles keep their
        work and reconnect to `slurm-rl resume`, as after any controller loss."""
        if self.exit_code is not None:
            return
        self.disk_full = True
        reason = (f"disk full under {self.run.path} ({e.__class__.__name__}: {e}); the controller stopped, the roles "
                  f"keep their work: free space, then `slurm-rl resume {self.run.path}`")
        log.error("%s", reason)
        for write in (lambda: self.store.set_metas(run_state="suspended", end_reason=reason),
                      lambda: self.ctx.event("disk_full", reason)):
            try:
                write()
            except Exception as again:  # the disk is full: say it in the log, which is all there is
                log.error("could not record it in the store: %s", again)
        self.exit_code = EXIT_DISK_FULL

    def _check_space(self, mono: float) -> None:
        """No space left under the run dir is a full disk before the store says so: SQLite's WAL
        reuses the pages it has, so the store could go on for seconds while the roles' own writes
        failed and every replacement decided meanwhile died of the same."""
        if mono - self._space_checked < SPACE_CHECK_S:
            return
        self._space_checked = mono
        try:
            st = os.statvfs(self.run.path)
        except OSError:
            return
        free = st.f_bavail * st.f_frsize
        if free < MIN_FREE_BYTES:
            raise OSError(errno.ENOSPC, f"no space left on the run's file system ({free} bytes available)")

    def _tick(self) -> None:
        now = time.time()              # for what is stored (fault milestones, leases, job rows)
        mono = clock.mono()            # for every timeout: policy, suspicion, the restart pause
        for r in drained(self.results):
            if isinstance(r, Snapshot):
                self.detect.snapshot(r)
                self._fatal_exits(r)
            else:
                self.recover.job_result(r, now)
        self.detect.drain()
        if self.stopping is not None:
            self._tick_stopping(now)   # a stop goes on whatever the space: it must end every job
            return
        self._check_space(mono)        # before anything is decided on a full disk
        rec = self.recover
        if rec.restarting_until is not None and mono >= rec.restarting_until:
            rec.restarting_until = None
        actions = pol.decide(mono, self.detect.view(
            committed=self.lineage.committed, full_restarts=rec.full_restarts, node_failures=rec.node_failures,
            excluded=rec.excluded, restarting=rec.restarting_until is not None, stopping=self.stopping is not None))
        # roles found dead together (a node going down) are gone before anyone restores from them
        rec.dying = {a.slot for a in actions if isinstance(a, pol.Dead)}
        for a in actions:
            log.info("action %s: %s", type(a).__name__, a.reason)
            if isinstance(a, DETECTION_ACTIONS):
                self.detect.apply(a, mono)
            else:
                rec.apply(a, now)
        rec.dying = set()
        rec.retry_submits(mono)
        self.broker.expire_leases(now)
        self.faults.chaos(now, self.lineage.trainer_version, paused=rec.restarting_until is not None)
        self._check_done()
        self._flush()

    # ================================================================== messages
    def _reply(self, slot: Slot, **kw: Any) -> P.Reply:
        return P.Reply(commands=self.registry.take_commands(slot), weights=self.lineage.info(slot), **kw)

    def _handle(self, msg: P.Request) -> P.Reply:
        now = time.time()
        mono = clock.mono()            # a message's arrival, for the detect room's timeouts
        if isinstance(msg, P.StatusRequest):
            return P.Reply(payload=json.dumps(self.status(msg.events)).encode())
        if isinstance(msg, P.InjectRequest):
            return self.faults.inject(msg, now)
        if isinstance(msg, P.StopRequest):
            self._begin_stop(msg.reason, failed=False)
            return P.Reply()
        if isinstance(msg, P.Pulse):
            self.detect.pulse(msg, mono)
            return P.Reply()
        ident = msg.ident
        slot = self.registry.get(ident.slot)
        if slot is None or slot.incarnation != ident.incarnation:
            return self._stale(msg, ident, now)
        if isinstance(msg, (P.Hello, P.Heartbeat)) and msg.rank > 0:
            return self._rank(slot, msg, mono)
        if isinstance(msg, P.Hello) and slot.job_id and msg.job_id and msg.job_id != slot.job_id:
            return self._duplicate_job(slot, msg)
        if isinstance(msg, P.Hello):
            self.detect.hello(slot, msg, mono)
            self.lineage.recheck_resume(slot, now)
            cmds = ([slot.assign] if slot.assign else []) + self.registry.take_commands(slot)
            return P.Reply(commands=cmds, weights=self.lineage.info(slot))
        self.detect.seen(slot, mono)
        if isinstance(msg, P.Heartbeat):
            self.detect.heartbeat(slot, msg, mono)
            return self._reply(slot)
        if isinstance(msg, P.LeaseRequest):
            return self._reply(slot, **self.broker.lease(slot, msg, now))
        if isinstance(msg, P.SubmitGroups):
            accepted, rejected = self.broker.submit_groups(msg, ident, now)
            return self._reply(slot, accepted=accepted, rejected=rejected)
        if isinstance(msg, P.ReleaseLeases):
            self.broker.release(slot, msg.item_ids)
            return self._reply(slot)
        if isinstance(msg, P.FetchBatch):
            return self._reply(slot, groups=self.broker.fetch(slot, msg))
        if isinstance(msg, P.StepDone):
            self.broker.step_done(slot, msg, now)
            self.metrics.log(msg.version, msg.metrics, wall_time=msg.t_end)
            self.registry.touch()
            return self._reply(slot)
        if isinstance(msg, P.VersionHeld):
            self.lineage.held(slot, msg.version, msg.wepoch, msg.sync_addrs, msg.parts)
            return self._reply(slot)
        if isinstance(msg, P.CheckpointSaved):
            self.store.add_checkpoint(msg.step, msg.path, now)
            self.ctx.event("checkpoint", f"checkpoint at step {msg.step} saved", slot=slot.name,
                           data={"step": msg.step, "path": msg.path})
            self.lineage.commit(msg.step)
            self._prune_payloads()
            return self._reply(slot)
        if isinstance(msg, P.RoleEvent):
            self.ctx.event(msg.kind, msg.msg, slot=slot.name, data=dict(msg.data))
            if msg.kind == "eval":
                self.metrics.log_eval(msg.data)
            return self._reply(slot)
        if isinstance(msg, P.Goodbye):
            slot.goodbye = True
            slot.connected = False
            self.ctx.event("goodbye", f"{slot.name} stopped: {msg.reason}", slot=slot.name)
            self.registry.touch()
            if msg.fatal:
                self._fatal(slot.name, msg.fatal, msg.reason)
            return P.Reply()
        return P.Reply(ok=False, error=f"unexpected message {type(msg).__name__}")

    def _rank(self, slot: Slot, msg: P.Hello | P.Heartbeat, now: float) -> P.Reply:
        """A rank > 0 of a multi-rank role: alive or not, nothing more (rank 0 speaks for the role
        and gets its commands); a hello learns where rank 0's process group is."""
        if isinstance(msg, P.Hello):
            self.detect.rank_hello(slot, msg, now)
            return P.Reply(rdzv=slot.rdzv)
        self.detect.rank_heartbeat(slot, msg, now)
        return P.Reply()

    def _prune_payloads(self) -> None:
        """No restore goes below the oldest checkpoint kept: trajectories consumed up to it are freed."""
        keep = self.cfg.trainer.keep_checkpoints
        steps = self.store.checkpoint_steps(at_most=self.lineage.committed, limit=keep)
        if len(steps) == keep:
            n = self.store.prune_consumed_payloads(steps[-1])
            if n:
                log.info("freed the trajectories of %d groups consumed up to step %d", n, steps[-1])

    def _duplicate_job(self, slot: Slot, msg: P.Hello) -> P.Reply:
        """A second job under the slot's identity (a submission that timed out but went through,
        then was retried): it is told to leave and cancelled, so one process holds one identity."""
        self.ctx.event("duplicate_job", f"job {msg.job_id} says it is {slot.name} incarnation {slot.incarnation}, "
                       f"whose job is {slot.job_id}: cancelled", slot=slot.name, job_id=msg.job_id)
        self.recover.cancel([msg.job_id])
        return P.Reply(ok=False, error="superseded", commands=[P.Command(
            op="exit", exit_code=0, reason=f"job {msg.job_id} is not {slot.name}'s job {slot.job_id}")])

    def _stale(self, msg: P.Request, ident: P.Ident, now: float) -> P.Reply:
        """A message under an identity that is not the slot's current one."""
        redirect = self.registry.redirect_for(ident)
        if redirect is not None:
            # a promoted process still speaking under its old name is alive: that counts for the
            # slot it is taking over (it switches once its current batch is done)
            target = self.registry.get(f"{redirect.kind}/{redirect.index}")
            if target is not None and target.incarnation == redirect.incarnation:
                target.last_hb = clock.mono()
            return P.Reply(commands=[redirect], weights=self.lineage.info())
        if isinstance(msg, P.SubmitGroups):
            # leases of a superseded incarnation were requeued; the store rejects its groups
            accepted, rejected = self.broker.submit_groups(msg, ident, now)
            return msgspec.structs.replace(P.Reply(), accepted=accepted, rejected=rejected)
        return P.Reply(ok=False, error="superseded",
                       commands=[P.Command(op="exit", exit_code=0, reason=f"{ident.slot} incarnation "
                                           f"{ident.incarnation} was replaced")])

    # ================================================================== completion, stop
    def _stop_wait_until(self, alive: list[Slot]) -> float:
        """Roles get `controller.stop_grace_s` to stop; a role still writing a checkpoint (a trainer's last
        one: every step it took) gets up to its checkpointing phase timeout, heartbeats permitting."""
        assert self.stop_deadline is not None
        writing = [s for s in alive if s.phase is Phase.CHECKPOINTING and s.connected]
        if not writing:
            return self.stop_deadline
        return (self.stop_deadline - self.cfg.controller.stop_grace_s
                + self.cfg.recovery.phase_timeouts[Phase.CHECKPOINTING])

    def _fatal(self, slot: str, kind: str, message: str) -> None:
        """A role cannot run for a reason no restart fixes: end the run now, with its message."""
        if self.stopping is not None:
            return
        self.store.set_meta("fatal", {"kind": kind, "slot": slot, "message": message})
        self.ctx.event("fatal", f"{slot} cannot run ({kind}): {message}", slot=slot, data={"kind": kind})
        self._begin_stop(f"{slot} cannot run: {message.splitlines()[0] if message else kind}", failed=True)

    def _fatal_exits(self, snap: Snapshot) -> None:
        """The same from a job's exit code, when the role could not say goodbye."""
        for jid, js in snap.jobs.items():
            kind = FATAL_ROLE_EXITS.get(js.exit_code) if js.state.terminal and js.exit_code is not None else None
            if kind:
                slot = self.registry.job_slots.get(jid, "") or f"job {jid}"
                self._fatal(slot, kind, f"exited {js.exit_code}; its log says why ({self.run.logs})")
                return

    def _check_done(self) -> None:
        steps = self.cfg.algorithm.steps
        if self.lineage.trainer_version >= steps and self.lineage.committed >= steps:
            self._begin_stop(f"finished {steps} steps", failed=False, finished=True)

    def _begin_stop(self, reason: str, *, failed: bool, finished: bool = False) -> None:
        if self.stopping is not None:
            return
        self.stopping = (reason, failed)
        self.final_state = "finished" if finished else ("failed" if failed else "stopped")
        self.stop_deadline = clock.mono() + self.cfg.controller.stop_grace_s
        for s in self.registry:
            if s.state.alive:
                s.stop_requested = True
                s.commands.append(P.Command(op="stop", reason=reason))
        self.store.set_meta("run_state", "stopping")
        self.ctx.event("stopping", f"stopping the run: {reason}")

    def _tick_stopping(self, now: float) -> None:
        assert self.stopping is not None
        alive = [s for s in self.registry if s.state.alive and s.job_id and not s.goodbye
                 and not (s.job and s.job.state.terminal)]
        if alive and self.stop_deadline is not None and clock.mono() < self._stop_wait_until(alive):
            self._flush()
            return
        reason, _ = self.stopping
        # a submission still on the helper thread starts its job all the same: wait for it (nothing
        # submits any more), and that job is cancelled with the others
        self.recover.close()
        late = [r for r in drained(self.results) if isinstance(r, SubmitDone) and r.job_id]
        for r in late:
            self.store.record_job(r.job_id, r.slot, r.incarnation, self.backend.name, "PENDING", now)
        jobs = [s.job_id for s in self.registry if s.job_id] + [r.job_id for r in late]
        # and jobs no slot owns any more whose end was never seen (a replaced role's old job):
        # cancelling a finished job is harmless, and the final poll records how each one ended
        jobs += [r["job_id"] for r in self.store.jobs(active_only=True) if r["job_id"] not in jobs]
        if jobs:
            try:
                self.backend.cancel(jobs)
                self.detect.snapshot(self.backend.poll(jobs))     # record how each job ended
            except SlurmRLError as e:
                log.warning("final cancel failed: %s", e)
        for s in self.registry:
            if s.state.alive:
                s.state = RoleState.STOPPED
        self.store.set_metas(run_state=self.final_state, ended=now, end_reason=reason)
        self.ctx.event(f"run_{self.final_state}", f"run {self.final_state}: {reason}")
        self._flush(force=True)
        self.exit_code = 1 if self.final_state != "finished" else 0

    # ================================================================== status & persistence
    def _flush(self, force: bool = False) -> None:
        if self.disk_full:
            try:
                self.registry.flush(force)
            except Exception as e:
                log.error("roles not written (disk full): %s", e)
            return
        if self.registry.flush(force):
            self.store.set_metas(node_failures=self.recover.node_failures, heartbeat=time.time(),
                                 scheduler_calls=self.backend.call_counts,
                                 restarts_window=self.cfg.recovery.budget_window_s)

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


__all__ = ["Controller", "controller_host"]
