"""End to end: synchronous GRPO through a real engine raises the exact-answer reward."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from slurm_rl.rl.engines import make_engine
from slurm_rl.rl.grpo import Group, PolicyTrainer, Sample
from slurm_rl.rl.model import build_tiny_model, load_tokenizer
from slurm_rl.rl.task import encode_prompts, generate_arithmetic, reward


def _learn(kind: str, model: Path, steps: int) -> list[float]:
    problems = generate_arithmetic(256, seed=0, max_operand=3, max_answer=5)
    ids = encode_prompts(load_tokenizer(model), problems)
    trainer = PolicyTrainer(model, lr=3e-3, clip_eps=0.2, kl_coef=0.0, max_grad_norm=1.0)
    rng = random.Random(0)
    curve = []
    with make_engine(kind, model, seed=0, max_model_len=32, threads=1) as engine:
        for step in range(steps):
            idx = rng.sample(range(len(problems)), 16)
            outs = engine.generate([ids[i] for i in idx], n=8, max_tokens=2, temperature=1.0, seed=step)
            groups = [
                Group(problems[i].id, [
                    Sample(ids[i], c.token_ids, c.logprobs, reward(c.text, problems[i].answer), trainer.version)
                    for c in comps
                ])
                for i, comps in zip(idx, outs)
            ]  # fmt: skip
            stats = trainer.step(groups)
            assert stats.staleness_max == 0 and stats.logp_diff_max < 1e-4  # on-policy, engine == trainer
            engine.load_weights(trainer.state_dict_for_sync(copy=False))
            curve.append(stats.reward_mean)
    return curve


@pytest.mark.parametrize("kind", ["hf", pytest.param("vllm", marks=pytest.mark.vllm)])
def test_grpo_learns_small_addition(kind: str, tmp_path: Path) -> None:
    model = build_tiny_model(tmp_path / "m", layers=1, seed=0)
    curve = _learn(kind, model, steps=50)
    first, last = sum(curve[:5]) / 5, sum(curve[-5:]) / 5
    assert last - first >= 0.3, curve
