"""Metrics out of a run, besides the state store: a JSONL file, TensorBoard event files, wandb.

    sink = MetricsSink(run, cfg)               # run: RunDir or its path; cfg: the RunConfig
    sink.log(step, {"reward_mean": 0.4, ...})  # a trainer step's metrics  -> train/<name>
    sink.log_eval(event_data)                  # an `eval` event's data    -> eval/<name> at its version
    sink.close()

* `<run dir>/metrics.jsonl`: one object per line, {"t", "kind" (train | eval), "step", metric: value}.
* `<run dir>/tb/`: TensorBoard event files (`tensorboard --logdir runs/NAME/tb`), written with the
  `tensorboard` package's own writer: no torch, no TensorFlow (the controller never imports torch).
* wandb when `logging.wandb: true`, in `logging.wandb_mode` (offline: `<run dir>/wandb`, for
  `wandb sync` later). Each kind has its own step axis (`train/step`, `eval/step`), so a step
  redone after a rollback, or an eval reported after later steps, is still logged.

A sink never raises: a backend that fails (disk full, wandb unreachable) is switched off with a
warning, and the others go on. Steps are what the trainer computed: a step redone after a
trainer restore is logged again (JSONL rows keep both).
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger("slurm_rl.metrics")

TB_DIR = "tb"
JSONL_NAME = "metrics.jsonl"


def _numbers(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The finite numbers among `metrics` (event data carries them as strings)."""
    out: dict[str, float] = {}
    for k, v in metrics.items():
        try:
            f = float(v)
        except (TypeError, ValueError):
            continue
        if math.isfinite(f) and not isinstance(v, bool):
            out[str(k)] = f
    return out


class MetricsSink:
    def __init__(self, run: Any, cfg: Any):
        self.path = Path(getattr(run, "path", run))
        lc = cfg.logging
        self._jsonl = None
        self._tb = None
        self._wandb = None
        if lc.jsonl:
            self._try("jsonl", self._open_jsonl)
        if lc.tensorboard:
            self._try("tensorboard", self._open_tb)
        if lc.wandb:
            self._try("wandb", lambda: self._open_wandb(cfg))

    # ------------------------------------------------------------------ opening
    def _open_jsonl(self) -> None:
        self._jsonl = open(self.path / JSONL_NAME, "a", encoding="utf-8", buffering=1)

    def _open_tb(self) -> None:
        from tensorboard.summary.writer.event_file_writer import EventFileWriter

        self._tb = EventFileWriter(str(self.path / TB_DIR), flush_secs=5)

    def _open_wandb(self, cfg: Any) -> None:
        import wandb

        lc = cfg.logging
        (self.path / "wandb").mkdir(exist_ok=True)
        run = wandb.init(project=lc.wandb_project, entity=lc.wandb_entity, name=cfg.name or self.path.name,
                         dir=str(self.path), mode=lc.wandb_mode, config=cfg.model_dump(mode="json"),
                         settings=wandb.Settings(init_timeout=60, silent=True, console="off"),
                         reinit="create_new")
        for kind in ("train", "eval"):
            run.define_metric(f"{kind}/step")
            run.define_metric(f"{kind}/*", step_metric=f"{kind}/step")
        self._wandb = run

    def _try(self, name: str, fn: Any) -> None:
        try:
            fn()
        except Exception as e:           # a metrics backend must never take the run down
            log.warning("metrics: %s switched off (%s: %s)", name, type(e).__name__, e)
            setattr(self, f"_{'tb' if name == 'tensorboard' else name}", None)

    # ------------------------------------------------------------------ logging
    def log(self, step: int, metrics: Mapping[str, Any], *, kind: str = "train", wall_time: float | None = None
            ) -> None:
        """Metrics of `kind` (train, eval) at `step`; non-numbers are left out."""
        values = _numbers(metrics)
        t = time.time() if wall_time is None else wall_time
        if self._jsonl is not None:
            self._try("jsonl", lambda: self._jsonl.write(
                json.dumps({"t": round(t, 3), "kind": kind, "step": int(step), **values}) + "\n"))
        if self._tb is not None:
            self._try("tensorboard", lambda: self._tb_write(step, values, kind, t))
        if self._wandb is not None:
            self._try("wandb", lambda: self._wandb.log({f"{kind}/step": int(step),
                                                        **{f"{kind}/{k}": v for k, v in values.items()}}))

    def _tb_write(self, step: int, values: dict[str, float], kind: str, t: float) -> None:
        from tensorboard.compat.proto.event_pb2 import Event
        from tensorboard.compat.proto.summary_pb2 import Summary

        summary = Summary(value=[Summary.Value(tag=f"{kind}/{k}", simple_value=v) for k, v in values.items()])
        self._tb.add_event(Event(wall_time=t, step=int(step), summary=summary))

    def log_eval(self, data: Mapping[str, Any], *, wall_time: float | None = None) -> None:
        """An `eval` event's data (slurm_rl.rl.evaluation.EvalResult.event_data) at its version."""
        values = {k: v for k, v in data.items() if k not in ("version", "wepoch")}
        try:
            step = int(data["version"])
        except (KeyError, TypeError, ValueError):
            log.warning("metrics: an eval without a version is not logged: %s", dict(data))
            return
        self.log(step, values, kind="eval", wall_time=wall_time)

    def flush(self) -> None:
        if self._tb is not None:
            self._try("tensorboard", self._tb.flush)

    def close(self) -> None:
        if self._jsonl is not None:
            self._try("jsonl", self._jsonl.close)
            self._jsonl = None
        if self._tb is not None:
            self._try("tensorboard", self._tb.close)
            self._tb = None
        if self._wandb is not None:
            self._try("wandb", self._wandb.finish)
            self._wandb = None

    def __enter__(self) -> MetricsSink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
