"""The `slurm-rl` command line (reference: docs/cli.md), one module per command group.

Exit codes: 0 success, 1 the run failed (or was stopped before it finished), 2 bad input
(config, arguments, files), 3 the environment cannot do it (Slurm missing, controller
unreachable), 130 interrupted. Viewers (`status --watch`, `events --follow`) exit 0 on Ctrl-C:
leaving them is how they are used.

Shell completion (bash; zsh and fish alike with zsh_source / fish_source):
    eval "$(_SLURM_RL_COMPLETE=bash_source slurm-rl)"
"""

from __future__ import annotations

# each command module registers its commands on `cli` when imported
from slurm_rl.cli import export, run, simulate, sweep, tools, view  # noqa: F401
from slurm_rl.cli.base import cli, main

__all__ = ["cli", "main"]
