"""GRPO maths on hand-computed cases, and the PolicyTrainer's behaviour."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from slurm_rl.rl.grpo import (
    Group,
    LossAggregation,
    PolicyTrainer,
    Sample,
    clipped_surrogate,
    group_advantages,
    grpo_loss,
    kl_k3,
    masked_aggregate,
    token_logprobs,
)
from slurm_rl.rl.model import load_tokenizer

LN = math.log


# --------------------------------------------------------------------------- advantages
def test_advantages_hand_computed() -> None:
    # mean 0.25; sample std sqrt((0.75^2 + 3 * 0.25^2) / 3) = 0.5
    assert group_advantages([1, 0, 0, 0]) == pytest.approx([1.5, -0.5, -0.5, -0.5], abs=1e-5)
    assert group_advantages([1, 0, 0, 0], scale_by_std=False) == pytest.approx([0.75, -0.25, -0.25, -0.25])
    assert group_advantages([1, 0]) == pytest.approx([1 / math.sqrt(2), -1 / math.sqrt(2)], abs=1e-5)
    assert group_advantages([0.5, 0.5, 0.5]) == [0.0, 0.0, 0.0]  # nothing to prefer
    assert group_advantages([1.0]) == [0.0]
    assert sum(group_advantages([0.3, 0.9, 0.1, 0.7])) == pytest.approx(0.0, abs=1e-9)


# --------------------------------------------------------------------------- clipped surrogate
# (ratio, advantage) -> (loss, clipped, d loss / d logp), eps = 0.2
CASES = [
    (1.1, 2.0, -2.2, False, -2.2),  # inside the range: plain -ratio * A
    (1.5, 1.0, -1.2, True, 0.0),  # A>0 and ratio above 1+eps: capped, no gradient
    (1.5, -1.0, 1.5, False, 1.5),  # A<0 and ratio above: the min keeps the unclipped term
    (0.5, 1.0, -0.5, False, -0.5),  # A>0 and ratio below: unclipped (pessimistic) term
    (0.5, -1.0, 0.8, True, 0.0),  # A<0 and ratio below 1-eps: capped, no gradient
    (0.9, -1.0, 0.9, False, 0.9),
]


@pytest.mark.parametrize(("ratio", "adv", "loss", "clipped", "grad"), CASES)
def test_clipped_surrogate_hand_computed(ratio: float, adv: float, loss: float, clipped: bool, grad: float) -> None:
    old = torch.tensor([LN(0.4)])
    logp = (old + LN(ratio)).clone().requires_grad_(True)
    out, was_clipped = clipped_surrogate(logp, old, torch.tensor([adv]), clip_eps=0.2)
    assert float(out.detach()) == pytest.approx(loss, abs=1e-6)
    assert bool(was_clipped) is clipped
    out.sum().backward()
    assert float(logp.grad) == pytest.approx(grad, abs=1e-6)


def test_asymmetric_clip_higher() -> None:
    old = torch.tensor([0.0])
    logp = torch.tensor([LN(1.25)])
    sym, c1 = clipped_surrogate(logp, old, torch.tensor([1.0]), clip_eps=0.2)
    high, c2 = clipped_surrogate(logp, old, torch.tensor([1.0]), clip_eps=0.2, clip_eps_high=0.28)
    assert (float(sym), bool(c1)) == (pytest.approx(-1.2), True)
    assert (float(high), bool(c2)) == (pytest.approx(-1.25), False)


# --------------------------------------------------------------------------- KL, masking, aggregation
def test_kl_k3_hand_computed() -> None:
    # d = ref - logp; k3 = e^d - d - 1
    assert float(kl_k3(torch.tensor(LN(0.5)), torch.tensor(LN(0.25)))) == pytest.approx(0.5 + LN(2) - 1)
    assert float(kl_k3(torch.tensor(LN(0.25)), torch.tensor(LN(0.5)))) == pytest.approx(2 - LN(2) - 1)
    assert float(kl_k3(torch.tensor(-1.3), torch.tensor(-1.3))) == 0.0


def test_masked_aggregate_hand_computed() -> None:
    v = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    m = torch.tensor([[1, 1, 0], [1, 0, 0]])
    assert float(masked_aggregate(v, m, LossAggregation.TOKEN_MEAN)) == pytest.approx(7 / 3)
    assert float(masked_aggregate(v, m, LossAggregation.SEQ_MEAN)) == pytest.approx((1.5 + 4) / 2)
    assert float(masked_aggregate(v, m, LossAggregation.TOKEN_MEAN, denom=7.0)) == pytest.approx(1.0)


def test_loss_masks_prompt_and_padding_even_when_junk() -> None:
    # token 1: ratio 1 -> -1; token 2: ratio 2 > 1.2 -> clipped, -1.2; token 3 is padding.
    logp = torch.tensor([[LN(0.5), LN(0.5), float("-inf")]], requires_grad=True)
    old = torch.tensor([[LN(0.5), LN(0.25), float("nan")]])
    ref = torch.tensor([[LN(0.25), LN(0.5), float("nan")]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    t = grpo_loss(logp, old, torch.tensor([1.0]), mask, clip_eps=0.2)
    assert float(t.loss.detach()) == pytest.approx(-1.1)
    assert float(t.clip_tokens) == 1.0
    t = grpo_loss(logp, old, torch.tensor([1.0]), mask, clip_eps=0.2, kl_coef=0.1, ref_logp=ref)
    kl = (0.5 + LN(2) - 1 + 0.0) / 2
    assert float(t.kl.detach()) == pytest.approx(kl)
    assert float(t.loss.detach()) == pytest.approx(-1.1 + 0.1 * kl)
    t.loss.backward()
    # token 1: (-A * ratio + kl_coef * (1 - e^d)) / 2 tokens; token 2: clipped and at the
    # reference (k3 has zero slope at d = 0); padding: nothing, and no NaN from its junk.
    assert logp.grad[0].tolist() == pytest.approx([(-1 + 0.1 * (1 - 0.5)) / 2, 0.0, 0.0])


def test_token_logprobs_temperature() -> None:
    logits = torch.tensor([[[2.0, 0.0, -1.0]]])
    tgt = torch.tensor([[0]])
    assert float(token_logprobs(logits, tgt, 2.0)) == pytest.approx(float(torch.log_softmax(logits / 2, -1)[0, 0, 0]))


# --------------------------------------------------------------------------- trainer
def _on_policy(trainer: PolicyTrainer, prompt: list[int], completion: list[int], reward: float) -> Sample:
    lp = trainer.logprobs(prompt + completion)[len(prompt) - 1 :]
    return Sample(prompt, completion, lp, reward, trainer.version)


def _ids(tiny_model: Path, text: str) -> tuple[list[int], list[int]]:
    tok = load_tokenizer(tiny_model)
    return tok("3+4=")["input_ids"], [*tok(text)["input_ids"][1:], tok.eos_token_id]


def test_gradient_moves_probability_toward_rewarded_completion(tiny_model: Path) -> None:
    tr = PolicyTrainer(tiny_model, lr=1e-2, clip_eps=0.2, kl_coef=0.0, max_grad_norm=1.0)
    prompt, good = _ids(tiny_model, "7")
    _, bad = _ids(tiny_model, "2")

    def seq_lp(c: list[int]) -> float:
        return sum(tr.logprobs(prompt + c)[len(prompt) - 1 :])

    before = seq_lp(good), seq_lp(bad)
    g = Group("p", [_on_policy(tr, prompt, good, 1.0), _on_policy(tr, prompt, bad, 0.0)])
    stats = tr.step([g])
    assert seq_lp(good) > before[0] and seq_lp(bad) < before[1]
    assert stats.version == tr.version == 1
    assert stats.informative_groups == 1 and stats.tokens == 4 and stats.sequences == 2
    assert stats.clip_frac == 0.0 and stats.ratio_mean == pytest.approx(1.0, abs=1e-5)
    assert stats.logp_diff_max < 1e-5  # trainer agrees with itself
    assert stats.reward_mean == 0.5 and stats.grad_norm > 0


def test_uninformative_groups_leave_weights_alone(tiny_model: Path) -> None:
    tr = PolicyTrainer(tiny_model, lr=1e-2, clip_eps=0.2, kl_coef=0.0, max_grad_norm=1.0)
    prompt, c = _ids(tiny_model, "7")
    before = tr.state_dict_for_sync()
    stats = tr.step([Group("p", [_on_policy(tr, prompt, c, 1.0), _on_policy(tr, prompt, c, 1.0)])])
    assert stats.skipped and stats.informative_groups == 0 and stats.tokens == 0
    assert tr.version == 1
    after = tr.state_dict_for_sync()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_micro_batching_gives_the_full_batch_step(tiny_model: Path) -> None:
    prompt, a = _ids(tiny_model, "7")
    _, b = _ids(tiny_model, "12")
    results = []
    for mbs in (1, 256):
        for agg in ("token_mean", "seq_mean"):
            tr = PolicyTrainer(
                tiny_model, lr=1e-2, clip_eps=0.2, kl_coef=0.0, max_grad_norm=100.0, micro_batch_size=mbs, loss_agg=agg
            )
            g = Group("p", [_on_policy(tr, prompt, a, 1.0), _on_policy(tr, prompt, b, 0.0), _on_policy(tr, prompt, a, 0.0)])
            s = tr.step([g])
            results.append((agg, s.loss, s.grad_norm))
    # Same loss and same gradient (norm before clipping). Weights are not compared: Adam's
    # first step is ~lr * sign(g), so float noise in a ~0 gradient flips whole updates.
    for agg in ("token_mean", "seq_mean"):
        (_, l1, g1), (_, l2, g2) = [r for r in results if r[0] == agg]
        assert l1 == pytest.approx(l2, abs=1e-6)
        assert g1 == pytest.approx(g2, rel=1e-5) and g1 > 0


def test_staleness_is_trainer_version_minus_sample_version(tiny_model: Path) -> None:
    tr = PolicyTrainer(tiny_model, lr=1e-3, clip_eps=0.2, kl_coef=0.0, max_grad_norm=1.0)
    tr.version = 5
    prompt, c = _ids(tiny_model, "7")
    s1, s2 = _on_policy(tr, prompt, c, 1.0), _on_policy(tr, prompt, c, 0.0)
    s1.version, s2.version = 2, 5
    stats = tr.step([Group("p", [s1, s2])])
    assert (stats.staleness_mean, stats.staleness_max, stats.version) == (1.5, 3, 6)


def test_sync_state_dict_and_load_weights(tiny_model: Path) -> None:
    from safetensors import safe_open

    tr = PolicyTrainer(tiny_model, lr=1e-2, clip_eps=0.2, kl_coef=0.0, max_grad_norm=1.0)
    sd0 = tr.state_dict_for_sync()
    with safe_open(str(tiny_model / "model.safetensors"), framework="pt") as f:
        assert set(sd0) == set(f.keys())  # HF checkpoint names: what vLLM's reload reads
    assert all(t.device.type == "cpu" and t.is_contiguous() for t in sd0.values())
    prompt, good = _ids(tiny_model, "7")
    _, bad = _ids(tiny_model, "2")
    lp0 = tr.logprobs(prompt + good)
    tr.step([Group("p", [_on_policy(tr, prompt, good, 1.0), _on_policy(tr, prompt, bad, 0.0)])])
    assert tr.logprobs(prompt + good) != lp0
    assert not torch.equal(sd0["lm_head.weight"], tr.state_dict_for_sync()["lm_head.weight"])  # a snapshot
    tr.load_weights(sd0)
    assert tr.logprobs(prompt + good) == pytest.approx(lp0, abs=1e-7)
    with pytest.raises(ValueError, match="missing"):
        tr.load_weights({k: v for k, v in sd0.items() if k != "lm_head.weight"})


def test_optimizer_state_resumes_the_same_trajectory(tiny_model: Path) -> None:
    prompt, good = _ids(tiny_model, "7")
    _, bad = _ids(tiny_model, "2")

    def step(tr: PolicyTrainer) -> None:
        tr.step([Group("p", [_on_policy(tr, prompt, good, 1.0), _on_policy(tr, prompt, bad, 0.0)])])

    a = PolicyTrainer(tiny_model, lr=1e-2, clip_eps=0.2, kl_coef=0.0, max_grad_norm=1.0)
    step(a)
    step(a)
    b = PolicyTrainer(tiny_model, lr=1e-2, clip_eps=0.2, kl_coef=0.0, max_grad_norm=1.0)
    b.load_weights(a.state_dict_for_sync())
    b.load_optimizer_state(a.optimizer_state())
    assert b.version == 2
    step(a)
    step(b)
    wa, wb = a.state_dict_for_sync(), b.state_dict_for_sync()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_kl_reference_model_only_when_asked(tiny_model: Path) -> None:
    assert PolicyTrainer(tiny_model, lr=1e-2, clip_eps=0.2, kl_coef=0.0, max_grad_norm=1.0).ref_model is None
    tr = PolicyTrainer(tiny_model, lr=5e-2, clip_eps=0.2, kl_coef=0.5, max_grad_norm=1.0)
    assert tr.ref_model is not None
    prompt, good = _ids(tiny_model, "7")
    _, bad = _ids(tiny_model, "2")
    kls = []
    for _ in range(3):
        s = tr.step([Group("p", [_on_policy(tr, prompt, good, 1.0), _on_policy(tr, prompt, bad, 0.0)])])
        kls.append(s.kl)
    assert kls[0] == pytest.approx(0.0, abs=1e-7)  # policy == reference before the first update
    assert kls[2] > 0.0


def test_trainer_temperature_matches_tempered_softmax(tiny_model: Path) -> None:
    t1 = PolicyTrainer(tiny_model, lr=1e-3, clip_eps=0.2, kl_coef=0.0, max_grad_norm=1.0)
    t2 = PolicyTrainer(tiny_model, lr=1e-3, clip_eps=0.2, kl_coef=0.0, max_grad_norm=1.0, temperature=2.0)
    ids = load_tokenizer(tiny_model)("3+4=7")["input_ids"]
    with torch.no_grad():
        logits = t1.model(input_ids=torch.tensor([ids])).logits[0, :-1]
    expect = torch.log_softmax(logits / 2, -1).gather(-1, torch.tensor(ids[1:])[:, None]).squeeze(-1)
    assert t2.logprobs(ids) == pytest.approx(expect.tolist(), abs=1e-6)
    assert t1.logprobs(ids) != pytest.approx(t2.logprobs(ids), abs=1e-3)


def test_bad_samples_are_rejected(tiny_model: Path) -> None:
    tr = PolicyTrainer(tiny_model, lr=1e-3, clip_eps=0.2, kl_coef=0.0, max_grad_norm=1.0)
    with pytest.raises(ValueError, match="logprobs"):
        tr.step([Group("p", [Sample([1, 5], [6, 2], [-1.0], 1.0, 0), Sample([1, 5], [6], [-1.0], 0.0, 0)])])
