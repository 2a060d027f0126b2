"""FSDP2 for the trainer: shard a Hugging Face causal LM over the process group's ranks, and move
its state in and out whole (weights a checkpoint writes or reads), as each rank's own rows (its part
of a published version, slurm_rl.sync.parts; no collective), or sharded (optimizer state through
torch.distributed.checkpoint, which reshards on load: saved at 2 ranks, loaded at 1 or 4).

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


def _sharded_params(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """This rank's view of the model under HF names: DTensors (FSDP2's Shard(0) parameters) and
    plain tensors (anything not sharded). A tied head is left out. No collective."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    sd = get_model_state_dict(model)
    if _tied(model):
        sd.pop("lm_head.weight", None)
    return sd


def _is_dim0_shard(t: torch.Tensor) -> bool:
    from torch.distributed.tensor import DTensor, Shard

    if not isinstance(t, DTensor):
        return False
    if tuple(t.placements) != (Shard(0),):
        raise ValueError(f"a parameter placed {t.placements}: only FSDP2's Shard(0) is supported")
    return True


def local_state_dict(model: torch.nn.Module, *, rank: int) -> dict[str, torch.Tensor]:
    """The rows this rank holds of every sharded parameter (views, no copy), plus - on rank 0 only -
    whatever is not sharded: this rank's part of the weights (slurm_rl.sync.parts). No collective."""
    out: dict[str, torch.Tensor] = {}
    for name, t in _sharded_params(model).items():
        if _is_dim0_shard(t):
            out[name] = t.to_local()
        elif rank == 0:
            out[name] = t
    return out


def load_local_state_dict(model: torch.nn.Module, part: Mapping[str, torch.Tensor], *, rank: int) -> None:
    """This rank's part of the weights (`local_state_dict`'s shape, from a trainer of the same world
    size) into its shards, in place; no collective. A missing or misshapen tensor raises (a tensor
    that is not sharded is only in part 0: ranks > 0 keep their own)."""
    _load_rows(model, rank, lambda name, local: part.get(name))


def load_whole_into_shards(model: torch.nn.Module, whole: Mapping[str, torch.Tensor], *, rank: int,
                           world_size: int) -> None:
    """Whole weights (every rank has them) into this rank's shards: each takes its rows, torch.chunk's
    split as FSDP2's; no collective."""
    def rows(name: str, local: torch.Tensor) -> torch.Tensor | None:
        t = whole.get(name)
        if t is None or local.dim() == 0 or t.dim() == 0:
            return t
        chunks = torch.chunk(t, world_size, dim=0)
        return chunks[rank] if rank < len(chunks) else t[t.shape[0]:]
    _load_rows(model, rank, rows)


def _load_rows(model: torch.nn.Module, rank: int, source: Any) -> None:
    with torch.no_grad():
        for name, t in _sharded_params(model).items():
            sharded = _is_dim0_shard(t)
            dst = t.to_local() if sharded else t
            src = source(name, dst)
            if src is None and not sharded and rank > 0:
                continue            # not sharded: only part 0 carries it, and this rank built it already
            if src is None:
                raise ValueError(f"rank {rank}: the weights have no {name!r}")
            if tuple(src.shape) != tuple(dst.shape):
                raise ValueError(f"rank {rank}: {name!r} is {tuple(src.shape)} in the weights, {tuple(dst.shape)} "
                                 "in this rank's shard (pulled from a trainer of another shape?)")
            dst.copy_(src)


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
