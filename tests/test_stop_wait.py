"""The end of a run cancels jobs after `controller.stop_grace_s`, except while a role reports it is
writing a checkpoint (a trainer's last one holds every step it took): then up to the
checkpointing phase timeout."""

from __future__ import annotations

from types import SimpleNamespace

from slurm_rl.config import RunConfig
from slurm_rl.controller.loop import Controller
from slurm_rl.states import Phase


def _wait_until(phases: list[Phase], *, connected: bool = True) -> float:
    cfg = RunConfig.model_validate({"controller": {"stop_grace_s": 5.0},
                                    "recovery": {"phase_timeouts": {"checkpointing": 90.0}}})
    me = SimpleNamespace(cfg=cfg, stop_deadline=1000.0 + 5.0)       # the stop began at t=1000
    alive = [SimpleNamespace(phase=p, connected=connected) for p in phases]
    return Controller._stop_wait_until(me, alive)


def test_roles_get_the_grace_and_a_checkpoint_writer_its_phase_timeout() -> None:
    assert _wait_until([Phase.GENERATING, Phase.IDLE]) == 1005.0
    assert _wait_until([Phase.GENERATING, Phase.CHECKPOINTING]) == 1090.0
    # a writer that went silent (its connection gone) is not waited for
    assert _wait_until([Phase.CHECKPOINTING], connected=False) == 1005.0


def test_the_grace_is_a_setting_with_the_old_default() -> None:
    assert RunConfig().controller.stop_grace_s == 20.0
