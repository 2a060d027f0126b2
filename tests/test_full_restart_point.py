"""A full restart starts from the newest intact checkpoint at or before the committed step, never
from a newer one (a checkpoint of steps that were rolled back belongs to an abandoned lineage)."""

from __future__ import annotations

import queue
from pathlib import Path

import torch

from slurm_rl.checkpoint import Checkpointer
from slurm_rl.config import RunConfig
from slurm_rl.controller.broker import Broker
from slurm_rl.controller.context import Context
from slurm_rl.controller.faults import Faults
from slurm_rl.controller.recover import Recovery
from slurm_rl.controller.registry import Registry
from slurm_rl.controller.weights import Lineage
from slurm_rl.rundir import RunDir
from slurm_rl.store import Store


class _Backend:
    """Takes submissions and cancellations, starts nothing."""

    def __init__(self) -> None:
        self.cancelled: list[str] = []

    def submit(self, spec: object) -> str:
        return "J"

    def cancel(self, ids: list[str]) -> None:
        self.cancelled += ids


def test_full_restart_takes_no_checkpoint_newer_than_the_committed_step(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    run.checkpoints.mkdir(parents=True, exist_ok=True)
    ck = Checkpointer(run.checkpoints, keep=5)
    for step in (4, 8):
        ck.save(step, {"w": torch.full((4,), float(step))}, {"state": {}, "param_groups": []}, {"wepoch": 0})
    cfg = RunConfig.model_validate({"spare": {"replicas": 0}})
    ctx = Context(run, cfg, Store(tmp_path / "state.db"), _Backend())  # type: ignore[arg-type]
    registry = Registry(ctx)
    registry.create()
    faults = Faults(ctx, registry)
    lineage = Lineage(ctx, registry, faults)
    lineage.start()
    lineage.committed, lineage.trainer_version = 6, 6     # step 8 was checkpointed, then rolled back past
    rec = Recovery(ctx, registry, lineage, Broker(ctx, lineage, faults), faults, queue.SimpleQueue(),
                   on_jobs_changed=lambda: None, stop_run=lambda reason, failed: None)
    try:
        rec._full_restart("test", 100.0)
    finally:
        rec.close()
    assert lineage.committed == 4 and lineage.trainer_version == 4
    assert ctx.store.get_meta("committed") == 4
    assert registry.trainer().assign.resume_step == 4
