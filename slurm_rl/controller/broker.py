"""The data broker: prompt leases to rollouts (bounded by the buffer and by weight staleness),
trajectory groups stored before they are acknowledged, batches for the trainer, and the trainer's
step reports. The store does the bookkeeping in single transactions; this room applies the rules."""

from __future__ import annotations

from typing import Any

from slurm_rl import protocol as P
from slurm_rl.controller.context import Context
from slurm_rl.controller.faults import Faults
from slurm_rl.controller.slot import Slot
from slurm_rl.controller.weights import Lineage
from slurm_rl.states import RoleKind


class Broker:
    def __init__(self, ctx: Context, lineage: Lineage, faults: Faults):
        self.ctx = ctx
        self.lineage = lineage
        self.faults = faults
        alg = ctx.cfg.algorithm
        self.buffer_limit = max(1, int(alg.buffer_steps * alg.prompts_per_step))
        self._last_expire = 0.0

    def lease(self, slot: Slot, msg: P.LeaseRequest, now: float) -> dict[str, Any]:
        """Reply fields for a rollout asking for prompts: `leases`, or `pause` with the reason."""
        if slot.kind is not RoleKind.ROLLOUT:
            return {"pause": "not a rollout"}
        if slot.stop_requested:
            return {"pause": "stopping"}
        lin, alg = self.lineage, self.ctx.cfg.algorithm
        newest = lin.newest_version()
        if not lin.valid(msg.wepoch, msg.version) or (
                lin.trainer_version - msg.version > alg.max_staleness and newest > msg.version):
            return {"pause": "sync weights first"}
        store = self.ctx.store
        waiting = store.queued_groups() + store.leases_held()
        if waiting >= self.buffer_limit:
            return {"pause": f"buffer full ({waiting} groups waiting for the trainer)"}
        n = min(msg.max_items, self.buffer_limit - waiting)
        return {"leases": store.lease(slot.holder(), n, now, self.ctx.cfg.recovery.lease_timeout_s)}

    def submit_groups(self, msg: P.SubmitGroups, ident: P.Ident, now: float) -> tuple[list[str], list[str]]:
        """Store a rollout's groups; returns (accepted, rejected) group ids. Groups made with weights
        outside the current lineage are rejected and their prompts go back to the queue."""
        lin = self.lineage
        valid_groups = [g for g in msg.groups if lin.valid(g.wepoch, g.version)]
        invalid = [g.group_id for g in msg.groups if not lin.valid(g.wepoch, g.version)]
        holder = f"{ident.slot}#{ident.incarnation}"
        accepted, rejected = self.ctx.store.submit_groups(
            holder, ident.slot, ident.incarnation, valid_groups, now, trainer_version=lin.trainer_version,
            max_staleness=self.ctx.cfg.algorithm.max_staleness, wepoch=lin.wepoch, committed=lin.committed)
        if invalid:
            gone = set(invalid)
            self.ctx.store.release(holder, [g.item_id for g in msg.groups if g.group_id in gone])
        return accepted, rejected + invalid

    def release(self, slot: Slot, item_ids: list[str]) -> None:
        self.ctx.store.release(slot.holder(), item_ids)

    def fetch(self, slot: Slot, msg: P.FetchBatch) -> list[P.GroupMsg]:
        if slot.kind is not RoleKind.TRAINER:
            return []
        return self.ctx.store.fetch_batch(slot.holder(), msg.step, msg.n_groups, self.ctx.cfg.algorithm.max_staleness)

    def step_done(self, slot: Slot, msg: P.StepDone, now: float) -> None:
        self.ctx.store.step_done(msg, slot.holder())
        self.lineage.stepped(msg.version)
        slot.version = msg.version
        if slot.fault_ids:
            self.faults.recovered(slot, now, f"committed step {msg.version}")
        self.faults.full_restart_done(now, msg.version)

    def requeue(self, slot_name: str) -> int:
        """Every prompt lease of `slot_name`'s incarnations (all slots for '%') back to the queue."""
        return self.ctx.store.requeue_holder_prefix(slot_name)

    def expire_leases(self, now: float) -> None:
        if now - self._last_expire > 5.0:
            self._last_expire = now
            n = self.ctx.store.expire_leases(now)
            if n:
                self.ctx.event("leases_expired", f"{n} prompt leases expired and went back to the queue")
