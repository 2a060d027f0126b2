"""slurm-rl test suite (a package so tests/slurmlab.py imports as tests.slurmlab)."""
