"""Per-token log-probabilities of a causal LM without a [batch, length, vocab] tensor.

The naive way (`token_logprobs(model(ids).logits, ...)`) holds the full logits, their fp32 copy
and the log-softmax at once: for 8 sequences of 8k tokens and a 152k vocabulary that is ~40 GB per
tensor. Here the model runs up to its final hidden state only (`forward_hidden`, the lm_head is
skipped with an empty `logits_to_keep`), and `head_logprobs` applies lm_head + log_softmax + gather
to `chunk_tokens` positions at a time. With autograd on, each chunk is checkpointed: its logits are
freed after the forward and recomputed, one chunk at a time, in the backward. Peak memory is then
about one chunk's logits instead of all of them; gradients are the same as the naive path's.

Only the positions that count are computed (`mask`: the completion tokens), so a long prompt
costs no vocabulary-sized work at all.
"""

from __future__ import annotations

import inspect

import torch
from torch.utils.checkpoint import checkpoint


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """log softmax(logits / temperature)[targets], in float32. logits [B,T,V], targets [B,T].

    The naive computation, for short sequences and as the reference the chunked one is tested
    against."""
    lp = torch.log_softmax(logits.float() / temperature, dim=-1)
    return lp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)


def _chunk_logprobs(head: torch.nn.Module, hidden: torch.Tensor, targets: torch.Tensor, temperature: float,
                    softcap: float | None) -> torch.Tensor:
    logits = head(hidden).float()
    if softcap:
        logits = softcap * torch.tanh(logits / softcap)
    lp = torch.log_softmax(logits / temperature, dim=-1)
    return lp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)


def head_logprobs(head: torch.nn.Module, hidden: torch.Tensor, targets: torch.Tensor, *, temperature: float = 1.0,
                  chunk_tokens: int = 1024, softcap: float | None = None) -> torch.Tensor:
    """log softmax(head(hidden) / temperature)[targets] for hidden [N, H], targets [N] -> [N] float32.

    `head` is called as a module (so a wrapper's hooks run, e.g. an FSDP2-sharded lm_head).
    `softcap`: Gemma-style final logit soft-capping (cap * tanh(logits / cap)), None for
    Llama/Qwen. The backward through it recomputes one chunk at a time.
    """
    if chunk_tokens < 1:
        raise ValueError(f"chunk_tokens must be >= 1, got {chunk_tokens}")
    n = hidden.shape[0]
    if n == 0:
        return torch.zeros(0, dtype=torch.float32, device=hidden.device)
    grad = torch.is_grad_enabled() and (hidden.requires_grad or any(p.requires_grad for p in head.parameters()))
    parts = []
    for lo in range(0, n, chunk_tokens):
        h, t = hidden[lo : lo + chunk_tokens], targets[lo : lo + chunk_tokens]
        if grad:
            parts.append(checkpoint(_chunk_logprobs, head, h, t, temperature, softcap, use_reentrant=False))
        else:
            parts.append(_chunk_logprobs(head, h, t, temperature, softcap))
    return torch.cat(parts) if len(parts) > 1 else parts[0]


def _decoder(model: torch.nn.Module) -> torch.nn.Module:
    get = getattr(model, "get_decoder", None)
    dec = get() if callable(get) else None
    if dec is None or dec is model:
        raise TypeError(f"{type(model).__name__} has no separate decoder (get_decoder()) to take hidden states from")
    return dec


def supports_hidden_forward(model: torch.nn.Module) -> bool:
    """Whether `forward_hidden` works on this model: a decoder to hook and a `logits_to_keep` argument."""
    try:
        _decoder(model)
    except TypeError:
        return False
    return "logits_to_keep" in inspect.signature(model.forward).parameters


def forward_hidden(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
                   ) -> torch.Tensor:
    """The final (normed) hidden state [B, L, H] of an HF causal LM, without computing any logits.

    The whole model's forward runs (so wrappers around it, FSDP2 or activation checkpointing, see
    the call they expect); an empty `logits_to_keep` makes its lm_head a no-op on zero positions,
    and a forward hook on the decoder catches what would have gone into it.
    """
    seen: list[torch.Tensor] = []

    def grab(module: torch.nn.Module, args: object, out: object) -> None:
        h = getattr(out, "last_hidden_state", None)
        seen.append(h if h is not None else out[0])  # type: ignore[index]

    handle = _decoder(model).register_forward_hook(grab)
    try:
        none = torch.zeros(0, dtype=torch.long, device=input_ids.device)
        model(input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=none, use_cache=False)
    finally:
        handle.remove()
    if len(seen) != 1:
        raise RuntimeError(f"expected one decoder output, saw {len(seen)}")
    return seen[0]


def sequence_logprobs(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                      targets: torch.Tensor, mask: torch.Tensor | None = None, *, temperature: float = 1.0,
                      chunk_tokens: int = 1024, softcap: float | None = None) -> torch.Tensor:
    """Teacher-forced logprob of `targets` [B, L-1] (= input_ids[:, 1:]) -> [B, L-1] float32.

    Positions where `mask` is 0 are not computed and hold 0. The result is differentiable with
    respect to the model's parameters when autograd is on.
    """
    hidden = forward_hidden(model, input_ids, attention_mask)[:, :-1]
    head = model.get_output_embeddings()
    if mask is None:
        rows, cols = (x.reshape(-1) for x in torch.meshgrid(
            torch.arange(hidden.shape[0], device=hidden.device), torch.arange(hidden.shape[1], device=hidden.device),
            indexing="ij"))
    else:
        rows, cols = (mask > 0).nonzero(as_tuple=True)
    lp = head_logprobs(head, hidden[rows, cols], targets[rows, cols], temperature=temperature,
                       chunk_tokens=chunk_tokens, softcap=softcap)
    out = torch.zeros(targets.shape, dtype=torch.float32, device=hidden.device)
    return out.index_put((rows, cols), lp)


def logit_softcap(model: torch.nn.Module) -> float | None:
    """The final logit soft-cap a model's forward applies after lm_head (Gemma 2/3), else None."""
    cap = getattr(getattr(model, "config", None), "final_logit_softcapping", None)
    return float(cap) if cap else None



__all__ = ["forward_hidden", "head_logprobs", "logit_softcap", "sequence_logprobs", "supports_hidden_forward",
           "token_logprobs"]
