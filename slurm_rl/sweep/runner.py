"""Running a sweep: start its runs at most N at a time (as `slurm-rl launch --detach`), follow
them to their end, stop them on request, and write the summary."""


from __future__ import annotations

import contextlib
import csv
import dataclasses
import enum
import json
import time
from pathlib import Path
from typing import Any

from slurm_rl.config import load_config
from slurm_rl.errors import BadInput, SlurmRLError
from slurm_rl.rundir import RunDir
from slurm_rl.sweep.spec import METRICS, SWEEP_SCHEMA, SweepPoint, SweepSpec


class RunPhase(str, enum.Enum):
    QUEUED = "queued"
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    FINISHED = "finished"
    FAILED = "failed"
    STOPPED = "stopped"
    NOT_STARTED = "not started"      # the sweep was interrupted before its turn
    ERROR = "error"                  # could not be started

    def __str__(self) -> str:
        return self.value

    @property
    def ended(self) -> bool:
        return self in (RunPhase.FINISHED, RunPhase.FAILED, RunPhase.STOPPED, RunPhase.NOT_STARTED, RunPhase.ERROR)


@dataclasses.dataclass(slots=True)
class SweepRun:
    """One run of a sweep as it goes: its point, where it lives, what we last saw of it."""

    point: SweepPoint
    path: Path
    phase: RunPhase = RunPhase.QUEUED
    t_start: float | None = None
    t_end: float | None = None
    status: dict[str, Any] | None = None       # latest status_dict while it runs
    report: dict[str, Any] | None = None       # its report once it ended
    error: str | None = None
    reused: bool = False                       # finished in an earlier invocation (--resume)

    @property
    def run(self) -> RunDir:
        return RunDir(self.path)

    def metric(self, name: str) -> Any:
        if self.report is None:
            return None
        try:
            return METRICS[name].get(self.report)
        except (KeyError, TypeError, ZeroDivisionError):
            return None


class SweepRunner:
    """Starts the runs of a sweep, at most `max_concurrent` at a time, and follows them to the end.

    Drive it with `tick()` until `done`; `stop(reason)` asks every running run to stop."""

    def __init__(self, spec: SweepSpec, *, resume: bool = False):
        self.spec = spec
        self.runs = [SweepRun(point=p, path=spec.run_path(p)) for p in spec.points]
        self.interrupted = False
        self._prepare_dir(resume)

    def _prepare_dir(self, resume: bool) -> None:
        from slurm_rl import launcher

        d = self.spec.dir
        existing = [r for r in self.runs if (r.path / "run.json").exists()]
        if existing and not resume:
            raise BadInput(f"{d} already holds runs of sweep '{self.spec.name}' ({len(existing)} of "
                           f"{len(self.runs)})", hint="--resume keeps the finished ones and runs the rest; or pick "
                                                      "another name: or --runs-dir")
        for r in existing:
            state = launcher.run_state(r.run)
            if state == "finished":
                from slurm_rl.report import report_dict

                r.report, r.phase, r.reused = report_dict(r.run), RunPhase.FINISHED, True
                continue
            if launcher.controller_alive(r.run):
                raise BadInput(f"run {r.path} of this sweep is still running",
                               hint=f"wait for it, or `slurm-rl stop {r.path}`, then --resume")
            # an unfinished earlier attempt is kept aside (never deleted) and the run starts afresh
            k = 1
            while r.path.with_name(f"{r.path.name}.old-{k}").exists():
                k += 1
            r.path.rename(r.path.with_name(f"{r.path.name}.old-{k}"))
        d.mkdir(parents=True, exist_ok=True)
        (d / "sweep.json").write_text(json.dumps(self.spec.plan(), indent=2))

    # ------------------------------------------------------------------ state
    @property
    def active(self) -> list[SweepRun]:
        return [r for r in self.runs if r.phase in (RunPhase.STARTING, RunPhase.RUNNING, RunPhase.STOPPING)]

    @property
    def done(self) -> bool:
        return all(r.phase.ended for r in self.runs)

    @property
    def ok(self) -> bool:
        return all(r.phase is RunPhase.FINISHED for r in self.runs)

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for r in self.runs:
            out[r.phase.value] = out.get(r.phase.value, 0) + 1
        return out

    # ------------------------------------------------------------------ driving
    def tick(self) -> SweepRun | None:
        """Follow the running runs; start the next queued one if there is room. Returns the run it
        started, if any (one per tick, so a view can refresh between two slow starts)."""
        for r in self.active:
            self._follow(r)
        if self.interrupted or len(self.active) >= self.spec.max_concurrent:
            return None
        nxt = next((r for r in self.runs if r.phase is RunPhase.QUEUED), None)
        if nxt is not None:
            self._start(nxt)
        return nxt

    def _start(self, r: SweepRun) -> None:
        from slurm_rl import launcher

        r.phase, r.t_start = RunPhase.STARTING, time.time()
        try:
            cfg = load_config(self.spec.base, r.point.set_args(), backend=self.spec.backend)
            run = launcher.resolve_run_dir(cfg, str(self.spec.base), name=None, run_dir=str(r.path))
            launcher.preflight(cfg)
            launcher.prepare(cfg, run, config_source=str(self.spec.base.resolve()))
            launcher.start_controller(run)
            run.write_meta(sweep=self.spec.name, sweep_source=str(self.spec.source.resolve()))
        except (SlurmRLError, OSError) as e:
            r.phase, r.t_end, r.error = RunPhase.ERROR, time.time(), str(e).splitlines()[0]
            return
        r.phase = RunPhase.RUNNING

    def _follow(self, r: SweepRun) -> None:
        from slurm_rl import launcher
        from slurm_rl.report import report_dict, status_dict

        if r.phase is RunPhase.STARTING:
            return
        run = r.run
        if launcher.controller_alive(run):
            # a store being written can fail a read (locked, half-migrated): the next tick reads again
            with contextlib.suppress(Exception):
                r.status = status_dict(run, live=True, n_events=0)
            return
        state = launcher.run_state(run)
        r.t_end = time.time()
        try:
            r.report = report_dict(run)
        except Exception as e:  # noqa: BLE001
            r.error = f"cannot read its report: {e}"
        if state == "finished":
            r.phase = RunPhase.FINISHED
        elif state == "stopped":
            r.phase = RunPhase.STOPPED
        else:
            r.phase = RunPhase.FAILED
            if state not in launcher.TERMINAL_STATES:
                r.error = f"its controller exited without ending the run (see {run.logs / 'controller.log'})"
        if r.report and r.report.get("end_reason") and not r.error and r.phase is not RunPhase.FINISHED:
            r.error = str(r.report["end_reason"])

    def stop(self, reason: str) -> list[SweepRun]:
        """Ask every running run to stop; queued runs will not start. Returns the runs asked."""
        from slurm_rl import launcher
        from slurm_rl import protocol as P

        self.interrupted = True
        for r in self.runs:
            if r.phase is RunPhase.QUEUED:
                r.phase = RunPhase.NOT_STARTED
        asked = []
        for r in self.active:
            with contextlib.suppress(SlurmRLError):     # already gone: following it finds out how it ended
                launcher.ask(r.run, P.StopRequest(reason=reason))
            r.phase = RunPhase.STOPPING
            asked.append(r)
        return asked

    def wait_stopped(self, timeout_s: float, poll_s: float = 0.3) -> None:
        """After `stop`: follow the runs until every one ended or the time is up."""
        deadline = time.time() + timeout_s
        while self.active and time.time() < deadline:
            for r in self.active:
                self._follow(r)
            time.sleep(poll_s)

    # ------------------------------------------------------------------ results
    def rows(self) -> list[dict[str, Any]]:
        """One summary row per run (schema: docs/schemas/sweep.json, `runs` items)."""
        out = []
        for r in self.runs:
            rep = r.report or {}
            out.append({"run": r.point.name, "path": str(r.path), "overrides": dict(r.point.varying),
                        "state": r.phase.value, "end_reason": rep.get("end_reason"), "error": r.error,
                        "reused": r.reused,
                        "started": r.t_start, "ended": r.t_end,
                        "metrics": {m: r.metric(m) for m in METRICS}})
        return out

    def summary(self) -> dict[str, Any]:
        return {"schema": SWEEP_SCHEMA, "sweep": self.spec.name, "source": str(self.spec.source),
                "dir": str(self.spec.dir), "summary_csv": str(self.spec.summary), "keys": list(self.spec.keys),
                "metrics": list(self.spec.metrics), "interrupted": self.interrupted, "ok": self.ok,
                "runs": self.rows()}

    def write_csv(self, path: Path | None = None) -> Path:
        """The summary as CSV: run, one column per varying key, state, every metric, path, error."""
        path = path or self.spec.summary
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        with tmp.open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["run", *self.spec.keys, "state", *METRICS, "end_reason", "error", "path"])
            for row in self.rows():
                ov = row["overrides"]
                w.writerow([row["run"], *(_csv(ov.get(k)) for k in self.spec.keys), row["state"],
                            *(_csv(row["metrics"][m]) for m in METRICS), row["end_reason"] or "", row["error"] or "",
                            row["path"]])
        tmp.replace(path)
        return path


def _csv(v: Any) -> Any:
    if v is None:
        return ""
    if isinstance(v, (dict, list, bool)):
        return json.dumps(v)
    return v
