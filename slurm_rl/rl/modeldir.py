"""Checks of a Hugging Face model directory that need no model load: what `launch` runs before
submitting anything and each role before loading, so a broken directory is one clear error
(BadInput: exit 2 at launch, the run ended at once from a role) rather than a restart loop."""

from __future__ import annotations

import json
from pathlib import Path

from slurm_rl.errors import BadInput

_FIX = "point model.path at a directory written by save_pretrained (or `slurm-rl export`)"


def _json(path: Path) -> dict:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise BadInput(f"{path}: not readable JSON ({e})", hint=_FIX) from None
    if not isinstance(doc, dict):
        raise BadInput(f"{path}: expected a JSON object, got {type(doc).__name__}", hint=_FIX)
    return doc


def check_model_dir(d: Path, *, tokenizer: bool = True) -> None:
    """config.json with a model_type, its weights all present, and (when `tokenizer`) a tokenizer
    that loads. Raises BadInput naming the file and what is wrong."""
    d = Path(d)
    cfg_path = d / "config.json"
    if not cfg_path.is_file():
        raise BadInput(f"{d} is not a Hugging Face model directory (no config.json)", hint=_FIX)
    cfg = _json(cfg_path)
    if not cfg.get("model_type"):
        raise BadInput(f"{cfg_path}: no model_type", hint=_FIX)
    index = next((d / n for n in ("model.safetensors.index.json", "pytorch_model.bin.index.json")
                  if (d / n).is_file()), None)
    if index is not None:
        weight_map = _json(index).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise BadInput(f"{index}: no weight_map", hint=_FIX)
        missing = sorted({str(f) for f in weight_map.values()} - {p.name for p in d.iterdir()})
        if missing:
            raise BadInput(f"{index} names weight files that are not in {d}: {', '.join(missing[:5])}", hint=_FIX)
    elif not any((d / n).is_file() for n in ("model.safetensors", "pytorch_model.bin")):
        raise BadInput(f"{d}: no weights (model.safetensors, a sharded index, or pytorch_model.bin)", hint=_FIX)
    for f in d.glob("*.safetensors"):
        _check_safetensors_header(f)
    if tokenizer:
        from transformers import AutoTokenizer

        try:
            AutoTokenizer.from_pretrained(str(d))
        except Exception as e:  # noqa: BLE001 -- transformers raises many kinds; each is this one error
            raise BadInput(f"{d}: the tokenizer does not load ({type(e).__name__}: {str(e)[:300]})",
                           hint=_FIX) from None


def _check_safetensors_header(f: Path) -> None:
    """A safetensors file's header: 8 bytes of length, then that much JSON, within the file."""
    try:
        size = f.stat().st_size
        with open(f, "rb") as fh:
            head = fh.read(8)
            n = int.from_bytes(head, "little") if len(head) == 8 else -1
            if n <= 0 or 8 + n > size:
                raise ValueError(f"header length {n} in a file of {size} bytes")
            json.loads(fh.read(n))
    except (OSError, ValueError) as e:
        raise BadInput(f"{f}: not a valid safetensors file ({e})", hint=_FIX) from None
