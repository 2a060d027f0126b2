"""FSDP2 for the trainer: shard a Hugging Face causal LM over the process group's ranks, and move
its state in and out whole (weights to publish, weights a restore pulled) or sharded (optimizer state
through torch.distributed.checkpoint, which reshards on load: saved at 2 ranks, loaded at 1 or 4).

Each decoder layer is its own FSDP unit, and the root holds the embeddings, the final norm and
the head (tied embeddings stay one parameter). The parameters are fp32 (the master weights, and
AdamW's moments with them); `MixedPrecisionPolicy` casts them to the compute dtype for forward and
backward and reduces gradients in fp32.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch


def decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The transformer blocks of an HF causal LM (Llama, Qwen2, Qwen3, Mistral: `model.layers`)."""
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    if layers is None:
        raise ValueError(f"{type(model).__name__}: no `model.layers` to shard (not a decoder-only HF model?)")
    return list(layers)


def shard(model: torch.nn.Module, *, compute_dtype: torch.dtype, reshard_after_forward: bool = True) -> None:
    """Apply `fully_shard` per decoder layer, then to the root, in place."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mp = MixedPrecisionPolicy(param_dtype=None if compute_dtype == torch.float32 else compute_dtype,
                              reduce_dtype=torch.float32)
    for layer in decoder_layers(model):
        fully_shard(layer, mp_policy=mp, reshard_after_forward=reshard_after_forward)
    # The root stays unsharded after its forward: the chunked log-probs call lm_head (a root parameter,
    # maybe tied to the embeddings) after the model's forward has returned (slurm_rl.rl.logprobs).
    fully_shard(model, mp_policy=mp, reshard_after_forward=False)


def _tied(model: torch.nn.Module) -> bool:
    return bool(getattr(getattr(model, "config", None), "tie_word_embeddings", False))


def full_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The whole model's weights under HF checkpoint names, gathered to rank 0 on the CPU (a collective:
    every rank calls it; ranks > 0 get {}). A tied head is left out, as `save_pretrained` does."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    sd = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if _tied(model):
        sd.pop("lm_head.weight", None)
    return {k: v.contiguous() for k, v in sd.items()}


def load_full_state_dict(model: torch.nn.Module, sd: Mapping[str, torch.Tensor], *, rank: int) -> None:
    """Rank 0's whole weights into every rank's shards (a collective; ranks > 0 pass {})."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    full = dict(sd)
    if rank == 0 and _tied(model) and "lm_head.weight" not in full and "model.embed_tokens.weight" in full:
        full["lm_head.weight"] = full["model.embed_tokens.weight"]
    set_model_state_dict(model, full, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True,
                                                                strict=True))


def save_optimizer(model: torch.nn.Module, optimizer: torch.optim.Optimizer, path: Path,
                   process_group: Any = None) -> None:
    """Every rank writes its optimizer shards into `path` (DCP); a collective."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    state = {"optimizer": get_optimizer_state_dict(model, optimizer)}
    dcp.save(state, checkpoint_id=str(path), process_group=process_group)


def load_optimizer(model: torch.nn.Module, optimizer: torch.optim.Optimizer, path: Path) -> None:
    """Optimizer shards from a DCP directory, resharded to this world size; a collective."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict, set_optimizer_state_dict

    state = {"optimizer": get_optimizer_state_dict(model, optimizer)}
    dcp.load(state, checkpoint_id=str(path))
    set_optimizer_state_dict(model, optimizer, state["optimizer"])
