"""How long a sharded trainer's checkpoint holds up training: synchronous against asynchronous saves.

    python bench/checkpoint_stall.py                        # 2 gloo ranks, ~60M-parameter Llama, 3 saves each
    python bench/checkpoint_stall.py --hidden 1024 --layers 8 --saves 2
    python bench/checkpoint_stall.py --json > bench/results/checkpoint-stall.json

Two rank processes (gloo, CPU) shard a random Llama with FSDP2 (slurm_rl.rl.fsdp) under AdamW, take a
step so the optimizer has state, then save `--saves` times each way into a fresh directory:
`sync` is `sharded_ckpt.save` (the caller waits for every byte: DCP shards, the whole weights,
hashes, fsyncs, rename); `async` is `ShardedSaver.start` (the caller waits only for the shards to be
copied; the writing runs on threads while the next step trains), timed from the gather of the
whole weights it writes (the trainer publishes parts, so a checkpoint gathers) to its return. Also shown:
how long the async save took to be complete on disk (`ShardedSaver.wait` after `start`), and the
step time with a save in flight against without, so the cost the threads take from training shows.
The stall is rank 0's wall time; the ratio is sync / async (higher is better).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from _twoproc import free_port, model_args, print_ratios  # noqa: E402

_RANK = r'''
import json, os, sys, time, torch
from pathlib import Path
from slurm_rl.rl import dist as rd, fsdp, sharded_ckpt
from slurm_rl.rl.grpo import Group, PolicyTrainer, Sample

model_dir, work, rank, port, saves = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), sys.argv[4], int(sys.argv[5])
os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
import torch.distributed as dist
dist.init_process_group("gloo", rank=rank, world_size=2)
info = rd.RankInfo(rank=rank, world_size=2)
tr = PolicyTrainer(model_dir, ranks=info, lr=1e-4, micro_batch_size=4, seed=0,
                   wrap_model=lambda m: (fsdp.shard(m, compute_dtype=torch.float32), m)[1])
g = torch.Generator().manual_seed(0)
prompt = torch.randint(3, 12, (16,), generator=g).tolist()
group = Group("a", [Sample(prompt, torch.randint(3, 12, (48,), generator=g).tolist(), [-1.0] * 48, float(i % 2), 0)
                    for i in range(4)])

def step():
    t0 = time.perf_counter(); tr.step([group]); return time.perf_counter() - t0

step()
out = {"sync": [], "async": [], "async_total": [], "step_plain": [], "step_during_save": []}
for i in range(saves):
    out["step_plain"].append(step())
    dist.barrier(); t0 = time.perf_counter()
    sharded_ckpt.save(work / "sync", i + 1, tr, {})
    out["sync"].append(time.perf_counter() - t0)
saver = sharded_ckpt.ShardedSaver(work / "async", tr)
for i in range(saves):
    dist.barrier(); t1 = time.perf_counter()
    sd = fsdp.full_state_dict(tr.model)        # the trainer gathers the whole weights for a checkpoint only
    saver.start(i + 1, sd, {})
    out["async"].append(time.perf_counter() - t1)
    out["step_during_save"].append(step())
    saver.wait()
    out["async_total"].append(time.perf_counter() - t1)
    assert saver.done.get_nowait().path is not None
if rank == 0:
    out["params"] = sum(p.numel() for p in tr.model.parameters()) * 2   # sharded over 2 ranks
    (work / "result.json").write_text(json.dumps(out))
dist.barrier()
os._exit(0)   # torch 2.13 CPU can abort in gloo teardown (docs/failure-model.md)
'''


def measure(hidden: int, layers: int, saves: int) -> dict:
    from slurm_rl.rl.model import build_tiny_model

    with tempfile.TemporaryDirectory(prefix="ckpt-stall-") as d:
        work = Path(d)
        model = build_tiny_model(work / "model", hidden=hidden, layers=layers, heads=hidden // 64, kv_heads=hidden // 64,
                                 max_position_embeddings=128)
        env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
        port = str(free_port())
        procs = [subprocess.Popen([sys.executable, "-c", _RANK, str(model), str(work), str(r), port, str(saves)],
                                  env=env, stderr=subprocess.PIPE, text=True) for r in (0, 1)]
        for p in procs:
            _, err = p.communicate(timeout=1800)
            if p.returncode != 0:
                raise SystemExit(f"a rank failed:\n{err[-3000:]}")
        out = json.loads((work / "result.json").read_text())
        out["bytes_on_disk"] = sum(f.stat().st_size for f in (work / "sync" / f"step-{saves:06d}").rglob("*")
                                   if f.is_file())
        return out


def main() -> None:
    a = model_args(__doc__.splitlines()[0], "saves", 3, "saves each way")
    r = measure(a.hidden, a.layers, a.saves)
    med = {k: statistics.median(v) for k, v in r.items() if isinstance(v, list)}
    if a.json:
        print(json.dumps({"hidden": a.hidden, "layers": a.layers, "saves": a.saves, "params": r["params"],
                          "bytes_on_disk": r["bytes_on_disk"], "median_s": med, "all_s": r}, indent=1))
        return
    print_ratios(f"checkpoint stall, 2 gloo ranks, {r['params'] / 1e6:.0f}M params, "
                 f"{r['bytes_on_disk'] / 1e6:.0f} MB per checkpoint (median of {a.saves} saves)", ("sync", "async"),
                 [("training held up by a save", med["sync"], med["async"], ".1f"),
                  ("save complete on disk", med["sync"], med["async_total"], ".2f"),
                  ("step time (plain / with a save in flight)", med["step_plain"], med["step_during_save"], ".2f")])


if __name__ == "__main__":
    t0 = time.time()
    main()
    print(f"({time.time() - t0:.0f}s)", file=sys.stderr)
