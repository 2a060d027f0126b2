"""PolicyTrainer: fp32 masters under a bf16/fp16 compute dtype, gradient checkpointing, micro-batches, progress."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from slurm_rl.config import load_config
from slurm_rl.rl.grpo import Group, PolicyTrainer, Sample
from slurm_rl.rl.model import load_tokenizer


def _group(tr: PolicyTrainer, tiny_model: Path, n: int = 4) -> Group:
    tok = load_tokenizer(tiny_model)
    prompt = tok("3+4=")["input_ids"]
    comps = [[10, 2], [6, 2], [10, 11, 2], [7, 7, 7, 2], [12, 2], [9, 2]][:n]
    samples = [Sample(prompt, c, tr.logprobs(prompt + c)[len(prompt) - 1 :], float(i % 2 == 0), tr.version)
               for i, c in enumerate(comps)]
    return Group("p", samples)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_master_weights_and_optimizer_state_stay_fp32(tiny_model: Path, dtype: str) -> None:
    tr = PolicyTrainer(tiny_model, lr=1e-2, dtype=dtype)
    assert tr.precision.mixed and tr.dtype == getattr(torch, dtype)
    before = {n: p.detach().clone() for n, p in tr.model.named_parameters()}
    stats = tr.step([_group(tr, tiny_model)])
    assert stats.grad_norm > 0 and not stats.skipped
    assert {p.dtype for p in tr.model.parameters()} == {torch.float32}
    moments = [v for st in tr.optimizer.state.values() for k, v in st.items() if k in ("exp_avg", "exp_avg_sq")]
    assert moments and {m.dtype for m in moments} == {torch.float32}
    # an update far below bf16's resolution of the weight still lands in the fp32 master
    moved = [n for n, p in tr.model.named_parameters() if not torch.equal(p.detach(), before[n])]
    assert moved
    sync = tr.state_dict_for_sync()
    assert {t.dtype for t in sync.values()} == {getattr(torch, dtype)}     # rollouts get the compute dtype
    assert (tr.scaler is not None) == (dtype == "float16")


def test_mixed_logprobs_are_close_to_fp32(tiny_model: Path) -> None:
    ids = list(range(4, 21)) * 3
    full = PolicyTrainer(tiny_model, lr=1e-3).logprobs(ids)
    half = PolicyTrainer(tiny_model, lr=1e-3, dtype="bfloat16").logprobs(ids)
    assert max(abs(a - b) for a, b in zip(full, half)) < 0.05
    assert full != half                              # the compute really ran in bf16


def test_restore_keeps_the_fp32_master_bits(tiny_model: Path) -> None:
    a = PolicyTrainer(tiny_model, lr=1e-2, dtype="bfloat16")
    a.step([_group(a, tiny_model)])
    state = a.optimizer_state()
    assert {t.dtype for t in state["master"].values()} == {torch.float32}
    # what a standby holds and a checkpoint's weights file has: the bf16 weights
    b = PolicyTrainer(tiny_model, lr=1e-2, dtype="bfloat16")
    b.load_weights(a.state_dict_for_sync())
    masters = dict(a.model.named_parameters())
    assert any(not torch.equal(p, masters[n]) for n, p in b.model.named_parameters())   # bf16 lost bits
    b.load_optimizer_state(state)
    assert all(torch.equal(p, masters[n]) for n, p in b.model.named_parameters())       # masters restored
    assert b.version == 1
    # an older optimizer state must not roll newer weights back
    c = PolicyTrainer(tiny_model, lr=1e-2, dtype="bfloat16")
    c.step([_group(c, tiny_model)])
    c.step([_group(c, tiny_model)])
    newer = {n: p.detach().clone() for n, p in c.model.named_parameters()}
    c.load_optimizer_state(state, master_weights=False)
    assert all(torch.equal(p, newer[n]) for n, p in c.model.named_parameters())


def test_fp32_sync_shares_storage_and_has_no_masters(tiny_model: Path) -> None:
    tr = PolicyTrainer(tiny_model, lr=1e-2)
    live = tr.state_dict_for_sync(copy=False)
    params = {p.data_ptr() for p in tr.model.parameters()}
    assert all(t.data_ptr() in params for t in live.values())
    assert "master" not in tr.optimizer_state()


def test_gradient_checkpointing_recomputes_layers_and_gives_the_same_step(tiny_model: Path) -> None:
    results = []
    for ckpt in (False, True):
        tr = PolicyTrainer(tiny_model, lr=1e-2, gradient_checkpointing=ckpt, max_grad_norm=100.0)
        g = _group(tr, tiny_model)
        calls = []
        layer = tr.model.get_decoder().layers[0]
        # a pre-hook: the recompute stops early once it has what the backward needs (torch's
        # checkpoint early stop), so the layer's post-forward hooks may not run a second time
        handle = layer.register_forward_pre_hook(lambda *a, calls=calls: calls.append(1))
        s = tr.step([g])
        handle.remove()
        results.append((s.loss, s.grad_norm, len(calls)))
    (l0, g0, n0), (l1, g1, n1) = results
    assert l0 == pytest.approx(l1, abs=1e-7) and g0 == pytest.approx(g1, rel=1e-6)
    assert n1 == 2 * n0                              # every layer forward runs again in the backward


def test_micro_batches_report_progress_and_match_one_batch(tiny_model: Path) -> None:
    out = {}
    for mbs in (1, 3, 64):
        tr = PolicyTrainer(tiny_model, lr=1e-2, micro_batch_size=mbs, max_grad_norm=100.0)
        calls: list[int] = []
        s = tr.step([_group(tr, tiny_model, n=6)], progress=calls.append)
        assert s.micro_batches == -(-6 // mbs) and calls == [1] * (s.micro_batches + 1)
        out[mbs] = (s.loss, s.grad_norm)
    assert out[1][0] == pytest.approx(out[64][0], abs=1e-6) and out[3][1] == pytest.approx(out[64][1], rel=1e-5)


def test_trainer_config_fields_are_validated_with_real_size_defaults() -> None:
    cfg = load_config(None)
    assert cfg.trainer.micro_batch_size == 4 and cfg.trainer.gradient_checkpointing
    assert cfg.trainer.logprob_chunk_tokens == 1024
    demo = load_config("configs/demo.yaml")
    assert demo.trainer.micro_batch_size == 256 and not demo.trainer.gradient_checkpointing
    from slurm_rl.errors import ConfigError

    with pytest.raises(ConfigError, match="trainer.micro_batch_size"):
        load_config(None, ["trainer.micro_batch_size=0"])
    with pytest.raises(ConfigError, match="trainer.logprob_chunk_tokens"):
        load_config(None, ["trainer.logprob_chunk_tokens=0"])


_FSDP_ONE_RANK = r'''
import json, os, sys, torch, torch.distributed as dist
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from slurm_rl.rl.grpo import Group, PolicyTrainer, Sample
from slurm_rl.rl.model import load_tokenizer

model_dir = sys.argv[1]
dist.init_process_group("gloo", init_method="tcp://127.0.0.1:0", rank=0, world_size=1)

def shard(m):
    mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    for layer in m.get_decoder().layers:
        fully_shard(layer, mp_policy=mp)
    return fully_shard(m, mp_policy=mp)

prompt = load_tokenizer(model_dir)("3+4=")["input_ids"]
out = {}
for name, kw in (("autocast", {}), ("fsdp", {"autocast": False, "wrap_model": shard})):
    tr = PolicyTrainer(model_dir, lr=1e-2, dtype="bfloat16", micro_batch_size=2, gradient_checkpointing=True, **kw)
    comps = [[10, 2], [6, 2], [10, 11, 2], [7, 7, 2]]
    g = Group("p", [Sample(prompt, c, tr.logprobs(prompt + c)[len(prompt) - 1:], float(i == 0), 0)
                    for i, c in enumerate(comps)])
    s = tr.step([g])
    out[name] = {"loss": s.loss, "grad_norm": s.grad_norm, "param": type(next(tr.model.parameters())).__name__,
                 "dtypes": sorted({str(p.dtype) for p in tr.model.parameters()})}
print("RESULT " + json.dumps(out), flush=True)
dist.destroy_process_group()
os._exit(0)   # torch 2.13 CPU may abort in FSDP/gloo teardown after all work is done
'''


def test_wrap_model_takes_an_fsdp2_mixed_precision_model(tiny_model: Path, tmp_path: Path) -> None:
    """The seam the sharded trainer uses: fully_shard with MixedPrecisionPolicy(bf16 params, fp32
    reduce) through `wrap_model`, `autocast=False`, on one gloo rank: the step runs (chunked
    log-probs, gradient checkpointing, micro-batches) on fp32 DTensor masters and matches the
    autocast trainer."""
    import json
    import os
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    proc = subprocess.run([sys.executable, "-c", _FSDP_ONE_RANK, str(tiny_model)], capture_output=True, text=True,
                          timeout=300, env=env)
    line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    assert line, proc.stdout[-2000:] + proc.stderr[-2000:]
    res = json.loads(line[0][len("RESULT "):])
    assert res["fsdp"]["param"] == "DTensor" and res["fsdp"]["dtypes"] == ["torch.float32"]
    assert res["fsdp"]["loss"] == pytest.approx(res["autocast"]["loss"], abs=1e-4)
    # FSDP also runs the norms in bf16 (autocast keeps them fp32): close, not equal
    assert res["fsdp"]["grad_norm"] == pytest.approx(res["autocast"]["grad_norm"], rel=0.05)
