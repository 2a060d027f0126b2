"""Small tokenizers built offline with `tokenizers`, with the chat template of each model family.

Two kinds, both `PreTrainedTokenizerFast` that `AutoTokenizer` and vLLM load from disk:

* `char`: one token per character of an alphabet (digits first); any other character is <unk>.
  Works for any text, which is what `slurm-rl make-tiny-model` gives by default.
* `words`: one token per word, digit, punctuation mark or whitespace character seen in a corpus
  (a word keeps the space before it, GPT-2 style, so decoding gives the text back exactly).
  Sequences are 3-4x shorter than with characters, which is what lets a tiny policy learn
  word problems in minutes on a CPU.

The special tokens and chat template follow each family's own: Llama (Llama-2 `[INST]` turns,
`<s>` added in front, `</s>` ends a turn), Qwen2 and Qwen3 (ChatML: `<|im_start|>role\\n...`
`<|im_end|>`, which is also the EOS; no BOS; Qwen3 adds `<think>` and honours
`enable_thinking=False` as Qwen3's template does).
"""

from __future__ import annotations

import enum
import re
import string
from collections.abc import Iterable
from dataclasses import dataclass

from slurm_rl.errors import BadInput

# Digits first among the ordinary characters, and few other symbols: a random policy over
# a ~20-token vocabulary says a digit about half the time, which is what lets GRPO find
# reward on arithmetic from scratch.
DEFAULT_ALPHABET = "0123456789+-*=() "
# Printable ASCII, digits first, newline included (chat templates use it).
ASCII_ALPHABET = "0123456789" + "".join(c for c in string.printable if c not in string.digits and c not in "\r\x0b\x0c")

# words: a word with the space before it, a digit (with its space), one other symbol, one whitespace char
WORD_PATTERN = r" ?[A-Za-z]+|[0-9]| ?[^A-Za-z0-9\s]|\s"


class Family(str, enum.Enum):
    LLAMA = "llama"
    QWEN2 = "qwen2"
    QWEN3 = "qwen3"

    def __str__(self) -> str:
        return self.value


class TokenizerKind(str, enum.Enum):
    CHAR = "char"
    WORDS = "words"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class FamilyTokens:
    """The special tokens of a family: the first four ids, in order, then `extra` at the end."""

    pad: str
    bos: str | None           # None: nothing is added in front (Qwen)
    eos: str
    unk: str
    extra: tuple[str, ...]    # chat markers (special), after the ordinary tokens
    plain_extra: tuple[str, ...] = ()   # added tokens that decode as text (Qwen3's <think>)
    template: str = ""

    @property
    def first(self) -> tuple[str, ...]:
        """ids 0-3: pad, bos (Qwen has none: its turn opener instead), eos, unk"""
        return (self.pad, self.bos or self.extra[0], self.eos, self.unk)


_LLAMA_TEMPLATE = (
    "{{ bos_token }}"
    "{% set ns = namespace(sys='') %}"
    "{% for m in messages %}"
    "{% if m['role'] == 'system' %}{% set ns.sys = '<<SYS>>\n' + m['content'] + '\n<</SYS>>\n\n' %}"
    "{% elif m['role'] == 'user' %}{{ '[INST] ' + ns.sys + m['content'] + ' [/INST]' }}{% set ns.sys = '' %}"
    "{% elif m['role'] == 'assistant' %}{{ ' ' + m['content'] + eos_token }}"
    "{% endif %}"
    "{% endfor %}"
)

_CHATML_TEMPLATE = (
    "{% for m in messages %}"
    "{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_QWEN3_TEMPLATE = (
    "{% for m in messages %}"
    "{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
    "{% if enable_thinking is defined and enable_thinking is false %}{{ '<think>\n\n</think>\n\n' }}{% endif %}"
    "{% endif %}"
)

FAMILY_TOKENS: dict[Family, FamilyTokens] = {
    Family.LLAMA: FamilyTokens(pad="<pad>", bos="<s>", eos="</s>", unk="<unk>",
                               extra=("[INST]", "[/INST]", "<<SYS>>", "<</SYS>>"), template=_LLAMA_TEMPLATE),
    Family.QWEN2: FamilyTokens(pad="<|endoftext|>", bos=None, eos="<|im_end|>", unk="<unk>",
                               extra=("<|im_start|>",), template=_CHATML_TEMPLATE),
    Family.QWEN3: FamilyTokens(pad="<|endoftext|>", bos=None, eos="<|im_end|>", unk="<unk>",
                               extra=("<|im_start|>",), plain_extra=("<think>", "</think>"),
                               template=_QWEN3_TEMPLATE),
}

# text the chat template itself writes, outside the special tokens: it must be in the vocabulary
_TEMPLATE_TEXT = ("system", "user", "assistant", "\n", " ")


def family_of(value: str | Family) -> Family:
    try:
        return Family(value)
    except ValueError:
        raise BadInput(f"unknown model family {value!r}", hint=f"use one of {[f.value for f in Family]}") from None


def word_pieces(texts: Iterable[str]) -> list[str]:
    """The `words` vocabulary of a corpus: digits 0-9 first, then every piece in order of first sight."""
    seen: dict[str, None] = dict.fromkeys(string.digits)
    pat = re.compile(WORD_PATTERN)
    for text in texts:
        for piece in pat.findall(text):
            seen.setdefault(piece, None)
    return list(seen)


def build_tokenizer(family: str | Family = Family.LLAMA, *, kind: str | TokenizerKind = TokenizerKind.CHAR,
                    alphabet: str | None = None, corpus: Iterable[str] = (), chat: bool = True):
    """A `PreTrainedTokenizerFast` of `family`, with its chat template when `chat`.

    kind=char: one token per character of `alphabet` (default: printable ASCII, digits first),
    plus the characters the chat template writes. kind=words: the pieces of `corpus` (and of the
    chat template). Ids: pad, bos (an unused placeholder where the family has none), eos, unk,
    then the ordinary tokens, then the family's chat markers. chat=False (Llama only; the demo's
    vocabulary) leaves the markers and the template out.
    """
    from tokenizers import (
        Regex,
        Tokenizer,
        decoders,
        models,
        pre_tokenizers,
        processors,
    )
    from transformers import PreTrainedTokenizerFast

    fam = family_of(family)
    try:
        kind = TokenizerKind(kind)
    except ValueError:
        raise BadInput(f"unknown tokenizer kind {kind!r}", hint="use 'char' or 'words'") from None
    ft = FAMILY_TOKENS[fam]
    if not chat and fam is not Family.LLAMA:
        raise BadInput(f"a {fam.value} tokenizer always has its chat markers (its EOS is one)")
    if not chat:
        ft = FamilyTokens(pad=ft.pad, bos=ft.bos, eos=ft.eos, unk=ft.unk, extra=())
    markers = [t for t in ft.extra if t not in ft.first]
    template_text = _TEMPLATE_TEXT if chat else ()
    if kind is TokenizerKind.CHAR:
        chars = list(dict.fromkeys((ASCII_ALPHABET if alphabet is None else alphabet) + "".join(template_text)))
        if not any(c.isdigit() for c in chars):
            raise BadInput("tokenizer alphabet has no digits", hint="include at least 0-9")
        pieces = chars
        pattern = r"[\s\S]"      # one character, newlines included
    else:
        pieces = word_pieces([*corpus, *template_text])
        pattern = WORD_PATTERN
    if fam is Family.QWEN2:
        tok = _qwen2_bpe(ft, pieces if kind is TokenizerKind.WORDS else None)
    else:
        ordinary = [p for p in pieces if p not in ft.first and p not in ft.extra and p not in ft.plain_extra]
        vocab = {t: i for i, t in enumerate([*ft.first, *ordinary, *markers, *ft.plain_extra])}
        tok = Tokenizer(models.WordLevel(vocab, unk_token=ft.unk))
        tok.pre_tokenizer = pre_tokenizers.Split(Regex(pattern), behavior="isolated")
        tok.decoder = decoders.Fuse()  # WordLevel would otherwise join tokens with spaces
        if ft.bos is not None:
            tok.post_processor = processors.TemplateProcessing(
                single=f"{ft.bos} $A", pair=f"{ft.bos} $A $B", special_tokens=[(ft.bos, vocab[ft.bos])])
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=ft.bos, eos_token=ft.eos, pad_token=ft.pad, unk_token=ft.unk,
        additional_special_tokens=list(ft.extra), chat_template=ft.template or None,
        clean_up_tokenization_spaces=False,
    )
    if ft.plain_extra:
        from tokenizers import AddedToken

        hf.add_tokens([AddedToken(t, special=False, normalized=False) for t in ft.plain_extra])
    if fam is Family.QWEN2:
        # transformers maps model_type qwen2 to Qwen2Tokenizer whatever tokenizer_config says, and
        # that class rebuilds a byte-level BPE from the saved vocab and merges: this is one
        hf.init_kwargs["tokenizer_class"] = "Qwen2Tokenizer"
    return hf


# Qwen2's own pre-tokenizer split (transformers' Qwen2Tokenizer): digits one by one
_QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
                r"\s*[\r\n]+|\s+(?!\S)|\s+")


def _qwen2_bpe(ft: FamilyTokens, words: list[str] | None):
    """A byte-level BPE laid out as Qwen2's: every byte is a token (no text is ever lost), and with
    `words` one merge chain per corpus piece, so each piece is one token."""
    from tokenizers import (
        Regex,
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
    )

    byte_chars = pre_tokenizers.ByteLevel.alphabet()
    digits = [c for c in string.digits]
    base = [*ft.first, *digits, *sorted(c for c in byte_chars if c not in digits)]
    vocab = {t: i for i, t in enumerate(base)}
    merges: list[tuple[str, str]] = []
    if words:
        to_bytes = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
        for piece in words:
            for (text, _) in to_bytes.pre_tokenize_str(piece):
                cur = text[0]
                for ch in text[1:]:
                    nxt = cur + ch
                    if nxt not in vocab:
                        vocab[nxt] = len(vocab)
                        merges.append((cur, ch))
                    cur = nxt
    for t in ft.extra:
        vocab.setdefault(t, len(vocab))      # the chat markers not among the first four
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token=None, fuse_unk=False, byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(_QWEN2_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    return tok


def build_char_tokenizer(alphabet: str = DEFAULT_ALPHABET):
    """The Llama-family character tokenizer of the demo: <pad>=0, <s>=1, </s>=2, <unk>=3, then
    `alphabet` in order; no chat markers. Encoding prepends <s>."""
    return build_tokenizer(Family.LLAMA, kind=TokenizerKind.CHAR, alphabet=alphabet, chat=False)
