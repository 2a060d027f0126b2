"""The GRPO policy trainer: an HF causal LM with fp32 master weights + AdamW, one step per batch.

Three separable pieces, so that a sharded trainer can wrap the model between them:
  * `load_policy_model` builds the model (fp32 parameters, gradient checkpointing if asked);
    `PolicyTrainer(wrap_model=...)` applies a wrapper (e.g. FSDP2 `fully_shard`) before the
    optimizer is made over its parameters;
  * `PolicyTrainer.loss_terms` is the loss of one micro-batch, `step` the micro-batch loop,
    gradient clipping and the optimizer step;
  * `state_dict_for_sync` exports the weights under HF checkpoint names in the compute dtype
    (what rollouts load), `optimizer_state` the optimizer moments and the fp32 master weights.

The loss math is in `slurm_rl.rl.loss`, the chunked log-probabilities in `slurm_rl.rl.logprobs`,
the precision policy in `slurm_rl.rl.precision`, the sample records in `slurm_rl.rl.batch`.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from slurm_rl.errors import BadInput
from slurm_rl.rl.batch import Batch, Group, Sample, check_sample, collate
from slurm_rl.rl.dist import RankInfo
from slurm_rl.rl.logprobs import logit_softcap, sequence_logprobs, supports_hidden_forward, token_logprobs
from slurm_rl.rl.loss import (
    LossAggregation,
    LossTerms,
    clipped_surrogate,
    group_advantages,
    grpo_loss,
    kl_k3,
    masked_aggregate,
)
from slurm_rl.rl.precision import Precision, torch_dtype

log = logging.getLogger("slurm_rl.rl")

ProgressFn = Callable[[int], None]


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
    micro_batches: int = 0


def load_policy_model(model_dir: Path, *, device: torch.device, dtype: torch.dtype = torch.float32,
                      gradient_checkpointing: bool = False, trainable: bool = True) -> torch.nn.Module:
    """An HF causal LM from `model_dir` on `device`, parameters in `dtype` (the trainer: fp32 masters).

    `trainable=False` gives a frozen eval-mode copy (the KL reference model)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).to(device)
    model.config.use_cache = False  # a KV cache is for generation; in training it only costs memory
    if gradient_checkpointing:
        if not getattr(model, "supports_gradient_checkpointing", False):
            raise BadInput(f"{model_dir}: {type(model).__name__} does not support gradient checkpointing",
                           hint="set trainer.gradient_checkpointing: false")
        # non-reentrant: works with inputs that need no grad, and with FSDP2 and torch.compile
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if trainable:
        model.train()
    else:
        model.eval().requires_grad_(False)
    return model


class PolicyTrainer:
    """An HF causal LM + AdamW taking GRPO steps on groups of completions.

    `version` counts `step()` calls: the weights after step k are version k (0 = as
    loaded). `temperature` must be the rollouts' sampling temperature, because the rollout
    logprobs are under logits / temperature and the ratio compares like with like.
    `dtype` is the compute dtype (`model.dtype`); parameters and AdamW state stay float32.
    `micro_batch_size` sequences go through forward/backward at a time (gradients accumulate,
    the step equals the full-batch one); `logprob_chunk_tokens` positions at a time go through
    lm_head + log_softmax (see slurm_rl.rl.logprobs).
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
        micro_batch_size: int = 4,
        skip_uninformative: bool = True,
        gradient_checkpointing: bool = False,
        logprob_chunk_tokens: int = 1024,
        autocast: bool = True,
        wrap_model: Callable[[torch.nn.Module], torch.nn.Module] | None = None,
        ranks: RankInfo | None = None,
    ):
        if temperature <= 0:
            raise BadInput(f"trainer temperature={temperature} must be > 0 (greedy rollouts have no ratio)")
        if lr <= 0 or clip_eps <= 0 or max_grad_norm <= 0 or kl_coef < 0:
            raise BadInput(
                f"trainer: need lr>0, clip_eps>0, max_grad_norm>0, kl_coef>=0 "
                f"(got lr={lr}, clip_eps={clip_eps}, max_grad_norm={max_grad_norm}, kl_coef={kl_coef})"
            )
        if micro_batch_size < 1 or logprob_chunk_tokens < 1:
            raise BadInput(f"trainer: micro_batch_size ({micro_batch_size}) and logprob_chunk_tokens "
                           f"({logprob_chunk_tokens}) must be >= 1")
        self.ranks = ranks or RankInfo()
        if self.ranks.distributed and wrap_model is None:
            raise BadInput(f"trainer: {self.ranks.world_size} ranks need a sharded model (wrap_model, e.g. "
                           "slurm_rl.rl.fsdp.shard): unsharded ranks would not reduce their gradients")
        torch.manual_seed(seed)
        self.model_dir = Path(model_dir)
        self.device = torch.device(device)
        self.precision = Precision.named(dtype, autocast=autocast)
        self.dtype = self.precision.compute
        self.clip_eps, self.clip_eps_high = clip_eps, clip_eps_high
        self.kl_coef = kl_coef
        self.max_grad_norm = max_grad_norm
        self.temperature = temperature
        self.scale_adv_by_std = scale_adv_by_std
        self.loss_agg = LossAggregation(loss_agg)
        self.micro_batch_size = micro_batch_size
        self.logprob_chunk_tokens = logprob_chunk_tokens
        # Zero-advantage groups give exactly zero policy gradient; skipping them saves the
        # compute and keeps them from diluting the token mean. With a KL term they still
        # pull toward the reference, so then they stay.
        self.skip_uninformative = skip_uninformative and kl_coef == 0
        self.version = 0

        model = load_policy_model(self.model_dir, device=self.device, dtype=self.precision.master,
                                  gradient_checkpointing=gradient_checkpointing)
        self._softcap = logit_softcap(model)
        self.chunked = _check_chunked_logprobs(model, self._softcap)
        self.model: torch.nn.Module = wrap_model(model) if wrap_model is not None else model
        cfg = model.config
        self.tie_word_embeddings = bool(getattr(cfg, "tie_word_embeddings", False))
        pad = cfg.pad_token_id if cfg.pad_token_id is not None else cfg.eos_token_id
        self.pad_id = int(pad if not isinstance(pad, list) else pad[0]) if pad is not None else 0
        # The reference model exists only when the KL term needs it: a second copy of a
        # real policy is the largest memory cost a trainer can avoid. Frozen, so no fp32 masters.
        self.ref_model: torch.nn.Module | None = None
        if kl_coef > 0:
            self.ref_model = load_policy_model(self.model_dir, device=self.device, dtype=self.precision.compute,
                                               trainable=False)
        self.optimizer: torch.optim.Optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=lr, betas=betas, weight_decay=weight_decay
        )
        self.scaler = self.precision.grad_scaler(self.device.type)

    # ---- log-probabilities --------------------------------------------------
    def _logprobs(self, model: torch.nn.Module, ids: torch.Tensor, attn: torch.Tensor | None, targets: torch.Tensor,
                  mask: torch.Tensor | None) -> torch.Tensor:
        """[B, L-1] float32 logprobs of targets (0 where mask is 0), in the compute precision."""
        with self.precision.context(self.device.type):
            if self.chunked:
                return sequence_logprobs(model, ids, attn, targets, mask, temperature=self.temperature,
                                         chunk_tokens=self.logprob_chunk_tokens, softcap=self._softcap)
            logits = model(input_ids=ids, attention_mask=attn).logits[:, :-1]
            return token_logprobs(logits, targets, self.temperature)

    @torch.no_grad()
    def logprobs(self, token_ids: Sequence[int]) -> list[float]:
        """Teacher-forced logprob of token_ids[1:] given the prefix (trainer temperature)."""
        self.model.eval()
        try:
            ids = torch.tensor([list(token_ids)], device=self.device)
            return self._logprobs(self.model, ids, None, ids[:, 1:], None)[0].tolist()
        finally:
            self.model.train()

    # ---- the step ---------------------------------------------------------
    def step(self, groups: Sequence[Group], *, progress: ProgressFn | None = None) -> StepStats:
        """One optimizer step on `groups`; returns what happened. Increments `version`.

        `progress(1)` is called after every micro-batch's backward and after the optimizer
        step, so a caller's heartbeat shows a long step moving."""
        t0 = time.perf_counter()
        if not groups:
            raise ValueError("PolicyTrainer.step needs at least one group")
        all_samples: list[Sample] = []
        chosen: list[Sample] = []
        advs: list[float] = []
        informative = 0
        for g in groups:
            for j, s in enumerate(g.samples):
                check_sample(s, f"group {g.prompt_id!r} sample {j}")
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
        # Every rank holds the whole batch (so `denom` is already global) and takes the chosen samples
        # strided by rank. All ranks run the same number of micro-batches (FSDP's collectives must pair
        # up): one short of samples runs a zero-weight micro-batch. FSDP2 averages gradients over ranks;
        # scaling each rank's loss by the world size makes the reduced gradient the whole batch's sum.
        world, mbs = self.ranks.world_size, self.micro_batch_size
        mine = list(range(self.ranks.rank, len(chosen), world))
        n_micro = math.ceil(math.ceil(len(chosen) / world) / mbs)
        for m in range(n_micro):
            idx = mine[m * mbs : (m + 1) * mbs]
            weight = float(world) if idx else 0.0
            idx = idx or [0]
            batch = collate([chosen[i] for i in idx], [advs[i] for i in idx], self.pad_id).to(self.device)
            terms, ratio_sum, diff_max = self.loss_terms(batch, denom)
            loss = terms.loss * weight if world > 1 else terms.loss
            (self.scaler.scale(loss) if self.scaler is not None else loss).backward()
            if weight:
                tot["loss"] += float(terms.loss.detach())
                tot["pg"] += float(terms.pg_loss.detach())
                tot["kl"] += float(terms.kl.detach())
                tot["clip"] += float(terms.clip_tokens.detach())
                tot["ratio"] += ratio_sum
                tot["diff"] = max(tot["diff"], diff_max)
            if progress is not None:
                progress(1)
        if world > 1:
            tot = _all_reduce_stats(tot, self.device)
        grad_norm = self._optimizer_step()
        if progress is not None:
            progress(1)
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
            micro_batches=n_micro,
            **base,
        )

    def loss_terms(self, batch: Batch, denom: float) -> tuple[LossTerms, float, float]:
        """The GRPO loss of one micro-batch (on the trainer's device), the sum of its token ratios
        and its max |logp - old_logp|. `denom` is the whole batch's (tokens or sequences)."""
        logp = self._logprobs(self.model, batch.input_ids, batch.attention_mask, batch.targets, batch.mask)
        ref_logp = None
        if self.ref_model is not None:
            with torch.no_grad():
                ref_logp = self._logprobs(self.ref_model, batch.input_ids, batch.attention_mask, batch.targets,
                                          batch.mask)
        terms = grpo_loss(
            logp, batch.old_logp, batch.advantages, batch.mask, clip_eps=self.clip_eps,
            clip_eps_high=self.clip_eps_high, kl_coef=self.kl_coef, ref_logp=ref_logp, agg=self.loss_agg, denom=denom,
        )  # fmt: skip
        with torch.no_grad():
            diff = (logp - batch.old_logp).abs() * batch.mask
            ratio_sum = float((torch.exp(logp - batch.old_logp) * batch.mask).sum())
        return terms, ratio_sum, float(diff.max())

    def _optimizer_step(self) -> float:
        """Clip and apply the accumulated gradients; returns the norm before clipping."""
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.max_grad_norm)
        grad_norm = float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)  # sharded: a DTensor
        if self.scaler is not None:
            # skips the step itself when a gradient is inf/NaN, and lowers the loss scale
            self.scaler.step(self.optimizer)
            self.scaler.update()
        elif math.isfinite(grad_norm):
            self.optimizer.step()
        else:
            # A NaN/inf gradient would poison AdamW's moments for good; drop this step.
            log.warning("non-finite grad norm at version %d; optimizer step skipped", self.version)
        self.optimizer.zero_grad(set_to_none=True)
        return grad_norm

    # ---- weights and optimizer state -------------------------------------
    def state_dict_for_sync(self, *, copy: bool = True) -> dict[str, torch.Tensor]:
        """The policy's weights under HF checkpoint names, as contiguous CPU tensors in the compute dtype.

        This is exactly what `Engine.load_weights` and vLLM's `reload_weights(...,
        is_checkpoint_format=True)` take: the names `save_pretrained` writes (a tied
        lm_head is left out). `copy=True` gives a snapshot the next step cannot
        change (needed when the dict is sent while training goes on); on CPU, in float32,
        `copy=False` shares storage with the live parameters (a cast is always a copy).
        """
        out: dict[str, torch.Tensor] = {}
        seen: set[int] = set()
        want = self.precision.sync_dtype
        for name, t in self.model.state_dict().items():
            # Tied weights (lm_head = embed_tokens) appear twice in state_dict but once in
            # a checkpoint; vLLM rejects the alias, so keep the first name like save_pretrained.
            if t.data_ptr() in seen:
                continue
            seen.add(t.data_ptr())
            t = t.detach()
            if t.is_floating_point() and t.dtype != want:
                t = t.to(dtype=want).to("cpu")  # cast where it lives: half the bytes to copy off a GPU
            elif t.device.type != "cpu":
                t = t.to("cpu")  # already a copy
            elif copy:
                t = t.clone()
            out[name] = t.contiguous()
        return out

    def load_weights(self, sd: Mapping[str, torch.Tensor]) -> None:
        """Replace the policy's weights in place (optimizer keeps its parameter handles).

        Tensors in another dtype (the bf16 weights a rollout holds) are cast to the fp32 masters."""
        missing, unexpected = self.model.load_state_dict(dict(sd), strict=False)
        # Tied embeddings appear under both names; anything else missing is a real mismatch.
        missing = [k for k in missing if not (k == "lm_head.weight" and self.tie_word_embeddings)]
        if missing or unexpected:
            raise ValueError(f"weights do not match the policy: missing {missing[:5]}, unexpected {unexpected[:5]}")

    def optimizer_state(self) -> dict[str, Any]:
        """A snapshot of the AdamW state plus the step counter (`version`), for a checkpoint.

        With mixed precision it also holds the fp32 master weights (`master`): the checkpoint's
        weights file has what rollouts run (the compute dtype), and a restore at the same step
        must not lose the bits below it. Deep-copied: `Optimizer.state_dict()` returns the live
        moment tensors, which the next step would change under a checkpoint still being written.
        """
        state: dict[str, Any] = {"optimizer": copy.deepcopy(self.optimizer.state_dict()), "version": self.version}
        if self.precision.mixed:
            state["master"] = self._master_weights()
        if self.scaler is not None:
            state["scaler"] = self.scaler.state_dict()
        return state

    def _master_weights(self) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        seen: set[int] = set()
        for name, t in self.model.state_dict().items():
            if t.data_ptr() not in seen:
                seen.add(t.data_ptr())
                out[name] = t.detach().to("cpu", copy=True)
        return out

    def load_optimizer_state(self, state: Mapping[str, Any], *, master_weights: bool = True) -> None:
        """Restore what `optimizer_state` returned (also restores `version`).

        `master_weights`: also put back the fp32 master weights saved with it, if any; pass False
        when the state is older than the weights just loaded (an older checkpoint's optimizer
        under the committed step's weights), which the masters would roll back.
        Copies too: `Optimizer.load_state_dict` keeps same-device tensors by reference, so
        two trainers restored from one dict would otherwise share (and both mutate) moments.
        """
        self.optimizer.load_state_dict(copy.deepcopy(dict(state["optimizer"])))
        if master_weights and state.get("master"):
            self.load_weights(state["master"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.version = int(state["version"])


def _all_reduce_stats(tot: dict[str, float], device: torch.device) -> dict[str, float]:
    """The step's sums over all ranks (the max for `diff`); a collective."""
    import torch.distributed as dist

    keys = ["loss", "pg", "kl", "clip", "ratio"]
    sums = torch.tensor([tot[k] for k in keys], dtype=torch.float64, device=device)  # nccl: on the GPU
    dist.all_reduce(sums)
    top = torch.tensor([tot["diff"]], dtype=torch.float64, device=device)
    dist.all_reduce(top, op=dist.ReduceOp.MAX)
    return {**dict(zip(keys, sums.tolist(), strict=True)), "diff": float(top[0])}


def _check_chunked_logprobs(model: torch.nn.Module, softcap: float | None) -> bool:
    """Whether the chunked log-probabilities reproduce this model's own logits (checked on 8 tokens).

    They assume logits = lm_head(final hidden state) (+ a soft-cap), which holds for the Llama and
    Qwen families; a model whose forward does more falls back to the naive path, with a warning.
    """
    if not supports_hidden_forward(model):
        log.warning("%s: no hidden-state forward; log-probabilities use full logits", type(model).__name__)
        return False
    device = next(model.parameters()).device
    vocab = int(model.get_output_embeddings().weight.shape[0])
    ids = (torch.arange(8, device=device) * 7919 % vocab).unsqueeze(0)
    was_training = model.training
    model.eval()  # no dropout in the comparison
    try:
        with torch.no_grad():
            want = token_logprobs(model(input_ids=ids).logits[:, :-1], ids[:, 1:])
            got = sequence_logprobs(model, ids, None, ids[:, 1:], softcap=softcap, chunk_tokens=3)
    finally:
        model.train(was_training)
    err = float((want - got).abs().max())
    if not err < 1e-3:
        log.warning("%s: chunked log-probabilities differ from the model's logits by %.3g; using full logits",
                    type(model).__name__, err)
        return False
    return True


__all__ = [
    "Batch", "Group", "LossAggregation", "LossTerms", "PolicyTrainer", "Precision", "Sample", "StepStats",
    "clipped_surrogate", "group_advantages", "grpo_loss", "kl_k3", "load_policy_model", "masked_aggregate",
    "token_logprobs", "torch_dtype",
]
