"""Recovery times measured on the real system, and the local benchmark as a simulation config.

`MeasuredTimes.from_reports(role_based, full_restart)` reads two `slurm-rl report --json`
outputs of the same benchmark (same seed and fault schedule, one per policy) and turns the fault
rows into the model's components:

  detect    fault -> DEAD, per (role, fault kind), injected faults of both runs
  queue     decision -> the new job connects (t_decide -> t_scheduled), `submit` actions
  load      the job connects -> READY (t_scheduled -> t_loaded), `submit` actions; the trainer's
            cold load is the run's start-up (launch -> first request for data) less its queue
  sync      the weight pull of replacement rollouts (t_loaded -> t_synced, else -> t_recovered)
  promote   promotion -> working again (t_scheduled -> t_recovered, else from t_decide) of
            `promote` actions (a slot that waited for a starting spare was promoted when it was
            ready: the wait is not the promotion's); for the trainer less one step (the first step
            after the promotion is simulated, not assumed)
  full      decision -> first step after a full restart, per restart (the full-restart run)

Detection is a mean (a hang is found by the timeout of the phase it froze in: the mix of phases
is part of the figure); the recovery paths are medians (see `_median`). Every figure skips
missing (null) timestamps and falls back to a wider group (any role, then any
kind, then a default) when a group has no sample; `samples` says how many faults each came from.
"""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
from collections import defaultdict
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from slurm_rl.config import RecoveryPolicy, RunConfig, load_config
from slurm_rl.errors import BadInput
from slurm_rl.sim.config import (
    ChaosSchedule,
    ControllerRules,
    RecoveryTimes,
    SimConfig,
    Standby,
    Topology,
    Work,
    frozen_map,
)
from slurm_rl.states import FaultKind, RoleKind

__all__ = ["LocalBenchmark", "MeasuredRun", "MeasuredTimes", "load_reports", "local_config"]

# Share of a local step spent computing (the rest waits for rollouts), from the trainer's step
# table of a measured role-based run (median compute 0.058 s of a median 0.109 s step).
LOCAL_COMPUTE_FRACTION = 0.55
# When nothing was measured for a component (no such fault in the runs), seconds.
_DEFAULT_DETECT_S = 1.0
_DEFAULT_QUEUE_S = 4.0
_DEFAULT_LOAD_S = 8.0
_DEFAULT_SYNC_S = 0.2
# fewer samples than this for one role: use the figure pooled over roles
_MIN_SAMPLES = 3


def _num(x: Any) -> float | None:
    if isinstance(x, bool) or x is None:
        return None
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _span(f: Mapping[str, Any], a: str, b: str) -> float | None:
    ta, tb = _num(f.get(a)), _num(f.get(b))
    return None if ta is None or tb is None else max(0.0, tb - ta)


def _median(xs: Iterable[float | None]) -> float | None:
    """A recovery path's typical time. The median, not the mean: a path that hit a second failure
    on the way (a weight pull from a holder that hung, a standby that died while taking over)
    takes minutes, and such failures are not the ones the model injects."""
    vals = [x for x in xs if x is not None]
    return statistics.median(vals) if vals else None


def _role(f: Mapping[str, Any]) -> RoleKind | None:
    try:
        return RoleKind(str(f.get("role") or str(f.get("slot", "")).partition("/")[0]))
    except ValueError:
        return None


def _kind(f: Mapping[str, Any]) -> FaultKind | None:
    """The injected kind; None for faults the controller found on its own ('detected:...')."""
    try:
        return FaultKind(str(f.get("kind")))
    except ValueError:
        return None


def _action(f: Mapping[str, Any]) -> str:
    return str(f.get("action") or "").split(" ", 1)[0]


@dataclasses.dataclass(kw_only=True, slots=True, frozen=True)
class MeasuredRun:
    """The headline figures of one measured run (a report's top level)."""

    policy: str
    state: str
    steps: int
    wall_s: float
    startup_s: float
    ettr: float
    productive_s: float
    recovery_s: float
    replay_s: float
    idle_s: float
    faults: int                    # fault rows
    injected: int                  # rows the injector opened
    found: int                     # rows the controller opened itself (failures nobody injected)
    full_restarts: int
    # the report's "pace" (None in reports written before it existed)
    wait_s: float | None = None               # the trainer's median wait for data per step
    batch_groups: float | None = None         # a rollout's batch, in groups
    batch_s: float | None = None              # that batch's time, generating back to back
    schema: int = 2                           # the report's schema (1: wall time from the first request)

    @property
    def step_s(self) -> float | None:
        """This run's pace: productive time per kept step (the machine may be busier in one run)."""
        return self.productive_s / self.steps if self.steps and self.productive_s > 0 else None

    @classmethod
    def from_report(cls, r: Mapping[str, Any], policy: str) -> MeasuredRun:
        bad = r.get("badput") or {}
        pace = r.get("pace") if isinstance(r.get("pace"), Mapping) else {}
        faults = [f for f in (r.get("faults") or []) if isinstance(f, Mapping)]
        return cls(policy=str(r.get("recovery") or policy), state=str(r.get("state") or "unknown"),
                   steps=int(_num(r.get("steps")) or 0), wall_s=_num(r.get("wall_s")) or 0.0,
                   startup_s=_num(r.get("startup_s")) or 0.0, ettr=_num(r.get("ettr")) or 0.0,
                   productive_s=_num(r.get("productive_s")) or 0.0, recovery_s=_num(bad.get("recovery_s")) or 0.0,
                   replay_s=_num(bad.get("replay_s")) or 0.0, idle_s=_num(bad.get("idle_s")) or 0.0,
                   faults=len(faults), injected=sum(1 for f in faults if f.get("injected")),
                   found=sum(1 for f in faults if not f.get("injected")),
                   full_restarts=int(_num((r.get("restarts") or {}).get("full")) or 0),
                   wait_s=_num(pace.get("wait_s")), batch_groups=_num(pace.get("rollout_batch_groups")),
                   batch_s=_num(pace.get("rollout_batch_s")), schema=int(_num(r.get("schema")) or 1))


@dataclasses.dataclass(kw_only=True, slots=True, frozen=True)
class MeasuredTimes:
    """Recovery-time components measured on the real system (seconds), with their sample counts."""

    detect_s: Mapping[tuple[RoleKind, FaultKind], float]
    detect_kind_s: Mapping[FaultKind, float]
    queue_s: Mapping[RoleKind, float]
    load_s: Mapping[RoleKind, float]
    sync_s: float
    promote_s: Mapping[RoleKind, float]
    full_restart_s: float | None   # decision -> first step after a full restart
    step_s: float                  # a step without faults (productive time per kept step)
    startup_s: float
    samples: Mapping[str, int]
    role_based: MeasuredRun
    full_restart: MeasuredRun

    @classmethod
    def from_reports(cls, role_based_report: Mapping[str, Any], full_restart_report: Mapping[str, Any]
                     ) -> MeasuredTimes:
        """Components from a role-based and a full-restart report of the same benchmark."""
        for name, rep in (("role-based", role_based_report), ("full-restart", full_restart_report)):
            if not isinstance(rep, Mapping) or "faults" not in rep and "ettr" not in rep:
                raise BadInput(f"the {name} input is not a `slurm-rl report --json` output (no 'ettr', no 'faults')")
        rb = [f for f in (role_based_report.get("faults") or []) if isinstance(f, Mapping)]
        fr = [f for f in (full_restart_report.get("faults") or []) if isinstance(f, Mapping)]
        samples: dict[str, int] = {}

        # detection: policy-independent, so both runs count
        by_rk: dict[tuple[RoleKind, FaultKind], list[float]] = defaultdict(list)
        for f in rb + fr:
            role, kind, d = _role(f), _kind(f), _num(f.get("detect_s"))
            if d is None:
                d = _span(f, "t_fault", "t_detect")
            if role is None or kind is None or d is None or not f.get("injected", True):
                continue
            by_rk[(role, kind)].append(d)
        detect = {k: statistics.fmean(v) for k, v in by_rk.items()}
        by_kind: dict[FaultKind, list[float]] = defaultdict(list)
        for (_, kind), v in by_rk.items():
            by_kind[kind].extend(v)
        detect_kind = {k: statistics.fmean(v) for k, v in by_kind.items()}
        for (role, kind), v in by_rk.items():
            samples[f"detect {role.value}/{kind.value}"] = len(v)

        # recoveries of injected faults only: a failure the controller found by itself (a stalled
        # weight pull, a standby that could not restore) is not one the model produces
        rb_inj = [f for f in rb if f.get("injected", True)]
        # replacement jobs (role-based run): queue, load, sync
        submits = [f for f in rb_inj if _action(f) == "submit"]
        def q_of(f: Mapping[str, Any]) -> float | None:
            v = _num(f.get("schedule_s"))
            return v if v is not None else _span(f, "t_decide", "t_scheduled")

        def ld_of(f: Mapping[str, Any]) -> float | None:
            v = _num(f.get("load_s"))
            return v if v is not None else _span(f, "t_scheduled", "t_loaded")

        # a role's own figure once it has a few samples, else the pool: every local job reaches
        # "connected" the same way (process start, imports), and a spare loads what a rollout does
        engines = [f for f in submits if _role(f) in (RoleKind.ROLLOUT, RoleKind.SPARE)]
        pooled_q, pooled_ld = _median(map(q_of, submits)), _median(map(ld_of, engines))
        queue: dict[RoleKind, float] = {}
        load: dict[RoleKind, float] = {}
        for role in RoleKind:
            mine = [f for f in submits if _role(f) is role]
            qs = [v for v in map(q_of, mine) if v is not None]
            lds = [v for v in map(ld_of, mine) if v is not None]
            if len(qs) >= _MIN_SAMPLES:
                queue[role] = statistics.median(qs)
                samples[f"queue {role.value}"] = len(qs)
            elif pooled_q is not None:
                queue[role] = pooled_q
                samples[f"queue {role.value} (pooled)"] = sum(1 for v in map(q_of, submits) if v is not None)
            if len(lds) >= _MIN_SAMPLES:
                load[role] = statistics.median(lds)
                samples[f"load {role.value}"] = len(lds)
            elif role is not RoleKind.TRAINER and pooled_ld is not None:
                load[role] = pooled_ld
                samples[f"load {role.value} (pooled)"] = sum(1 for v in map(ld_of, engines) if v is not None)
        for role in (RoleKind.ROLLOUT, RoleKind.SPARE):
            queue.setdefault(role, _DEFAULT_QUEUE_S)
            load.setdefault(role, _DEFAULT_LOAD_S)
        queue.setdefault(RoleKind.TRAINER, queue[RoleKind.ROLLOUT])
        # the trainer's own start-up: launch -> its first request for data (schema 2 reports it apart;
        # a schema-1 report's start-up ended there)
        startup = _num(role_based_report.get("trainer_startup_s"))
        if startup is None:
            startup = _num(role_based_report.get("startup_s"))
        if RoleKind.TRAINER not in load:
            # no cold trainer restart measured: the run's start-up is one (queue, then load)
            load[RoleKind.TRAINER] = (max(0.0, startup - queue[RoleKind.TRAINER]) if startup
                                      else load[RoleKind.ROLLOUT])
            samples["load trainer (from start-up)"] = 1 if startup else 0
        # the weight pull itself (t_loaded -> t_synced); READY -> generating also holds waits for a
        # trainer to publish, which the model produces by itself
        sync_vals = [_num(f.get("sync_s")) if _num(f.get("sync_s")) is not None
                     else (_span(f, "t_loaded", "t_synced") if f.get("t_synced") is not None
                           else _span(f, "t_loaded", "t_recovered"))
                     for f in submits if _role(f) is RoleKind.ROLLOUT]
        sync = _median(sync_vals)
        samples["sync"] = sum(1 for v in sync_vals if v is not None)

        # a step without faults: the run's productive time per kept step
        steps = _num(role_based_report.get("steps")) or 0.0
        prod = _num(role_based_report.get("productive_s")) or 0.0
        step_s = prod / steps if steps and prod else 0.1

        # promotions of warm standbys
        promote: dict[RoleKind, float] = {}
        for role in (RoleKind.ROLLOUT, RoleKind.TRAINER):
            vals = [_span(f, "t_scheduled" if f.get("t_scheduled") is not None else "t_decide", "t_recovered")
                    for f in rb_inj if _action(f) == "promote" and _role(f) is role]
            vals = [v for v in vals if v is not None]
            if vals:
                m = statistics.median(vals)
                promote[role] = max(0.0, m - step_s) if role is RoleKind.TRAINER else m
                samples[f"promote {role.value}"] = len(vals)

        # full restarts: one figure per restart (a node failure opens several rows with one decision)
        per_restart: dict[float, float] = {}
        for f in fr:
            if _action(f) != "full":
                continue
            t_dec, span = _num(f.get("t_decide")), _span(f, "t_decide", "t_recovered")
            if t_dec is not None and span is not None:
                per_restart[round(t_dec, 3)] = span
        full = statistics.median(per_restart.values()) if per_restart else None
        samples["full restart"] = len(per_restart)

        return cls(detect_s=frozen_map(detect), detect_kind_s=frozen_map(detect_kind), queue_s=frozen_map(queue),
                   load_s=frozen_map(load), sync_s=sync if sync is not None else _DEFAULT_SYNC_S,
                   promote_s=frozen_map(promote), full_restart_s=full, step_s=step_s, startup_s=startup or 0.0,
                   samples=frozen_map(samples),
                   role_based=MeasuredRun.from_report(role_based_report, "role-based"),
                   full_restart=MeasuredRun.from_report(full_restart_report, "full-restart"))

    def recovery_times(self) -> RecoveryTimes:
        """The model's times. The trainer's restore is inside its measured load and promotion (the
        role reports READY only once restored), so restore_s is 0; the full restart's teardown is
        what its measured duration leaves after a cold start (queue + trainer load) and one step
        (at the full-restart run's own pace)."""
        detect_kind = {k: self.detect_kind_s.get(k, _DEFAULT_DETECT_S) for k in FaultKind}
        q_all = self.queue_s.get(RoleKind.TRAINER, _DEFAULT_QUEUE_S)
        step = self.full_restart.step_s or self.step_s
        cold = q_all + self.load_s.get(RoleKind.TRAINER, _DEFAULT_LOAD_S) + step
        teardown = max(0.0, self.full_restart_s - cold) if self.full_restart_s is not None else 0.0
        promote = dict(self.promote_s)
        promote.setdefault(RoleKind.ROLLOUT, self.sync_s)
        promote.setdefault(RoleKind.TRAINER, self.load_s.get(RoleKind.TRAINER, _DEFAULT_LOAD_S))
        return RecoveryTimes(detect_s=detect_kind, detect_by_role=dict(self.detect_s), queue_s=dict(self.queue_s),
                             queue_cv=0.0, load_s=dict(self.load_s), sync_s=self.sync_s, promote_s=promote,
                             restore_s=0.0, teardown_s=teardown, full_queue_s=q_all)

    def to_dict(self) -> dict[str, Any]:
        def rk(m: Mapping[tuple[RoleKind, FaultKind], float]) -> dict[str, float]:
            return {f"{r.value}/{k.value}": round(v, 3) for (r, k), v in sorted(m.items())}

        return {
            "detect_s": rk(self.detect_s),
            "detect_kind_s": {k.value: round(v, 3) for k, v in self.detect_kind_s.items()},
            "queue_s": {k.value: round(v, 3) for k, v in self.queue_s.items()},
            "load_s": {k.value: round(v, 3) for k, v in self.load_s.items()}, "sync_s": round(self.sync_s, 3),
            "promote_s": {k.value: round(v, 3) for k, v in self.promote_s.items()},
            "full_restart_s": None if self.full_restart_s is None else round(self.full_restart_s, 3),
            "step_s": round(self.step_s, 4), "startup_s": round(self.startup_s, 3), "samples": dict(self.samples),
        }


@dataclasses.dataclass(kw_only=True, slots=True, frozen=True)
class LocalBenchmark:
    """The measured benchmark's settings (the demo config with the benchmark's overrides)."""

    steps: int = 200
    rollouts: int = 2
    spares: int = 1
    local_nodes: int = 4
    node_down_s: float = 30.0
    groups_per_step: int = 16
    buffer_steps: float = 3.0
    checkpoint_every: int = 10
    chaos: ChaosSchedule = dataclasses.field(default_factory=lambda: ChaosSchedule(mean_interval_steps=10.0, seed=0))
    rules: ControllerRules = dataclasses.field(default_factory=lambda: ControllerRules(max_full_restarts=100))

    @classmethod
    def from_run_config(cls, cfg: RunConfig) -> LocalBenchmark:
        c = cfg.chaos
        r = cfg.recovery
        return cls(steps=cfg.algorithm.steps, rollouts=cfg.rollout.replicas, spares=cfg.spare.replicas,
                   local_nodes=cfg.local.nodes, node_down_s=cfg.local.node_down_s,
                   groups_per_step=cfg.algorithm.prompts_per_step, buffer_steps=cfg.algorithm.buffer_steps,
                   checkpoint_every=cfg.trainer.checkpoint_every,
                   chaos=ChaosSchedule(mean_interval_steps=c.mean_interval_steps, roles=tuple(c.roles),
                                       kinds=tuple(c.kinds), start_after_steps=c.start_after_steps,
                                       max_faults=c.max_faults, seed=c.seed),
                   rules=ControllerRules(standby=Standby(r.standby), restart_budget=r.restart_budget,
                                         budget_window_s=r.budget_window_s, exclude_node_after=r.exclude_node_after,
                                         max_full_restarts=r.max_full_restarts,
                                         weigh_start_times=r.weigh_start_times))

    @classmethod
    def from_config_file(cls, path: str | Path) -> LocalBenchmark:
        """From a run's resolved config (`runs/<name>/config.yaml`)."""
        return cls.from_run_config(load_config(path))


def local_config(measured: MeasuredTimes, bench: LocalBenchmark | None = None, *,
                 policy: RecoveryPolicy | None = None, compute_fraction: float = LOCAL_COMPUTE_FRACTION) -> SimConfig:
    """The local benchmark as a simulation: 4 shared fake nodes, one process per role, the
    measured times, and the chaos plan the real run used (same generator, same seed).

    The work is paced to the measured step of `policy`'s run (the role-based run's when None; the
    machine is shared, so two runs need not go at one pace): the trainer computes
    `compute_fraction` of a step and waits for generation the rest, which the rollouts deliver at
    exactly one batch per step."""
    b = bench or LocalBenchmark()
    run = measured.full_restart if policy is RecoveryPolicy.FULL_RESTART else measured.role_based
    step_s = run.step_s or measured.step_s
    compute = compute_fraction * step_s
    rate = b.groups_per_step / (b.rollouts * step_s)
    pace = measured.role_based            # the run whose rollouts kept going: its pace is the clean one
    if pace.wait_s is not None and pace.batch_s and pace.batch_groups:
        # Measured: the trainer computes the step less its median wait, and each rollout delivers
        # what it did generating back to back (it may have headroom: then losing one starves nobody).
        compute = max(0.05 * step_s, step_s - pace.wait_s)
        rate = max(rate, pace.batch_groups / pace.batch_s)
    return SimConfig(
        topology=Topology(gpus_per_node=1, trainer_nodes=1, rollout_replicas=b.rollouts, rollout_nodes=1,
                          spare_replicas=b.spares, cluster_nodes=b.local_nodes, node_down_s=b.node_down_s),
        work=Work(step_compute_s=compute, groups_per_step=b.groups_per_step, rollout_groups_per_s=rate,
                  buffer_steps=b.buffer_steps, total_steps=b.steps, duration_s=None,
                  checkpoint_every=b.checkpoint_every, checkpoint_write_s=step_s,
                  # a spare polls for new versions every 0.05 s and pulls at once
                  commit_delay_s=measured.sync_s + 0.05),
        failures=b.chaos, times=measured.recovery_times(), rules=b.rules)


def load_reports(role_based: str | Path, full_restart: str | Path) -> MeasuredTimes:
    """MeasuredTimes from two report files."""
    data: list[dict[str, Any]] = []
    for p in (role_based, full_restart):
        try:
            data.append(json.loads(Path(p).read_text()))
        except OSError as e:
            raise BadInput(f"cannot read report {p}: {e.strerror or e}",
                           hint="write one with `slurm-rl report RUN --json > FILE`") from None
        except ValueError as e:
            raise BadInput(f"{p} is not JSON: {e}", hint="write one with `slurm-rl report RUN --json > FILE`") from None
    return MeasuredTimes.from_reports(data[0], data[1])
