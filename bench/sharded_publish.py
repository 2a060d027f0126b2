"""What publishing a sharded trainer's weights costs each step, and how fast a rollout gets them:
the whole weights gathered to rank 0 and served from there, against each rank serving its own part.

    python bench/sharded_publish.py                     # 2 gloo ranks, ~70M-parameter Llama, 3 rounds
    python bench/sharded_publish.py --hidden 1024 --layers 8 --rounds 5
    python bench/sharded_publish.py --json > bench/results/sharded-publish.json

Two rank processes (gloo, CPU) shard a random Llama with FSDP2 (slurm_rl.rl.fsdp) and, each round,
publish one version both ways, side by side in one run:
`whole`: `fsdp.full_state_dict` (a gather to rank 0) packed into one WeightSet that rank 0 serves;
`parts`: every rank packs its own rows (`fsdp.local_state_dict`) as its part and serves it, then a
barrier (slurm_rl.sync.parts; what roles/trainer_ranks.py does now).
The publish time is rank 0's wall time: training waits for it every step. A puller in this process
then pulls the version each way over TCP (loopback): the whole set from rank 0, or both parts at once
(`pull_parts`) from the two ranks. Ratios are whole / parts (higher is better for parts).
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

KEY = b"bench-sharded-publish-key-000000"

_RANK = r'''
import json, os, sys, time, torch
from pathlib import Path
from slurm_rl.rl import dist as rd, fsdp
from slurm_rl.rl.grpo import PolicyTrainer
from slurm_rl.sync import WeightServer, WeightSet

model_dir, work, rank, port, rounds = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), sys.argv[4], int(sys.argv[5])
os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
import torch.distributed as dist
dist.init_process_group("gloo", rank=rank, world_size=2)
info = rd.RankInfo(rank=rank, world_size=2)
tr = PolicyTrainer(model_dir, ranks=info, lr=1e-4, seed=0,
                   wrap_model=lambda m: (fsdp.shard(m, compute_dtype=torch.float32), m)[1])
bf16 = lambda sd: {k: v.to(torch.bfloat16) for k, v in sd.items()}
whole_srv = WeightServer(host="127.0.0.1", transports=("tcp",), auth_key=sys.argv[6].encode())
part_srv = WeightServer(host="127.0.0.1", transports=("tcp",), auth_key=sys.argv[6].encode())
addrs = {"whole": whole_srv.start()["tcp"], "part": part_srv.start()["tcp"]}
(work / f"addrs{rank}.json").write_text(json.dumps(addrs))
out = {"whole": [], "parts": []}
for i in range(rounds):
    v = 2 * i + 1
    dist.barrier(); t0 = time.perf_counter()
    sd = fsdp.full_state_dict(tr.model)
    if rank == 0:
        whole_srv.publish(WeightSet.from_state_dict(bf16(sd), v))
    dist.barrier()
    out["whole"].append(time.perf_counter() - t0)
    del sd
    dist.barrier(); t0 = time.perf_counter()
    part = fsdp.local_state_dict(tr.model, rank=rank)
    part_srv.publish(WeightSet.from_state_dict(bf16(part), v, part=rank, parts=2))
    rd.all_ok(True, info)
    out["parts"].append(time.perf_counter() - t0)
    (work / f"ready{rank}-{v}").write_text("")
    while not (work / f"pulled-{v}").exists():      # the puller has both ways of this version
        time.sleep(0.01)
if rank == 0:
    out["params"] = sum(p.numel() for p in tr.model.parameters()) * 2   # sharded over 2 ranks
    (work / "result.json").write_text(json.dumps(out))
dist.barrier()
whole_srv.stop(); part_srv.stop()
os._exit(0)   # torch 2.13 CPU can abort in gloo teardown (docs/failure-model.md)
'''


def _wait(path: Path, procs: list[subprocess.Popen], timeout: float = 600) -> None:
    end = time.monotonic() + timeout
    while not path.exists():
        if any(p.poll() not in (None, 0) for p in procs) or time.monotonic() > end:
            raise SystemExit(f"a rank failed or timed out waiting for {path.name}:\n"
                             + "".join((p.stderr.read() if p.stderr else "")[-3000:] for p in procs if p.poll()))
        time.sleep(0.01)


def measure(hidden: int, layers: int, rounds: int) -> dict:
    from slurm_rl.rl.model import build_tiny_model
    from slurm_rl.sync import Parts, pull, pull_parts

    with tempfile.TemporaryDirectory(prefix="sharded-publish-") as d:
        work = Path(d)
        model = build_tiny_model(work / "model", hidden=hidden, layers=layers, heads=hidden // 64, kv_heads=hidden // 64,
                                 max_position_embeddings=128)
        env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
        port = str(free_port())
        procs = [subprocess.Popen([sys.executable, "-c", _RANK, str(model), str(work), str(r), port, str(rounds),
                                   KEY.decode()], env=env, stderr=subprocess.PIPE, text=True) for r in (0, 1)]
        pulls: dict[str, list[float]] = {"whole": [], "parts": []}
        nbytes = 0
        for i in range(rounds):
            v = 2 * i + 1
            for r in (0, 1):
                _wait(work / f"ready{r}-{v}", procs)
            addrs = [json.loads((work / f"addrs{r}.json").read_text()) for r in (0, 1)]
            t0 = time.perf_counter()
            ws = pull(addrs[0]["whole"], v, deadline_s=300, auth_key=KEY)
            pulls["whole"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            got = pull_parts([], [a["part"] for a in addrs], v, 2, deadline_s=300, auth_key=KEY)
            pulls["parts"].append(time.perf_counter() - t0)
            assert isinstance(got, Parts) and got.nbytes >= ws.nbytes - 4096
            nbytes = ws.nbytes
            del ws, got
            (work / f"pulled-{v}").write_text("")
        for p in procs:
            _, err = p.communicate(timeout=600)
            if p.returncode != 0:
                raise SystemExit(f"a rank failed:\n{err[-3000:]}")
        out = json.loads((work / "result.json").read_text())
        out["pull_whole"], out["pull_parts"], out["bytes"] = pulls["whole"], pulls["parts"], nbytes
        return out


def main() -> None:
    a = model_args(__doc__.splitlines()[0], "rounds", 3, "versions published and pulled each way")
    r = measure(a.hidden, a.layers, a.rounds)
    med = {k: statistics.median(v) for k, v in r.items() if isinstance(v, list)}
    if a.json:
        print(json.dumps({"hidden": a.hidden, "layers": a.layers, "rounds": a.rounds, "params": r["params"],
                          "bytes": r["bytes"], "median_s": med, "all_s": r}, indent=1))
        return
    print_ratios(f"sharded publish, 2 gloo ranks, {r['params'] / 1e6:.0f}M params, "
                 f"{r['bytes'] / 1e6:.0f} MB bf16 per version (median of {a.rounds} rounds)", ("whole", "parts"),
                 [("publish (training waits for it every step)", med["whole"], med["parts"], ".1f"),
                  ("a rollout's pull over TCP (loopback)", med["pull_whole"], med["pull_parts"], ".2f")])


if __name__ == "__main__":
    t0 = time.time()
    main()
    print(f"({time.time() - t0:.0f}s)", file=sys.stderr)
