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
