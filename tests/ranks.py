"""Helper for tests of a process group: start N rank processes of a script, wait, check each exited 0."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_ranks(code: str, argv: Sequence[Sequence[str]], timeout_s: float = 300) -> list[tuple[str, str]]:
    """Run `python -c code *argv[r]` for each rank r at once; returns each rank's (stdout, stderr)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", code, *a], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=env) for a in argv]
    deadline = time.monotonic() + timeout_s
    outs = []
    for p in procs:
        try:
            outs.append(p.communicate(timeout=max(1.0, deadline - time.monotonic())))
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
    for p, (out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, out[-2000:] + err[-3000:]
    return outs


# The start of a 2-rank script for `run_ranks` (argv: model dir, work dir, rank): rank 0 serves the
# process group's store and writes its address to work/addr, rank 1 reads it; `info` is this rank's.
JOIN_TWO = r'''
import json, os, pickle, sys, time, torch
from pathlib import Path
from slurm_rl.rl import dist as rd, fsdp

model_dir, work, rank = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
info = rd.RankInfo(rank=rank, world_size=2)
if rank == 0:
    store, addr = rd.serve_store("127.0.0.1", 2, 120)
    (work / "addr.tmp").write_text(addr); os.replace(work / "addr.tmp", work / "addr")
    rd.join(info, device="cpu", timeout_s=120, store=store)
else:
    while not (work / "addr").exists():
        time.sleep(0.05)
    rd.join(info, device="cpu", timeout_s=120, rdzv=(work / "addr").read_text())
'''
