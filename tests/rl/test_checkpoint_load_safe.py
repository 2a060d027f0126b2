"""optimizer.pt is read as data, never run, and onto the CPU: a checkpoint is a file anyone who can
write the run directory can change, and one written on a GPU must restore on a CPU (issue 17)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from slurm_rl.checkpoint import Checkpointer, CheckpointError, _hash_file
from slurm_rl.rl.grpo import PolicyTrainer
from tests.rl.test_trainer_precision import _group
from tests.test_checkpoint import opt_state, weights


class _Payload:
    """Unpickling this opens (creates) a file: what any code in a pickle could do instead."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def _rehash(d: Path) -> None:
    """meta.json made to match the files: a hostile checkpoint verifies."""
    meta = json.loads((d / "meta.json").read_text())
    for name in meta["files"]:
        size, digest = _hash_file(d / name)
        meta["files"][name] = {"size": size, "xxh3": digest}
    (d / "meta.json").write_text(json.dumps(meta))


def test_an_optimizer_file_holding_code_is_refused_not_run(tmp_path):
    c = Checkpointer(tmp_path / "ck", keep=3)
    try:
        c.save(5, weights(5), opt_state(5), {})
        d = c.root / "step-000005"
        marker = tmp_path / "ran"
        torch.save({"optimizer": _Payload(marker), "version": 5}, d / "optimizer.pt")
        _rehash(d)
        assert c.verify(5) == ""
        with pytest.raises(CheckpointError, match=r"step-000005/optimizer.pt.*(not plain|refused)"):
            c.load_optimizer(5)
        assert not marker.exists()
    finally:
        c.close()


@pytest.fixture
def storages_tagged_cuda():
    """torch.save records each storage's device; this makes CPU storages saved meanwhile say cuda:0,
    as a checkpoint written by a GPU trainer does (this machine has no GPU)."""
    from torch import serialization as ser

    entry = (-100, lambda obj: "cuda:0" if getattr(obj, "device", None) == torch.device("cpu") else None,
             lambda obj, location: None)
    ser._package_registry.insert(0, entry)
    try:
        yield
    finally:
        ser._package_registry.remove(entry)


def test_a_gpu_checkpoint_restores_on_a_cpu(tmp_path, storages_tagged_cuda):
    if torch.cuda.is_available():
        pytest.fail("this test needs a machine without CUDA (it fakes a GPU checkpoint)")
    c = Checkpointer(tmp_path / "ck", keep=3)
    try:
        c.save(7, weights(7), opt_state(7), {})
        with pytest.raises(RuntimeError, match="CUDA"):      # what a load without map_location does here
            torch.load(c.root / "step-000007" / "optimizer.pt", weights_only=True)
        state = c.load_optimizer(7)
        assert state["state"][0]["exp_avg"].device == torch.device("cpu")
        assert float(state["state"][0]["step"]) == 7.0
    finally:
        c.close()


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
def test_what_a_trainer_saves_loads_as_plain_data(tiny_model: Path, tmp_path: Path, dtype: str) -> None:
    a = PolicyTrainer(tiny_model, lr=1e-2, dtype=dtype)
    a.step([_group(a, tiny_model)])
    c = Checkpointer(tmp_path / "ck", keep=3)
    try:
        assert c.save(1, a.state_dict_for_sync(), a.optimizer_state(), {}).error == ""
        b = PolicyTrainer(tiny_model, lr=1e-2, dtype=dtype)
        b.load_weights(c.load_weights(1))
        b.load_optimizer_state(c.load_optimizer(1))
        assert b.version == 1
        sa, sb = a.optimizer.state_dict(), b.optimizer.state_dict()
        assert sa["param_groups"] == sb["param_groups"]
        for k, st in sa["state"].items():
            assert all(torch.equal(v, sb["state"][k][n]) for n, v in st.items())
    finally:
        c.close()
