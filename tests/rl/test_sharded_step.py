"""The sharded trainer step: 2 gloo ranks (FSDP2, each rank a share of the samples) take the same step
as one process on the whole batch."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from slurm_rl.errors import BadInput
from slurm_rl.rl.dist import RankInfo
from slurm_rl.rl.grpo import Group, PolicyTrainer, Sample
from slurm_rl.rl.model import load_tokenizer
from tests.ranks import JOIN_TWO, run_ranks

ROOT = Path(__file__).resolve().parents[2]
TRAINER = dict(lr=1e-3, micro_batch_size=2, seed=0)

# One rank of the sharded step: rank 0 serves the store and writes its port, rank 1 reads it.
_RANK = JOIN_TWO + r'''
from safetensors.torch import save_file
from slurm_rl.rl.grpo import PolicyTrainer

kw = json.loads(sys.argv[4])
compute = {"bfloat16": torch.bfloat16}.get(kw.get("dtype", ""), torch.float32)
# as the trainer role builds it (roles/trainer_ranks.py): FSDP2's mixed-precision policy casts, no autocast
tr = PolicyTrainer(model_dir, ranks=info, wrap_model=lambda m: (fsdp.shard(m, compute_dtype=compute), m)[1],
                   autocast=False, **kw)
groups = pickle.loads((work / "groups.pkl").read_bytes())
s = tr.step(groups)
sd = fsdp.full_state_dict(tr.model)
if rank == 0:
    save_file(sd, str(work / "sharded.safetensors"))
    print("RESULT " + json.dumps({"loss": s.loss, "grad_norm": s.grad_norm, "tokens": s.tokens,
                                  "sequences": s.sequences, "clip_frac": s.clip_frac, "ratio_mean": s.ratio_mean,
                                  "micro_batches": s.micro_batches}), flush=True)
rd.leave()
os._exit(0)   # torch 2.13 CPU can abort in gloo teardown after all work is done (docs/failure-model.md)
'''


def _groups(tr: PolicyTrainer, model_dir: Path) -> list[Group]:
    """An informative group of 5 (rank 0 gets 3 samples, rank 1 gets 2: a zero-weight micro-batch
    pads rank 1), completions of different lengths, and an uninformative group the step skips."""
    tok = load_tokenizer(model_dir)
    out = []
    for pid, text, comps, rewards in (
        ("a", "3+4=", [[10, 2], [6, 2], [10, 11, 2], [7, 7, 7, 2], [12, 2]], [1.0, 0.0, 1.0, 0.0, 0.5]),
        ("b", "2+2=", [[8, 2], [9, 2], [5, 2]], [1.0, 1.0, 1.0]),
    ):
        prompt = tok(text)["input_ids"]
        out.append(Group(pid, [Sample(prompt, c, tr.logprobs(prompt + c)[len(prompt) - 1 :], r, 0)
                               for c, r in zip(comps, rewards, strict=True)]))
    return out


def _run_ranks(model_dir: Path, work: Path, kw: dict = TRAINER) -> dict:
    outs = run_ranks(_RANK, [[str(model_dir), str(work), str(r), json.dumps(kw)] for r in (0, 1)])
    line = [x for x in outs[0][0].splitlines() if x.startswith("RESULT ")]
    assert line, outs[0][0][-2000:] + outs[0][1][-2000:]
    return json.loads(line[0][len("RESULT "):])


def test_two_sharded_ranks_take_the_single_process_step(tiny_model: Path, tmp_path: Path) -> None:
    single = PolicyTrainer(tiny_model, **TRAINER)
    before = {k: v.clone() for k, v in single.state_dict_for_sync().items()}
    groups = _groups(single, tiny_model)
    (tmp_path / "groups.pkl").write_bytes(pickle.dumps(groups))
    want = single.step(groups)
    after = single.state_dict_for_sync()

    got = _run_ranks(tiny_model, tmp_path)
    sharded = load_file(str(tmp_path / "sharded.safetensors"))
    assert sorted(sharded) == sorted(after)
    moved = max(float((after[k] - before[k]).abs().max()) for k in after)
    err = max(float((sharded[k] - after[k]).abs().max()) for k in after)
    print(f"sharded step: max |sharded - single| {err:.3g}, max |update| {moved:.3g}")
    assert moved > 1e-4   # the step changed the weights: parity is not of two untouched copies
    assert err < 1e-5, f"sharded vs single-process weights differ by {err:.3g} (the step moved them {moved:.3g})"
    assert got["tokens"] == want.tokens and got["sequences"] == want.sequences == 5
    assert got["micro_batches"] == 2 and want.micro_batches == 3   # ceil(ceil(5/2)/2) per rank; ceil(5/2) alone
    for k in ("loss", "grad_norm", "clip_frac", "ratio_mean"):
        assert got[k] == pytest.approx(getattr(want, k), rel=1e-4, abs=1e-6), k


def test_two_sharded_ranks_in_bf16_take_the_single_process_bf16_step(tiny_model: Path, tmp_path: Path) -> None:
    """bf16 compute with fp32 masters both ways: autocast in one process, FSDP2's MixedPrecisionPolicy
    (bf16 params for forward/backward, fp32 gradient reduction) at 2 ranks. They round differently,
    so the parity is of the update: the fp32 masters moved the same way (cosine of the two updates),
    and the step's loss and gradient norm agree to bf16 precision."""
    kw = {**TRAINER, "dtype": "bfloat16"}
    single = PolicyTrainer(tiny_model, **kw)
    masters = {k: v.detach().clone() for k, v in single.model.state_dict().items()}
    groups = _groups(single, tiny_model)
    (tmp_path / "groups.pkl").write_bytes(pickle.dumps(groups))
    want = single.step(groups)
    got = _run_ranks(tiny_model, tmp_path, kw)
    sharded = load_file(str(tmp_path / "sharded.safetensors"))
    after = {k: v.detach() for k, v in single.model.state_dict().items() if k in sharded}   # a tied head once
    assert sorted(sharded) == sorted(after) and {v.dtype for v in [*sharded.values(), *after.values()]} == {torch.float32}
    d_single = torch.cat([(after[k] - masters[k]).flatten() for k in sorted(after)])
    d_sharded = torch.cat([(sharded[k] - masters[k]).flatten() for k in sorted(after)])
    cos = float(torch.nn.functional.cosine_similarity(d_single, d_sharded, dim=0))
    rel = float((d_sharded - d_single).norm() / d_single.norm())
    print(f"bf16 sharded step: cosine of the updates {cos:.5f}, relative difference {rel:.3g}")
    assert float(d_single.abs().max()) > 1e-4
    assert cos > 0.98 and rel < 0.2, (cos, rel)
    assert got["tokens"] == want.tokens and got["sequences"] == want.sequences == 5
    for k in ("loss", "grad_norm", "ratio_mean"):
        assert got[k] == pytest.approx(getattr(want, k), rel=2e-2, abs=1e-3), k


def test_several_ranks_need_a_sharded_model(tiny_model: Path) -> None:
    with pytest.raises(BadInput, match="sharded model"):
        PolicyTrainer(tiny_model, lr=1e-3, ranks=RankInfo(rank=0, world_size=2))
    assert torch.distributed.is_available()


@pytest.mark.parametrize(("shape", "want"), [(["trainer.ranks_per_node=2"], "1 node(s) x 2 rank(s)"),
                                           (["trainer.nodes=2"], "2 node(s) x 1 rank(s)")])
def test_launch_check_names_a_multi_rank_trainer(tmp_path: Path, shape: list[str], want: str) -> None:
    from click.testing import CliRunner

    from slurm_rl.cli import cli

    sets = [a for s in shape + [f"runs_dir={tmp_path / 'runs'}"] for a in ("--set", s)]
    res = CliRunner().invoke(cli, ["launch", str(ROOT / "configs/demo.yaml"), "--check", *sets])
    assert res.exit_code == 0 and want in res.output and "FSDP2" in res.output, res.output
    assert not (tmp_path / "runs").exists()     # --check writes nothing
