"""The backend a run's config names, for the controller and for `stop` without a controller."""

from __future__ import annotations

from typing import TYPE_CHECKING

from slurm_rl.backends.base import Backend

if TYPE_CHECKING:
    from slurm_rl.config import RunConfig
    from slurm_rl.rundir import RunDir


def make_backend(run: RunDir, cfg: RunConfig) -> Backend:
    from slurm_rl.config import BackendKind

    if cfg.backend is BackendKind.LOCAL:
        from slurm_rl.backends.local import LocalBackend

        return LocalBackend(run.path, cfg.local)
    from slurm_rl.backends.slurm import SlurmBackend

    return SlurmBackend.from_config(run, cfg)
