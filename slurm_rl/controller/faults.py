"""Faults: injection into a live role, chaos mode firing its plan mid-step, and the fault records
(the `faults` table) that each recovery milestone is written to: detect, decide, scheduled, loaded,
synced, recovered."""

from __future__ import annotations

import json
import statistics
from collections import deque
from typing import Any

from slurm_rl import protocol as P
from slurm_rl.controller import chaos as chaos_mod
from slurm_rl.controller import clock
from slurm_rl.controller.context import Context
from slurm_rl.controller.registry import Registry
from slurm_rl.controller.slot import Slot
from slurm_rl.errors import SlurmRLError
from slurm_rl.states import FaultKind, Phase, RoleKind, RoleState


class Faults:
    def __init__(self, ctx: Context, registry: Registry):
        self.ctx = ctx
        self.registry = registry
        self.pending: dict[str, list[int]] = {}       # slot -> injected faults awaiting detection
        self.moves: dict[str, int] = {}               # slot -> injected drain its move answers
        self.full_restart: list[int] = []             # faults a full restart in progress answers
        cfg = ctx.cfg
        self.plan = chaos_mod.schedule(cfg.chaos, cfg.algorithm.steps) if cfg.chaos.enabled else []
        self.next = int(ctx.store.get_meta("chaos_next", 0))
        self.due: float | None = None                 # when the next planned fault fires (mid-step)
        self._pace: tuple[int, float] = (-1, 0.0)     # (trainer version seen, when)
        self._step_gaps: deque[float] = deque(maxlen=7)

    # ---- records
    def milestone(self, slot: Slot, once: tuple[str, ...] = (), **fields: Any) -> None:
        """Record a recovery milestone on every open fault the slot is recovering from (those named
        in `once` only if not recorded yet). A new process scheduled starts its load and sync anew."""
        if "t_scheduled" in fields:
            fields.setdefault("t_loaded", None)
            fields.setdefault("t_synced", None)
        for fid in slot.fault_ids:
            self.ctx.store.update_fault(fid, once, **fields)

    def recovered(self, slot: Slot, now: float, what: str) -> None:
        rows = {r["id"]: r for r in self.ctx.store.faults()}
        self.milestone(slot, t_recovered=now)
        first = min((rows[f]["t_fault"] for f in slot.fault_ids if f in rows), default=None)
        took = f" {now - first:.1f}s after the fault" if first is not None else ""
        self.ctx.event("recovered", f"{slot.name} recovered: {what}{took}", slot=slot.name, node=slot.node)
        slot.fault_ids = []

    def reattach(self, now: float) -> int:
        """After a controller resume: give each fault still open in the store back to its slot, so the
        slot's recovery closes it (a fault whose recovery a killed controller had begun would stay open
        forever, and the same death, found again, opens a second one). A slot found already recovered
        (a standby ready, a rollout generating) closes its faults now. Returns how many were re-attached."""
        n = 0
        for r in self.ctx.store.faults():
            s = self.registry.get(str(r["slot"]))
            if r["t_recovered"] is None and s is not None and r["id"] not in s.fault_ids:
                s.fault_ids.append(int(r["id"]))
                n += 1
        for s in self.registry:
            if s.fault_ids and s.state is RoleState.READY and (
                    s.kind in (RoleKind.SPARE, RoleKind.TRAINER_SPARE) or (s.kind is RoleKind.ROLLOUT and s.phase is Phase.GENERATING)):
                self.recovered(s, now, "found recovered at the controller's resume")
        return n

    def detected(self, s: Slot, signals: tuple[str, ...], now: float) -> list[int]:
        """The faults a death answers: the injected ones awaiting it, else one opened now."""
        fids = self.pending.pop(s.name, [])
        if not fids:
            t_fault = clock.to_wall(s.last_hb) if s.last_hb is not None else now   # stored: wall clock
            kind = "node_down" if "node down" in signals else ("exit" if s.job and s.job.state.terminal else "crash")
            fids = [self.ctx.store.open_fault(s.name, f"detected:{kind}", s.node, False, min(t_fault, now))]
        return fids

    def start_full_restart(self, now: float, replay: float) -> None:
        """Every open fault is answered by the full restart under way."""
        open_faults = [f for s in self.registry for f in s.fault_ids]
        open_faults += [f for fs in self.pending.values() for f in fs]
        self.pending.clear()
        self.full_restart = [f for f in open_faults if f is not None]
        for fid in self.full_restart:
            self.ctx.store.update_fault(fid, t_decide=now, action="full restart",
                                        replay_s=replay / max(1, len(self.full_restart)))

    def full_restart_done(self, now: float, version: int) -> None:
        if self.full_restart:
            for fid in self.full_restart:
                self.ctx.store.update_fault(fid, t_recovered=now)
            self.ctx.event("recovered", f"run recovered by full restart: committed step {version}")
            self.full_restart = []

    # ---- injection
    def inject(self, msg: P.InjectRequest, now: float) -> P.Reply:
        s = self.registry.get(msg.slot)
        if s is None:
            known = ", ".join(self.registry.alive_names())
            return P.Reply(ok=False, error=f"no role {msg.slot!r} in this run (live roles: {known})")
        try:
            fault = FaultKind(msg.fault)
        except ValueError:
            return P.Reply(ok=False, error=f"unknown fault {msg.fault!r}; use one of "
                                           f"{', '.join(f.value for f in FaultKind)}")
        if not s.state.alive or not s.job_id:
            return P.Reply(ok=False, error=f"{s.name} has no running job to inject into (state {s.state.value})")
        node, pid = s.node, None
        if msg.rank:
            seen = s.ranks.get(msg.rank)
            if seen is None:
                have = ", ".join(str(r) for r in [0, *sorted(s.ranks)])
                return P.Reply(ok=False, error=f"{s.name} has no rank {msg.rank} (ranks connected: {have})")
            if fault is FaultKind.EXIT:
                return P.Reply(ok=False, error="exit faults go to rank 0 (the controller's order reaches it)")
            node, pid = seen.node, seen.pid
        if fault is FaultKind.EXIT:
            s.commands.append(P.Command(op="exit", exit_code=msg.exit_code, reason="injected fault"))
        else:
            try:
                node = self.ctx.backend.inject(s.job_id, fault, exit_code=msg.exit_code, node=node,
                                               pid=pid) or node
            except SlurmRLError as e:
                return P.Reply(ok=False, error=str(e))
        store = self.ctx.store
        fid = store.open_fault(s.name, fault.value, node, True, now,
                               data={"exit_code": msg.exit_code} if fault is FaultKind.EXIT else {})
        if fault is FaultKind.NODE_DOWN:         # every role on that node is hit
            for other in self.registry:
                if other is not s and node in other.nodes() and other.state.alive:
                    self.pending.setdefault(other.name, []).append(
                        store.open_fault(other.name, fault.value, node, True, now))
        if fault is FaultKind.DRAIN:
            self.moves[s.name] = fid             # answered by the move, not by a death
        else:
            self.pending.setdefault(s.name, []).append(fid)
        rank = f" rank {msg.rank}" if msg.rank else ""
        self.ctx.event("fault_injected", f"injected {fault.value} into {s.name}{rank} on {node}", slot=s.name,
                       job_id=s.job_id, node=node, data={"fault": fault.value, "rank": msg.rank})
        return P.Reply(payload=json.dumps({"slot": s.name, "fault": fault.value, "node": node,
                                           "job_id": s.job_id}).encode())

    def chaos(self, now: float, trainer_version: int, *, paused: bool) -> None:
        """Fire the next planned fault once its step is reached, a fraction of a step time into it."""
        if not self.plan or self.next >= len(self.plan) or paused:
            return
        f = self.plan[self.next]
        seen, t_seen = self._pace
        t = clock.mono()                 # the pacing; `now` (wall) stamps the injected fault
        if trainer_version != seen:
            if seen >= 0 and trainer_version == seen + 1:
                self._step_gaps.append(t - t_seen)
            self._pace = (trainer_version, t)
        if trainer_version < f.at_step:
            return
        if self.due is None:
            # the median of recent step gaps ignores the one that a recovery stretched
            step_s = statistics.median(self._step_gaps) if self._step_gaps else 0.0
            self.due = t + f.at_fraction * step_s
        if t < self.due:
            return
        live = sorted((s for s in self.registry if s.kind is f.role and s.state is RoleState.READY and s.job_id),
                      key=lambda s: s.index)
        if not live:
            return
        target = live[int(f.replica_pick * len(live))]
        self.next += 1
        self.due = None
        self.ctx.store.set_meta("chaos_next", self.next)
        reply = self.inject(P.InjectRequest(slot=target.name, fault=f.kind.value), now)
        if not reply.ok:
            self.ctx.event("chaos_skipped", f"chaos could not inject {f.kind.value} into {target.name}: {reply.error}")


__all__ = ["Faults"]
