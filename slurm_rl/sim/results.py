"""What one simulated run yields: ETTR, badput by cause, fault and restart counts, MTTR."""

from __future__ import annotations

import dataclasses
from typing import Any

from slurm_rl.config import RecoveryPolicy
from slurm_rl.sim.blame import BadputSplit
from slurm_rl.sim.metrics import FaultRecord, StepRecord
from slurm_rl.states import RoleKind

__all__ = ["Badput", "BadputSplit", "MttrRow", "SimResult", "Trace"]


@dataclasses.dataclass(kw_only=True, slots=True, frozen=True)
class Badput:
    """Wall time that is not productive, split by cause (seconds)."""

    recovery_s: float          # no trainer step in progress: detection, queue, load, sync, restore
    replay_s: float            # steps computed and then rolled back
    idle_s: float              # the trainer starved because rollouts were lost

    @property
    def total_s(self) -> float:
        return self.recovery_s + self.replay_s + self.idle_s


@dataclasses.dataclass(kw_only=True, slots=True, frozen=True)
class MttrRow:
    """Mean time to recovery of one (role, fault kind), as in a report's `mttr` table."""

    role: RoleKind
    kind: str
    count: int
    mttr_s: float


@dataclasses.dataclass(kw_only=True, slots=True, frozen=True)
class Trace:
    """The rows a real run's store would hold (kept for tests and hand checks)."""

    steps: tuple[StepRecord, ...]        # one row per step number, as the store keeps them
    replaced: tuple[StepRecord, ...]     # rolled-back rows a recomputed step overwrote
    faults: tuple[FaultRecord, ...]
    end: float
    finished: bool


@dataclasses.dataclass(kw_only=True, slots=True, frozen=True)
class SimResult:
    policy: RecoveryPolicy
    seed: int
    ettr: float
    wall_s: float              # from the trainer's first batch of data to the end
    productive_s: float
    badput: Badput             # replay counted in full (see slurm_rl.sim.metrics)
    as_reported: Badput        # the split a real report would print for the same run
    ettr_as_reported: float    # what a real report would print (differs only after a rollback to step 0)
    ettr_as_reported_v1: float  # ... a schema-1 report (its wall time began at the first request for data)
    steps: int                 # steps kept at the end
    steps_computed: int        # every step computed, replays included
    faults: int                # fault rows (a node failure opens one per role it hits)
    fault_events: int          # failures that happened (injections or node failures)
    restarts: dict[RoleKind, int]
    full_restarts: int
    finished: bool
    end_reason: str
    mttr: tuple[MttrRow, ...]
    split: BadputSplit         # `badput` by cause: detect, schedule, load, sync, replay, idle
    trace: Trace | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, with the same key names as `slurm-rl report --json` where they overlap."""
        return {
            "policy": self.policy.value, "seed": self.seed, "ettr": round(self.ettr, 4),
            "wall_s": round(self.wall_s, 3), "productive_s": round(self.productive_s, 3),
            "badput": {"recovery_s": round(self.badput.recovery_s, 3), "replay_s": round(self.badput.replay_s, 3),
                       "idle_s": round(self.badput.idle_s, 3)},
            "badput_split": self.split.to_dict(),
            "ettr_as_reported": round(self.ettr_as_reported, 4),
            "badput_as_reported": {"recovery_s": round(self.as_reported.recovery_s, 3),
                                   "replay_s": round(self.as_reported.replay_s, 3),
                                   "idle_s": round(self.as_reported.idle_s, 3)},
            "steps": self.steps, "steps_computed": self.steps_computed, "faults": self.faults,
            "fault_events": self.fault_events,
            "restarts": {k.value: v for k, v in self.restarts.items()} | {"full": self.full_restarts},
            "finished": self.finished, "end_reason": self.end_reason,
            "mttr": [{"role": r.role.value, "kind": r.kind, "count": r.count, "mttr_s": round(r.mttr_s, 3)}
                     for r in self.mttr],
        }

