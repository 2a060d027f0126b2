"""Progress inside long calls: a generate of many tokens and a trainer step of many micro-batches move
the heartbeat's progress counter while they run, so the phase timeouts never kill them."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file, save_file

from slurm_rl import protocol as P
from slurm_rl.config import RunConfig
from slurm_rl.rl.dist import RankInfo
from slurm_rl.rl.engine import Engine
from slurm_rl.rl.engines import make_engine
from slurm_rl.rl.grpo import Group, PolicyTrainer, Sample
from slurm_rl.rl.model import build_tiny_model, load_tokenizer
from slurm_rl.roles.runtime import RoleRuntime
from slurm_rl.states import Phase

MAX_TOKENS = 600


def never_eos(model_dir: Path) -> Path:
    """Make the tiny Llama unable to say EOS, so every completion runs to max_tokens.

    The residual stream's dimension 0 is set to 1 for every token (embedding column 0) and no layer
    writes to it (o_proj and down_proj row 0 zeroed); the final norm keeps only that dimension, so
    the final hidden state is c * e_0 with c > 0 everywhere, and the lm_head gives EOS -1000 * c and
    every other token 0: uniform sampling among the non-EOS tokens."""
    path = model_dir / "model.safetensors"
    sd = load_file(str(path))
    sd["model.embed_tokens.weight"][:, 0] = 1.0
    for k in sd:
        if k.endswith(("self_attn.o_proj.weight", "mlp.down_proj.weight")):
            sd[k][0, :] = 0.0
    norm = torch.zeros_like(sd["model.norm.weight"])
    norm[0] = 1.0
    sd["model.norm.weight"] = norm
    head = torch.zeros_like(sd["lm_head.weight"])
    head[load_tokenizer(model_dir).eos_token_id, 0] = -1000.0
    sd["lm_head.weight"] = head
    save_file(sd, str(path), metadata={"format": "pt"})
    return model_dir


@pytest.fixture(scope="module")
def long_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return never_eos(build_tiny_model(tmp_path_factory.mktemp("long") / "m", layers=1, seed=0,
                                      max_position_embeddings=1024))


@pytest.fixture(scope="module", params=[pytest.param("hf"), pytest.param("vllm", marks=pytest.mark.vllm)])
def engine(request: pytest.FixtureRequest, long_model: Path) -> Iterator[Engine]:
    eng = make_engine(request.param, long_model, seed=0, max_model_len=1024, threads=1)
    eng.generate([[1, 5]], n=1, max_tokens=2, temperature=1.0, seed=0)   # vLLM's first call warms up for ~2 s
    yield eng
    eng.close()


def bare_runtime(interval: float = 0.02) -> tuple[RoleRuntime, list[P.Heartbeat]]:
    """A RoleRuntime with its real heartbeat thread and a recording stand-in for the controller."""
    rt = RoleRuntime.__new__(RoleRuntime)
    rt.cfg = RunConfig.model_validate({"recovery": {"heartbeat_interval_s": interval,
                                                    "suspect_after_s": max(1.0, 2 * interval),
                                                    "hang_after_s": max(10.0, 3 * interval),
                                                    "hang_idle_after_s": max(5.0, 3 * interval)}})
    rt._ident = P.Ident(kind="rollout", index=0, incarnation=1)
    rt.rank = RankInfo()
    rt._lock = threading.Lock()
    rt._progress_lock = threading.Lock()
    rt.phase, rt.detail, rt.progress, rt._partial = Phase.GENERATING, "", 0, 0
    rt.held, rt.held_version, rt.held_wepoch, rt.held_parts, rt.newest = None, 0, 0, 1, None
    rt.addrs, rt.liveness = {}, SimpleNamespace(address="")
    rt.commands = __import__("queue").SimpleQueue()
    beats: list[P.Heartbeat] = []

    class Controller:
        def request(self, msg: P.Heartbeat, **kw: object) -> P.Reply:
            beats.append(msg)
            return P.Reply()

    rt._hb_client = Controller()
    rt._stop = threading.Event()
    rt._hb = threading.Thread(target=rt._hb_loop, daemon=True)
    rt._hb.start()
    return rt, beats


def _prompts(model: Path) -> list[list[int]]:
    tok = load_tokenizer(model)
    return [tok(t)["input_ids"] for t in ("3+4=", "1+1=", "9*9=", "(2-5)=")]


def test_generate_reports_tokens_while_it_runs(engine: Engine, long_model: Path) -> None:
    calls: list[tuple[float, int]] = []
    t0 = time.monotonic()
    out = engine.generate(_prompts(long_model), n=2, max_tokens=MAX_TOKENS, temperature=1.0, seed=0,
                          progress=lambda k: calls.append((time.monotonic(), k)))
    t1 = time.monotonic()
    total = sum(len(c.token_ids) for comps in out for c in comps)
    assert total == 4 * 2 * MAX_TOKENS and all(c.finish_reason == "length" for comps in out for c in comps)
    assert sum(k for _, k in calls) == total and all(k > 0 for _, k in calls)
    assert len(calls) >= MAX_TOKENS // 2               # about one report per decoding step
    assert calls[0][0] - t0 < 0.3 * (t1 - t0)          # the first tokens are reported early in the call
    # half of the tokens were reported by the middle of the call: progress is spread over it
    half = next(t for i, (t, _) in enumerate(calls) if sum(k for _, k in calls[: i + 1]) >= total / 2)
    assert half - t0 < 0.8 * (t1 - t0)

    # counting does not change what is sampled: the same seed gives the same completions without it
    prompts = _prompts(long_model)
    a = engine.generate(prompts, n=2, max_tokens=40, temperature=1.0, seed=5, progress=lambda k: None)
    b = engine.generate(prompts, n=2, max_tokens=40, temperature=1.0, seed=5)
    assert [[c.token_ids for c in comps] for comps in a] == [[c.token_ids for c in comps] for comps in b]
    assert [[c.logprobs for c in comps] for comps in a] == [[c.logprobs for c in comps] for comps in b]


def test_heartbeats_carry_progress_during_a_generate(engine: Engine, long_model: Path) -> None:
    rt, beats = bare_runtime()
    try:
        engine.on_progress = rt.advance
        out = engine.generate(_prompts(long_model), n=2, max_tokens=MAX_TOKENS, temperature=1.0, seed=1)
        during = [b.progress for b in beats]
        tokens = sum(len(c.token_ids) for comps in out for c in comps)
        rt.bump(tokens)                                 # what the rollout loop does after the call
        assert rt.progress_now == tokens                # not counted twice
    finally:
        engine.on_progress = None
        rt._stop.set()
        rt._hb.join(2)
    moving = sorted(set(during) - {0})
    assert len(moving) >= 3, during                     # several heartbeats inside the call saw it move
    assert during == sorted(during)                     # never backwards
    assert max(during) <= tokens


def test_trainer_step_moves_progress_per_micro_batch(tiny_model: Path) -> None:
    rt, _ = bare_runtime()
    try:
        tr = PolicyTrainer(tiny_model, lr=1e-2, micro_batch_size=1)
        tok = load_tokenizer(tiny_model)
        prompt = tok("3+4=")["input_ids"]
        comps = [[10, 2], [6, 2], [10, 11, 2], [7, 7, 2], [12, 2]]
        g = Group("p", [Sample(prompt, c, tr.logprobs(prompt + c)[len(prompt) - 1 :], float(i % 2), 0)
                        for i, c in enumerate(comps)])
        seen: list[int] = []

        def progress(n: int) -> None:
            rt.advance(n)
            seen.append(rt.progress_now)

        stats = tr.step([g], progress=progress)
        assert stats.micro_batches == 5
        assert seen == [1, 2, 3, 4, 5, 6]               # each micro-batch, then the optimizer step
        rt.bump()
        assert rt.progress_now == 6
    finally:
        rt._stop.set()
        rt._hb.join(2)


def test_bump_and_advance_arithmetic() -> None:
    rt, _ = bare_runtime(interval=10.0)
    try:
        rt.bump(5)
        rt.advance(3)
        assert (rt.progress, rt.progress_now) == (5, 8)
        rt.bump(10)                                      # the call's own count wins when it is larger
        assert rt.progress_now == 15
        rt.advance(7)
        rt.bump(1)                                       # ... and the reported progress when that is
        assert rt.progress_now == 22
    finally:
        rt._stop.set()
