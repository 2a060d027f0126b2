"""Tests of the Slurm layer: parsers, watcher, submission (units) and the lab cluster (marked slurm)."""
