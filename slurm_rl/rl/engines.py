"""The engine registry: which class serves each `rollout.engine` kind, imported only when started
(vLLM is a heavy import and absent from some installs). The engines do not import this module."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, Literal

from slurm_rl.errors import BadInput
from slurm_rl.rl.engine import Engine, EngineKind

# kind -> "module:class"
ENGINES: dict[EngineKind, str] = {
    EngineKind.VLLM: "slurm_rl.rl.engine_vllm:VllmEngine",
    EngineKind.HF: "slurm_rl.rl.engine_hf:HFEngine",
}


def make_engine(
    kind: Literal["vllm", "hf"] | EngineKind,
    model_dir: Path,
    *,
    dtype: str = "float32",
    device: str = "cpu",
    seed: int = 0,
    max_model_len: int | None = None,
    **opts: Any,
) -> Engine:
    """Start an engine of `kind` on the HF model in `model_dir`.

    `max_model_len=None` takes the model's own limit (max_position_embeddings).
    vllm opts: multiprocess (False: in-process, ~2 s start on CPU), threads, kv_cache_gib,
    max_num_seqs, gpu_memory_utilization, enforce_eager. hf opts: threads, batch_size.
    """
    try:
        kind = EngineKind(kind)
    except ValueError:
        raise BadInput(f"unknown engine {kind!r}", hint="use 'vllm' or 'hf'") from None
    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise BadInput(f"{model_dir}: not a Hugging Face model directory (no config.json)")
    module, _, name = ENGINES[kind].partition(":")
    cls = getattr(importlib.import_module(module), name)
    return cls(model_dir, dtype=dtype, device=device, seed=seed, max_model_len=max_model_len, **opts)
