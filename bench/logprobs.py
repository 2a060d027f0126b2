"""Chunked against naive log-probabilities: peak memory and time of a forward + backward, long sequences.

    python bench/logprobs.py                              # 1k and 4k tokens, vocab 32k, median of 3
    python bench/logprobs.py --tokens 8192 --vocab 151936 --chunk 1024
    python bench/logprobs.py --json > bench/results/logprobs.json

Each measurement runs in a fresh process: a random Llama (hidden 256, 2 layers by default) is built
in memory, then one teacher-forced forward + backward of the summed token logprobs is taken, either
naively (full logits, log_softmax, gather: slurm_rl.rl.logprobs.token_logprobs) or chunked
(slurm_rl.rl.logprobs.sequence_logprobs). Peak memory is the process's peak RSS (ru_maxrss) minus
its RSS just before the step; time is the wall time of the step, median of --repeat steps (the
memory of the first). CPU, float32, the threads torch picks.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def _measure(kind: str, tokens: int, vocab: int, hidden: int, layers: int, chunk: int, repeat: int, q: mp.Queue) -> None:
    import gc

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from slurm_rl.rl.logprobs import forward_hidden, sequence_logprobs, token_logprobs

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                      num_attention_heads=hidden // 64, num_key_value_heads=hidden // 64, head_dim=64,
                      max_position_embeddings=tokens + 1, attn_implementation="sdpa")
    model = LlamaForCausalLM(cfg).train()
    ids = torch.randint(0, vocab, (1, tokens))
    mask = torch.ones(1, tokens - 1)

    def step() -> float:
        t0 = time.perf_counter()
        if kind == "naive":
            lp = token_logprobs(model(input_ids=ids).logits[:, :-1], ids[:, 1:])
        elif kind == "body":                     # the model up to its final hidden state: what both share
            lp = forward_hidden(model, ids)
        else:
            lp = sequence_logprobs(model, ids, None, ids[:, 1:], mask, chunk_tokens=chunk)
        lp.sum().backward()
        model.zero_grad(set_to_none=False)       # keep the gradient buffers: they are not what is compared
        return time.perf_counter() - t0

    model.zero_grad(set_to_none=False)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    gc.collect()
    before = _rss_bytes()
    times = [step()]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
    times += [step() for _ in range(repeat - 1)]
    q.put({"kind": kind, "peak_bytes": peak, "seconds": statistics.median(times)})


def run_one(kind: str, **kw: int) -> dict[str, float]:
    ctx = mp.get_context("spawn")
    q: mp.Queue = ctx.Queue()
    p = ctx.Process(target=_measure, args=(kind, kw["tokens"], kw["vocab"], kw["hidden"], kw["layers"], kw["chunk"],
                                           kw["repeat"], q))
    p.start()
    out = q.get(timeout=3600)
    p.join()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tokens", type=int, nargs="+", default=[1024, 4096])
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--chunk", type=int, default=1024)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    rows = []
    for n in a.tokens:
        kw = dict(tokens=n, vocab=a.vocab, hidden=a.hidden, layers=a.layers, chunk=a.chunk, repeat=a.repeat)
        body, naive, chunked = run_one("body", **kw), run_one("naive", **kw), run_one("chunked", **kw)
        rows.append({"tokens": n, "vocab": a.vocab, "chunk": a.chunk, "logits_fp32_mb": n * a.vocab * 4 / 1e6,
                     "body_peak_mb": body["peak_bytes"] / 1e6, "body_s": body["seconds"],
                     "naive_peak_mb": naive["peak_bytes"] / 1e6, "chunked_peak_mb": chunked["peak_bytes"] / 1e6,
                     "peak_ratio": chunked["peak_bytes"] / naive["peak_bytes"],
                     "naive_s": naive["seconds"], "chunked_s": chunked["seconds"],
                     "time_ratio": chunked["seconds"] / naive["seconds"]})
    if a.json:
        print(json.dumps({"hidden": a.hidden, "layers": a.layers, "rows": rows}, indent=2))
        return
    print(f"forward + backward of token logprobs, random Llama hidden {a.hidden} x {a.layers} layers, fp32 CPU")
    print("(body: the model without its head, the part both paths share)")
    print(f"{'tokens':>7} {'vocab':>7} {'[L,V] fp32':>11} {'body peak':>10} {'naive peak':>11} {'chunked peak':>13} "
          f"{'ratio':>6} {'body s':>7} {'naive s':>8} {'chunked s':>10} {'ratio':>6}")
    for r in rows:
        print(f"{r['tokens']:>7} {r['vocab']:>7} {r['logits_fp32_mb']:>8.0f} MB {r['body_peak_mb']:>7.0f} MB "
              f"{r['naive_peak_mb']:>8.0f} MB "
              f"{r['chunked_peak_mb']:>10.0f} MB {r['peak_ratio']:>6.2f} {r['body_s']:>7.2f} {r['naive_s']:>8.2f} "
              f"{r['chunked_s']:>10.2f} "
              f"{r['time_ratio']:>6.2f}")


if __name__ == "__main__":
    main()
