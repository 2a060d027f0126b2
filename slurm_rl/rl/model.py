"""Tiny Llama policies built offline, and tokenizer loading for any HF model dir.

`build_tiny_model` writes a complete Hugging Face model directory (config, safetensors,
tokenizer) that both transformers and vLLM load, so CI and laptops run the real RL path
with no model hub. A real checkpoint (`model.path` on a cluster) goes through the same
`load_tokenizer` / `PolicyTrainer` / `make_engine` calls.
"""

from __future__ import annotations

import logging
from pathlib import Path

from slurm_rl.errors import BadInput

log = logging.getLogger("slurm_rl.rl")

PAD, BOS, EOS, UNK = "<pad>", "<s>", "</s>", "<unk>"
SPECIAL_TOKENS: tuple[str, ...] = (PAD, BOS, EOS, UNK)

# Digits first among the ordinary characters, and few other symbols: a random policy over
# a ~20-token vocabulary says a digit about half the time, which is what lets GRPO find
# reward on arithmetic from scratch.
DEFAULT_ALPHABET = "0123456789+-*=() "

# vLLM's CPU attention kernels accept only these head sizes
# (CPUAttentionBackend.get_supported_head_sizes, vLLM 0.32); head_dim=16 starts but
# crashes on the first request.
VLLM_CPU_HEAD_DIMS: tuple[int, ...] = (32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512)


def build_char_tokenizer(alphabet: str = DEFAULT_ALPHABET):
    """A character-level `PreTrainedTokenizerFast`: one token per character of `alphabet`.

    Ids: <pad>=0, <s>=1, </s>=2, <unk>=3, then the alphabet in order. Encoding prepends
    <s>; characters outside the alphabet become <unk>; decoding concatenates characters.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    chars = list(dict.fromkeys(alphabet))  # keep order, drop duplicates
    if not chars:
        raise BadInput("tokenizer alphabet is empty", hint="pass at least the digits 0-9")
    vocab = {tok: i for i, tok in enumerate([*SPECIAL_TOKENS, *chars])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()  # WordLevel would otherwise join characters with spaces
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, vocab[BOS])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD, unk_token=UNK
    )


def build_tiny_model(
    out_dir: Path,
    *,
    hidden: int = 128,
    layers: int = 2,
    heads: int = 4,
    kv_heads: int = 2,
    intermediate: int | None = None,
    seed: int = 0,
    alphabet: str = DEFAULT_ALPHABET,
    max_position_embeddings: int = 256,
    init_std: float = 0.02,
    tie_word_embeddings: bool = False,
) -> Path:
    """Write a random `LlamaForCausalLM` + char tokenizer to `out_dir` and return it.

    `hidden // heads` is the head size and must be one vLLM-CPU supports (32, 64, 80, ...).
    The same `seed` gives bit-identical weights. Writing ~0.5 MB takes well under a second.
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

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

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = build_char_tokenizer(alphabet)
    tokenizer.save_pretrained(out_dir)

    cfg = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=intermediate or 2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        head_dim=head_dim,
        max_position_embeddings=max_position_embeddings,
        initializer_range=init_std,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=tie_word_embeddings,
    )
    # A private generator would not reach transformers' init; fork the global RNG instead
    # so the caller's random state is left as it was.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(cfg)
    model.save_pretrained(out_dir)  # safetensors
    n_params = sum(p.numel() for p in model.parameters())
    log.info("built tiny model at %s: %d params, vocab %d", out_dir, n_params, len(tokenizer))
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
