"""GRPO's loss math: group-relative advantages and the clipped surrogate, as pure tensor functions.

Unit-tested on hand-computed cases (tests/rl/test_grpo.py). Conventions (all tensors are per
completion token, shape [B, T] with a 0/1 `mask`):
  ratio     = exp(logp - old_logp)                      old_logp: the rollout's logprobs
  surrogate = -min(ratio * A, clip(ratio, 1 - eps_low, 1 + eps_high) * A)
  kl (k3)   = exp(ref_logp - logp) - (ref_logp - logp) - 1     (>= 0, unbiased for KL(pi||ref))
  loss      = agg(surrogate + kl_coef * kl)
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

import torch


class LossAggregation(str, enum.Enum):
    """How per-token losses become one number.

    TOKEN_MEAN: sum over every completion token in the batch / number of tokens (DAPO);
    long completions weigh more. SEQ_MEAN: mean within each completion, then mean over
    completions (the original GRPO); every completion weighs the same.
    """

    TOKEN_MEAN = "token_mean"
    SEQ_MEAN = "seq_mean"


def group_advantages(rewards: Sequence[float], *, scale_by_std: bool = True, eps: float = 1e-6) -> list[float]:
    """`(r - mean) / (std + eps)` within one group (std with Bessel's correction, as TRL).

    With `scale_by_std=False` just `r - mean` (Dr. GRPO: no bias toward easy/hard prompts).
    A group of one, or with equal rewards, gets all-zero advantages.
    """
    r = torch.tensor(rewards, dtype=torch.float64)
    if r.numel() < 2:
        return [0.0] * r.numel()
    centred = r - r.mean()
    if scale_by_std:
        centred = centred / (r.std(unbiased=True) + eps)
    return centred.tolist()


def clipped_surrogate(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    *,
    clip_eps: float,
    clip_eps_high: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token PPO surrogate loss and the 0/1 tensor of tokens the clip zeroed.

    `advantages` broadcasts against logp (e.g. [B,1]). A token is clipped when the
    min picks the clipped branch and the ratio is outside the range: A>0 and
    ratio>1+eps_high, or A<0 and ratio<1-eps; its gradient is then zero.
    """
    hi = clip_eps if clip_eps_high is None else clip_eps_high
    ratio = torch.exp(logp - old_logp)
    unclipped = ratio * advantages
    clipped = torch.clamp(ratio, 1.0 - clip_eps, 1.0 + hi) * advantages
    loss = -torch.minimum(unclipped, clipped)
    was_clipped = ((advantages > 0) & (ratio > 1.0 + hi)) | ((advantages < 0) & (ratio < 1.0 - clip_eps))
    return loss, was_clipped.to(logp.dtype)


def kl_k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimator of KL(pi || ref): exp(d) - d - 1 with d = ref_logp - logp."""
    d = ref_logp - logp
    return torch.exp(d) - d - 1.0


def masked_aggregate(
    values: torch.Tensor, mask: torch.Tensor, how: LossAggregation, *, denom: float | None = None
) -> torch.Tensor:
    """Aggregate per-token `values` over `mask`.

    TOKEN_MEAN: sum(values*mask) / denom (default: mask.sum()). SEQ_MEAN: per-row masked
    mean, summed over rows / denom (default: number of rows). Passing the whole batch's
    denominator keeps micro-batched gradients equal to the full-batch gradient.
    """
    mask = mask.to(values.dtype)
    if how is LossAggregation.TOKEN_MEAN:
        d = mask.sum() if denom is None else denom
        return (values * mask).sum() / d
    per_row = (values * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)
    d = values.shape[0] if denom is None else denom
    return per_row.sum() / d


@dataclass(slots=True)
class LossTerms:
    loss: torch.Tensor  # scalar, differentiable
    pg_loss: torch.Tensor
    kl: torch.Tensor
    clip_tokens: torch.Tensor  # count of clipped tokens (float scalar)


def grpo_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    clip_eps: float,
    clip_eps_high: float | None = None,
    kl_coef: float = 0.0,
    ref_logp: torch.Tensor | None = None,
    agg: LossAggregation = LossAggregation.TOKEN_MEAN,
    denom: float | None = None,
) -> LossTerms:
    """The GRPO loss on one (micro-)batch. `mask` is 1 on completion tokens, 0 on prompt
    and padding, so those positions contribute nothing (even if their logprobs are junk)."""
    adv = advantages if advantages.dim() == logp.dim() else advantages.unsqueeze(-1)
    m = mask.to(logp.dtype)
    # Junk at masked positions (padding logprobs, -inf) must not leak NaN through 0 * inf.
    logp_safe = torch.where(m > 0, logp, torch.zeros_like(logp))
    old_safe = torch.where(m > 0, old_logp, torch.zeros_like(old_logp))
    pg, clipped = clipped_surrogate(logp_safe, old_safe, adv, clip_eps=clip_eps, clip_eps_high=clip_eps_high)
    pg_loss = masked_aggregate(pg, m, agg, denom=denom)
    if kl_coef and ref_logp is not None:
        ref_safe = torch.where(m > 0, ref_logp, torch.zeros_like(ref_logp))
        kl = masked_aggregate(kl_k3(logp_safe, ref_safe), m, agg, denom=denom)
    else:
        kl = torch.zeros((), dtype=logp.dtype)
    return LossTerms(loss=pg_loss + kl_coef * kl, pg_loss=pg_loss, kl=kl, clip_tokens=(clipped * m).sum())
