"""A newline or control character in a Slurm option would render a bare shell line into the batch script."""

import pytest
import yaml

from slurm_rl.config import load_config
from slurm_rl.errors import ConfigError

BAD = ["gpu\nrm -rf ~", "a\rb", "x\x1by"]


@pytest.mark.parametrize("value", BAD)
@pytest.mark.parametrize("field", ["slurm.partition", "slurm.account", "slurm.qos", "slurm.constraint",
                                   "slurm.gres", "rollout.partition", "trainer.account", "slurm.additional.comment"])
def test_control_characters_in_slurm_options_are_a_config_error(tmp_path, field, value):
    cfg = tmp_path / "c.yaml"
    *parents, leaf = field.split(".")
    doc: dict = {}
    node = doc
    for p in parents:
        node = node.setdefault(p, {})
    node[leaf] = value
    cfg.write_text(yaml.safe_dump(doc))
    with pytest.raises(ConfigError) as err:
        load_config(cfg)
    named = "additional" if "additional" in parents else leaf
    assert f".{named}:" in str(err.value) and err.value.exit_code == 2


def test_a_key_of_additional_with_a_newline_is_a_config_error(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text('slurm: {additional: {"comment\\nhostname": "x"}}\n')
    with pytest.raises(ConfigError):
        load_config(cfg)


def test_ordinary_slurm_options_still_load(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("slurm: {partition: gpu, account: proj-1, additional: {comment: 'a b'}}\n")
    assert load_config(cfg).slurm.partition == "gpu"
