"""Tiny policies of each model family built offline, and tokenizer loading for any HF model dir.

`build_tiny_model` writes a complete Hugging Face model directory (config, safetensors,
generation config, tokenizer with its chat template) of the Llama, Qwen2 (qkv bias, tied
embeddings) or Qwen3 (q/k norm) family, with random weights, that both transformers and vLLM
load, so CI and laptops run the real RL path with no model hub. A real checkpoint
(`model.path` on a cluster) goes through the same `load_tokenizer` / `PolicyTrainer` /
`make_engine` calls. `slurm-rl make-tiny-model` is this function on the command line.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

from slurm_rl.errors import BadInput
from slurm_rl.rl.tokenizer import (  # noqa: F401  (re-exported: the demo's tokenizer lives there now)
    DEFAULT_ALPHABET,
    Family,
    TokenizerKind,
    build_char_tokenizer,
    build_tokenizer,
    family_of,
)

log = logging.getLogger("slurm_rl.rl")

# vLLM's CPU attention kernels accept only these head sizes
# (CPUAttentionBackend.get_supported_head_sizes, vLLM 0.32); head_dim=16 starts but
# crashes on the first request.
VLLM_CPU_HEAD_DIMS: tuple[int, ...] = (32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512)

# the architecture each family's config.json names (what transformers and vLLM dispatch on)
ARCHITECTURES = {Family.LLAMA: "LlamaForCausalLM", Family.QWEN2: "Qwen2ForCausalLM", Family.QWEN3: "Qwen3ForCausalLM"}
# as the real checkpoints: Qwen2.5 and Qwen3 small models tie lm_head to the embedding
_TIED = {Family.LLAMA: False, Family.QWEN2: True, Family.QWEN3: True}


def build_tiny_model(
    out_dir: Path,
    *,
    family: str | Family = Family.LLAMA,
    hidden: int = 128,
    layers: int = 2,
    heads: int = 4,
    kv_heads: int = 2,
    intermediate: int | None = None,
    seed: int = 0,
    alphabet: str | None = None,
    tokenizer: str | TokenizerKind = TokenizerKind.CHAR,
    corpus: Iterable[str] = (),
    chat: bool | None = None,
    max_position_embeddings: int = 256,
    init_std: float = 0.02,
    tie_word_embeddings: bool | None = None,
) -> Path:
    """Write a random model of `family` and its tokenizer to `out_dir` and return it.

    `hidden // heads` is the head size and must be one vLLM-CPU supports (32, 64, 80, ...).
    tokenizer: `char` (one token per character of `alphabet`; default: the demo's digits and
    operators for a Llama without chat, printable ASCII otherwise) or `words` (the pieces of
    `corpus`). chat: give the tokenizer its family's chat template (default: yes, except the
    Llama demo model); tie_word_embeddings: default as the family's small checkpoints.
    The same arguments give bit-identical weights. Writing ~0.5 MB takes well under a second.
    """
    import torch
    import transformers

    fam = family_of(family)
    if hidden % heads:
        raise BadInput(f"tiny model: hidden={hidden} is not divisible by heads={heads}")
    head_dim = hidden // heads
    if head_dim not in VLLM_CPU_HEAD_DIMS:
        raise BadInput(
            f"tiny model: head_dim = hidden/heads = {head_dim} is not supported by vLLM's CPU attention",
            hint=f"choose hidden/heads in {list(VLLM_CPU_HEAD_DIMS)}, e.g. hidden={32 * heads}",
        )
    if heads % kv_heads:
        raise BadInput(f"tiny model: heads={heads} is not a multiple of kv_heads={kv_heads}")
    try:
        kind = TokenizerKind(tokenizer)
    except ValueError:
        raise BadInput(f"unknown tokenizer kind {tokenizer!r}", hint="use 'char' or 'words'") from None
    demo = fam is Family.LLAMA and kind is TokenizerKind.CHAR and alphabet is None
    if chat is None:
        chat = not demo                 # the demo's Llama keeps its 21-token vocabulary
    if alphabet is None and not chat:
        alphabet = DEFAULT_ALPHABET
    tok = build_tokenizer(fam, kind=kind, alphabet=alphabet, corpus=corpus, chat=chat)
    tied = _TIED[fam] if tie_word_embeddings is None else tie_word_embeddings

    common = dict(
        vocab_size=len(tok), hidden_size=hidden, intermediate_size=intermediate or 2 * hidden,
        num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
        max_position_embeddings=max_position_embeddings, initializer_range=init_std,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        tie_word_embeddings=tied,
    )
    if fam is Family.LLAMA:
        cfg = transformers.LlamaConfig(head_dim=head_dim, **common)
    elif fam is Family.QWEN2:
        cfg = transformers.Qwen2Config(use_sliding_window=False, **common)   # q/k/v carry biases
    else:
        cfg = transformers.Qwen3Config(head_dim=head_dim, use_sliding_window=False, **common)  # q/k RMSNorm
    model_cls = getattr(transformers, ARCHITECTURES[fam])

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tok.save_pretrained(out_dir)
    # A private generator would not reach transformers' init; fork the global RNG instead
    # so the caller's random state is left as it was.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_cls(cfg)
    model.generation_config = transformers.GenerationConfig(
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    model.save_pretrained(out_dir)  # safetensors + generation_config.json
    n_params = sum(p.numel() for p in model.parameters())
    log.info("built tiny %s model at %s: %d params, vocab %d", fam.value, out_dir, n_params, len(tok))
    return out_dir


def load_tokenizer(model_dir: Path):
    """Load the tokenizer of any HF model dir (the tiny one or a real checkpoint)."""
    from transformers import AutoTokenizer

    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise BadInput(
            f"{model_dir}: not a Hugging Face model directory (no config.json)",
            hint="set model.path to a directory written by save_pretrained",
        )
    tok = AutoTokenizer.from_pretrained(model_dir)
    if tok.pad_token_id is None:
        # Batching needs a pad id; the id is never attended to, so eos is a safe stand-in.
        tok.pad_token = tok.eos_token
    return tok
