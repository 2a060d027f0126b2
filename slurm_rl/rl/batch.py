"""The trainer's inputs: sampled completions (Sample, Group) and their padded tensor batches.

A `Batch` is one micro-batch, right-padded; position t of `targets`/`mask`/`old_logp` is the
prediction of token t+1 from the prefix up to t, so completion token j of a sample with a
p-token prompt sits at position p+j-1.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass(slots=True)
class Sample:
    """One completion of a prompt, as a rollout produced it.

    `logprobs[i]` is the behaviour policy's logprob of `completion_ids[i]` (under the
    sampling temperature); `version` is the weight version that generated it.
    """

    prompt_ids: list[int]
    completion_ids: list[int]
    logprobs: list[float]
    reward: float
    version: int


@dataclass(slots=True)
class Group:
    """All samples of one prompt: the unit GRPO normalises rewards within."""

    prompt_id: str
    samples: list[Sample]


@dataclass(slots=True)
class Batch:
    input_ids: torch.Tensor  # [B, L] prompt + completion, right-padded
    attention_mask: torch.Tensor  # [B, L]
    targets: torch.Tensor  # [B, L-1] input_ids shifted left
    mask: torch.Tensor  # [B, L-1] 1 where the target is a completion token
    old_logp: torch.Tensor  # [B, L-1] rollout logprobs aligned with targets
    advantages: torch.Tensor  # [B]

    def to(self, device: torch.device) -> Batch:
        return Batch(*(t.to(device) for t in (self.input_ids, self.attention_mask, self.targets, self.mask,
                                               self.old_logp, self.advantages)))


def collate(samples: Sequence[Sample], advantages: Sequence[float], pad_id: int) -> Batch:
    seqs = [s.prompt_ids + s.completion_ids for s in samples]
    length = max(len(x) for x in seqs)
    b = len(seqs)
    input_ids = torch.full((b, length), pad_id, dtype=torch.long)
    attn = torch.zeros((b, length), dtype=torch.long)
    mask = torch.zeros((b, length - 1))
    old = torch.zeros((b, length - 1))
    for i, (s, ids) in enumerate(zip(samples, seqs)):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        attn[i, : len(ids)] = 1
        p, c = len(s.prompt_ids), len(s.completion_ids)
        mask[i, p - 1 : p - 1 + c] = 1.0
        old[i, p - 1 : p - 1 + c] = torch.tensor(s.logprobs, dtype=torch.float32)
    return Batch(
        input_ids=input_ids,
        attention_mask=attn,
        targets=input_ids[:, 1:].clone(),
        mask=mask,
        old_logp=old,
        advantages=torch.tensor(advantages, dtype=torch.float32),
    )


def check_sample(s: Sample, where: str) -> None:
    if not s.prompt_ids:
        raise ValueError(f"{where}: empty prompt_ids (a prompt needs at least BOS)")
    if len(s.logprobs) != len(s.completion_ids):
        raise ValueError(
            f"{where}: {len(s.completion_ids)} completion tokens but {len(s.logprobs)} logprobs"
        )
    if not all(math.isfinite(x) for x in s.logprobs):
        raise ValueError(f"{where}: non-finite rollout logprob")
