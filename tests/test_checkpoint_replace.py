"""Re-saving a step never leaves a moment (or a failure) without a checkpoint of that step."""

import os

import torch

from slurm_rl import checkpoint as ck


def _fail_renames_into_place(monkeypatch) -> None:
    """The rename of a finished `.tmp` directory fails (a full disk); other renames work."""
    real = os.replace

    def failing(src, dst):
        if str(src).endswith(".tmp"):
            raise OSError(28, "No space left on device")
        return real(src, dst)

    monkeypatch.setattr(ck.os, "replace", failing)


def test_a_failed_replace_keeps_the_previous_checkpoint_of_the_step(tmp_path, monkeypatch):
    cp = ck.Checkpointer(tmp_path, keep=3)
    first = cp._write(5, {"w": torch.ones(2)}, {"m": torch.zeros(2)}, {})
    assert first.error == "" and cp.verify(5) == ""
    _fail_renames_into_place(monkeypatch)
    second = cp._write(5, {"w": torch.full((2,), 2.0)}, {"m": torch.zeros(2)}, {})
    assert second.error
    assert cp.steps() == [5] and cp.verify(5) == ""
    assert torch.equal(cp.load_weights(5)["w"], torch.ones(2))
    cp.close()


def test_a_failed_replace_of_a_sharded_checkpoint_keeps_the_previous_one(tmp_path, monkeypatch):
    """The sharded trainer's saves go through the same rename (checkpoint.put_in_place)."""
    from slurm_rl.rl import sharded_ckpt
    from slurm_rl.rl.grpo import PolicyTrainer
    from slurm_rl.rl.model import build_tiny_model

    tr = PolicyTrainer(build_tiny_model(tmp_path / "model", seed=0), lr=1e-3)
    root = tmp_path / "ck"
    sharded_ckpt.save(root, 5, tr, {})
    before = ck.Checkpointer(root, keep=3).load_weights(5)
    _fail_renames_into_place(monkeypatch)
    with torch.no_grad():
        next(tr.model.parameters()).add_(1.0)
    try:
        sharded_ckpt.save(root, 5, tr, {})
    except OSError as e:
        assert e.errno == 28
    else:
        raise AssertionError("the failing rename went unnoticed")
    assert ck.list_steps(root) == [5] and ck.verify(root, 5) == "" and sharded_ckpt.verify_dcp(root / "step-000005") == ""
    after = ck.Checkpointer(root, keep=3).load_weights(5)
    assert all(torch.equal(before[k], after[k]) for k in before)
