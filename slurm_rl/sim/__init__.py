"""Discrete-event simulation of one slurm-rl run at cluster scale (docs/simulation.md).

    from slurm_rl.sim import cluster_config, simulate, table
    r = simulate(cluster_config(spares=2, per_node_per_day=0.05), "role-based", seed=0)
    t = table(trials=5)                       # ETTR vs failure rate, both policies, 0 and 2 spares

The model applies the real controller's decision function (`slurm_rl.controller.policy.decide`)
and computes ETTR by the report's definition (`slurm_rl.report`); `MeasuredTimes.from_reports`
feeds it the recovery times of a real benchmark, and `validate` puts the two side by side.
"""

from slurm_rl.sim.config import (
                                 ChaosSchedule,
                                 ControllerRules,
                                 NodeFailures,
                                 RecoveryPolicy,
                                 RecoveryTimes,
                                 SimConfig,
                                 Standby,
                                 Topology,
                                 Work,
                                 cluster_config,
                                 rate_for_fraction_failing,
)
from slurm_rl.sim.measured import (
                                 LocalBenchmark,
                                 MeasuredRun,
                                 MeasuredTimes,
                                 load_reports,
                                 local_config,
)
from slurm_rl.sim.model import Badput, MttrRow, SimResult, Trace, simulate
from slurm_rl.sim.sweep import (
                                 DEFAULT_RATES,
                                 Stat,
                                 Table,
                                 TableRow,
                                 ValidationRow,
                                 table,
                                 validate,
)

__all__ = [
                                 "DEFAULT_RATES",
                                 "Badput",
                                 "ChaosSchedule",
                                 "ControllerRules",
                                 "LocalBenchmark",
                                 "MeasuredRun",
                                 "MeasuredTimes",
                                 "MttrRow",
                                 "NodeFailures",
                                 "RecoveryPolicy",
                                 "RecoveryTimes",
                                 "SimConfig",
                                 "SimResult",
                                 "Standby",
                                 "Stat",
                                 "Table",
                                 "TableRow",
                                 "Topology",
                                 "Trace",
                                 "ValidationRow",
                                 "Work",
                                 "cluster_config",
                                 "load_reports",
                                 "local_config",
                                 "rate_for_fraction_failing",
                                 "simulate",
                                 "table",
                                 "validate",
]
