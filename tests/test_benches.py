"""The 2-rank FSDP2 benches run end to end at a tiny size (their figures come from full-size runs,
docs/benchmarks.md): each measures both ways and every measure is a positive time."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.parametrize(("script", "count", "keys"), [
    ("checkpoint_stall.py", "--saves", ("sync", "async", "async_total", "step_plain", "step_during_save")),
    ("sharded_publish.py", "--rounds", ("whole", "parts", "pull_whole", "pull_parts")),
])
def test_a_bench_measures_both_ways(script: str, count: str, keys: tuple[str, ...]) -> None:
    out = subprocess.run([sys.executable, str(ROOT / "bench" / script), "--hidden", "128", "--layers", "1", count, "1",
                          "--json"], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    res = json.loads(out.stdout)
    assert res["params"] > 0 and all(res["median_s"][k] > 0 for k in keys), res["median_s"]
