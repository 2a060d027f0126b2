"""Sweeps: one run per point of a grid and/or a list of config overrides, at most N at a time.

A sweep file (YAML; format in docs/cli.md, example configs/sweep-example.yaml):

    name: policy-x-replicas            # default: the file's stem
    base: demo.yaml                    # the run config every run starts from (relative to this file)
    runs_dir: runs                     # default: the base config's runs_dir; runs go to <runs_dir>/<name>/
    max_concurrent: 2                  # runs at the same time (default 1)
    backend: local                     # optional, as `launch --backend`
    set:                               # overrides for every run (dotted keys, as `--set`)
      rollout.engine: hf
    grid:                              # every combination of these values
      recovery.policy: [role-based, full-restart]
      rollout.replicas: [1, 2]
    runs:                              # and/or a list of override sets (each crossed with the grid)
      - {name: no-spare, spare.replicas: 0}
    metrics: [steps, reward, ettr, faults, mttr_s, wall_s]    # columns to show
    summary: sweep-summary.csv         # default: <runs_dir>/<name>/summary.csv

Every run's config is validated before the first one starts; a mistake names the sweep file, the
line and the key. `SweepRunner` starts and follows the runs (`launcher`, exactly as `slurm-rl launch
--detach`); it never prints: the CLI renders its state (`slurm_rl.ui.sweep`).
"""

from slurm_rl.sweep.runner import RunPhase, SweepRun, SweepRunner
from slurm_rl.sweep.spec import (
           DEFAULT_METRICS,
           METRICS,
           SWEEP_SCHEMA,
           Metric,
           SweepPoint,
           SweepSpec,
           load_sweep,
)

__all__ = ["DEFAULT_METRICS", "METRICS", "SWEEP_SCHEMA", "Metric", "RunPhase", "SweepPoint", "SweepRun", "SweepRunner",
           "SweepSpec", "check_key", "load_sweep"]
