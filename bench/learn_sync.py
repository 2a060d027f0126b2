"""Synchronous single-process GRPO on verifiable arithmetic with the tiny policy.

    python bench/learn_sync.py --engine vllm --seed 0
    python bench/learn_sync.py --engine hf --seed 1 --steps 120 --json out.json

Each step: engine.generate -> reward -> PolicyTrainer.step -> engine.load_weights.
Prints per-step reward and the time split, then the reward delta (mean of the last 10
steps minus the first 10) and wall time. The defaults are the tuned settings: the
learning they show is what the distributed demo relies on.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

# Quiet vLLM's per-request INFO logs before it is imported; keep the repo importable
# when run as a script from a checkout.
os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from slurm_rl.rl.engines import make_engine  # noqa: E402
from slurm_rl.rl.grpo import Group, PolicyTrainer, Sample  # noqa: E402
from slurm_rl.rl.model import build_tiny_model, load_tokenizer  # noqa: E402
from slurm_rl.rl.task import encode_prompts, generate_arithmetic, reward  # noqa: E402


@dataclass
class StepRow:
    step: int
    reward: float
    generate_s: float
    train_s: float
    sync_s: float
    informative_groups: int
    clip_frac: float
    grad_norm: float
    completion_len: float


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--engine", choices=["vllm", "hf"], default="vllm")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=80)
    # task
    p.add_argument("--max-operand", type=int, default=9)
    p.add_argument("--max-answer", type=int, default=9, help="redraw pairs with a larger sum (-1: none)")
    p.add_argument("--modulo", type=int, default=0, help="ask (a+b)%%m (0: plain a+b)")
    # model
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--layers", type=int, default=1)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--kv-heads", type=int, default=2)
    # GRPO
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--group-size", type=int, default=16)
    p.add_argument("--prompts-per-step", type=int, default=32)
    p.add_argument("--max-tokens", type=int, default=2)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--clip-eps", type=float, default=0.2)
    p.add_argument("--clip-eps-high", type=float, default=None)
    p.add_argument("--kl-coef", type=float, default=0.0)
    p.add_argument("--max-grad-norm", type=float, default=10.0)
    p.add_argument("--no-std", action="store_true", help="advantages r - mean (no division by std)")
    # machine
    p.add_argument("--threads", type=int, default=1, help="torch threads for engine and trainer")
    p.add_argument("--multiprocess", action="store_true", help="vLLM in its default multi-process mode")
    p.add_argument("--json", type=Path, default=None, help="write a summary (and per-step rows) here")
    p.add_argument("--quiet", action="store_true", help="no per-step lines")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    a = parse_args(argv)
    import torch

    torch.set_num_threads(a.threads)
    t_all = time.perf_counter()
    tmp = tempfile.TemporaryDirectory(prefix="learn_sync-")  # the tiny model lives here
    workdir = Path(tmp.name)
    model_dir = build_tiny_model(
        workdir / "model", hidden=a.hidden, layers=a.layers, heads=a.heads, kv_heads=a.kv_heads, seed=a.seed
    )
    tok = load_tokenizer(model_dir)
    problems = generate_arithmetic(
        4096,
        seed=a.seed,
        max_operand=a.max_operand,
        max_answer=None if a.max_answer < 0 else a.max_answer,
        modulo=a.modulo or None,
    )
    prompt_ids = encode_prompts(tok, problems)

    t0 = time.perf_counter()
    opts = {"multiprocess": a.multiprocess} if a.engine == "vllm" else {}
    engine = make_engine(a.engine, model_dir, seed=a.seed, threads=a.threads, max_model_len=64, **opts)
    engine_start = time.perf_counter() - t0
    t0 = time.perf_counter()
    trainer = PolicyTrainer(
        model_dir,
        lr=a.lr,
        clip_eps=a.clip_eps,
        clip_eps_high=a.clip_eps_high,
        kl_coef=a.kl_coef,
        max_grad_norm=a.max_grad_norm,
        seed=a.seed,
        temperature=a.temperature,
        scale_adv_by_std=not a.no_std,
    )
    trainer_start = time.perf_counter() - t0
    # The first generate pays a one-off warm-up (2-3 s in vLLM); keep it out of the loop.
    t0 = time.perf_counter()
    engine.generate(prompt_ids[:1], n=1, max_tokens=a.max_tokens, temperature=a.temperature, seed=0)
    warmup = time.perf_counter() - t0
    print(
        f"engine={a.engine} seed={a.seed} start={engine_start:.2f}s trainer_start={trainer_start:.2f}s "
        f"warmup={warmup:.2f}s threads={torch.get_num_threads()}",
        flush=True,
    )

    rng = random.Random(a.seed)
    order = list(range(len(problems)))
    rows: list[StepRow] = []
    t_loop = time.perf_counter()
    for step in range(a.steps):
        idx = rng.sample(order, a.prompts_per_step)
        t0 = time.perf_counter()
        outs = engine.generate(
            [prompt_ids[i] for i in idx],
            n=a.group_size,
            max_tokens=a.max_tokens,
            temperature=a.temperature,
            seed=a.seed * 100_003 + step,
        )
        t1 = time.perf_counter()
        groups = [
            Group(
                problems[i].id,
                [
                    Sample(prompt_ids[i], c.token_ids, c.logprobs, reward(c.text, problems[i].answer), trainer.version)
                    for c in comps
                ],
            )
            for i, comps in zip(idx, outs)
        ]
        stats = trainer.step(groups)
        t2 = time.perf_counter()
        engine.load_weights(trainer.state_dict_for_sync(copy=False))
        t3 = time.perf_counter()
        row = StepRow(
            step=step,
            reward=stats.reward_mean,
            generate_s=t1 - t0,
            train_s=t2 - t1,
            sync_s=t3 - t2,
            informative_groups=stats.informative_groups,
            clip_frac=stats.clip_frac,
            grad_norm=stats.grad_norm,
            completion_len=stats.completion_len_mean,
        )
        rows.append(row)
        if not a.quiet:
            print(
                f"step {step:4d} reward {row.reward:.3f} informative {row.informative_groups:2d}/{len(groups)} "
                f"len {row.completion_len:.2f} clip {row.clip_frac:.3f} gnorm {row.grad_norm:.2f} "
                f"gen {row.generate_s * 1e3:.0f}ms train {row.train_s * 1e3:.0f}ms sync {row.sync_s * 1e3:.0f}ms",
                flush=True,
            )
    loop_s = time.perf_counter() - t_loop
    engine.close()
    tmp.cleanup()

    k = min(10, len(rows))
    first = statistics.mean(r.reward for r in rows[:k])
    last = statistics.mean(r.reward for r in rows[-k:])
    summary = {
        "engine": a.engine,
        "seed": a.seed,
        "steps": a.steps,
        "first10": first,
        "last10": last,
        "delta": last - first,
        "loop_s": loop_s,
        "s_per_step": loop_s / max(1, len(rows)),
        "generate_s": statistics.mean(r.generate_s for r in rows),
        "train_s": statistics.mean(r.train_s for r in rows),
        "sync_s": statistics.mean(r.sync_s for r in rows),
        "engine_start_s": engine_start,
        "warmup_s": warmup,
        "total_s": time.perf_counter() - t_all,
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(a).items()},
    }
    print(
        f"RESULT engine={a.engine} seed={a.seed} first10={first:.3f} last10={last:.3f} delta={last - first:+.3f} "
        f"loop={loop_s:.1f}s ({summary['s_per_step'] * 1e3:.0f} ms/step: gen {summary['generate_s'] * 1e3:.0f} "
        f"train {summary['train_s'] * 1e3:.0f} sync {summary['sync_s'] * 1e3:.0f}) total={summary['total_s']:.1f}s",
        flush=True,
    )
    if a.json:
        a.json.write_text(json.dumps({**summary, "rows": [asdict(r) for r in rows]}, indent=1))
    return summary


if __name__ == "__main__":
    main()
