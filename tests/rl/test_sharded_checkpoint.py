"""Sharded checkpoints: saved at 2 gloo ranks (whole weights by rank 0, optimizer shards by DCP), restored
at 1 rank (no process group) and at 2, bit-identical weights and equal AdamW state; the plain
checkpoint verification and `slurm-rl export`'s reader see an ordinary checkpoint."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import torch
from safetensors.torch import load_file

from slurm_rl import checkpoint
from slurm_rl.export import SafetensorsCheckpoints
from slurm_rl.rl import sharded_ckpt
from slurm_rl.rl.grpo import Group, PolicyTrainer, Sample
from slurm_rl.rl.model import load_tokenizer
from tests.ranks import run_ranks

TRAINER = dict(lr=1e-3, micro_batch_size=2, seed=0)

# mode save: one step, checkpoint 1; mode load: restore checkpoint 1. Both dump the full state seen.
_RANK = r'''
import copy, json, os, pickle, sys, time, torch
from pathlib import Path
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict
from slurm_rl.rl import dist as rd, fsdp, sharded_ckpt
from slurm_rl.rl.grpo import PolicyTrainer

model_dir, work, rank, mode = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
info = rd.RankInfo(rank=rank, world_size=2)
addr = work / f"addr-{mode}"
if rank == 0:
    store, a = rd.serve_store("127.0.0.1", 2, 120)
    (work / "addr.tmp").write_text(a); os.replace(work / "addr.tmp", addr)
    rd.join(info, device="cpu", timeout_s=120, store=store)
else:
    while not addr.exists():
        time.sleep(0.05)
    rd.join(info, device="cpu", timeout_s=120, rdzv=addr.read_text())
tr = PolicyTrainer(model_dir, ranks=info, wrap_model=lambda m: (fsdp.shard(m, compute_dtype=torch.float32), m)[1],
                   **json.loads(sys.argv[5]))
full = StateDictOptions(full_state_dict=True, cpu_offload=True)
extra = {}
if mode == "save":
    tr.step(pickle.loads((work / "groups.pkl").read_bytes()))
    sharded_ckpt.save(work / "ckpt", 1, tr, {"note": "test"})
elif mode == "async":
    # checkpoint 1 is written while step 2 trains: it must hold step 1's state, not step 2's
    groups = pickle.loads((work / "groups.pkl").read_bytes())
    tr.step(groups)
    saver = sharded_ckpt.ShardedSaver(work / "ackpt", tr)
    at_save = fsdp.full_state_dict(tr.model)
    opt_at_save = copy.deepcopy(get_optimizer_state_dict(tr.model, tr.optimizer, options=full))   # CPU: views
    saver.start(1, at_save, {"note": "async"})
    tr.step(groups)
    saver.wait()
    res = saver.done.get_nowait()
    extra = {"at_save": at_save, "opt_at_save": opt_at_save, "path": str(res.path), "error": res.error}
else:
    sharded_ckpt.load(work / "ckpt" / "step-000001", tr)
sd = fsdp.full_state_dict(tr.model)
opt = get_optimizer_state_dict(tr.model, tr.optimizer, options=full)
if rank == 0:
    torch.save({"weights": sd, "optimizer": opt, "version": tr.version, **extra}, work / f"{mode}-2.pt")
rd.leave()
os._exit(0)   # torch 2.13 CPU can abort in gloo teardown after all work is done (docs/failure-model.md)
'''


def _two_ranks(model_dir: Path, work: Path, mode: str) -> dict:
    run_ranks(_RANK, [[str(model_dir), str(work), str(r), mode, json.dumps(TRAINER)] for r in (0, 1)])
    return torch.load(work / f"{mode}-2.pt", weights_only=False)


def _same_optimizer(a: dict, b: dict) -> None:
    assert sorted(a["state"]) == sorted(b["state"]) and a["state"]
    for name, st in a["state"].items():
        assert sorted(st) == sorted(b["state"][name])
        for k, v in st.items():
            assert torch.equal(torch.as_tensor(v), torch.as_tensor(b["state"][name][k])), (name, k)
    assert [g["lr"] for g in a["param_groups"]] == [g["lr"] for g in b["param_groups"]]


def test_saved_at_two_ranks_restores_at_one_and_two(tiny_model: Path, tmp_path: Path) -> None:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    probe = PolicyTrainer(tiny_model, **TRAINER)
    prompt = load_tokenizer(tiny_model)("3+4=")["input_ids"]
    comps = [[10, 2], [6, 2], [10, 11, 2], [7, 7, 2], [12, 2]]
    group = Group("a", [Sample(prompt, c, probe.logprobs(prompt + c)[len(prompt) - 1 :], float(i % 2), 0)
                        for i, c in enumerate(comps)])
    (tmp_path / "groups.pkl").write_bytes(pickle.dumps([group]))
    saved = _two_ranks(tiny_model, tmp_path, "save")
    assert saved["version"] == 1

    ckpt_dir = tmp_path / "ckpt" / "step-000001"
    assert checkpoint.verify(tmp_path / "ckpt", 1) == "" and sharded_ckpt.verify_dcp(ckpt_dir) == ""
    on_disk = load_file(str(ckpt_dir / "weights.safetensors"))
    assert all(torch.equal(on_disk[k], saved["weights"][k]) for k in saved["weights"])
    reader = SafetensorsCheckpoints(tmp_path / "ckpt")   # what `slurm-rl export` reads
    assert SafetensorsCheckpoints.detect(reader.root) and reader.steps() == [1] and reader.problem(1) == ""
    assert all(torch.equal(v, saved["weights"][k]) for k, v in reader.load_weights(1).items())

    # at 1 rank: an unsharded trainer, no process group
    one = PolicyTrainer(tiny_model, **TRAINER)
    sharded_ckpt.load(ckpt_dir, one)
    assert one.version == 1
    got = one.state_dict_for_sync()
    assert sorted(got) == sorted(saved["weights"])
    assert all(torch.equal(got[k], saved["weights"][k]) for k in got)
    _same_optimizer(get_optimizer_state_dict(one.model, one.optimizer, options=StateDictOptions(full_state_dict=True)),
                    saved["optimizer"])

    # at 2 ranks again
    again = _two_ranks(tiny_model, tmp_path, "load")
    assert again["version"] == 1
    assert all(torch.equal(again["weights"][k], saved["weights"][k]) for k in saved["weights"])
    _same_optimizer(again["optimizer"], saved["optimizer"])


def test_an_async_save_holds_the_state_it_was_started_at(tiny_model: Path, tmp_path: Path) -> None:
    """ShardedSaver: the shards are staged when `start` returns; the step trained while they are
    written changes the trainer, not the checkpoint, which restores exactly the state at `start`."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    probe = PolicyTrainer(tiny_model, **TRAINER)
    prompt = load_tokenizer(tiny_model)("3+4=")["input_ids"]
    comps = [[10, 2], [6, 2], [10, 11, 2], [7, 7, 2]]
    group = Group("a", [Sample(prompt, c, probe.logprobs(prompt + c)[len(prompt) - 1 :], float(i % 2), 0)
                        for i, c in enumerate(comps)])
    (tmp_path / "groups.pkl").write_bytes(pickle.dumps([group]))
    got = _two_ranks(tiny_model, tmp_path, "async")
    assert got["error"] == "" and got["version"] == 2
    path = Path(got["path"])
    assert path == tmp_path / "ackpt" / "step-000001"
    assert checkpoint.verify(path.parent, 1) == "" and sharded_ckpt.verify_dcp(path) == ""
    assert not list(path.parent.glob("*.tmp"))
    # the trainer moved on after the save began
    assert any(not torch.equal(got["weights"][k], got["at_save"][k]) for k in got["at_save"])
    back = PolicyTrainer(tiny_model, **TRAINER)
    sharded_ckpt.load(path, back)
    assert back.version == 1
    restored = back.state_dict_for_sync()
    assert all(torch.equal(restored[k], got["at_save"][k]) for k in got["at_save"])
    _same_optimizer(get_optimizer_state_dict(back.model, back.optimizer, options=StateDictOptions(full_state_dict=True)),
                    got["opt_at_save"])


def test_a_failed_async_save_is_reported_not_raised(tiny_model: Path, tmp_path: Path, monkeypatch) -> None:
    """As the single-process Checkpointer: a save that cannot be finished (a full disk while writing
    the weights) ends up in `done` with the error, leaves neither the step nor a `.tmp` behind, and
    the next save works."""
    import errno

    tr = PolicyTrainer(tiny_model, **TRAINER)
    root = tmp_path / "ck"
    root.mkdir()
    saver = sharded_ckpt.ShardedSaver(root, tr)
    real = sharded_ckpt._finalize

    def disk_full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(sharded_ckpt, "_finalize", disk_full)
    saver.start(2, tr.state_dict_for_sync(), {})
    saver.wait()
    res = saver.done.get_nowait()
    assert res.step == 2 and res.path is None and "No space left" in res.error
    assert checkpoint.list_steps(root) == [] and not list(root.glob("*.tmp"))
    monkeypatch.setattr(sharded_ckpt, "_finalize", real)
    saver.start(3, tr.state_dict_for_sync(), {})
    saver.wait()
    assert saver.done.get_nowait().path == root / "step-000003" and checkpoint.verify(root, 3) == ""


def test_a_corrupted_shard_is_refused(tiny_model: Path, tmp_path: Path) -> None:
    tr = PolicyTrainer(tiny_model, **TRAINER)
    path = sharded_ckpt.save(tmp_path, 3, tr, {})
    assert checkpoint.verify(tmp_path, 3) == "" and sharded_ckpt.verify_dcp(path) == ""
    shard = next(p for p in (path / sharded_ckpt.DCP_DIR).iterdir() if p.suffix == ".distcp")
    shard.write_bytes(shard.read_bytes()[:-8])
    assert "optimizer.dcp" in sharded_ckpt.verify_dcp(path)
    try:
        sharded_ckpt.load(path, PolicyTrainer(tiny_model, **TRAINER))
    except ValueError as e:
        assert "truncated or corrupted" in str(e)
    else:
        raise AssertionError("a corrupted DCP shard loaded")


def test_mixed_precision_keeps_the_fp32_masters_bit_for_bit(tiny_model: Path, tmp_path: Path) -> None:
    """weights.safetensors holds the bf16 weights rollouts run; the restore takes the fp32 masters
    from the DCP shards, not the rounded file."""
    kw = {**TRAINER, "dtype": "bfloat16"}
    tr = PolicyTrainer(tiny_model, **kw)
    prompt = load_tokenizer(tiny_model)("3+4=")["input_ids"]
    comps = [[10, 2], [6, 2], [10, 11, 2]]
    tr.step([Group("a", [Sample(prompt, c, tr.logprobs(prompt + c)[len(prompt) - 1 :], float(i % 2), 0)
                         for i, c in enumerate(comps)])])
    path = sharded_ckpt.save(tmp_path, 1, tr, {})
    assert {v.dtype for v in load_file(str(path / "weights.safetensors")).values()} == {torch.bfloat16}
    back = PolicyTrainer(tiny_model, **kw)
    sharded_ckpt.load(path, back)
    assert back.version == 1
    want = dict(tr.model.named_parameters())
    got = dict(back.model.named_parameters())
    assert {p.dtype for p in got.values()} == {torch.float32}
    assert all(torch.equal(got[k], want[k]) for k in want)
    for p_want, p_got in zip(tr.optimizer.param_groups[0]["params"], back.optimizer.param_groups[0]["params"],
                             strict=True):
        for k in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(tr.optimizer.state[p_want][k], back.optimizer.state[p_got][k])
