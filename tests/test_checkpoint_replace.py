"""Re-saving a step never leaves a moment (or a failure) without a checkpoint of that step."""

import os

import torch

from slurm_rl import checkpoint as ck


def test_a_failed_replace_keeps_the_previous_checkpoint_of_the_step(tmp_path, monkeypatch):
    cp = ck.Checkpointer(tmp_path, keep=3)
    first = cp._write(5, {"w": torch.ones(2)}, {"m": torch.zeros(2)}, {})
    assert first.error == "" and cp.verify(5) == ""
    real = os.replace

    def failing(src, dst):
        if str(src).endswith(".tmp"):
            raise OSError(28, "No space left on device")
        return real(src, dst)

    monkeypatch.setattr(ck.os, "replace", failing)
    second = cp._write(5, {"w": torch.full((2,), 2.0)}, {"m": torch.zeros(2)}, {})
    assert second.error
    assert cp.steps() == [5] and cp.verify(5) == ""
    assert torch.equal(cp.load_weights(5)["w"], torch.ones(2))
    cp.close()
