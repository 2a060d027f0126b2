"""Held-out evaluation: greedy pass@1 and mean reward of one weight version on the eval split.

Run by one rollout (rollout/0) whenever the version it holds reaches the next multiple of
`algorithm.eval_every` (version 0 included: the base model's score), in chunks the size of a
rollout batch so that its heartbeats show progress and a stop or promotion is obeyed between
chunks. pass@1 is the share of eval problems whose greedy completion earns a reward of at
least 1 (a verified answer); the mean reward is over the same completions.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from slurm_rl.rl.prompts import PromptBuilder
from slurm_rl.rl.reward import RewardScorer
from slurm_rl.rl.task import Problem

EVENT_KIND = "eval"


@dataclass(frozen=True)
class EvalResult:
    version: int
    n: int
    pass_at_1: float
    reward_mean: float
    seconds: float
    tokens: int
    reward_errors: int

    def event_data(self, wepoch: int) -> dict[str, str]:
        """The RoleEvent data (strings, as the protocol carries them) the report reads back."""
        return {"version": str(self.version), "wepoch": str(wepoch), "n": str(self.n),
                "pass_at_1": f"{self.pass_at_1:.6f}", "reward_mean": f"{self.reward_mean:.6f}",
                "seconds": f"{self.seconds:.3f}", "tokens": str(self.tokens),
                "reward_errors": str(self.reward_errors)}

    def message(self) -> str:
        return (f"eval at v{self.version}: pass@1 {self.pass_at_1:.3f}, mean reward {self.reward_mean:.3f} "
                f"over {self.n} problems ({self.seconds:.1f}s)")


class Evaluator:
    """When to evaluate, and the evaluation itself (engine, prompts and reward are the rollout's)."""

    def __init__(self, problems: Sequence[Problem], *, every: int, builder: PromptBuilder, scorer: RewardScorer,
                 max_tokens: int, chunk: int):
        self.problems = list(problems)
        self.every = every
        self.builder = builder
        self.scorer = scorer
        self.max_tokens = max_tokens
        self.chunk = max(1, chunk)
        self.next_version: int | None = None
        self._encoded: list[tuple[str, list[int]]] | None = None

    def due(self, version: int) -> bool:
        """Is an eval due at the held `version`? The first one is at the first multiple of
        `every` not below the version this rollout starts with."""
        if version < 0 or not self.problems:
            return False
        if self.next_version is None:
            self.next_version = -(-version // self.every) * self.every
        return version >= self.next_version

    def run(self, engine: Any, version: int, *, between_chunks: Callable[[int, int, int], bool]) -> EvalResult | None:
        """Evaluate `version`; `between_chunks(done, total, tokens)` is called after each chunk and
        returns False to abandon the eval (None is returned, and it is due again)."""
        if self._encoded is None:
            self._encoded = [(self.builder.text(p), self.builder.ids(p)) for p in self.problems]
        t0 = time.time()
        rewards: list[float] = []
        tokens = 0
        errors_before = self.scorer.failures
        for i in range(0, len(self.problems), self.chunk):
            part = self._encoded[i:i + self.chunk]
            outs = engine.generate([ids for _, ids in part], n=1, max_tokens=self.max_tokens, temperature=0.0,
                                   seed=None)
            for (text, _), p, comps in zip(part, self.problems[i:i + self.chunk], outs):
                c = comps[0]
                tokens += len(c.token_ids)
                rewards.append(self.scorer(text, c.text, p.to_json()))
            if not between_chunks(len(rewards), len(self.problems), tokens):
                return None
        self.next_version = (version // self.every + 1) * self.every
        n = len(rewards)
        return EvalResult(version=version, n=n, pass_at_1=sum(r >= 1.0 for r in rewards) / n,
                          reward_mean=sum(rewards) / n, seconds=time.time() - t0, tokens=tokens,
                          reward_errors=self.scorer.failures - errors_before)
