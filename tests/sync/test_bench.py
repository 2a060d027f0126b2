"""The weight-sync benchmark runs end to end and prints the rows the docs promise (tiny sizes)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "weight_sync.py"


@pytest.mark.timeout(120)
def test_bench_json_rows() -> None:
    out = subprocess.run(
        [sys.executable, str(BENCH), "--json", "--sizes", "1M", "--repeat", "1", "--warmup", "0",
         "--methods", "memcpy,raw_tcp,ours_tcp,ours_same_host", "--fanout-size", "1M", "--receivers", "2"],
        capture_output=True, text=True, timeout=110, check=True)
    rows = json.loads(out.stdout)
    methods = [r["method"] for r in rows]
    assert methods == ["memcpy", "raw_tcp", "ours_tcp", "ours_same_host", "fanout_star", "fanout_relay"]
    assert all(r["size_bytes"] == 1 << 20 and r["gbps"] > 0 and r["seconds"] > 0 for r in rows)
    assert "x raw_tcp" in out.stderr          # the human table goes to stderr with --json
