"""A run directory written by another slurm-rl version (another state schema) is refused with exit 2."""

import pytest
from click.testing import CliRunner

from slurm_rl.cli import cli
from slurm_rl.errors import BadInput
from slurm_rl.report import open_store
from slurm_rl.store import SCHEMA_VERSION, Store


def test_another_schema_version_is_refused_by_readers_and_the_writer(tmp_path):
    import sys

    sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
    from test_hostile_input import fake_run

    run = fake_run(tmp_path, "old")
    store = Store(run.db)
    store.set_meta("schema", SCHEMA_VERSION + 1)
    store.close()
    with pytest.raises(BadInput, match=f"schema {SCHEMA_VERSION + 1}"):
        open_store(run)
    with pytest.raises(BadInput):
        Store(run.db)
    res = CliRunner().invoke(cli, ["status", str(run.path)])
    assert res.exit_code == 2 and "schema" in res.output


def test_the_current_schema_opens(tmp_path):
    import sys

    sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
    from test_hostile_input import fake_run

    run = fake_run(tmp_path, "cur")
    open_store(run).close()
    Store(run.db).close()
