"""Config errors name file, key and line; overrides get the same checks; bad input exits 2."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from slurm_rl.cli import cli
from slurm_rl.config import RecoveryPolicy, load_config, parse_slurm_time
from slurm_rl.errors import ConfigError
from slurm_rl.states import Phase, RoleKind


def write(tmp_path, text: str):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


def test_demo_config_is_valid():
    cfg = load_config("configs/demo.yaml")
    assert cfg.rollout.replicas == 2 and cfg.spare.replicas == 1 and cfg.backend.value == "local"


def test_unknown_key_names_file_line_and_suggests(tmp_path):
    p = write(tmp_path, "rollout:\n  replicas: 2\n  enigne: hf\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    msg = str(e.value)
    assert f"{p}:3" in msg and "rollout.enigne" in msg and "Did you mean 'rollout.engine'" in msg


def test_bad_value_names_the_key_and_the_rule(tmp_path):
    p = write(tmp_path, "algorithm:\n  steps: 10\n  lr: -1\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert f"{p}:3" in str(e.value) and "algorithm.lr" in str(e.value) and "greater than 0" in str(e.value)


def test_enum_error_lists_allowed_values(tmp_path):
    p = write(tmp_path, "recovery:\n  policy: sometimes\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert "role-based" in str(e.value) and "full-restart" in str(e.value)


def test_invalid_yaml_has_a_line(tmp_path):
    p = write(tmp_path, "model:\n  hidden: [1, 2\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert "not valid YAML" in str(e.value) and str(p) in str(e.value)


def test_cross_field_checks_name_the_setting():
    with pytest.raises(ConfigError, match="model.hidden"):
        load_config(None, ["model.hidden=64", "model.heads=4"])           # head size 16 < 32
    with pytest.raises(ConfigError, match="suspect_after_s"):
        load_config(None, ["recovery.suspect_after_s=0.3", "recovery.heartbeat_interval_s=0.25"])


def test_overrides_are_typed_and_checked():
    cfg = load_config("configs/demo.yaml", ["rollout.replicas=4", "recovery.policy=full-restart",
                                            "recovery.phase_timeouts.generating=5", "rollout.engine=hf"])
    assert cfg.rollout.replicas == 4 and cfg.recovery.policy is RecoveryPolicy.FULL_RESTART
    assert cfg.recovery.phase_timeouts[Phase.GENERATING] == 5.0
    assert cfg.recovery.phase_timeouts[Phase.LOADING] == 180.0          # other defaults kept
    with pytest.raises(ConfigError, match="Did you mean 'rollout.replicas'"):
        load_config(None, ["rollout.replicaz=3"])
    with pytest.raises(ConfigError, match="key.sub=value"):
        load_config(None, ["rollout.replicas"])


def test_role_resources_inherit_from_top_level_slurm(tmp_path):
    p = write(tmp_path, "slurm:\n  partition: gpu\n  account: lab\n  time: '2:00:00'\n"
                        "trainer:\n  partition: big\n  gpus_per_node: 4\n  additional: {reservation: rl}\n")
    cfg = load_config(p)
    t = cfg.resources(RoleKind.TRAINER)
    r = cfg.resources(RoleKind.ROLLOUT)
    assert (t.partition, t.account, t.time_min, t.gpus_per_node) == ("big", "lab", 120, 4)
    assert dict(t.additional) == {"reservation": "rl"}
    assert (r.partition, r.gpus_per_node) == ("gpu", 0)


@pytest.mark.parametrize("text,minutes", [("30", 30), ("1:30", 2), ("2:00:00", 120), ("1-0", 1440),
                                          ("1-2:30", 1590), ("1-00:00:01", 1441), (5, 5)])
def test_slurm_time_formats(text, minutes):
    assert parse_slurm_time(text) == minutes


@pytest.mark.parametrize("bad", ["abc", "1:2:3:4", "0", "-5", "x-1"])
def test_bad_slurm_time(bad):
    with pytest.raises(ValueError):
        parse_slurm_time(bad)


def test_cli_bad_config_exits_2_without_traceback(tmp_path):
    p = write(tmp_path, "rollout:\n  replicas: zero\n")
    res = CliRunner().invoke(cli, ["launch", str(p), "--set", f"runs_dir={tmp_path}/runs"])
    assert res.exit_code == 2, res.output
    assert "rollout.replicas" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "runs").exists()                            # nothing half-written


def test_cli_missing_config_exits_2(tmp_path):
    res = CliRunner().invoke(cli, ["launch", str(tmp_path / "nope.yaml")])
    assert res.exit_code == 2 and "does not exist" in res.output


def test_a_trainer_of_several_ranks_has_its_shape_in_its_resources():
    from slurm_rl.config import RunConfig
    from slurm_rl.states import RoleKind

    cpu = RunConfig.model_validate({"trainer": {"nodes": 2, "ranks_per_node": 2}})
    assert cpu.trainer_shape() == (2, 2) and cpu.resources(RoleKind.TRAINER).tasks_per_node == 2
    gpu = RunConfig.model_validate({"slurm": {"gpus_per_node": 8}, "trainer": {"nodes": 4}})
    assert gpu.trainer_shape() == (4, 8)                    # one rank per GPU, inherited from slurm:
    assert gpu.resources(RoleKind.ROLLOUT).tasks_per_node == 1
    assert RunConfig.model_validate({}).trainer_shape() == (1, 1)
    with pytest.raises(ValueError, match="one rank per GPU"):
        RunConfig.model_validate({"trainer": {"gpus_per_node": 8, "ranks_per_node": 2}})


def test_a_trainer_shaped_standby_asks_for_the_trainers_resources():
    from slurm_rl.config import RunConfig
    from slurm_rl.states import RoleKind

    cfg = RunConfig.model_validate({"slurm": {"gpus_per_node": 8, "partition": "gpu"},
                                    "trainer": {"nodes": 4, "mem_gb": 900, "time": "2-00:00:00"},
                                    "spare": {"trainer_nodes": 4, "partition": "spares"}})
    assert cfg.resources(RoleKind.TRAINER_SPARE) == cfg.resources(RoleKind.TRAINER)
    assert cfg.resources(RoleKind.TRAINER_SPARE).tasks_per_node == 8 and cfg.replicas(RoleKind.TRAINER_SPARE) == 1
    assert RunConfig.model_validate({}).replicas(RoleKind.TRAINER_SPARE) == 0     # none unless asked for
    with pytest.raises(ValueError, match="spare.trainer_nodes=2 but the trainer runs on 4 node"):
        RunConfig.model_validate({"trainer": {"nodes": 4}, "spare": {"trainer_nodes": 2}})


def test_which_standby_can_become_the_trainer():
    """RunConfig.standby_misfit: a spare or rollout job stands in for the trainer only with its shape
    and at least its GPUs and memory, and the same gres and constraint."""
    from slurm_rl.config import RunConfig

    def misfit(over: dict) -> dict:
        cfg = RunConfig.model_validate(over)
        return {k: cfg.standby_misfit(k) for k in (RoleKind.SPARE, RoleKind.ROLLOUT)}

    assert misfit({}) == {RoleKind.SPARE: "", RoleKind.ROLLOUT: ""}
    got = misfit({"slurm": {"gpus_per_node": 1}, "spare": {"gpus_per_node": 0}})
    assert got[RoleKind.SPARE] == "a spare job has 0 GPU(s); the trainer needs 1" and got[RoleKind.ROLLOUT] == ""
    got = misfit({"trainer": {"mem_gb": 200}, "rollout": {"mem_gb": 64}})
    assert "64" in got[RoleKind.ROLLOUT] and "200" in got[RoleKind.ROLLOUT] and got[RoleKind.SPARE] == ""
    got = misfit({"trainer": {"constraint": "h100"}, "spare": {"constraint": "h100"}})
    assert got[RoleKind.SPARE] == "" and "constraint" in got[RoleKind.ROLLOUT]
    got = misfit({"trainer": {"nodes": 2}})
    assert all("2 node(s) x 1 rank(s)" in v for v in got.values())
