"""Chunked log-probabilities: the naive values and gradients, without the [batch, length, vocab] tensor."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from slurm_rl.rl.grpo import PolicyTrainer, load_policy_model
from slurm_rl.rl.logprobs import (
    forward_hidden,
    head_logprobs,
    sequence_logprobs,
    token_logprobs,
)
from slurm_rl.rl.model import build_tiny_model


class LargestTensor(TorchDispatchMode):
    """Records the largest tensor any op makes (forward and backward): an allocator-free upper
    bound on what one step of a computation needs at once."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0
        self.shape: tuple[int, ...] = ()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                n = t.numel() * t.element_size()
                if n > self.largest:
                    self.largest, self.shape = n, tuple(t.shape)
        return out


@pytest.fixture(scope="module", params=[False, True], ids=["untied", "tied"])
def model(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> torch.nn.Module:
    d = build_tiny_model(tmp_path_factory.mktemp("lp") / "m", seed=1, tie_word_embeddings=request.param,
                         max_position_embeddings=512)
    return load_policy_model(d, device=torch.device("cpu"))


def _batch(b: int = 3, length: int = 50, vocab: int = 21, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, vocab, (b, length), generator=g)
    attn = torch.ones_like(ids)
    attn[1, length - 12 :] = 0                      # a right-padded row
    mask = torch.zeros(b, length - 1)
    mask[:, 10:30] = 1
    mask[1, 30:] = 0
    mask[2, 5:45] = 1
    return ids, attn, ids[:, 1:], mask


def _naive(model: torch.nn.Module, ids, attn, targets, temperature: float) -> torch.Tensor:
    return token_logprobs(model(input_ids=ids, attention_mask=attn).logits[:, :-1], targets, temperature)


@pytest.mark.parametrize("chunk", [1, 7, 64, 10_000])
@pytest.mark.parametrize("temperature", [1.0, 0.6])
def test_chunked_logprobs_equal_the_naive_ones(model: torch.nn.Module, chunk: int, temperature: float) -> None:
    ids, attn, tg, mask = _batch()
    with torch.no_grad():
        want = _naive(model, ids, attn, tg, temperature)
        got = sequence_logprobs(model, ids, attn, tg, mask, temperature=temperature, chunk_tokens=chunk)
        every = sequence_logprobs(model, ids, attn, tg, None, temperature=temperature, chunk_tokens=chunk)
    assert got.dtype == torch.float32 and got.shape == want.shape
    assert torch.allclose(got, want * mask, atol=1e-5)
    assert (got[mask == 0] == 0).all()               # not computed at all
    assert torch.allclose(every, want, atol=1e-5)


def test_chunked_gradients_equal_the_naive_ones(model: torch.nn.Module) -> None:
    ids, attn, tg, mask = _batch()
    weights = torch.linspace(-1, 2, mask.numel()).reshape(mask.shape) * mask   # a loss that weighs tokens

    def grads(fn) -> dict[str, torch.Tensor]:
        model.zero_grad(set_to_none=True)
        (fn() * weights).sum().backward()
        return {n: p.grad.clone() for n, p in model.named_parameters()}

    want = grads(lambda: _naive(model, ids, attn, tg, 0.8))
    got = grads(lambda: sequence_logprobs(model, ids, attn, tg, mask, temperature=0.8, chunk_tokens=9))
    model.zero_grad(set_to_none=True)
    assert set(got) == set(want)
    scale = max(float(g.abs().max()) for g in want.values())
    assert scale > 0
    for n in want:
        assert torch.allclose(got[n], want[n], atol=1e-5 * scale, rtol=1e-4), n


def test_chunked_path_never_makes_a_batch_by_vocab_tensor(tmp_path: Path) -> None:
    # A vocabulary much larger than the hidden size, as in real models (152k vs 4k): here 4096 vs 64.
    d = build_tiny_model(tmp_path / "wide", hidden=64, heads=2, kv_heads=1, seed=0, max_position_embeddings=1024,
                         alphabet="0123456789" + "".join(chr(0x4E00 + i) for i in range(4082)))
    m = load_policy_model(d, device=torch.device("cpu"))
    vocab = m.get_output_embeddings().weight.shape[0]
    b, length, chunk = 2, 512, 64
    ids = torch.randint(4, vocab, (b, length), generator=torch.Generator().manual_seed(0))
    tg, mask = ids[:, 1:], torch.ones(b, length - 1)
    full = b * (length - 1) * vocab * 4              # the fp32 [B, L, V] tensor

    naive, chunked, body = LargestTensor(), LargestTensor(), LargestTensor()
    with body:                                       # the model without its head (attention scores, MLP)
        forward_hidden(m, ids, None).sum().backward()
    m.zero_grad(set_to_none=True)
    with naive:
        _naive(m, ids, None, tg, 1.0).sum().backward()
    m.zero_grad(set_to_none=True)
    with chunked:
        sequence_logprobs(m, ids, None, tg, mask, chunk_tokens=chunk).sum().backward()
    m.zero_grad(set_to_none=True)
    assert naive.largest >= full                     # the naive path does hold [B, L, V] in fp32
    # the chunked one: one chunk's logits, the lm_head weight's gradient, or what the body makes anyway
    bound = max(chunk * vocab * 4, vocab * 64 * 4, body.largest)
    assert chunked.largest <= bound, (chunked.shape, chunked.largest, bound)
    assert chunked.largest * 8 <= naive.largest


def test_head_logprobs_edge_cases(model: torch.nn.Module) -> None:
    head = model.get_output_embeddings()
    h = torch.randn(0, head.weight.shape[1])
    assert head_logprobs(head, h, torch.zeros(0, dtype=torch.long)).shape == (0,)
    with pytest.raises(ValueError, match="chunk_tokens"):
        head_logprobs(head, torch.randn(2, head.weight.shape[1]), torch.zeros(2, dtype=torch.long), chunk_tokens=0)


def test_forward_hidden_is_the_models_final_hidden_state(model: torch.nn.Module) -> None:
    ids, attn, _, _ = _batch()
    with torch.no_grad():
        h = forward_hidden(model, ids, attn)
        out = model(input_ids=ids, attention_mask=attn, output_hidden_states=True)
    assert torch.equal(h, out.hidden_states[-1])
    assert torch.allclose(model.get_output_embeddings()(h), out.logits, atol=1e-6)


def test_trainer_takes_the_chunked_path_and_agrees_with_full_logits(tiny_model: Path) -> None:
    tr = PolicyTrainer(tiny_model, lr=1e-3, logprob_chunk_tokens=3)
    assert tr.chunked
    ids = list(range(4, 20))
    with torch.no_grad():
        logits = tr.model(input_ids=torch.tensor([ids])).logits[0, :-1]
    want = torch.log_softmax(logits, -1).gather(-1, torch.tensor(ids[1:])[:, None]).squeeze(-1)
    assert tr.logprobs(ids) == pytest.approx(want.tolist(), abs=1e-6)
