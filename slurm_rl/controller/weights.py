"""The weight directory and lineage: who holds which version, which (epoch, version) pairs are
valid, the committed step (held by a second holder or checkpointed) and the restore point of a
lost trainer. Each trainer restore starts a new lineage epoch, so a version number from a dead
trainer's lineage is never mistaken for the new one's."""

from __future__ import annotations

import time

import msgspec

from slurm_rl import protocol as P
from slurm_rl.controller.context import Context
from slurm_rl.controller.faults import Faults
from slurm_rl.controller.registry import Registry
from slurm_rl.controller.slot import Slot
from slurm_rl.states import RoleKind, RoleState


class Lineage:
    def __init__(self, ctx: Context, registry: Registry, faults: Faults):
        self.ctx = ctx
        self.registry = registry
        self.faults = faults
        meta = ctx.store.get_meta
        self.wepoch = int(meta("wepoch", 0))
        self.epoch_bases: list[int] = list(meta("epoch_bases", [0]))
        self.committed = int(meta("committed", 0))
        self.trainer_version = int(meta("trainer_version", 0))
        self.ckpt_checked: dict[int, tuple[tuple, str]] = {}   # step -> (files' stat, problem: '' intact)
        self.ckpt_reported: set[int] = set()
        self._rr = 0
        # how many parts the newest version is in (slurm_rl.sync.parts), as its holders last said:
        # the configured trainer shape until one does
        nodes, per_node = ctx.cfg.trainer_shape()
        self.parts = nodes * per_node

    # ---- fencing
    def valid(self, wepoch: int, version: int) -> bool:
        """Is (lineage, version) part of the current weight lineage?"""
        if version < 0 or wepoch > self.wepoch or wepoch < 0:
            return False
        if wepoch == self.wepoch:
            return version <= max(self.trainer_version, self.epoch_bases[-1])
        return P.shared_with_later_epochs(self.epoch_bases, wepoch, version)

    # ---- directory
    def newest_version(self) -> int:
        """Newest version some healthy holder can serve (a SUSPECT holder may be hung: not listed)."""
        vs = [s.version for s in self.registry if s.connected and s.version >= 0
              and s.state in (RoleState.READY, RoleState.STARTING, RoleState.MOVING)]
        return max(vs, default=0)

    def info(self, for_slot: Slot | None = None) -> P.WeightsInfo:
        """Where the newest version can be pulled: relays first (the trainer's link stays free),
        rotated so that pullers spread over the holders."""
        newest = self.newest_version()
        holders = [s for s in self.registry
                   if s.connected and s.state in (RoleState.READY, RoleState.STARTING) and s.version == newest
                   and s.sync_addrs and (for_slot is None or s.name != for_slot.name)]
        relays = [s for s in holders if s.kind is not RoleKind.TRAINER]
        trainers = [s for s in holders if s.kind is RoleKind.TRAINER]
        if relays:
            self._rr = (self._rr + 1) % len(relays)
            relays = relays[self._rr:] + relays[:self._rr]
        # a sharded trainer's ranks each serve their part of its versions (slurm_rl.sync.parts);
        # the parts of the newest version are as its holders say (a relay of a trainer since
        # re-formed at another world size holds the old count)
        sharded = [s for s in trainers if s.world_size > 1]
        if holders:
            self.parts = holders[0].parts
        part_holders: list[dict[str, str]] = []
        part_hosts: list[str] = []
        if sharded:
            t = sharded[0]
            ranks = [(dict(t.sync_addrs), t.host_id)] + [
                (dict(t.ranks[r].sync_addrs), t.ranks[r].host_id) if r in t.ranks else ({}, "")
                for r in range(1, t.world_size)]
            part_holders, part_hosts = [a for a, _ in ranks], [h for _, h in ranks]
        ordered = relays + [s for s in trainers if s.world_size <= 1]
        return P.WeightsInfo(version=newest, wepoch=self.wepoch, holders=[dict(s.sync_addrs) for s in ordered],
                             holder_hosts=[s.host_id for s in ordered], epoch_bases=list(self.epoch_bases),
                             parts=self.parts, part_holders=part_holders, part_hosts=part_hosts)

    def held(self, slot: Slot, version: int, wepoch: int, addrs: dict[str, str] | None, parts: int = 1) -> None:
        """A role says which version it holds (a heartbeat or VersionHeld), in how many parts."""
        if addrs:
            slot.sync_addrs = dict(addrs)
        slot.parts = max(1, parts)
        if version < 0 or not self.valid(wepoch, version):
            slot.version = -1
            return
        if version != slot.version:
            slot.version = version
            now = time.time()
            # a trainer's restore ends as it publishes the restored version: its load is done then,
            # whether or not a heartbeat said it was ready first (its weights came within the load)
            loaded = {"t_loaded": now} if slot.kind is RoleKind.TRAINER else {}
            self.faults.milestone(slot, once=("t_loaded",), **loaded, t_synced=now)
            if slot.kind is not RoleKind.TRAINER:
                self.commit(version)

    def stepped(self, version: int) -> None:
        """The trainer reported step `version` done."""
        self.trainer_version = version
        self.ctx.store.set_meta("trainer_version", version)

    def commit(self, version: int) -> None:
        """Another holder (or a checkpoint) has `version`: steps up to it survive a trainer loss."""
        version = min(version, self.trainer_version)
        if version > self.committed:
            self.ctx.store.commit_through(version)
            self.committed = version
            self.ctx.store.set_meta("committed", version)

    # ---- restore points
    def restore_point(self, dying: set[str]) -> int:
        """Newest version a new trainer can still get: from a live holder or an intact checkpoint.

        Normally the committed version; less when every holder of it died too (a node with the
        trainer and the rollouts that held its newest weights went down at once), or moved on to
        a newer version that was then undone (a holder serves only the version it holds).
        """
        held = [s.version for s in self.registry
                if s.kind is not RoleKind.TRAINER and s.connected and s.state.alive and s.name not in dying
                and 0 <= s.version <= self.committed]
        if self.committed in held:
            return self.committed
        return min(max(max(held, default=0), self.newest_checkpoint(self.committed)), self.committed)

    def newest_checkpoint(self, at_most: int | None = None) -> int:
        """Step of the newest intact checkpoint (verified against its hashes); 0 if none.

        Damaged ones are skipped with an event and marked invalid in the store, once each.
        """
        from slurm_rl import checkpoint as ckpt

        found, skipped = ckpt.newest_valid(self.ctx.run.checkpoints, at_most, cache=self.ckpt_checked)
        for msg in skipped:
            step = int(msg.split()[1].rstrip(":"))
            if step not in self.ckpt_reported:
                self.ckpt_reported.add(step)
                self.ctx.store.invalidate_checkpoint(step)
                self.ctx.event("checkpoint_fallback", f"checkpoint {msg}; using an older one")
        if found is not None:
            self.ckpt_reported.discard(found.step)     # intact now (written again): a new damage is reported
        return found.step if found is not None else 0

    def trainer_lost(self, now: float, dying: set[str]) -> float:
        """Roll back to the newest restorable committed step; the lineage gets a new epoch from there.
        Returns the trained seconds undone."""
        store = self.ctx.store
        point = self.restore_point(dying)
        with store.tx():          # all or nothing: no rolled-back steps under the old epoch
            if point < self.committed:
                self.ctx.event("commit_lost", f"every holder of committed step {self.committed} is gone; the newest "
                               f"version still held or checkpointed is {point}",
                               data={"committed": self.committed, "restore_point": point})
                self.committed = point
                store.set_meta("committed", point)
            steps, groups, replay = store.rollback_after(self.committed, regenerate=False, now=now)
            lost = self.trainer_version - self.committed
            self.trainer_version = self.committed
            self.wepoch += 1
            self.epoch_bases.append(self.committed)
            store.set_metas(wepoch=self.wepoch, epoch_bases=self.epoch_bases, trainer_version=self.trainer_version)
            self.ctx.event("trainer_rollback", f"trainer lost: resuming at committed step {self.committed}; "
                           f"{lost} uncommitted step(s) undone, {groups} trajectory groups back in the queue",
                           data={"committed": self.committed, "steps_lost": lost, "groups_requeued": groups})
        for s in self.registry:
            if s.version > self.committed and s.kind is not RoleKind.TRAINER:
                s.version = -1
        return replay

    def recheck_resume(self, slot: Slot, now: float) -> None:
        """A new trainer job says hello: is the step it is to resume at still to be had? Between its
        submission and now the holders of that step may have moved on to a newer version that the
        trainer's loss undid (their reports crossed the loss); then the trainer is lost again, at
        the newest step a holder or an intact checkpoint still has, before it tries (it would fail
        with nothing to restore from)."""
        a = slot.assign
        if slot.kind is not RoleKind.TRAINER or a is None or a.resume_step <= 0 \
                or slot.submitted_inc != slot.incarnation or self.restore_point(set()) >= a.resume_step:
            return
        replay = self.trainer_lost(now, set())
        had = {r["id"]: float(r["replay_s"] or 0.0) for r in self.ctx.store.faults()}
        for fid in slot.fault_ids:
            self.ctx.store.update_fault(fid, replay_s=had.get(fid, 0.0) + replay / len(slot.fault_ids))
        slot.assign = msgspec.structs.replace(a, resume_step=self.committed)

    def restart_from(self, step: int, now: float) -> tuple[int, int, float]:
        """A full restart from checkpoint `step`: every newer step and group is dropped, a new epoch
        begins there. Returns (steps lost, groups dropped, seconds to replay)."""
        _, groups, replay = self.ctx.store.rollback_after(step, regenerate=True, now=now)
        lost = max(0, self.trainer_version - step)
        self.trainer_version = step
        self.committed = step
        self.wepoch += 1
        self.epoch_bases.append(step)
        return lost, groups, replay

    def start(self, **metas: object) -> None:
        """A fresh run: lineage 0 from version 0 (written with the run's other starting `metas`)."""
        self.ctx.store.set_metas(**metas, wepoch=0, epoch_bases=[0], committed=0, trainer_version=0)
