"""Typed run configuration: YAML in, validated models out, errors that name file, key and line.

One section per concern (model, task, algorithm, recovery, sync, controller, chaos) and one per
role (trainer, rollout, spare) with the Slurm resources of that role (sections.py). Unknown keys
are rejected with a suggestion. `--set key.sub=value` overrides are applied to the raw YAML before
validation, so they get exactly the same checks (loading.py).
"""

from slurm_rl.config.loading import load_config, load_run_config, parse_override
from slurm_rl.config.sections import (
    AlgorithmConfig,
    BackendKind,
    ChaosConfig,
    ControllerConfig,
    EngineKind,
    LocalConfig,
    LoggingConfig,
    ModelConfig,
    RecoveryConfig,
    RecoveryPolicy,
    RolloutConfig,
    RunConfig,
    SlurmResources,
    SpareConfig,
    SyncConfig,
    TaskConfig,
    TaskFields,
    TrainerConfig,
    parse_slurm_time,
)

__all__ = [
    "AlgorithmConfig",
    "BackendKind",
    "ChaosConfig",
    "ControllerConfig",
    "EngineKind",
    "LocalConfig",
    "LoggingConfig",
    "ModelConfig",
    "RecoveryConfig",
    "RecoveryPolicy",
    "RolloutConfig",
    "RunConfig",
    "SlurmResources",
    "SpareConfig",
    "SyncConfig",
    "TaskConfig",
    "TaskFields",
    "TrainerConfig",
    "load_config",
    "load_run_config",
    "parse_override",
    "parse_slurm_time",
]
