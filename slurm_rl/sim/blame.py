"""Badput by cause: where the wall time a simulated run did not train went.

The report's split (`recovery`, `replay`, `idle`, from `slurm_rl.sim.metrics.ettr_breakdown`) is
refined with what the model knows about each moment:

  detect    a fault has stopped the trainer and nobody has declared it dead yet
  schedule  the trainer's new job waits in the queue (a full restart: teardown + the queue)
  load      the trainer's job starts: process group, model, restore (optimizer, weights), promotion
  sync      the trainer starves while every rollout waits for, or pulls, the weights
  replay    steps computed and rolled back, and the step a dying trainer was computing
  idle      the rest of the starvation: too few rollouts generating (lost ones, or the buffer
            generated again after a full restart)

The six parts add up to the run's badput (`Badput.total_s`).
"""

from __future__ import annotations

import bisect
import dataclasses
from collections.abc import Sequence

from slurm_rl.sim.metrics import StepRecord

__all__ = ["BadputSplit", "TRAINER_LABELS", "split_badput"]

# the trainer's activity as the model marks it; a step it was computing when it died is replay
TRAINER_LABELS = ("work", "detect", "schedule", "load")
_GAP_PART = {"work": "replay", "detect": "detect", "schedule": "schedule", "load": "load"}


@dataclasses.dataclass(kw_only=True, slots=True, frozen=True)
class BadputSplit:
    """Badput seconds by cause (see the module docstring)."""

    detect_s: float
    schedule_s: float
    load_s: float
    sync_s: float
    replay_s: float
    idle_s: float

    PARTS = ("detect", "schedule", "load", "sync", "replay", "idle")

    @property
    def total_s(self) -> float:
        return sum(getattr(self, f"{p}_s") for p in self.PARTS)

    def to_dict(self, digits: int = 3) -> dict[str, float]:
        return {f"{p}_s": round(getattr(self, f"{p}_s"), digits) for p in self.PARTS}


def _union(spans: list[tuple[float, float]], lo: float, hi: float) -> list[tuple[float, float]]:
    out: list[tuple[float, float]] = []
    for a, b in sorted((max(a, lo), min(b, hi)) for a, b in spans):
        if b <= a:
            continue
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


def _pieces(marks: Sequence[tuple[float, object]], a: float, b: float, before: object
            ) -> list[tuple[float, float, object]]:
    """[a, b] cut by a step function given as (since, value) marks in time order."""
    times = [t for t, _ in marks]
    i = bisect.bisect_right(times, a) - 1
    value = marks[i][1] if i >= 0 else before
    out = []
    t = a
    for j in range(i + 1, len(marks)):
        if marks[j][0] >= b:
            break
        out.append((t, marks[j][0], value))
        t, value = marks[j][0], marks[j][1]
    out.append((t, b, value))
    return [(x, y, v) for x, y, v in out if y > x]


def split_badput(*, kept: Sequence[StepRecord], rolled: Sequence[StepRecord], t0: float, t_end: float,
                 recovery_s: float, replay_s: float, idle_s: float,
                 starved: Sequence[tuple[list[tuple[float, float]], float]],
                 trainer_marks: Sequence[tuple[float, str]], sync_marks: Sequence[tuple[float, bool]]
                 ) -> BadputSplit:
    """Split `recovery_s` (time with no step in progress) by the trainer's activity then, and
    `idle_s` (starvation, per starved step as `starved` lists it) by whether the rollouts were
    pulling weights; `replay_s` takes the lost partial steps besides the rolled-back ones."""
    spans: list[tuple[float, float]] = []
    prev: StepRecord | None = None
    for s in sorted(kept, key=lambda r: r.step):
        start = s.t_start
        if prev is not None and prev.step == s.step - 1 and prev.trainer == s.trainer:
            start = min(start, prev.t_end)
        spans.append((start, s.t_end))
        prev = s
    spans += [(r.t_start, r.t_end) for r in rolled]
    busy = _union(spans, t0, t_end)
    gaps, t = [], t0
    for a, b in busy:
        if a > t:
            gaps.append((t, a))
        t = max(t, b)
    if t_end > t:
        gaps.append((t, t_end))
    parts = dict.fromkeys(_GAP_PART.values(), 0.0)
    for a, b in gaps:
        for x, y, label in _pieces(trainer_marks, a, b, "schedule"):
            parts[_GAP_PART.get(str(label), "load")] += y - x
    gap_total = sum(parts.values())
    # the report's recovery is a residual of the same spans; scale away float dust
    scale = recovery_s / gap_total if gap_total > 0 else 0.0
    if gap_total <= 0 and recovery_s > 0:
        parts["load"], scale = recovery_s, 1.0
    sync = 0.0
    for covered, amount in starved:
        total = sum(b - a for a, b in covered)
        if total <= 0:
            continue
        pulling = sum(y - x for a, b in covered for x, y, v in _pieces(sync_marks, a, b, False) if v)
        sync += amount * pulling / total
    sync = min(sync, idle_s)
    return BadputSplit(detect_s=parts["detect"] * scale, schedule_s=parts["schedule"] * scale,
                       load_s=parts["load"] * scale, sync_s=sync, replay_s=replay_s + parts["replay"] * scale,
                       idle_s=idle_s - sync)
