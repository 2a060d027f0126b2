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


FAMILIES = ("llama", "qwen2", "qwen3")


@pytest.mark.parametrize("family", FAMILIES)
def test_each_family_is_its_architecture(family: str, tmp_path: Path) -> None:
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    d = build_tiny_model(tmp_path / family, family=family, seed=0, chat=True)
    cfg = json.loads((d / "config.json").read_text())
    arch = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM"}[family]
    assert cfg["architectures"] == [arch] and cfg["model_type"] == family
    with safe_open(str(d / "model.safetensors"), framework="pt") as f:
        names = set(f.keys())
    assert ("model.layers.0.self_attn.q_proj.bias" in names) == (family == "qwen2")       # Qwen2: qkv bias
    assert ("model.layers.0.self_attn.q_norm.weight" in names) == (family == "qwen3")     # Qwen3: q/k norm
    assert ("lm_head.weight" in names) == (family == "llama")                             # Qwen: tied
    gen = json.loads((d / "generation_config.json").read_text())
    tok = load_tokenizer(d)
    assert gen["eos_token_id"] == cfg["eos_token_id"] == tok.eos_token_id
    model = AutoModelForCausalLM.from_pretrained(d)
    assert type(model).__name__ == arch
    assert model(input_ids=torch.tensor([tok("3+4=")["input_ids"]])).logits.shape[-1] == len(tok)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("kind", ["char", "words"])
def test_chat_template_round_trips_through_autotokenizer(family: str, kind: str, tmp_path: Path) -> None:
    corpus = ["Ann has 3 cats. She gets 4 more.\nHow many cats does Ann have?", "Answer: \\boxed{7}"]
    d = build_tiny_model(tmp_path / "m", family=family, tokenizer=kind, corpus=corpus, chat=True)
    tok = load_tokenizer(d)                      # AutoTokenizer, as vLLM loads it
    msgs = [{"role": "system", "content": "Answer: \\boxed{7}"}, {"role": "user", "content": corpus[0]}]
    text = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    assert corpus[0] in text and "\\boxed{7}" in text
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.unk_token_id not in ids
    assert tok.decode(ids) == text               # every character survives, special tokens included
    end = {"llama": "[/INST]", "qwen2": "<|im_start|>assistant\n", "qwen3": "<|im_start|>assistant\n"}[family]
    assert text.endswith(end)
    plain = tok.decode(ids, skip_special_tokens=True)
    assert corpus[0] in plain and "<|im_start|>" not in plain and "[INST]" not in plain
    if kind == "words":
        # a word is one token: sequences are far shorter than one token per character
        assert len(tok(corpus[0], add_special_tokens=False)["input_ids"]) < len(corpus[0]) / 2.5
    else:
        assert len(tok(corpus[0], add_special_tokens=False)["input_ids"]) == len(corpus[0])


def test_qwen3_template_honours_enable_thinking(tmp_path: Path) -> None:
    tok = load_tokenizer(build_tiny_model(tmp_path / "q3", family="qwen3"))
    msgs = [{"role": "user", "content": "1+1?"}]
    assert tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True,
                                   enable_thinking=False).endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True).endswith("assistant\n")


def test_demo_model_keeps_its_small_vocabulary(tiny_model: Path) -> None:
    tok = load_tokenizer(tiny_model)
    assert len(tok) == 21 and tok.chat_template is None     # the demo's learning depends on it


def test_unknown_family_and_tokenizer_are_bad_input(tmp_path: Path) -> None:
    with pytest.raises(BadInput, match="unknown model family"):
        build_tiny_model(tmp_path / "m", family="gpt2")
    with pytest.raises(BadInput, match="unknown tokenizer kind"):
        build_tiny_model(tmp_path / "m", tokenizer="bpe")
