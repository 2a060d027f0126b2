"""The process that hosts a role, and keeps what is expensive (the engine) across promotions.

A spare becoming a rollout keeps its warm engine and the weights it holds; a spare or rollout
becoming the trainer frees the engine and builds the trainer from the weights it holds.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import torch

from slurm_rl.roles.runtime import RoleRuntime
from slurm_rl.states import Phase
from slurm_rl.sync import Parts

log = logging.getLogger("slurm_rl.roles")


def resolve_device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


class RoleHost:
    def __init__(self, rt: RoleRuntime, *, build_trainer: Callable[[RoleRuntime], Any]):
        self.rt = rt
        self._build_trainer = build_trainer   # roles.trainer.make_trainer (host imports no role)
        self.engine = None
        self._tokenizer = None
        self._staged_trainer = None     # built by a standby ahead of a promotion (stage_trainer)
        self._closing: threading.Thread | None = None
        self._scorer = None
        self._records = None
        self._eval = None

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            from slurm_rl.rl.model import load_tokenizer

            self._tokenizer = load_tokenizer(self.rt.run.model)
        return self._tokenizer

    def reward_scorer(self):
        """The task's reward, imported once per process (kept across promotions)."""
        if self._scorer is None:
            from slurm_rl.rl.reward import RewardScorer, load_reward

            self._scorer = RewardScorer(load_reward(self.rt.cfg.task.reward_spec))
        return self._scorer

    def problem_records(self):
        """The run's training problems by index, with every field they were loaded with."""
        if self._records is None:
            from slurm_rl.data.records import load_problems

            self._records = dict(enumerate(load_problems(self.rt.run.problems, fmt="plain")))
        return self._records

    def eval_problems(self):
        if self._eval is None:
            from slurm_rl.data.records import load_problems

            path = self.rt.run.eval_problems
            self._eval = load_problems(path, fmt="plain") if path.exists() else []
        return self._eval

    def ensure_engine(self):
        """Start the rollout engine once (phase `loading`), with the weights this process holds."""
        if self.engine is not None:
            return self.engine
        from slurm_rl.rl.engines import make_engine

        self.wait_engine_closed()       # a new engine needs the old one's teardown finished
        cfg = self.rt.cfg
        self.rt.set_phase(Phase.LOADING, f"starting {cfg.rollout.engine.value} engine")
        t0 = time.time()
        opts: dict[str, object] = {"threads": 1}
        if cfg.rollout.engine.value == "vllm":
            opts.update(multiprocess=cfg.rollout.engine_multiprocess,
                        gpu_memory_utilization=cfg.rollout.gpu_memory_utilization)
        self.engine = make_engine(cfg.rollout.engine.value, self.rt.run.model, dtype=cfg.model.dtype,
                                  device=resolve_device("auto"), seed=cfg.seed, max_model_len=cfg.model.max_model_len,
                                  **opts)
        # tokens reach the heartbeat while a generate runs (the rollout's bump after it counts them once)
        self.engine.on_progress = self.rt.advance
        if self.rt.held is not None:
            self.engine.load_weights(self.rt.held.tensors())
        elif self.rt.held_version < 0:
            self.rt.held_version = 0          # the base model on disk is version 0 in every lineage
        log.info("%s engine ready in %.1fs", cfg.rollout.engine.value, time.time() - t0)
        return self.engine

    def apply_weights(self, ws: Parts) -> None:
        if self.engine is not None:
            self.engine.load_weights(ws.tensors())

    def stage_trainer(self, *, own_device: bool = False) -> None:
        """A standby's idle work: build the trainer now, so a promotion to trainer does not.

        Building the first PolicyTrainer in a process costs seconds (the model code's imports and
        initialisation) and a dead trainer's replacement is the one place where seconds count. On
        a CPU trainer the built trainer is kept and reused; on a GPU trainer the engine owns the
        GPU, so the model is built on the `meta` device only, which warms the same code without
        memory, and the real build happens after the engine is freed. `own_device`: this process
        runs no engine (a trainer-shaped standby), so the trainer is built for real, on any device.
        """
        if self._staged_trainer is not None or not (own_device or self.rt.cfg.spare.warm_trainer):
            return
        t0 = time.time()
        if own_device or resolve_device(self.rt.cfg.trainer.device) == "cpu":
            self._staged_trainer = self._build_trainer(self.rt)
        else:
            from transformers import AutoConfig, AutoModelForCausalLM

            with torch.device("meta"):
                AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(self.rt.run.model))
            self._staged_trainer = False      # warmed, nothing kept
        log.info("trainer staged in %.1fs (ready for a promotion)", time.time() - t0)

    def take_trainer(self):
        """(trainer, staged): the staged trainer (once), or a newly built one."""
        staged, self._staged_trainer = self._staged_trainer, False
        return (staged, True) if staged else (self._build_trainer(self.rt), False)

    def close_engine(self, *, background: bool = False) -> None:
        """Shut the engine down; `background` does it on a thread (seconds of vLLM teardown) when
        nothing waits for the memory it frees: a CPU trainer taking over this process."""
        if self.engine is None:
            return
        engine, self.engine = self.engine, None
        if not background:
            engine.close()
            return
        t0 = time.time()

        def close() -> None:
            engine.close()
            log.info("engine closed in the background in %.1fs", time.time() - t0)

        self._closing = threading.Thread(target=close, name="engine-close", daemon=True)
        self._closing.start()

    def wait_engine_closed(self) -> None:
        if self._closing is not None:
            self._closing.join()
            self._closing = None
