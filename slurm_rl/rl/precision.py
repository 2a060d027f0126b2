"""Mixed precision for the trainer: fp32 master weights and optimizer state, compute in `model.dtype`.

The parameters AdamW updates are always float32 (bf16 parameters lose updates smaller than
2^-8 of a weight: with lr 1e-6 nearly all of them). The forward and backward run in the compute
dtype under `torch.autocast` (CPU and CUDA both take bf16; fp16 also gets a GradScaler, since fp16
gradients underflow). A sharded trainer whose FSDP2 `MixedPrecisionPolicy(param_dtype=bf16,
reduce_dtype=fp32)` already casts the parameters passes `autocast=False`: the same master/compute
split, done by the wrapper.

What the rollouts get (`sync_dtype`) is the compute dtype: they run in it, and it halves the bytes
of every weight sync against fp32.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from slurm_rl.errors import BadInput

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def torch_dtype(name: str) -> torch.dtype:
    """Map a dtype setting ("float32", "bfloat16", "float16") to torch; BadInput otherwise."""
    try:
        return _DTYPES[name]
    except KeyError:
        raise BadInput(f"unknown dtype {name!r}", hint=f"use one of {sorted(_DTYPES)}") from None


@dataclass(frozen=True, slots=True)
class Precision:
    compute: torch.dtype  # what matmuls run in; what rollouts are sent
    master: torch.dtype = torch.float32  # parameters and optimizer moments
    autocast: bool = True  # False: a wrapper (FSDP2 MixedPrecisionPolicy) does the casting

    @classmethod
    def named(cls, compute: str, *, autocast: bool = True) -> Precision:
        return cls(compute=torch_dtype(compute), autocast=autocast)

    @property
    def mixed(self) -> bool:
        return self.compute != self.master

    @property
    def sync_dtype(self) -> torch.dtype:
        return self.compute

    @contextlib.contextmanager
    def context(self, device_type: str) -> Iterator[None]:
        """Where the forward (and the loss) runs: autocast to the compute dtype when mixed."""
        if self.mixed and self.autocast:
            with torch.autocast(device_type=device_type, dtype=self.compute):
                yield
        else:
            yield

    def grad_scaler(self, device_type: str) -> torch.amp.GradScaler | None:
        """A dynamic loss scaler for fp16 compute (bf16 has fp32's range and needs none)."""
        if self.compute is torch.float16:
            return torch.amp.GradScaler(device_type)
        return None


__all__ = ["Precision", "torch_dtype"]
