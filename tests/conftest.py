"""Shared pytest fixtures. Slurm cluster fixtures live in tests/slurmlab.py (imported below)."""

from __future__ import annotations

import os

# Role processes and vLLM honour these; keep CI deterministic and small on 2-core machines.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
from tests.slurmlab import *  # noqa: E402,F401,F403  (Slurm lab fixtures: slurm_cluster; SLURM_RL_NO_SLURM=1 opt-out)
