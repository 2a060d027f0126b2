"""Batch script generation (golden files), option validation and sbatch error mapping (no cluster)."""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

import pytest

from slurm_rl.backends.base import LaunchSpec, Resources
from slurm_rl.backends.slurm import SlurmBackend
from slurm_rl.errors import BackendError, ConfigError
from slurm_rl.slurm import submit
from slurm_rl.slurm.query import CommandResult, SlurmClient
from slurm_rl.states import FaultKind, RoleKind
from tests.slurm.fakes import FakeSlurm

GOLDEN = Path(__file__).parent / "data" / "golden"
UPDATE = os.environ.get("SLURM_RL_UPDATE_GOLDEN") == "1"


def rollout_spec(run_dir: Path, **res) -> LaunchSpec:
    return LaunchSpec(
        run_name="demo", run_dir=run_dir, role=RoleKind.ROLLOUT, index=1, incarnation=2,
        argv=("python", "-m", "slurm_rl.roles.worker", str(run_dir), "rollout", "1", "--incarnation", "2"),
        resources=Resources(**({"partition": "main", "exclude": ("n3",)} | res)),
        env=(("SLURM_RL_RUN_SECRET_FILE", f"{run_dir}/secret"), ("NOTE", "it's a $test")),
        extra_exclude=("n1",),
    )


def trainer_spec(run_dir: Path) -> LaunchSpec:
    return LaunchSpec(
        run_name="demo", run_dir=run_dir, role=RoleKind.TRAINER, index=0, incarnation=0,
        argv=("python", "-m", "slurm_rl.roles.worker", str(run_dir), "trainer", "0", "--incarnation", "0"),
        resources=Resources(partition="gpu", account="rl", qos="high", time_min=240, nodes=2, tasks_per_node=1,
                            gpus_per_node=4, cpus_per_task=32, mem_gb=256, constraint="a100",
                            nodelist=("gpu-[01-02]",), additional=(("reservation", "rl-week"), ("exclusive", ""),
                                                                   ("mail_type", "FAIL"))),
    )


def check_golden(name: str, text: str, run_dir: Path) -> None:
    # normalize the one machine-specific part: the run dir
    text = text.replace(str(run_dir), "<RUN_DIR>")
    path = GOLDEN / name
    if UPDATE or not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        if not UPDATE:
            pytest.fail(f"golden file {path} was missing and has been written; check it and commit it")
    assert text == path.read_text(), f"generated script differs from {path} (SLURM_RL_UPDATE_GOLDEN=1 rewrites)"


def test_golden_rollout_script(tmp_path):
    check_golden("rollout.sbatch", submit.render_script(rollout_spec(tmp_path / "runs" / "demo")),
                 tmp_path / "runs" / "demo")


def test_golden_trainer_script(tmp_path):
    check_golden("trainer.sbatch", submit.render_script(trainer_spec(tmp_path / "r")), tmp_path / "r")


def test_script_essentials(tmp_path):
    spec = rollout_spec(tmp_path)
    text = submit.render_script(spec)
    lines = text.splitlines()
    assert "#SBATCH --no-requeue" in lines
    assert f"#SBATCH --job-name={spec.job_name}" in lines
    assert "#SBATCH --exclude=n1,n3" in lines                       # resources.exclude + extra_exclude
    assert not any(ln.startswith("#SBATCH --signal") for ln in lines)  # submitit's USR2 would kill roles
    assert not any(ln.startswith("#SBATCH --wckey") for ln in lines)
    assert f"#SBATCH --output={submit.slurm_log_path(spec)}" in lines
    # the batch step is the agent; the role is the srun step it starts
    srun = [ln for ln in lines if ln.startswith("exec ") and " -m slurm_rl.roles.agent --run-dir " in ln and " -- srun " in ln]
    assert len(srun) == 1 and f"--output={spec.log_path}" in srun[0] and srun[0].endswith("--incarnation 2")
    assert "export NOTE='it'\"'\"'s a $test'" in lines              # quoted for the shell


def test_user_signal_is_kept(tmp_path):
    text = submit.render_script(rollout_spec(tmp_path, additional=(("signal", "B:USR1@120"),)))
    assert "#SBATCH --signal=B:USR1@120" in text.splitlines()


def test_typo_in_additional_lists_valid_keys(tmp_path):
    with pytest.raises(ConfigError) as e:
        submit.render_script(rollout_spec(tmp_path, additional=(("reservaton", "rl"),)))
    msg = str(e.value)
    assert "did you mean 'reservation'" in msg and "  - mail-type" in msg and e.value.exit_code == 2
    assert "rollout.additional" in msg                              # where to fix it
    with pytest.raises(ConfigError, match=r"did you mean 'partition'\? use the `partition` setting"):
        submit.render_script(rollout_spec(tmp_path, additional=(("partiton", "gpu"),)))


@pytest.mark.parametrize("key", ["job-name", "requeue", "partition", "time", "output"])
def test_managed_keys_in_additional_are_refused(tmp_path, key):
    with pytest.raises(ConfigError, match="managed by slurm-rl"):
        submit.render_script(rollout_spec(tmp_path, additional=((key, "x"),)))


def test_bad_resources_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="nodes"):
        submit.render_script(rollout_spec(tmp_path, nodes=0))
    with pytest.raises(ConfigError, match="both in the nodelist and excluded"):
        submit.render_script(rollout_spec(tmp_path, nodelist=("n[1-2]",)))
    spec = rollout_spec(tmp_path)
    bad_env = LaunchSpec(**{**{f: getattr(spec, f) for f in spec.__dataclass_fields__}, "env": (("A-B", "1"),)})
    with pytest.raises(ConfigError, match="not a valid shell name"):
        submit.render_script(bad_env)


def test_submit_writes_private_script_and_returns_id(tmp_path):
    fake = FakeSlurm()
    spec = rollout_spec(tmp_path)
    job = submit.submit_spec(SlurmClient(fake), spec)
    assert job.job_id == "101" and job.script == submit.script_path(spec)
    assert job.script.read_text() == submit.render_script(spec)
    assert stat.S_IMODE(job.script.stat().st_mode) == 0o600        # env may carry the run secret
    assert spec.log_path.parent.is_dir()
    assert fake.calls == [("sbatch", "--parsable", str(job.script))]


@pytest.mark.parametrize("stderr, error", [
    ("sbatch: error: invalid partition specified: nope\n", ConfigError),
    ("sbatch: error: Batch job submission failed: Requested node configuration is not available\n", ConfigError),
    ("sbatch: error: Batch job submission failed: Unable to contact slurm controller (connect failure)\n",
     BackendError),
    ("sbatch: error: Batch job submission failed: Job violates accounting/QOS policy\n", BackendError),
])
def test_sbatch_rejections_are_classified(tmp_path, stderr, error):
    fake = FakeSlurm()
    fake.responses["sbatch"] = CommandResult(("sbatch",), 1, "", stderr)
    with pytest.raises(error) as e:
        submit.submit_spec(SlurmClient(fake), rollout_spec(tmp_path))
    assert type(e.value) is error and str(submit.script_path(rollout_spec(tmp_path))) in str(e.value)


# ------------------------------------------------------------------------------------ backend units
def test_preflight_names_missing_commands(monkeypatch, tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    os.symlink(sys.executable, bin_dir / "python3")
    monkeypatch.setenv("PATH", str(bin_dir))
    with pytest.raises(BackendError, match="sbatch, squeue, sinfo, scancel") as e:
        SlurmBackend(runner=FakeSlurm()).preflight()
    assert e.value.exit_code == 3


def test_preflight_partitions(monkeypatch):
    monkeypatch.setattr("shutil.which", lambda cmd, *a, **k: f"/usr/bin/{cmd}")
    SlurmBackend(runner=FakeSlurm(), partitions=["main", "gpu", None]).preflight()
    with pytest.raises(ConfigError, match=r"'nope'.*partitions are: main, gpu"):
        SlurmBackend(runner=FakeSlurm(), partitions=["main", "nope"]).preflight()
    fake = FakeSlurm()
    fake.responses["scontrol"] = CommandResult(("scontrol",), 1, "", "Slurmctld(primary) at x is DOWN\n")
    with pytest.raises(BackendError, match="slurmctld does not answer"):
        SlurmBackend(runner=fake).preflight()


def test_preflight_no_default_partition(monkeypatch):
    monkeypatch.setattr("shutil.which", lambda cmd, *a, **k: f"/usr/bin/{cmd}")
    fake = FakeSlurm()
    fake.responses["sinfo"] = CommandResult(("sinfo",), 0, "cpu\ngpu\n", "")
    with pytest.raises(ConfigError, match="no default partition"):
        SlurmBackend(runner=fake, partitions=[None]).preflight()


def test_inject_exit_is_refused_with_reason():
    with pytest.raises(BackendError, match="control plane"):
        SlurmBackend(runner=FakeSlurm()).inject("10", FaultKind.EXIT, exit_code=3)


def test_inject_crash_and_hang_use_one_scancel(tmp_path):
    fake = FakeSlurm()
    fake.add("10", nodes="n[2-3]")
    be = SlurmBackend(runner=fake, lab_dir=None)
    assert be.inject("10", FaultKind.CRASH) == "n2"
    assert ("scancel", "--signal=KILL", "--batch", "10") in fake.calls
    assert be.inject("10", FaultKind.HANG) == "n2"
    assert ("scancel", "--signal=STOP", "10.0") in fake.calls


def test_inject_into_pending_job_is_an_error():
    fake = FakeSlurm()
    fake.add("10", state="PENDING", nodes="")
    with pytest.raises(BackendError, match="not running"):
        SlurmBackend(runner=fake).inject("10", FaultKind.CRASH)


@pytest.mark.parametrize("fault", [FaultKind.DRAIN, FaultKind.NODE_DOWN])
def test_node_faults_without_operator_rights(monkeypatch, fault):
    monkeypatch.delenv("SLURM_RL_LAB", raising=False)
    monkeypatch.setattr("slurm_rl.backends.slurm.find_lab", lambda: None)
    fake = FakeSlurm()
    fake.add("10", nodes="n2")
    fake.responses["scontrol"] = CommandResult(
        ("scontrol",), 1, "", "slurm_update error: Access/permission denied\n")
    with pytest.raises(BackendError, match="operator rights"):
        SlurmBackend(runner=fake).inject("10", fault)


def test_node_down_off_lab_uses_scontrol(monkeypatch):
    monkeypatch.delenv("SLURM_RL_LAB", raising=False)
    monkeypatch.setattr("slurm_rl.backends.slurm.find_lab", lambda: None)
    fake = FakeSlurm()
    fake.add("10", nodes="n2")
    assert SlurmBackend(runner=fake).inject("10", FaultKind.NODE_DOWN, node="n4") == "n4"
    assert ("scontrol", "update", "nodename=n4", "state=down", "reason=slurm-rl inject") in fake.calls


def test_lab_env_without_nodectl_is_clear(monkeypatch, tmp_path):
    monkeypatch.setenv("SLURM_RL_LAB", str(tmp_path))
    fake = FakeSlurm()
    fake.add("10", nodes="n2")
    with pytest.raises(BackendError, match=r"no nodectl\.sh"):
        SlurmBackend(runner=fake).inject("10", FaultKind.NODE_DOWN)


def test_cancel_many_is_one_call():
    fake = FakeSlurm()
    be = SlurmBackend(runner=fake)
    be.cancel([str(i) for i in range(50)])
    be.cancel([])
    assert be.call_counts == {"scancel": 1}


def test_sbatch_runs_without_the_surrounding_jobs_environment(tmp_path, monkeypatch):
    # the controller may run as a Slurm job itself (sbatch/launch.sbatch)
    monkeypatch.setenv("SLURM_JOB_ID", "7")
    monkeypatch.setenv("SLURM_MEM_PER_CPU", "1000")
    monkeypatch.setenv("SBATCH_PARTITION", "cpu")     # would override the role's #SBATCH --partition
    monkeypatch.setenv("MASTER_PORT", "29500")
    monkeypatch.setenv("SLURM_CONF", "/etc/slurm/slurm.conf")
    monkeypatch.setenv("MY_SETTING", "kept")
    fake = FakeSlurm()
    submit.submit_spec(SlurmClient(fake), rollout_spec(tmp_path))
    (env,) = fake.envs
    assert env is not None and env["MY_SETTING"] == "kept" and env["SLURM_CONF"] == "/etc/slurm/slurm.conf"
    assert not {"SLURM_JOB_ID", "SLURM_MEM_PER_CPU", "SBATCH_PARTITION", "MASTER_PORT"} & set(env)


def test_sbatch_role_example_matches_the_generator():
    run_dir = Path("/home/me/runs/demo")
    spec = LaunchSpec(
        run_name="demo", run_dir=run_dir, role=RoleKind.ROLLOUT, index=1, incarnation=2,
        argv=("/home/me/slurm-rl/.venv/bin/python", "-m", "slurm_rl.roles.worker", str(run_dir), "rollout", "1",
              "--incarnation", "2"),
        resources=Resources(partition="gpu", time_min=240, gpus_per_node=1, cpus_per_task=8, mem_gb=64),
        env=(("SLURM_RL_RUN_DIR", str(run_dir)),), extra_exclude=("gpu-07",))

    def code(text: str) -> list[str]:
        return [ln for ln in text.splitlines() if ln.strip() and (not ln.startswith("#") or ln.startswith("#SBATCH"))]

    example = (Path(__file__).parents[2] / "sbatch" / "role.sbatch").read_text()
    assert code(example) == code(submit.render_script(spec))


def test_check_config_validates_every_role_before_slurm(monkeypatch):
    from slurm_rl.config import RunConfig

    monkeypatch.setattr("shutil.which", lambda cmd, *a, **k: f"/usr/bin/{cmd}")
    fake = FakeSlurm()
    SlurmBackend.check(RunConfig.model_validate({"slurm": {"partition": "gpu"}}), runner=fake)
    assert fake.count("scontrol") == 1 and fake.count("sinfo") == 1
    with pytest.raises(ConfigError, match=r"'nope'.*partitions are: main, gpu"):
        SlurmBackend.check(RunConfig.model_validate({"rollout": {"partition": "nope"}}), runner=FakeSlurm())
    quiet = FakeSlurm()
    with pytest.raises(ConfigError, match=r"spare\.additional.*did you mean 'exclusive'"):
        SlurmBackend.check(RunConfig.model_validate({"spare": {"additional": {"exclusiv": ""}}}), runner=quiet)
    assert quiet.calls == []                      # option typos are caught before asking Slurm
    be = SlurmBackend.from_config(None, RunConfig.model_validate({"trainer": {"partition": "gpu"}}))
    assert set(be.partitions) == {"gpu", None}
