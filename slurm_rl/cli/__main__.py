"""`python -m slurm_rl.cli` is `slurm-rl`."""

from slurm_rl.cli import main

main()
