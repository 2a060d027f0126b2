"""ETTR and badput of a simulated run, by the definition `slurm_rl.report` applies to a real one.

The simulator writes the same two logs the controller's store holds: one row per trainer step
(step, trainer incarnation, when it asked for data, when it ended, how long it waited, kept or
rolled back) and one row per fault (fault, detection, ..., recovery). `ettr_breakdown` is
`slurm_rl.report.ettr_breakdown` over those rows, written for speed (fault windows merged once and
searched by bisection) but step for step the same arithmetic; tests/sim checks the two agree.

One deliberate difference: a real store keeps one row per step number, so a step that was rolled
back and then computed again overwrites its rolled-back row and its time shows up as `recovery`,
not `replay`, in a real report. The simulator keeps every rolled-back step, so its `replay_s` is
the whole replay as the report's docstring defines it. ETTR is the same either way (it only reads
kept steps); compare `recovery_s + replay_s` with a real report's.
"""

from __future__ import annotations

import bisect
import dataclasses
import enum
import statistics
from collections.abc import Iterable, Sequence

from slurm_rl.states import RoleKind


class StepState(str, enum.Enum):
    DONE = "done"              # kept (not yet committed: still kept as far as the report goes)
    COMMITTED = "committed"
    ROLLED_BACK = "rolled_back"

    def __str__(self) -> str:
        return self.value

    @property
    def kept(self) -> bool:
        return self is not StepState.ROLLED_BACK


@dataclasses.dataclass(slots=True)
class StepRecord:
    """One trainer step, as the store's `steps` table holds it (times in simulated seconds)."""

    step: int
    trainer: str               # "trainer/0#<incarnation>"
    t_start: float             # the trainer asked for data
    t_end: float               # step done (published)
    wait_s: float
    state: StepState = StepState.DONE


@dataclasses.dataclass(slots=True)
class FaultRecord:
    """One fault, as the store's `faults` table holds it (None: not reached)."""

    id: int
    slot: str
    role: RoleKind
    kind: str                  # a FaultKind value
    node: str | None
    injected: bool
    t_fault: float
    t_detect: float | None = None
    t_decide: float | None = None
    t_scheduled: float | None = None
    t_loaded: float | None = None
    t_synced: float | None = None
    t_recovered: float | None = None
    action: str | None = None

    @property
    def recover_s(self) -> float | None:
        return None if self.t_recovered is None else max(0.0, self.t_recovered - self.t_fault)


@dataclasses.dataclass(kw_only=True, slots=True, frozen=True)
class Breakdown:
    wall_s: float
    productive_s: float
    ettr: float
    replay_s: float
    idle_s: float
    recovery_s: float


def _merge(windows: Iterable[tuple[float, float]]) -> tuple[list[float], list[float], list[float]]:
    """Union of windows as sorted disjoint spans, with the covered length before each span."""
    starts: list[float] = []
    ends: list[float] = []
    for s, e in sorted(windows):
        if e <= s:
            continue
        if ends and s <= ends[-1]:
            ends[-1] = max(ends[-1], e)
        else:
            starts.append(s)
            ends.append(e)
    cum = [0.0]
    for s, e in zip(starts, ends, strict=True):
        cum.append(cum[-1] + e - s)
    return starts, ends, cum


def _covered(x: float, starts: list[float], ends: list[float], cum: list[float]) -> float:
    """Length of (-inf, x] covered by the merged spans."""
    i = bisect.bisect_right(starts, x)
    if i == 0:
        return 0.0
    return cum[i - 1] + min(x, ends[i - 1]) - starts[i - 1]


def ettr_breakdown(steps: Sequence[StepRecord], faults: Sequence[FaultRecord], *, end: float,
                   finished: bool, t_train: float | None = None, startup_wait: bool = True,
                   starved_out: list[tuple[list[tuple[float, float]], float]] | None = None) -> Breakdown:
    """Productive time and badput (definitions in slurm_rl/report.py's docstring).

    `steps` in step order, one row per step number; `end` is when the run ended (stop or
    simulation end); a finished run ends at its last kept step, as in the report. `t_train` is
    when training started (the trainer had its first batch); None takes the earliest step row's
    data arrival, as the report does (later than the first batch once a rollback to step 0
    overwrote step 1's row). `startup_wait=False` is the definition of schema-1 reports: training
    started when the earliest row first asked for data, its wait for the rollouts included.
    `starved_out`, when given, receives per starved step the fault-covered spans of its wait and
    the seconds of idle charged to them (for the badput split, `slurm_rl.sim.blame`)."""
    kept = [s for s in steps if s.state.kept]
    rolled = [s for s in steps if not s.state.kept]
    if not steps:
        return Breakdown(wall_s=0.0, productive_s=0.0, ettr=0.0, replay_s=0.0, idle_s=0.0, recovery_s=0.0)
    if t_train is None:
        first = min(steps, key=lambda s: s.t_start)
        t_train = min(first.t_end, first.t_start + first.wait_s) if startup_wait else first.t_start
    if finished and kept:
        end = max(s.t_end for s in kept)
    wall = max(1e-9, end - t_train)
    starts, ends, cum = _merge((f.t_fault, f.t_recovered if f.t_recovered is not None else end) for f in faults)
    med = statistics.median([s.wait_s for s in kept]) if kept else 0.0
    productive = idle = 0.0
    prev: StepRecord | None = None
    for s in kept:
        t_start = s.t_start
        if prev is not None and prev.step == s.step - 1 and prev.trainer == s.trainer:
            t_start = min(t_start, prev.t_end)
        dur = max(0.0, s.t_end - max(t_start, t_train))
        w0 = max(s.t_start, t_train)
        wait = max(0.0, s.t_start + s.wait_s - w0)
        starved = 0.0
        if wait > med and starts:
            inside = _covered(w0 + wait, starts, ends, cum) - _covered(w0, starts, ends, cum)
            starved = min(inside, wait - med, dur)
            if starved_out is not None and starved > 0:
                starved_out.append((_spans(w0, w0 + wait, starts, ends), starved))
        productive += dur - starved
        idle += starved
        prev = s
    replay = replay_between(rolled, t_train, end)
    recovery = max(0.0, wall - productive - idle - replay)
    return Breakdown(wall_s=wall, productive_s=productive, ettr=min(1.0, productive / wall), replay_s=replay,
                     idle_s=idle, recovery_s=recovery)


def _spans(a: float, b: float, starts: list[float], ends: list[float]) -> list[tuple[float, float]]:
    """The parts of [a, b] inside the merged spans."""
    out = []
    i = max(0, bisect.bisect_right(starts, a) - 1)
    while i < len(starts) and starts[i] < b:
        lo, hi = max(a, starts[i]), min(b, ends[i])
        if hi > lo:
            out.append((lo, hi))
        i += 1
    return out


def replay_between(rolled: Iterable[StepRecord], start: float, end: float) -> float:
    """Time of rolled-back steps inside [start, end]."""
    return sum(max(0.0, min(s.t_end, end) - max(s.t_start, start)) for s in rolled)
