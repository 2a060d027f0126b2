"""A sharded trainer's weights in parts (slurm_rl.sync.parts): 2 gloo ranks each publish their own
rows, which join into exactly the gathered whole weights; a rank's part loads back into its shards,
and so do whole weights, each rank taking its rows - no collective either way."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file

from slurm_rl.sync import Parts, WeightSet
from slurm_rl.sync.parts import join
from tests.ranks import JOIN_TWO, run_ranks

_RANK = JOIN_TWO + r'''
from safetensors.torch import save_file, load_file
from slurm_rl.rl.grpo import PolicyTrainer

tr = PolicyTrainer(model_dir, ranks=info, wrap_model=lambda m: (fsdp.shard(m, compute_dtype=torch.float32), m)[1],
                   autocast=False, lr=1e-3, seed=0)
with torch.no_grad():                                   # weights no fresh model has: a part must carry them
    for p in tr.model.parameters():
        p.to_local().add_(torch.arange(p.to_local().numel(), dtype=p.dtype).reshape(p.to_local().shape) * 1e-3)
whole = fsdp.full_state_dict(tr.model)
part = {k: v.clone() for k, v in fsdp.local_state_dict(tr.model, rank=rank).items()}
save_file(part, str(work / f"part{rank}.safetensors"))
if rank == 0:
    save_file(whole, str(work / "whole.safetensors"))
rd.all_ok(True, info)

def scrambled():
    with torch.no_grad():
        for p in tr.model.parameters():
            p.to_local().zero_()

def check(what):
    got = fsdp.full_state_dict(tr.model)
    if rank == 0:
        bad = [k for k in whole if not torch.equal(got[k], whole[k])]
        print(f"{what}: {'OK' if not bad else 'DIFFERS ' + ','.join(bad[:3])}", flush=True)

scrambled()
fsdp.load_local_state_dict(tr.model, load_file(str(work / f"part{rank}.safetensors")), rank=rank)
check("own part")
scrambled()
fsdp.load_whole_into_shards(tr.model, load_file(str(work / "whole.safetensors")), rank=rank, world_size=2)
check("whole")
try:                                                    # the other rank's part does not fit this rank's shard
    other = load_file(str(work / f"part{1 - rank}.safetensors"))
    fsdp.load_local_state_dict(tr.model, other, rank=rank)
    shapes_differ = False
except ValueError as e:
    shapes_differ = "shard" in str(e)
any_uneven = any(p.shape[0] % 2 for p in tr.model.parameters())
print(f"rank {rank} wrong part refused: {shapes_differ} uneven: {any_uneven}", flush=True)
rd.leave()
os._exit(0)   # torch 2.13 CPU can abort in gloo teardown after all work is done (docs/failure-model.md)
'''


def test_parts_of_two_ranks_join_into_the_whole_and_load_back(tiny_model: Path, tmp_path: Path) -> None:
    outs = run_ranks(_RANK, [[str(tiny_model), str(tmp_path), str(r)] for r in (0, 1)])
    out0 = outs[0][0]
    assert "own part: OK" in out0 and "whole: OK" in out0, out0[-2000:] + outs[0][1][-2000:]
    whole = load_file(str(tmp_path / "whole.safetensors"))
    parts = [load_file(str(tmp_path / f"part{r}.safetensors")) for r in (0, 1)]
    assert set(parts[1]) <= set(parts[0]) and sum(t.numel() for p in parts for t in p.values()) == \
        sum(t.numel() for t in whole.values())
    joined = join(parts)
    assert sorted(joined) == sorted(whole) and all(torch.equal(joined[k], whole[k]) for k in whole)
    # as they travel: one WeightSet per rank, parts 0 and 1 of the version
    sets = [WeightSet.from_state_dict(p, 7, part=r, parts=2) for r, p in enumerate(parts)]
    got = Parts(list(reversed(sets))).tensors()
    assert all(torch.equal(got[k], whole[k]) for k in whole) and Parts(sets).nbytes == sum(s.nbytes for s in sets)
    # the tiny model's 21-row embedding splits 11/10: a rank refuses the other rank's part
    assert whole["model.embed_tokens.weight"].shape[0] % 2 == 1
    for r in (0, 1):
        line = next(x for x in outs[r][0].splitlines() if x.startswith(f"rank {r} wrong part"))
        assert line.endswith("refused: True uneven: True"), line
