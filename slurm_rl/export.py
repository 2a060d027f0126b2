"""Export a run's checkpoint as a Hugging Face model directory (`slurm-rl export`).

    OUT_DIR/  config.json  generation_config.json  tokenizer files  export.json
              model.safetensors                          (one shard), or
              model-00001-of-0000N.safetensors ... + model.safetensors.index.json

`transformers.AutoModelForCausalLM.from_pretrained(OUT_DIR)` and `vllm.LLM(OUT_DIR)` load it. The
config and tokenizer come from the run's model (what every role loaded), the weights from the
checkpoint: the newest intact one by default. Tensor names and shapes are checked against the
run's model before anything is written, everything is written into a temporary sibling directory
and renamed into place at the end, so OUT_DIR is either absent, untouched, or complete.

Checkpoints are read through a `CheckpointReader`: `SafetensorsCheckpoints` reads today's format
(slurm_rl/checkpoint.py: step-N/weights.safetensors); a reader for another layout (sharded DCP
checkpoints) is added to `READERS` and is picked when its `detect` recognises a run's checkpoints.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from slurm_rl.checkpoint import list_steps, verify
from slurm_rl.errors import BadInput
from slurm_rl.rundir import RunDir, require_run

if TYPE_CHECKING:
    import torch

log = logging.getLogger("slurm_rl.export")

DEFAULT_MAX_SHARD = "5GB"  # what save_pretrained uses
# what `save_pretrained` of a tokenizer writes and transformers/vLLM read back
_TOKENIZER_OPTIONAL = ("chat_template.jinja",)


class CheckpointReader(Protocol):
    """What export needs from a run's checkpoints, whatever their on-disk layout."""

    root: Path

    def steps(self) -> list[int]:
        """Steps with a finished checkpoint directory, oldest first (intact or not)."""
        ...

    def problem(self, step: int) -> str:
        """'' if checkpoint `step` is complete and intact, else what is wrong with it."""
        ...

    def load_weights(self, step: int) -> dict[str, torch.Tensor]:
        """The full policy state dict of `step` under HF checkpoint names, on the CPU."""
        ...


class SafetensorsCheckpoints:
    """slurm_rl.checkpoint's format: step-N/{weights.safetensors, optimizer.pt, meta.json}."""

    def __init__(self, root: Path):
        self.root = root

    @staticmethod
    def detect(root: Path) -> bool:
        return any((root / f"step-{s:06d}" / "weights.safetensors").exists() for s in list_steps(root))

    def steps(self) -> list[int]:
        return list_steps(self.root)

    def problem(self, step: int) -> str:
        return verify(self.root, step)

    def load_weights(self, step: int) -> dict[str, torch.Tensor]:
        from safetensors.torch import load_file

        return load_file(str(self.root / f"step-{step:06d}" / "weights.safetensors"), device="cpu")


# readers tried in order; the first whose detect() is true reads a run (the last is the fallback)
READERS: list[type] = [SafetensorsCheckpoints]


def open_checkpoints(run: RunDir) -> CheckpointReader:
    for reader in READERS:
        if reader.detect(run.checkpoints):
            return reader(run.checkpoints)
    return READERS[-1](run.checkpoints)


@dataclass(frozen=True)
class ExportResult:
    step: int
    out_dir: Path
    files: list[str]
    weight_bytes: int
    shards: int
    dtype: str
    skipped: list[str] = field(default_factory=list)  # newer checkpoints passed over as damaged
    seconds: float = 0.0

    def to_json(self) -> dict[str, object]:
        return {"step": self.step, "out_dir": str(self.out_dir), "files": self.files, "weight_bytes": self.weight_bytes,
                "shards": self.shards, "dtype": self.dtype, "skipped": self.skipped,
                "seconds": round(self.seconds, 3)}


def choose_step(reader: CheckpointReader, step: int | None) -> tuple[int, list[str]]:
    """The step to export (given, or the newest intact one) and the damaged newer ones passed over."""
    steps = reader.steps()
    where = reader.root
    if not steps:
        raise BadInput(f"no checkpoints in {where}",
                       hint="the trainer writes one every trainer.checkpoint_every steps and at the end of a run")
    if step is not None:
        if step not in steps:
            raise BadInput(f"no checkpoint at step {step} in {where}; there are: {', '.join(map(str, steps))}",
                           hint="pass one of those with --step, or leave --step out for the newest intact one")
        problem = reader.problem(step)
        if problem:
            intact = [s for s in steps if s != step and not reader.problem(s)]
            raise BadInput(f"checkpoint at step {step} is damaged: {problem}",
                           hint=f"export an intact one with --step ({', '.join(map(str, intact))})" if intact
                           else "no other checkpoint of this run is intact")
        return step, []
    skipped: list[str] = []
    for s in reversed(steps):
        problem = reader.problem(s)
        if not problem:
            return s, skipped
        skipped.append(f"step {s}: {problem}")
    raise BadInput(f"no intact checkpoint in {where}:\n  " + "\n  ".join(skipped),
                   hint="every checkpoint failed verification (truncated or corrupted files)")


def _reference_shapes(model_dir: Path) -> dict[str, tuple[int, ...]] | None:
    """Tensor names and shapes of the run's model, read from safetensors headers (no data); None
    when its weights are not in safetensors."""
    from safetensors import safe_open

    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    elif (model_dir / "model.safetensors").is_file():
        files = ["model.safetensors"]
    else:
        return None
    shapes: dict[str, tuple[int, ...]] = {}
    for name in files:
        with safe_open(str(model_dir / name), framework="pt") as f:
            for key in f.keys():  # noqa: SIM118 (safe_open is not a dict)
                shapes[key] = tuple(f.get_slice(key).get_shape())
    return shapes


def check_weights(sd: Mapping[str, torch.Tensor], reference: Mapping[str, tuple[int, ...]], step: int, *,
                  tied: bool = False) -> None:
    """The checkpoint must hold exactly the run's model's tensors, each of the same shape (a tied
    lm_head, which the trainer leaves out as save_pretrained does, may be absent)."""
    missing = sorted(set(reference) - set(sd) - ({"lm_head.weight"} if tied else set()))
    extra = sorted(set(sd) - set(reference))
    wrong = sorted(k for k in set(sd) & set(reference) if tuple(sd[k].shape) != tuple(reference[k]))
    if missing or extra or wrong:
        parts = []
        if missing:
            parts.append(f"missing {missing[:5]}")
        if extra:
            parts.append(f"unexpected {extra[:5]}")
        if wrong:
            k = wrong[0]
            parts.append(f"{len(wrong)} of another shape (e.g. {k}: {tuple(sd[k].shape)} vs {tuple(reference[k])})")
        raise BadInput(f"checkpoint at step {step} does not match the run's model: " + "; ".join(parts),
                       hint="the run's model directory (RUN/model) was changed after the run; point it back at "
                            "the model the run trained")


def _prepare_out(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise BadInput(f"{out} exists and is not a directory", hint="choose a directory path for OUT_DIR")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise BadInput(f"{out} is not empty", hint="choose a new directory, or pass --force to replace it")


def _fsync_tree(root: Path) -> None:
    for p in sorted(root.rglob("*")):
        if p.is_file():
            with open(p, "rb") as f:
                os.fsync(f.fileno())
    fd = os.open(root, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _replace_dir(tmp: Path, out: Path) -> None:
    """Move the finished `tmp` to `out`; an existing `out` is replaced only once `tmp` is complete."""
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        os.replace(out, old)
    os.replace(tmp, out)
    fd = os.open(out.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def export_run(run_dir: str | Path, out_dir: str | Path, *, step: int | None = None, force: bool = False,
               dtype: str | None = None, max_shard_size: str | int = DEFAULT_MAX_SHARD) -> ExportResult:
    """Write checkpoint `step` (default: the newest intact) of the run at `run_dir` to `out_dir` as a
    Hugging Face model directory. `dtype` casts the weights (default: as checkpointed, the run's
    model.dtype). Raises BadInput (nothing written) for an unknown or damaged step, a non-empty
    `out_dir` without `force`, or weights that do not fit the run's model."""
    import torch
    from huggingface_hub import save_torch_state_dict
    from transformers import AutoConfig, AutoTokenizer, GenerationConfig

    from slurm_rl.rl.precision import torch_dtype

    t0 = time.time()
    run = require_run(run_dir)
    out = Path(out_dir).expanduser().resolve()
    _prepare_out(out, force)
    if not (run.model / "config.json").is_file():
        raise BadInput(f"{run.model}: the run's model directory has no config.json",
                       hint="RUN/model must be the Hugging Face directory the run trained (a symlink to model.path)")
    reader = open_checkpoints(run)
    chosen, skipped = choose_step(reader, step)
    cast = torch_dtype(dtype) if dtype is not None else None

    sd = reader.load_weights(chosen)
    config = AutoConfig.from_pretrained(run.model)
    reference = _reference_shapes(run.model)
    if reference is not None:
        check_weights(sd, reference, chosen, tied=bool(getattr(config, "tie_word_embeddings", False)))
    if cast is not None:
        sd = {k: v.to(cast) if v.is_floating_point() else v for k, v in sd.items()}
    floats = {v.dtype for v in sd.values() if v.is_floating_point()}
    out_dtype = floats.pop() if len(floats) == 1 else torch.float32
    dtype_name = str(out_dtype).removeprefix("torch.")

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        config.dtype = out_dtype  # what from_pretrained(dtype="auto") and vLLM's dtype="auto" pick
        config.save_pretrained(tmp)
        try:
            gen = GenerationConfig.from_pretrained(run.model)
        except OSError:
            gen = GenerationConfig.from_model_config(config)
        gen.save_pretrained(tmp)
        AutoTokenizer.from_pretrained(run.model).save_pretrained(tmp)
        for name in _TOKENIZER_OPTIONAL:
            if (run.model / name).is_file() and not (tmp / name).exists():
                shutil.copy2(run.model / name, tmp / name)
        save_torch_state_dict(sd, tmp, max_shard_size=max_shard_size, metadata={"format": "pt"})
        shards = len(list(tmp.glob("*.safetensors")))
        meta = {"run": run.name, "run_dir": str(run.path), "step": chosen, "dtype": dtype_name,
                "checkpoint": str(reader.root / f"step-{chosen:06d}"), "exported": time.time()}
        (tmp / "export.json").write_text(json.dumps(meta, indent=2) + "\n")
        _fsync_tree(tmp)
        files = sorted(p.name for p in tmp.iterdir())
        _replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    nbytes = sum(v.numel() * v.element_size() for v in sd.values())
    log.info("exported step %d of %s to %s (%d shard(s), %.1f MB)", chosen, run.path, out, shards, nbytes / 1e6)
    return ExportResult(step=chosen, out_dir=out, files=files, weight_bytes=nbytes, shards=shards, dtype=dtype_name,
                        skipped=skipped, seconds=time.time() - t0)


__all__ = ["READERS", "CheckpointReader", "ExportResult", "SafetensorsCheckpoints", "check_weights", "choose_step",
           "export_run", "open_checkpoints"]
