"""A full restart starts from the newest intact checkpoint at or before the committed step, never
from a newer one (a checkpoint of steps that were rolled back belongs to an abandoned lineage)."""

from __future__ import annotations

import queue
from pathlib import Path

import torch

from slurm_rl.checkpoint import Checkpointer
from slurm_rl.controller.broker import Broker
from slurm_rl.controller.recover import Recovery
from tests.rooms import lineage_rooms


def test_full_restart_takes_no_checkpoint_newer_than_the_committed_step(tmp_path: Path) -> None:
    ctx, registry, faults, lineage = lineage_rooms(tmp_path, spare={"replicas": 0})
    ck = Checkpointer(ctx.run.checkpoints, keep=5)
    for step in (4, 8):
        ck.save(step, {"w": torch.full((4,), float(step))}, {"state": {}, "param_groups": []}, {"wepoch": 0})
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
