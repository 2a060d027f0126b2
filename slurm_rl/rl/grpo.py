"""GRPO: group-relative advantages, the clipped surrogate loss, and the policy trainer.

The loss pieces are pure tensor functions (unit-tested by hand-computed cases); the
`PolicyTrainer` owns an HF causal LM and its AdamW optimizer and turns groups of sampled
completions into one optimizer step.

Conventions (all tensors are per completion token, shape [B, T] with a 0/1 `mask`):
  ratio     = exp(logp - old_logp)                      old_logp: the rollout's logprobs
  surrogate = -min(ratio * A, clip(ratio, 1 - eps_low, 1 + eps_high) * A)
  kl (k3)   = exp(ref_logp - logp) - (ref_logp - logp) - 1     (>= 0, unbiased for KL(pi||ref))
  loss      = agg(surrogate + kl_coef * kl)
"""

from __future__ import annotations

import copy
import enum
import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from slurm_rl.errors import BadInput

log = logging.getLogger("slurm_rl.rl")

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def torch_dtype(name: str) -> torch.dtype:
    """Map a dtype setting ("float32", "bfloat16", "float16") to torch; BadInput otherwise."""
    try:
        return _DTYPES[name]
    except KeyError:
        raise BadInput(f"unknown dtype {name!r}", hint=f"use one of {sorted(_DTYPES)}") from None


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


class LossAggregation(str, enum.Enum):
    """How per-token losses become one number.

    TOKEN_MEAN: sum over every completion token in the batch / number of tokens (DAPO);
    long completions weigh more. SEQ_MEAN: mean within each completion, then mean over
    completions (the original GRPO); every completion weighs the same.
    """

    TOKEN_MEAN = "token_mean"
    SEQ_MEAN = "seq_mean"


@dataclass(slots=True)
class StepStats:
    """What one `PolicyTrainer.step` did. Means are over completion tokens unless named."""

    version: int  # weight version after this step
    loss: float
    pg_loss: float
    kl: float  # mean k3 KL to the reference model (0 when kl_coef == 0)
    reward_mean: float  # over all samples, informative or not
    reward_std: float
    informative_groups: int  # groups whose rewards differ (the others carry no gradient)
    groups: int
    sequences: int  # sequences that went through forward/backward
    tokens: int  # completion tokens that went into the loss
    clip_frac: float  # tokens whose gradient the clip removed
    ratio_mean: float
    logp_diff_max: float  # max |logp - old_logp|: ~1e-6 when rollout and trainer agree
    grad_norm: float  # before clipping
    staleness_mean: float  # trainer version - sample version, over samples
    staleness_max: int
    completion_len_mean: float
    seconds: float
    skipped: bool = False  # no informative group: weights left as they were


# --------------------------------------------------------------------------- #
# pure loss pieces
# --------------------------------------------------------------------------- #
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


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """log softmax(logits / temperature)[targets], in float32. logits [B,T,V], targets [B,T]."""
    lp = torch.log_softmax(logits.float() / temperature, dim=-1)
    return lp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)


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


# --------------------------------------------------------------------------- #
# batching
# --------------------------------------------------------------------------- #
@dataclass(slots=True)
class _Batch:
    input_ids: torch.Tensor  # [B, L] prompt + completion, right-padded
    attention_mask: torch.Tensor  # [B, L]
    targets: torch.Tensor  # [B, L-1] input_ids shifted left
    mask: torch.Tensor  # [B, L-1] 1 where the target is a completion token
    old_logp: torch.Tensor  # [B, L-1] rollout logprobs aligned with targets
    advantages: torch.Tensor  # [B]


def _collate(samples: Sequence[Sample], advantages: Sequence[float], pad_id: int) -> _Batch:
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
        # Target position t predicts token t+1, so completion token j sits at p+j-1.
        p, c = len(s.prompt_ids), len(s.completion_ids)
        mask[i, p - 1 : p - 1 + c] = 1.0
        old[i, p - 1 : p - 1 + c] = torch.tensor(s.logprobs, dtype=torch.float32)
    return _Batch(
        input_ids=input_ids,
        attention_mask=attn,
        targets=input_ids[:, 1:].clone(),
        mask=mask,
        old_logp=old,
        advantages=torch.tensor(advantages, dtype=torch.float32),
    )


def _check_sample(s: Sample, where: str) -> None:
    if not s.prompt_ids:
        raise ValueError(f"{where}: empty prompt_ids (a prompt needs at least BOS)")
    if len(s.logprobs) != len(s.completion_ids):
        raise ValueError(
            f"{where}: {len(s.completion_ids)} completion tokens but {len(s.logprobs)} logprobs"
        )
    if not all(math.isfinite(x) for x in s.logprobs):
        raise ValueError(f"{where}: non-finite rollout logprob")


# --------------------------------------------------------------------------- #
# trainer
# --------------------------------------------------------------------------- #
class PolicyTrainer:
    """An HF causal LM + AdamW taking GRPO steps on groups of completions.

    `version` counts `step()` calls: the weights after step k are version k (0 = as
    loaded). `temperature` must be the rollouts' sampling temperature, because the rollout
    logprobs are under logits / temperature and the ratio compares like with like.
    """

    def __init__(
        self,
        model_dir: Path,
        *,
        lr: float,
        clip_eps: float = 0.2,
        kl_coef: float = 0.0,
        max_grad_norm: float = 1.0,
        device: str = "cpu",
        dtype: str = "float32",
        seed: int = 0,
        clip_eps_high: float | None = None,
        temperature: float = 1.0,
        scale_adv_by_std: bool = True,
        loss_agg: LossAggregation | str = LossAggregation.TOKEN_MEAN,
        weight_decay: float = 0.0,
        betas: tuple[float, float] = (0.9, 0.999),
        micro_batch_size: int = 256,
        skip_uninformative: bool = True,
    ):
        from transformers import AutoModelForCausalLM

        if temperature <= 0:
            raise BadInput(f"trainer temperature={temperature} must be > 0 (greedy rollouts have no ratio)")
        if lr <= 0 or clip_eps <= 0 or max_grad_norm <= 0 or kl_coef < 0:
            raise BadInput(
                f"trainer: need lr>0, clip_eps>0, max_grad_norm>0, kl_coef>=0 "
                f"(got lr={lr}, clip_eps={clip_eps}, max_grad_norm={max_grad_norm}, kl_coef={kl_coef})"
            )
        torch.manual_seed(seed)
        self.model_dir = Path(model_dir)
        self.device = torch.device(device)
        self.dtype = torch_dtype(dtype)
        self.clip_eps, self.clip_eps_high = clip_eps, clip_eps_high
        self.kl_coef = kl_coef
        self.max_grad_norm = max_grad_norm
        self.temperature = temperature
        self.scale_adv_by_std = scale_adv_by_std
        self.loss_agg = LossAggregation(loss_agg)
        self.micro_batch_size = micro_batch_size
        # Zero-advantage groups give exactly zero policy gradient; skipping them saves the
        # compute and keeps them from diluting the token mean. With a KL term they still
        # pull toward the reference, so then they stay.
        self.skip_uninformative = skip_uninformative and kl_coef == 0
        self.version = 0

        self.model: torch.nn.Module = AutoModelForCausalLM.from_pretrained(self.model_dir, dtype=self.dtype).to(
            self.device
        )
        self.model.train()
        cfg = self.model.config
        pad = cfg.pad_token_id if cfg.pad_token_id is not None else cfg.eos_token_id
        self.pad_id = int(pad if not isinstance(pad, list) else pad[0]) if pad is not None else 0
        # The reference model exists only when the KL term needs it: a second copy of a
        # real policy is the largest memory cost a trainer can avoid.
        self.ref_model: torch.nn.Module | None = None
        if kl_coef > 0:
            self.ref_model = AutoModelForCausalLM.from_pretrained(self.model_dir, dtype=self.dtype).to(self.device)
            self.ref_model.eval().requires_grad_(False)
        self.optimizer: torch.optim.Optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=lr, betas=betas, weight_decay=weight_decay
        )

    # ---- the step ---------------------------------------------------------
    def step(self, groups: Sequence[Group]) -> StepStats:
        """One optimizer step on `groups`; returns what happened. Increments `version`."""
        t0 = time.perf_counter()
        if not groups:
            raise ValueError("PolicyTrainer.step needs at least one group")
        all_samples: list[Sample] = []
        chosen: list[Sample] = []
        advs: list[float] = []
        informative = 0
        for g in groups:
            for j, s in enumerate(g.samples):
                _check_sample(s, f"group {g.prompt_id!r} sample {j}")
            all_samples.extend(g.samples)
            rewards = [s.reward for s in g.samples]
            a = group_advantages(rewards, scale_by_std=self.scale_adv_by_std)
            useful = len(g.samples) > 1 and max(rewards) != min(rewards)
            informative += useful
            if useful or not self.skip_uninformative:
                chosen.extend(g.samples)
                advs.extend(a)

        rewards_t = torch.tensor([s.reward for s in all_samples], dtype=torch.float64)
        staleness = [self.version - s.version for s in all_samples]
        base = dict(
            reward_mean=float(rewards_t.mean()),
            reward_std=float(rewards_t.std(unbiased=False)),
            informative_groups=informative,
            groups=len(groups),
            staleness_mean=sum(staleness) / len(staleness),
            staleness_max=max(staleness),
            completion_len_mean=sum(len(s.completion_ids) for s in all_samples) / len(all_samples),
        )
        n_tokens = sum(len(s.completion_ids) for s in chosen)
        if not chosen or n_tokens == 0:
            self.version += 1
            return StepStats(
                version=self.version, loss=0.0, pg_loss=0.0, kl=0.0, sequences=0, tokens=0, clip_frac=0.0,
                ratio_mean=1.0, logp_diff_max=0.0, grad_norm=0.0, seconds=time.perf_counter() - t0,
                skipped=True, **base,
            )  # fmt: skip

        denom = float(n_tokens) if self.loss_agg is LossAggregation.TOKEN_MEAN else float(len(chosen))
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        tot = {"loss": 0.0, "pg": 0.0, "kl": 0.0, "clip": 0.0, "ratio": 0.0, "diff": 0.0}
        for lo in range(0, len(chosen), self.micro_batch_size):
            mb = chosen[lo : lo + self.micro_batch_size]
            batch = _collate(mb, advs[lo : lo + self.micro_batch_size], self.pad_id)
            terms, ratio_sum, diff_max = self._micro_step(batch, denom)
            terms.loss.backward()
            tot["loss"] += float(terms.loss.detach())
            tot["pg"] += float(terms.pg_loss.detach())
            tot["kl"] += float(terms.kl.detach())
            tot["clip"] += float(terms.clip_tokens.detach())
            tot["ratio"] += ratio_sum
            tot["diff"] = max(tot["diff"], diff_max)
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.max_grad_norm))
        if math.isfinite(grad_norm):
            self.optimizer.step()
        else:
            # A NaN/inf gradient would poison AdamW's moments for good; drop this step.
            log.warning("non-finite grad norm at version %d; optimizer step skipped", self.version)
        self.optimizer.zero_grad(set_to_none=True)
        self.version += 1
        return StepStats(
            version=self.version,
            loss=tot["loss"],
            pg_loss=tot["pg"],
            kl=tot["kl"],
            sequences=len(chosen),
            tokens=n_tokens,
            clip_frac=tot["clip"] / n_tokens,
            ratio_mean=tot["ratio"] / n_tokens,
            logp_diff_max=tot["diff"],
            grad_norm=grad_norm,
            seconds=time.perf_counter() - t0,
            **base,
        )

    def _micro_step(self, batch: _Batch, denom: float) -> tuple[LossTerms, float, float]:
        dev = self.device
        ids, attn = batch.input_ids.to(dev), batch.attention_mask.to(dev)
        targets, mask = batch.targets.to(dev), batch.mask.to(dev)
        old, adv = batch.old_logp.to(dev), batch.advantages.to(dev)
        logits = self.model(input_ids=ids, attention_mask=attn).logits[:, :-1]
        logp = token_logprobs(logits, targets, self.temperature)
        ref_logp = None
        if self.ref_model is not None:
            with torch.no_grad():
                ref_logits = self.ref_model(input_ids=ids, attention_mask=attn).logits[:, :-1]
                ref_logp = token_logprobs(ref_logits, targets, self.temperature)
        terms = grpo_loss(
            logp, old, adv, mask, clip_eps=self.clip_eps, clip_eps_high=self.clip_eps_high,
            kl_coef=self.kl_coef, ref_logp=ref_logp, agg=self.loss_agg, denom=denom,
        )  # fmt: skip
        with torch.no_grad():
            diff = (logp - old).abs() * mask
            ratio_sum = float((torch.exp(logp - old) * mask).sum())
        return terms, ratio_sum, float(diff.max())

    # ---- weights and optimizer state -------------------------------------
    @torch.no_grad()
    def logprobs(self, token_ids: Sequence[int]) -> list[float]:
        """Teacher-forced logprob of token_ids[1:] given the prefix (trainer temperature)."""
        self.model.eval()
        try:
            ids = torch.tensor([list(token_ids)], device=self.device)
            logits = self.model(input_ids=ids).logits[:, :-1]
            return token_logprobs(logits, ids[:, 1:], self.temperature)[0].tolist()
        finally:
            self.model.train()

    def state_dict_for_sync(self, *, copy: bool = True) -> dict[str, torch.Tensor]:
        """The policy's weights under HF checkpoint names, as contiguous CPU tensors.

        This is exactly what `Engine.load_weights` and vLLM's `reload_weights(...,
        is_checkpoint_format=True)` take: the names `save_pretrained` writes (a tied
        lm_head is left out). `copy=True` gives a snapshot the next step cannot
        change (needed when the dict is sent while training goes on); on CPU `copy=False`
        shares storage with the live parameters.
        """
        out: dict[str, torch.Tensor] = {}
        seen: set[int] = set()
        for name, t in self.model.state_dict().items():
            # Tied weights (lm_head = embed_tokens) appear twice in state_dict but once in
            # a checkpoint; vLLM rejects the alias, so keep the first name like save_pretrained.
            if t.data_ptr() in seen:
                continue
            seen.add(t.data_ptr())
            t = t.detach()
            if t.device.type != "cpu":
                t = t.to("cpu")  # already a copy
            elif copy:
                t = t.clone()
            out[name] = t.contiguous()
        return out

    def load_weights(self, sd: Mapping[str, torch.Tensor]) -> None:
        """Replace the policy's weights in place (optimizer keeps its parameter handles)."""
        missing, unexpected = self.model.load_state_dict(dict(sd), strict=False)
        # Tied embeddings appear under both names; anything else missing is a real mismatch.
        missing = [k for k in missing if not (k == "lm_head.weight" and self.model.config.tie_word_embeddings)]
        if missing or unexpected:
            raise ValueError(f"weights do not match the policy: missing {missing[:5]}, unexpected {unexpected[:5]}")

    def optimizer_state(self) -> dict[str, Any]:
        """A snapshot of the AdamW state plus the step counter (`version`), for a checkpoint.

        Deep-copied: `Optimizer.state_dict()` returns the live moment tensors, which the
        next step would change under a checkpoint still being written.
        """
        return {"optimizer": copy.deepcopy(self.optimizer.state_dict()), "version": self.version}

    def load_optimizer_state(self, state: Mapping[str, Any]) -> None:
        """Restore what `optimizer_state` returned (also restores `version`).

        Copies too: `Optimizer.load_state_dict` keeps same-device tensors by reference, so
        two trainers restored from one dict would otherwise share (and both mutate) moments.
        """
        self.optimizer.load_state_dict(copy.deepcopy(dict(state["optimizer"])))
        self.version = int(state["version"])

