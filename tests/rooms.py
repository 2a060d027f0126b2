"""Controller rooms on a real run directory and store, with a backend that starts nothing: for unit
tests of the lineage and recovery against checkpoints on disk."""

from __future__ import annotations

from pathlib import Path

from slurm_rl.config import RunConfig
from slurm_rl.controller.context import Context
from slurm_rl.controller.faults import Faults
from slurm_rl.controller.registry import Registry
from slurm_rl.controller.weights import Lineage
from slurm_rl.rundir import RunDir
from slurm_rl.store import Store


class Backend:
    """Takes submissions and cancellations, starts nothing."""

    def __init__(self) -> None:
        self.cancelled: list[str] = []

    def submit(self, spec: object) -> str:
        return "J"

    def cancel(self, ids: list[str]) -> None:
        self.cancelled += ids


def lineage_rooms(tmp_path: Path, **cfg: object) -> tuple[Context, Registry, Faults, Lineage]:
    """A fresh run's context, registry (slots created), faults and lineage (started)."""
    run = RunDir(tmp_path)
    run.checkpoints.mkdir(parents=True, exist_ok=True)
    ctx = Context(run, RunConfig.model_validate(cfg), Store(tmp_path / "state.db"), Backend())  # type: ignore[arg-type]
    registry = Registry(ctx)
    registry.create()
    faults = Faults(ctx, registry)
    lineage = Lineage(ctx, registry, faults)
    lineage.start()
    return ctx, registry, faults, lineage
