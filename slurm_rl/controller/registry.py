"""The slot registry: every role slot of the run, the jobs started for them, the redirects owed to
promoted processes, and their persisted state (the `roles` table), rebuilt from the store on resume."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator

import msgspec

from slurm_rl import protocol as P
from slurm_rl.controller import clock
from slurm_rl.controller.context import Context
from slurm_rl.controller.slot import Slot
from slurm_rl.states import JobState, Phase, RoleKind, RoleState

_KINDS = (RoleKind.TRAINER, RoleKind.ROLLOUT, RoleKind.SPARE, RoleKind.TRAINER_SPARE)


class Registry:
    def __init__(self, ctx: Context):
        self.ctx = ctx
        self.slots: dict[str, Slot] = {}
        self.redirects: dict[tuple[str, int], P.Command] = {}   # old identity -> become command
        self.job_slots: dict[str, str] = {}           # job id -> slot it was started for
        self.job_endings: dict[str, JobState] = {}    # job id -> terminal state seen
        self.dirty = True
        self._last_flush = -math.inf

    # ---- lookups
    def __iter__(self) -> Iterator[Slot]:
        return iter(self.slots.values())

    def get(self, name: str) -> Slot | None:
        return self.slots.get(name)

    def __getitem__(self, name: str) -> Slot:
        return self.slots[name]

    def by_job(self, job_id: str) -> Slot | None:
        return next((s for s in self.slots.values() if s.job_id == job_id), None)

    def alive_names(self) -> list[str]:
        return sorted(n for n, s in self.slots.items() if s.state.alive)

    def trainer(self) -> Slot:
        return self.slots["trainer/0"]

    def add_spare(self, reserved_for: str) -> Slot:
        """An extra spare (beyond the configured ones), promised to `reserved_for`."""
        idx = max((s.index for s in self.slots.values() if s.kind is RoleKind.SPARE), default=-1) + 1
        spare = Slot(kind=RoleKind.SPARE, index=idx, extra=True, reserved_for=reserved_for)
        self.slots[spare.name] = spare
        return spare

    # ---- building
    def create(self) -> list[Slot]:
        """The slots the config asks for, all new (a fresh run)."""
        for kind in _KINDS:
            for i in range(self.ctx.cfg.replicas(kind)):
                slot = Slot(kind=kind, index=i)
                self.slots[slot.name] = slot
        return list(self.slots.values())

    def resume(self, committed: int) -> list[Slot]:
        """Rebuild from the store; live jobs are assumed alive until a signal says otherwise
        (heartbeats resume within a second). Returns the slots that need a new job."""
        now = clock.mono()
        cfg = self.ctx.cfg
        jobs = {r["job_id"]: r for r in self.ctx.store.jobs()}
        missing: list[Slot] = []
        self._load_redirects()
        for r in self.ctx.store.roles():
            kind = RoleKind(r["kind"])
            slot = Slot(kind=kind, index=r["idx"], state=RoleState(r["state"]), incarnation=r["incarnation"],
                        job_id=r["job_id"], node=r["node"],
                        restarts=[-math.inf] * int(r["restarts"] or 0))    # counted, their times not kept
            slot.extra = kind is RoleKind.SPARE and slot.index >= cfg.spare.replicas
            if slot.state.alive and slot.job_id:
                slot.connected = slot.state not in (RoleState.PENDING,)
                slot.state = RoleState.READY if slot.connected else RoleState.PENDING
                slot.last_hb = now
                slot.progress_at = now
                slot.phase = Phase(r["phase"]) if r["phase"] else Phase.LOADING
                slot.assign = P.Command(op="assign", kind=kind.value, index=slot.index,
                                        incarnation=slot.incarnation, resume_step=committed)
            self.slots[slot.name] = slot
            if slot.state.alive and not slot.job_id:
                missing.append(slot)         # its submission was in flight when the controller stopped
            if slot.job_id and slot.job_id in jobs:
                slot.submitted_at = clock.from_wall(jobs[slot.job_id]["submitted"])
        for kind in _KINDS:                  # slots the config wants that the store lacks
            for i in range(cfg.replicas(kind)):
                name = f"{kind.value}/{i}"
                if name not in self.slots:
                    self.slots[name] = Slot(kind=kind, index=i)
                    missing.append(self.slots[name])
        return missing

    # ---- jobs
    def job_started(self, job_id: str, slot: Slot) -> None:
        self.job_slots[job_id] = slot.name

    def poll_ids(self) -> list[str]:
        """Every job a slot holds, and every job started whose end was not seen yet: a role declared
        dead by the fast signals (probe, heartbeat) is replaced before Slurm reports its exit code."""
        ids = [s.job_id for s in self.slots.values() if s.job_id]
        ids += [j for j in self.job_slots if j not in self.job_endings and j not in ids]
        return ids

    # ---- redirects of promoted processes
    def redirect(self, old: tuple[str, int], cmd: P.Command) -> None:
        self.redirects[old] = cmd
        self._save_redirects()

    def redirect_for(self, ident: P.Ident) -> P.Command | None:
        return self.redirects.get((ident.slot, ident.incarnation))

    def forget_redirects(self, name: str | None = None) -> None:
        """Redirects owed to `name`'s processes (all of them when None) are void."""
        self.redirects = {} if name is None else {k: v for k, v in self.redirects.items() if k[0] != name}
        self._save_redirects()

    def _save_redirects(self) -> None:
        """In the store at once: a promoted process still speaking under its old name after a
        controller resume is redirected, not told it was superseded (and its warm state thrown away)."""
        self.ctx.store.set_meta("redirects", [[k[0], k[1], msgspec.to_builtins(v)] for k, v in self.redirects.items()])

    def _load_redirects(self) -> None:
        self.redirects = {(str(r[0]), int(r[1])): P.Command(**r[2]) for r in self.ctx.store.get_meta("redirects", [])}

    @staticmethod
    def take_commands(slot: Slot) -> list[P.Command]:
        cmds, slot.commands = slot.commands, []
        return cmds

    # ---- persistence
    def touch(self) -> None:
        self.dirty = True

    def flush(self, force: bool = False) -> bool:
        """Write every slot's row, at most once a second unless forced; True when it wrote."""
        mono = clock.mono()
        if not force and (not self.dirty or mono - self._last_flush < 1.0):
            return False
        self._last_flush = mono
        self.dirty = False
        rows = [(s.name, s.kind.value, s.index, s.state.value, s.incarnation, s.job_id, s.node, s.phase.value,
                 s.progress, s.version, _wall(s.last_hb), len(s.restarts), s.detail, time.time(), _wall(s.phase_since))
                for s in self.slots.values()]
        self.ctx.store.upsert_roles(rows)
        return True


def _wall(t: float | None) -> float | None:
    """A slot's monotonic time as stored: wall-clock time, which `status` ages by its own clock."""
    return None if t is None else clock.to_wall(t)
