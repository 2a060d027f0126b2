"""The steps of scripts/gpu_check.py: each a function `fn(ctx, fig)` that fills `fig` with figures
and raises on a failed check (`Check`), or `Skip` when it cannot apply here.

Steps run on `ctx.device` ("cuda", or "cpu" for a rehearsal with small sizes). They use the
project's own code paths: the engine registry, WeightSet/WeightServer/pull, `slurm-rl launch`.
"""

from __future__ import annotations

import enum
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any


class Status(str, enum.Enum):
    OK = "ok"
    FAILED = "failed"
    SKIPPED = "skipped"


class Skip(Exception):
    """The step does not apply here (the reason is recorded)."""


class Check(AssertionError):
    """A check of the step did not hold."""


def check(cond: bool, what: str) -> None:
    if not cond:
        raise Check(what)


@dataclass
class Ctx:
    device: str = "cuda"
    rehearsal: bool = False
    work: str = "/tmp/slurm-rl-gpu-check"
    repo: str = "."
    pretend_cuda: bool = False
    partial_path: str = ""

    def to_arg(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_arg(cls, text: str) -> Ctx:
        return cls(**json.loads(text))

    def size(self, gpu: int, cpu: int) -> int:
        return cpu if self.rehearsal else gpu

    def dir(self, name: str) -> Path:
        p = Path(self.work) / name
        p.mkdir(parents=True, exist_ok=True)
        return p


def save_partial(ctx: Ctx, fig: dict[str, Any]) -> None:
    """What a step measured so far, for a step killed by its time limit."""
    if ctx.partial_path:
        Path(ctx.partial_path).write_text(json.dumps(jsonable(fig)))


def jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, float):
        return round(x, 6)
    if isinstance(x, (int, str, bool)) or x is None:
        return x
    return str(x)


def git_commit(repo: Path) -> str:
    try:
        return subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def _sync(device: str) -> None:
    import torch
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _gbps(nbytes: int, seconds: float) -> float:
    return nbytes / max(seconds, 1e-9) / 1e9


# ------------------------------------------------------------------ steps
def environment(ctx: Ctx, fig: dict[str, Any]) -> None:
    import torch
    fig["python"] = sys.version.split()[0]
    fig["torch"] = torch.__version__
    fig["torch_cuda_build"] = torch.version.cuda
    try:
        fig["cuda_available"] = bool(torch.cuda.is_available())
    except Exception as e:  # noqa: BLE001 -- a broken driver is a figure, not a crash
        fig["cuda_available"], fig["cuda_error"] = False, f"{type(e).__name__}: {e}"
    if fig["cuda_available"]:
        p = torch.cuda.get_device_properties(0)
        fig.update(device_name=p.name, capability=f"{p.major}.{p.minor}", memory_gib=round(p.total_memory / 2**30, 1),
                   device_count=torch.cuda.device_count())
    for mod in ("vllm", "ucxx", "transformers"):
        try:
            m = __import__(mod)
            fig[mod] = getattr(m, "__version__", "present")
        except Exception as e:  # noqa: BLE001
            fig[mod] = None
            fig[f"{mod}_error"] = f"{type(e).__name__}: {e}"[:300]
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
        fig["nvidia_smi"] = out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        fig["nvidia_smi"] = None


def memcpy(ctx: Ctx, fig: dict[str, Any]) -> None:
    """torch copies on this card: the ceiling the weight-sync figures are read against."""
    import torch
    n = ctx.size(1 << 30, 32 << 20)
    dev = torch.device(ctx.device)
    src = torch.empty(n, dtype=torch.uint8, device=dev).fill_(7)
    dst = torch.empty_like(src)
    pinned = torch.empty(n, dtype=torch.uint8, pin_memory=dev.type == "cuda")
    pageable = torch.empty(n, dtype=torch.uint8)
    cases: dict[str, Callable[[], None]] = {
        "d2d": lambda: dst.copy_(src), "d2h_pinned": lambda: pinned.copy_(src),
        "d2h_pageable": lambda: pageable.copy_(src), "h2d_pinned": lambda: src.copy_(pinned),
        "h2d_pageable": lambda: src.copy_(pageable)}
    fig["bytes"] = n
    for name, fn in cases.items():
        fn()
        _sync(ctx.device)
        best = float("inf")
        for _ in range(3):
            t0 = time.perf_counter()
            fn()
            _sync(ctx.device)
            best = min(best, time.perf_counter() - t0)
        fig[f"{name}_gbps"] = _gbps(n, best)
        save_partial(ctx, fig)
    check(bool(torch.equal(src[:1024].cpu(), pageable[:1024])), "copies are not bit-exact")


def _tiny(ctx: Ctx, name: str, **kw: Any) -> Path:
    from slurm_rl.rl.model import build_tiny_model
    d = Path(ctx.work) / "models" / name
    if not (d / "config.json").is_file():
        build_tiny_model(d, **kw)
    return d


def engine(ctx: Ctx, fig: dict[str, Any]) -> None:
    """vLLM on the device: generate, take weights from device tensors, agree with the trainer's
    logprobs, free its memory on close (what a promoted rollout does before building the trainer)."""
    import torch

    from slurm_rl.rl.engines import make_engine
    from slurm_rl.rl.grpo import load_policy_model
    from slurm_rl.rl.logprobs import sequence_logprobs

    model = _tiny(ctx, "qwen3", family="qwen3", hidden=256, layers=2, heads=4, kv_heads=2, seed=0,
                  max_position_embeddings=512)
    dtype = "float32" if ctx.rehearsal else "bfloat16"
    tdtype = getattr(torch, dtype)
    free0 = torch.cuda.mem_get_info()[0] if ctx.device == "cuda" else 0
    t0 = time.perf_counter()
    eng = make_engine("vllm", model, dtype=dtype, device=ctx.device, seed=0, max_model_len=512,
                      **({} if ctx.rehearsal else {"gpu_memory_utilization": 0.3}))
    fig["engine_start_s"] = time.perf_counter() - t0
    try:
        out = eng.generate([[5, 6, 7, 8]], n=4, max_tokens=32, temperature=1.0, seed=0)
        fig["generated_tokens"] = sum(len(c.token_ids) for c in out[0])
        check(fig["generated_tokens"] > 0, "vLLM generated nothing")
        # the trainer's model on the device, perturbed, pushed into the engine as device tensors
        pol = load_policy_model(model, device=torch.device(ctx.device), dtype=tdtype, trainable=False)
        with torch.no_grad():
            for p in pol.parameters():
                p.add_(torch.randn_like(p) * 0.02)
        tied = bool(getattr(pol.config, "tie_word_embeddings", False))
        sd = {k: v.detach() for k, v in pol.state_dict().items() if not (tied and k == "lm_head.weight")}
        t1 = time.perf_counter()
        eng.load_weights(sd)
        _sync(ctx.device)
        fig["load_weights_s"] = time.perf_counter() - t1
        ids = out[0][0].token_ids
        seq = [5, 6, 7, 8, *ids][:36]
        got = torch.tensor(eng.prompt_logprobs(seq))
        x = torch.tensor([seq], device=ctx.device)
        with torch.no_grad(), torch.autocast(ctx.device, dtype=tdtype, enabled=tdtype != torch.float32):
            want = sequence_logprobs(pol, x, None, x[:, 1:]).float().cpu()[0]
        diff = (got - want).abs()
        fig["logprob_diff_max"], fig["logprob_diff_mean"] = float(diff.max()), float(diff.mean())
        check(fig["logprob_diff_max"] < (1e-3 if ctx.rehearsal else 0.15),
              f"vLLM and the trainer disagree after a weight load: max |dlogp| {fig['logprob_diff_max']:.4f}")
        del pol, sd
    finally:
        t2 = time.perf_counter()
        eng.close()
        fig["close_s"] = time.perf_counter() - t2
    if ctx.device == "cuda":
        torch.cuda.empty_cache()
        free1 = torch.cuda.mem_get_info()[0]
        fig["freed_gib_missing"] = round((free0 - free1) / 2**30, 2)
        check(free0 - free1 < 1 << 30, f"{(free0 - free1) / 2**30:.1f} GiB of GPU memory still held after close")


def sync(ctx: Ctx, fig: dict[str, Any]) -> None:
    """Device tensors -> WeightSet -> WeightServer -> pull -> device, per transport, bit-exact."""
    import torch

    from slurm_rl.sync import WeightServer, WeightSet, pull

    n = ctx.size(1 << 30, 32 << 20) // 2
    dev = torch.device(ctx.device)
    g = torch.Generator(device=dev).manual_seed(0)
    sd = {f"layer{i}.weight": torch.randn(n // 8, generator=g, device=dev).to(torch.bfloat16) for i in range(8)}
    nbytes = sum(t.numel() * 2 for t in sd.values())
    fig["bytes"] = nbytes
    t0 = time.perf_counter()
    ws = WeightSet.from_state_dict(sd, 1)
    fig["pack_d2h_s"] = time.perf_counter() - t0
    key = os.urandom(16)
    srv = WeightServer(host="127.0.0.1", transports=("tcp", "ucx"), auth_key=key)
    addrs = srv.start()
    fig["transports"] = sorted(addrs)
    fig["unavailable"] = {k.value: v for k, v in srv.unavailable.items()}
    try:
        srv.publish(ws)
        for name, addr in sorted(addrs.items()):
            best = float("inf")
            for _ in range(2):
                t1 = time.perf_counter()
                got = pull(addr, 1, deadline_s=120, auth_key=key)
                on_dev = {k: v.to(dev, non_blocking=True) for k, v in got.tensors().items()}
                _sync(ctx.device)
                best = min(best, time.perf_counter() - t1)
            for k, v in sd.items():
                check(bool(torch.equal(on_dev[k], v)), f"{name}: {k} differs after the round trip")
            fig[f"{name}_pull_to_device_gbps"] = _gbps(nbytes, best)
            save_partial(ctx, fig)
    finally:
        srv.stop()
    if not ctx.rehearsal:
        check("ucx" in addrs, f"UCX did not start on the GPU machine: {fig['unavailable']}")


def load_1p5b(ctx: Ctx, fig: dict[str, Any]) -> None:
    """A Qwen2-1.5B-shaped bf16 state dict from trainer-side device tensors into vLLM: pack,
    pull over TCP, load_weights (the path a rollout takes every step)."""
    import torch
    from safetensors.torch import save_file

    from slurm_rl.rl.engines import make_engine
    from slurm_rl.sync import WeightServer, WeightSet, pull

    shape = (dict(hidden=1536, layers=28, heads=12, kv_heads=2, intermediate=8960) if not ctx.rehearsal
             else dict(hidden=128, layers=2, heads=2, kv_heads=1, intermediate=256))
    d = Path(ctx.work) / "models" / "qwen2-1.5b-shape"
    dev = torch.device(ctx.device)
    dtype = torch.float32 if ctx.rehearsal else torch.bfloat16
    if not (d / "config.json").is_file():
        # the architecture from a 1-layer build, then the full depth with random device tensors
        small = _tiny(ctx, "qwen2-shape-1l", family="qwen2", seed=0, max_position_embeddings=512,
                      **{**shape, "layers": 1})
        import transformers
        cfg = transformers.AutoConfig.from_pretrained(small)
        cfg.num_hidden_layers = shape["layers"]
        if getattr(cfg, "layer_types", None):
            cfg.layer_types = [cfg.layer_types[0]] * shape["layers"]
        cfg.dtype = dtype
        with torch.device("meta"):
            meta_model = transformers.AutoModelForCausalLM.from_config(cfg)
        d.mkdir(parents=True, exist_ok=True)
        for f in small.iterdir():
            if f.suffix != ".safetensors" and f.name != "config.json":
                (d / f.name).write_bytes(f.read_bytes())
        cfg.save_pretrained(d)
        sd = {k: (torch.randn(v.shape, device=dev, dtype=dtype) * 0.02).cpu()
              for k, v in meta_model.state_dict().items() if not (cfg.tie_word_embeddings and k == "lm_head.weight")}
        save_file(sd, str(d / "model.safetensors"), metadata={"format": "pt"})
        del sd, meta_model
    from safetensors.torch import load_file
    sd = {k: v.to(dev) for k, v in load_file(str(d / "model.safetensors")).items()}
    fig["params"] = sum(t.numel() for t in sd.values())
    fig["bytes"] = sum(t.numel() * t.element_size() for t in sd.values())
    t0 = time.perf_counter()
    eng = make_engine("vllm", d, dtype="float32" if ctx.rehearsal else "bfloat16", device=ctx.device, seed=0,
                      max_model_len=512, **({} if ctx.rehearsal else {"gpu_memory_utilization": 0.5}))
    fig["engine_start_s"] = time.perf_counter() - t0
    srv = WeightServer(host="127.0.0.1", transports=("tcp",))
    addr = srv.start()["tcp"]
    try:
        t1 = time.perf_counter()
        ws = WeightSet.from_state_dict(sd, 2)
        t2 = time.perf_counter()
        srv.publish(ws)
        got = pull(addr, 2, deadline_s=300)
        t3 = time.perf_counter()
        eng.load_weights(got.tensors())
        _sync(ctx.device)
        t4 = time.perf_counter()
        fig.update(pack_s=t2 - t1, pull_s=t3 - t2, load_weights_s=t4 - t3, total_s=t4 - t1)
        out = eng.generate([[5, 6, 7]], n=1, max_tokens=4, temperature=1.0, seed=0)
        check(len(out[0][0].token_ids) > 0, "vLLM generated nothing after the load")
    finally:
        srv.stop()
        eng.close()


def _cli(ctx: Ctx, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ctx.repo, *filter(None, [os.environ.get("PYTHONPATH")])]))
    return subprocess.run([sys.executable, "-c", "from slurm_rl.cli import main; main()", *args], capture_output=True, text=True, cwd=ctx.repo,
                          env=env, timeout=timeout)


def _run_sets(ctx: Ctx, steps: int) -> list[str]:
    sets = [f"runs_dir={ctx.dir('runs')}", f"algorithm.steps={steps}"]
    if ctx.rehearsal:
        sets += ["trainer.device=cpu", "model.dtype=float32"]
    return [a for s in sets for a in ("--set", s)]


def _report(ctx: Ctx, run: Path) -> dict[str, Any]:
    res = _cli(ctx, "report", str(run), "--json", timeout=60)
    check(res.returncode == 0, f"report failed: {res.stderr[-500:]}")
    return json.loads(res.stdout)


def _wait(ctx: Ctx, run: Path, pred: Callable[[dict[str, Any]], bool], timeout: float) -> dict[str, Any]:
    t_end = time.monotonic() + timeout
    while True:
        rep = _report(ctx, run)
        if pred(rep) or rep["state"] in ("finished", "failed", "stopped"):
            return rep
        check(time.monotonic() < t_end, f"{run.name}: timed out; state {rep['state']}, steps {rep['steps']}")
        time.sleep(2)


def grpo(ctx: Ctx, fig: dict[str, Any]) -> None:
    """A short GRPO run: a CUDA trainer and one vLLM-CUDA rollout sharing the GPU."""
    cfg = str(Path(ctx.repo) / "configs" / "gpu-check.yaml")
    name = f"grpo-{int(time.time())}"     # a fresh run per check: the work dir is kept between checks
    res = _cli(ctx, "launch", cfg, "--name", name, "--detach", *_run_sets(ctx, 8), timeout=120)
    check(res.returncode == 0, f"launch failed ({res.returncode}): {res.stderr[-800:]}")
    run = Path(ctx.work) / "runs" / name
    rep = _wait(ctx, run, lambda r: False, 240)
    fig.update(state=rep["state"], steps=rep["steps"], wall_s=rep["wall_s"], startup_s=rep["startup_s"],
               reward_first=rep["reward"]["first"], reward_last=rep["reward"]["last"], ettr=rep["ettr"])
    check(rep["state"] == "finished", f"the run ended {rep['state']}: {rep.get('end_reason')}")


def trainer_crash(ctx: Ctx, fig: dict[str, Any]) -> None:
    """The trainer crashes mid-run; a rollout is promoted (engine closed, GPU memory freed,
    trainer built, restored from the weights it holds) while the run goes on."""
    cfg = str(Path(ctx.repo) / "configs" / "gpu-check.yaml")
    name = f"crash-{int(time.time())}"
    res = _cli(ctx, "launch", cfg, "--name", name, "--detach", *_run_sets(ctx, 16),
               "--set", "rollout.replicas=2", timeout=120)
    check(res.returncode == 0, f"launch failed ({res.returncode}): {res.stderr[-800:]}")
    run = Path(ctx.work) / "runs" / name
    _wait(ctx, run, lambda r: r["steps"] >= 2, 180)
    res = _cli(ctx, "inject", str(run), "trainer/0", "--fault", "crash", timeout=60)
    check(res.returncode == 0, f"inject failed: {res.stderr[-500:]}")
    rep = _wait(ctx, run, lambda r: False, 300)
    fig.update(state=rep["state"], steps=rep["steps"], restarts=rep["restarts"],
               lost=rep["trajectories"]["lost"], mttr=rep["mttr"], faults=len(rep["faults"]),
               mttr_s=max((m["mttr_s"] or 0.0 for m in rep["mttr"]), default=None))
    check(rep["state"] == "finished", f"the run ended {rep['state']}: {rep.get('end_reason')}")
    check(len(rep["faults"]) >= 1, "no fault recorded: the crash came after the run's last step?")
    check(rep["trajectories"]["lost"] == 0, f"{rep['trajectories']['lost']} trajectories lost")
    check(rep["restarts"]["full"] == 0, "a full restart happened instead of a role recovery")


@dataclass
class Step:
    fn: Callable[[Ctx, dict[str, Any]], None]
    what: str
    timeout_s: float
    needs: tuple[str, ...] = ()

    def skip_reason(self, ctx: Ctx, env: dict[str, Any]) -> str:
        return ""

    def missing(self, ctx: Ctx, env: dict[str, Any]) -> str:
        """A needed module absent: a failure where the step should run (never silently skipped)."""
        for m in self.needs:
            if env and env.get(m) is None:
                return f"{m} is not importable: {env.get(f'{m}_error', '?')}"
        return ""


STEPS: dict[str, Step] = {
    "environment": Step(environment, "torch, CUDA, vLLM, UCX versions and the card", 60),
    "memcpy": Step(memcpy, "torch copy GB/s on the card (d2d, d2h, h2d; pinned and pageable)", 60),
    "engine": Step(engine, "vLLM on the device: generate, load device weights, logprobs vs trainer, close frees",
                   150, ("vllm",)),
    "sync": Step(sync, "weight sync from device tensors to device tensors over tcp and ucx, bit-exact", 120),
    "load_1p5b": Step(load_1p5b, "a 1.5B-shaped bf16 state dict into vLLM: pack, pull, load_weights", 200, ("vllm",)),
    "grpo": Step(grpo, "a short GRPO run: CUDA trainer + one vLLM-CUDA rollout on one GPU", 280, ("vllm",)),
    "trainer_crash": Step(trainer_crash, "a trainer crash, a rollout promoted, the run finishes", 340, ("vllm",)),
}


def headline(name: str, f: dict[str, Any]) -> str:
    keys = {"environment": ("device_name", "torch", "vllm"), "memcpy": ("d2d_gbps", "d2h_pinned_gbps", "h2d_pinned_gbps"),
            "engine": ("engine_start_s", "logprob_diff_max", "close_s"),
            "sync": ("tcp_pull_to_device_gbps", "ucx_pull_to_device_gbps"),
            "load_1p5b": ("params", "pack_s", "pull_s", "load_weights_s"),
            "grpo": ("steps", "reward_first", "reward_last"), "trainer_crash": ("steps", "lost", "faults", "mttr_s")}
    parts = []
    for k in keys.get(name, ()):
        v = f.get(k)
        if v is not None:
            parts.append(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}")
    return " ".join(parts)


def derive(*, results_by_name: dict[str, dict[str, Any]], doc: dict[str, Any]) -> None:
    """Ratios read side by side: weight sync against the card's own copies."""
    mem, sy = results_by_name.get("memcpy"), results_by_name.get("sync")
    if mem and sy:
        ref = mem.get("d2h_pinned_gbps")
        doc["ratios"] = {f"{k.split('_')[0]}_vs_d2h_pinned": v / ref for k, v in sy.items()
                         if k.endswith("_pull_to_device_gbps") and ref}
