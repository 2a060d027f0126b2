"""Where role processes run: `local` (processes on this machine) or `slurm` (one job per role replica)."""
