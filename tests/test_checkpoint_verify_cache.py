"""The controller remembers which checkpoints it verified, but a checkpoint damaged (or replaced)
after its first check is checked again: otherwise it is chosen again and again as the restore point
and every new trainer dies on it (issue 17)."""

from __future__ import annotations

import torch

from slurm_rl.checkpoint import Checkpointer
from tests.rooms import lineage_rooms
from tests.test_checkpoint import opt_state, weights


def test_a_checkpoint_damaged_after_its_first_check_is_not_chosen_again(tmp_path):
    ctx, _, _, lineage = lineage_rooms(tmp_path)
    ck = Checkpointer(ctx.run.checkpoints, keep=5)
    try:
        for step in (4, 8):
            assert ck.save(step, weights(step), opt_state(step), {"wepoch": 0}).path is not None
        assert lineage.newest_checkpoint(at_most=8) == 8
        f = ck.root / "step-000008" / "weights.safetensors"
        f.write_bytes(f.read_bytes()[:100])                 # truncated after it was verified
        assert lineage.newest_checkpoint(at_most=8) == 4
        assert [e for e in ctx.store.conn.execute("SELECT msg FROM events WHERE kind='checkpoint_fallback'")]
        # written again (a new trainer re-saves the step): verified again, and usable
        assert ck.save(8, weights(8), opt_state(8), {"wepoch": 1}).path is not None
        assert lineage.newest_checkpoint(at_most=8) == 8
    finally:
        ck.close()


def test_an_unchanged_checkpoint_is_not_hashed_twice(tmp_path, monkeypatch):
    from slurm_rl import checkpoint

    ctx, _, _, lineage = lineage_rooms(tmp_path)
    ck = Checkpointer(ctx.run.checkpoints, keep=5)
    try:
        ck.save(4, {"w": torch.ones(3)}, opt_state(4), {})
        assert lineage.newest_checkpoint() == 4
        calls = []
        monkeypatch.setattr(checkpoint, "verify", lambda root, step: calls.append(step) or "")
        assert lineage.newest_checkpoint() == 4 and calls == []
    finally:
        ck.close()
