"""What `launch` does with a task before it submits anything: datasets, rewards, chat prompts,
`launch --check`, the run directory it prepares, and the eval/reward-error report."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from slurm_rl import launcher
from slurm_rl.cli import cli
from slurm_rl.config import load_config
from slurm_rl.data.synthetic import word_problem_splits, write_records
from slurm_rl.errors import ConfigError
from slurm_rl.report import report_dict, status_dict
from slurm_rl.rundir import RunDir
from slurm_rl.store import Store

REPO = Path(__file__).resolve().parent.parent


def _data(tmp_path: Path, style: str = "gsm8k", suffix: str = ".parquet") -> tuple[Path, Path]:
    train, ev = word_problem_splits(200, 20, seed=0, style=style, ops=("+", "-", "*"), max_operand=12,
                                    max_answer=None)
    return write_records(train, tmp_path / f"train{suffix}"), write_records(ev, tmp_path / f"test{suffix}")


def _invoke(*args: str, env: dict[str, str] | None = None):
    return CliRunner().invoke(cli, list(args), env=env)


@pytest.mark.parametrize(("config", "style"), [("configs/qwen3-8b-gsm8k.yaml", "gsm8k"),
                                               ("configs/qwen2.5-1.5b-math.yaml", "math")])
def test_the_real_model_configs_pass_check(tmp_path: Path, config: str, style: str) -> None:
    train, test = _data(tmp_path, style)
    # as on a laptop or CI without Slurm commands (a Slurm lab on this machine would rightly reject the
    # example partition): the sbatch options are checked, the partitions are not
    no_slurm = {"PATH": str(Path(sys.executable).parent)}
    res = _invoke("launch", str(REPO / config), "--check", "--set", f"task.path={train}",
                  "--set", f"task.eval_path={test}", "--set", f"runs_dir={tmp_path / 'runs'}", env=no_slurm)
    assert res.exit_code == 0, res.output
    assert "ok, nothing submitted" in res.output and "200 training and 20 eval problems" in res.output
    assert "model" in res.output and "not checked" in res.output     # the model dir is not on a CI machine
    assert "sbatch options checked" in res.output
    assert not (tmp_path / "runs").exists()
    cfg = load_config(REPO / config)
    assert cfg.algorithm.max_new_tokens >= 1024 and cfg.model.max_model_len >= 2048 and cfg.task.chat
    assert cfg.rollout.gpus_per_node and cfg.trainer.gpus_per_node and cfg.backend.value == "slurm"


def test_check_says_what_a_lost_trainer_is_restored_on(tmp_path: Path) -> None:
    """The 8-rank trainer of the 8B config has no one-process standby: --check says so and names the
    setting that gives it one; with it, the standby is named instead."""
    train, test = _data(tmp_path, "gsm8k")
    no_slurm = {"PATH": str(Path(sys.executable).parent)}
    args = ("launch", str(REPO / "configs/qwen3-8b-gsm8k.yaml"), "--check", "--set", f"task.path={train}",
            "--set", f"task.eval_path={test}", "--set", f"runs_dir={tmp_path / 'runs'}")
    res = _invoke(*args, env=no_slurm)
    assert res.exit_code == 0, res.output
    assert "trainer standby: none (the trainer is 1 node(s) x 8 rank(s)" in res.output
    assert "spare.trainer_nodes=1 adds one" in res.output
    res = _invoke(*args, "--set", "spare.trainer_nodes=1", env=no_slurm)
    assert res.exit_code == 0 and "trainer standby: a job of the trainer's shape (1 node(s) x 8 rank(s))" in res.output
    assert "trainer standby: a spare or a rollout" in _invoke("launch", str(REPO / "configs/demo.yaml"), "--check").output


def test_check_of_the_tiny_configs(tmp_path: Path) -> None:
    for config in ("configs/demo.yaml", "configs/gsm8k-tiny.yaml"):
        res = _invoke("launch", str(REPO / config), "--check")
        assert res.exit_code == 0, res.output


def test_a_bad_record_stops_launch_before_anything_exists(tmp_path: Path) -> None:
    train, test = _data(tmp_path, suffix=".jsonl")
    lines = train.read_text().splitlines()
    rec = json.loads(lines[6])
    rec["answer"] = "no final answer"
    lines[6] = json.dumps(rec)
    train.write_text("\n".join(lines) + "\n")
    for extra in (["--check"], ["--detach"]):
        res = _invoke("launch", str(REPO / "configs/gsm8k-tiny.yaml"), *extra, "--set", "task.kind=dataset",
                      "--set", f"task.path={train}", "--set", f"task.eval_path={test}",
                      "--set", f"runs_dir={tmp_path / 'runs'}")
        assert res.exit_code == 2, res.output
        assert f"{train}:7: field 'answer' has no gold answer" in res.output
    assert not (tmp_path / "runs").exists()                 # nothing written, nothing submitted


def test_a_reward_that_does_not_import_is_exit_2(tmp_path: Path) -> None:
    res = _invoke("launch", str(REPO / "configs/gsm8k-tiny.yaml"), "--check", "--set", "task.reward=nope_mod:f")
    assert res.exit_code == 2 and "cannot import nope_mod" in res.output


def test_config_rules() -> None:
    with pytest.raises(ConfigError, match="eval_every is set but the task has no eval split"):
        load_config(None, ["algorithm.eval_every=10"])
    with pytest.raises(ConfigError, match="task.path is not set"):
        load_config(None, ["task.kind=dataset"])
    with pytest.raises(ConfigError, match="are for datasets"):
        load_config(None, ["task.eval_path=x.jsonl"])
    with pytest.raises(ConfigError, match="must contain {prompt}"):
        load_config(None, ["task.template=no placeholder"])
    cfg = load_config(None, ["task.template='Q: {prompt} \\boxed{}'"])
    assert cfg.task.template == "Q: {prompt} \\boxed{}"
    assert cfg.task.reward_spec == "exact" and load_config(None, ["task.kind=word-problems"]).task.reward_spec == "math"


def test_prepare_writes_the_splits_model_and_resolved_reward(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "rw.py").write_text("def f(prompt, completion, record):\n    return 1.0\n")
    train, test = _data(tmp_path, "math", ".parquet")
    cfg = load_config(None, ["task.kind=dataset", f"task.path={train}", f"task.eval_path={test}",
                             "task.eval_size=8", "task.format=math", "task.chat=true", "task.reward=rw.py:f",
                             "model.family=qwen2", "model.max_model_len=256", "algorithm.eval_every=5"], name="p")
    run = RunDir(tmp_path / "runs" / "p")
    launcher.prepare(cfg, run, config_source=None)
    resolved = load_config(run.config)
    assert resolved.task.reward == f"{tmp_path}/rw.py:f"      # absolute: roles run in the run dir
    assert json.loads((run.model / "config.json").read_text())["architectures"] == ["Qwen2ForCausalLM"]
    train_rows = [json.loads(x) for x in run.problems.read_text().splitlines()]
    eval_rows = [json.loads(x) for x in run.eval_problems.read_text().splitlines()]
    assert len(train_rows) == 200 and len(eval_rows) == 8
    assert "\\boxed" in train_rows[0]["solution"] and "\\boxed" not in train_rows[0]["answer"]
    s = Store(run.db)
    try:
        assert s.get_meta("shuffle") is True and s.problem_count() == 200
    finally:
        s.close()


def test_a_prompt_longer_than_the_model_fails_prepare_and_leaves_nothing(tmp_path: Path) -> None:
    cfg = load_config(REPO / "configs/gsm8k-tiny.yaml", ["model.max_model_len=24"], name="long")
    run = RunDir(tmp_path / "long")
    with pytest.raises(Exception, match="does not fit in model.max_model_len 24"):
        launcher.prepare(cfg, run, config_source=None)
    assert not run.path.exists()


def _fake_run(tmp_path: Path) -> RunDir:
    cfg = load_config(REPO / "configs/demo.yaml", name="ev")
    run = RunDir(tmp_path / "ev")
    launcher.prepare(cfg, run, config_source=None)
    s = Store(run.db)
    t = time.time()
    for i, (v, p) in enumerate([(0, 0.0), (10, 0.25), (20, 0.5), (10, 0.375)]):     # v10 reported twice
        s.event(t + i, "eval", f"eval at v{v}", slot="rollout/0",
                data={"version": str(v), "wepoch": "0", "pass_at_1": str(p), "reward_mean": str(p), "n": "32",
                      "seconds": "0.5", "reward_errors": "0"})
    s.event(t, "reward_error", "reward failed", slot="rollout/1",
            data={"count": "3", "split": "training", "record_ids": "a,b", "error": "KeyError: 'x'"})
    s.event(t, "reward_error", "reward failed", slot="rollout/0",
            data={"count": "1", "split": "eval", "record_ids": "b,c", "error": "ValueError"})
    s.close()
    return run


def test_report_and_status_read_evals_and_reward_errors(tmp_path: Path) -> None:
    from tests.test_cli import schema_check

    run = _fake_run(tmp_path)
    rep = report_dict(run)
    ev = rep["eval"]
    assert (ev["first"], ev["last"], ev["first_version"], ev["last_version"]) == (0.0, 0.5, 0, 20)
    assert [(h["version"], h["pass_at_1"]) for h in ev["history"]] == [(0, 0.0), (10, 0.375), (20, 0.5)]
    assert rep["reward_errors"] == {"count": 4, "by_split": {"training": 3, "eval": 1}, "events": 2,
                                    "records": ["a", "b", "c"], "first_error": "KeyError: 'x'"}
    schema_check("report", rep)
    st = status_dict(run, live=False)
    assert st["eval"] == {"version": 10, "pass_at_1": 0.375, "reward_mean": 0.375, "n": 32}
    schema_check("status", st)
    res = _invoke("report", str(run.path), "--plot", str(tmp_path / "plots"))
    assert res.exit_code == 0, res.output
    assert (tmp_path / "plots" / "eval.png").stat().st_size > 1000


def test_make_tiny_model_and_make_dataset_commands(tmp_path: Path) -> None:
    res = _invoke("make-dataset", str(tmp_path / "d.parquet"), "--style", "math", "-n", "30", "--eval", "5")
    assert res.exit_code == 0, res.output
    assert (tmp_path / "d-eval.parquet").exists()
    res = _invoke("make-tiny-model", "--family", "qwen3", "--tokenizer", "words", "--corpus",
                  str(tmp_path / "d.parquet"), str(tmp_path / "m"))
    assert res.exit_code == 0, res.output
    from slurm_rl.rl.model import load_tokenizer

    tok = load_tokenizer(tmp_path / "m")
    assert json.loads((tmp_path / "m" / "config.json").read_text())["architectures"] == ["Qwen3ForCausalLM"]
    assert tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    again = _invoke("make-tiny-model", str(tmp_path / "m"))
    assert again.exit_code == 2 and "not empty" in again.output
    words = _invoke("make-tiny-model", "--tokenizer", "words", str(tmp_path / "n"))
    assert words.exit_code == 2 and "--corpus" in words.output
