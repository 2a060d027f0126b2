"""`slurm-rl launch configs/gsm8k-tiny.yaml` as a user runs it: GSM8K-format data, a tiny Qwen3
policy with its chat template, the math-verify reward and a held-out eval every 10 steps. The
policy must learn (mean reward and eval pass@1 up by 0.3, first 10 steps against last 10) and
nothing may be lost."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from slurm_rl.cli import cli
from tests import runs

pytestmark = pytest.mark.slow


def test_gsm8k_tiny_learns_and_is_evaluated(tmp_path):
    run = runs.launch(tmp_path, name="gsm", config="configs/gsm8k-tiny.yaml", fast=False)
    rep = runs.wait_done(run, timeout=600)
    assert rep["state"] == "finished" and rep["steps"] == 100, rep["end_reason"]
    assert rep["reward"]["last"] - rep["reward"]["first"] >= 0.3, rep["reward"]
    ev = rep["eval"]
    versions = [h["version"] for h in ev["history"]]
    assert versions[0] == 0 and len(versions) >= 8, versions          # v0 (the base model), then every ~10 steps
    assert all(h["n"] == 32 for h in ev["history"])
    assert ev["last"] - ev["first"] >= 0.3, ev["history"]
    assert rep["trajectories"]["lost"] == 0 and rep["groups"]["lost"] == 0
    assert rep["reward_errors"]["count"] == 0
    runs.assert_accounted(rep)
    runs.assert_no_prompt_done_twice(run)
    # the policy saw ChatML prompts of GSM8K records; the eval problems are not training problems
    train = [json.loads(x) for x in run.problems.read_text().splitlines()]
    held = [json.loads(x) for x in run.eval_problems.read_text().splitlines()]
    assert "####" in train[0]["solution"] and not {r["prompt"] for r in held} & {r["prompt"] for r in train}
    assert "<|im_start|>" in (run.model / "chat_template.jinja").read_text()
    st = json.loads(CliRunner().invoke(cli, ["status", str(run.path), "--json"]).output)
    assert st["eval"]["version"] == versions[-1]
    out = CliRunner().invoke(cli, ["report", str(run.path), "--plot", str(tmp_path / "plots")])
    assert out.exit_code == 0 and (tmp_path / "plots" / "eval.png").exists()


def test_a_failing_user_reward_is_reported_with_record_ids_and_evals_run(tmp_path):
    """A reward that raises on some records: those samples score 0, every failure is counted in the
    report with the record ids, the run goes on; the arithmetic task's eval split runs too."""
    (tmp_path / "flaky.py").write_text(
        "def score(prompt, completion, record):\n"
        "    if record['answer'] == '3':\n"
        "        raise ValueError('no reward for threes')\n"
        "    return float(completion.strip()[:1] == record['answer'])\n")
    run = runs.launch(tmp_path, "algorithm.steps=6", f"task.reward={tmp_path}/flaky.py:score", "task.eval_size=16",
                      "algorithm.eval_every=3", "task.max_answer=5", name="flaky")
    rep = runs.wait_done(run)
    assert rep["state"] == "finished", rep["end_reason"]
    errs = rep["reward_errors"]
    assert errs["count"] > 0 and errs["by_split"].get("training", 0) > 0
    assert "ValueError: no reward for threes" in errs["first_error"]
    threes = {json.loads(x)["id"] for x in run.problems.read_text().splitlines() if json.loads(x)["answer"] == "3"}
    threes |= {json.loads(x)["id"] for x in run.eval_problems.read_text().splitlines()
               if json.loads(x)["answer"] == "3"}
    assert errs["records"] and set(errs["records"]) <= threes
    # rollout/0's first eval: at 0, or at the first version reaching a multiple of eval_every (3) it
    # holds when its engine loaded after the trainer stepped on the other rollout's data
    versions = [h["version"] for h in rep["eval"]["history"]]
    assert versions and versions[0] < 6 and versions == sorted(set(versions)), rep["eval"]
    ev = json.loads(CliRunner().invoke(cli, ["events", str(run.path), "--json", "--kind", "reward_error"]).output
                    .splitlines()[0])
    assert "records" in ev["msg"] and "no reward for threes" in ev["msg"]
    runs.assert_accounted(rep)
