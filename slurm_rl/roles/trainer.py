"""Trainer: consume trajectory batches, take a GRPO step, publish version v+1, checkpoint.

Reads top to bottom: restore (if resuming), publish the starting version, then per step:
wait for a batch, step, publish, tell the controller, checkpoint every `checkpoint_every` steps
(asynchronously: the write happens on a thread while training goes on).

Restoring at committed step c (a warm standby promoted, or a cold restart): the weights of
version c come from what this process already holds, else from checkpoint c, else from any live
holder of c; the optimizer state and data come from the newest intact checkpoint at or before c.
A corrupt checkpoint is skipped with an event, and the previous one is used.
"""

from __future__ import annotations

import copy
import logging
import queue
import time
from typing import Any, Protocol

from slurm_rl import protocol as P
from slurm_rl.checkpoint import Checkpointer, Restored, SaveResult
from slurm_rl.rl.grpo import Group, PolicyTrainer, Sample
from slurm_rl.roles.host import RoleHost, resolve_device
from slurm_rl.roles.runtime import RoleRuntime
from slurm_rl.states import Phase
from slurm_rl.sync import Parts, WeightSet

log = logging.getLogger("slurm_rl.roles.trainer")


class _Stop(Exception):
    pass


class SaveReports(Protocol):
    """What reports finished checkpoint saves: a Checkpointer, or a sharded trainer's ShardedSaver."""

    done: queue.SimpleQueue[SaveResult]


def run_trainer(rt: RoleRuntime, host: RoleHost, *, resume_step: int) -> P.Command | None:
    cfg = rt.cfg
    alg = cfg.algorithm
    t_promoted = time.time()
    # a promoted rollout/spare frees its engine for the trainer: before building it on a GPU (the
    # trainer needs the memory); on a CPU once the trainer is restored, on a thread while it trains
    # (the teardown takes seconds of interpreter time that would otherwise slow the restore)
    if resolve_device(cfg.trainer.device) != "cpu":
        host.close_engine()
    rt.set_phase(Phase.RESTORING if resume_step > 0 else Phase.LOADING, f"step {resume_step}")
    trainer, staged = host.take_trainer()
    ckpt = Checkpointer(rt.run.checkpoints, cfg.trainer.keep_checkpoints)
    ckpt.set_aside_after(resume_step)          # later checkpoints hold undone steps of an older lineage
    wepoch = rt.newest.wepoch if rt.newest is not None else 0
    version = resume_step
    unusable = False
    if version > 0:
        unusable = _restore(rt, trainer, ckpt, version, staged=staged, t_promoted=t_promoted)
    trainer.version = version
    rt.hold(WeightSet.from_state_dict(trainer.state_dict_for_sync(copy=False), version), wepoch)
    last_ckpt = version
    if version > 0 and (unusable or version not in ckpt.steps()):
        # the standby that became this trainer was a holder of the committed step; until another
        # holder pulls it, a checkpoint is what keeps that step if this trainer dies too (one of
        # that step whose optimizer state did not load is replaced: a full restart would take it)
        assert rt.held is not None
        ckpt.save_async(version, rt.held.tensors(), copy.deepcopy(trainer.optimizer_state()), {"wepoch": wepoch})
    host.close_engine(background=True)
    try:
        while version < alg.steps:
            _report_checkpoints(rt, ckpt)
            groups, t_wait0 = _next_batch(rt, version, alg.prompts_per_step, ckpt)
            t0 = time.time()
            rt.set_phase(Phase.STEPPING, f"step {version + 1}")
            # every micro-batch moves the heartbeat's progress: a long step is never taken for a hang
            stats = trainer.step([_to_group(g) for g in groups], progress=rt.advance)
            version = trainer.version
            rt.bump()
            rt.set_phase(Phase.PUBLISHING, f"v{version}")
            ws = WeightSet.from_state_dict(trainer.state_dict_for_sync(copy=False), version)
            rt.server.publish(ws)
            rt.held, rt.held_version, rt.held_wepoch, rt.held_parts = Parts.whole(ws), version, wepoch, 1
            t1 = time.time()
            metrics = step_metrics(stats, t1 - t0)
            _tell(rt, P.StepDone(ident=rt.ident, version=version, wepoch=wepoch, group_ids=[g.group_id for g in groups],
                                 t_start=t_wait0, t_end=t1, wait_s=t0 - t_wait0, metrics=metrics), ckpt)
            log.info("step %d reward %.3f loss %.4f staleness %.1f (%.2fs, waited %.2fs)", version,
                     stats.reward_mean, stats.loss, stats.staleness_mean, t1 - t0, t0 - t_wait0)
            if version % cfg.trainer.checkpoint_every == 0 or version == alg.steps:
                rt.set_phase(Phase.CHECKPOINTING, f"step {version}")
                ckpt.save_async(version, ws.tensors(), copy.deepcopy(trainer.optimizer_state()), {"wepoch": wepoch})
                last_ckpt = version
        rt.set_phase(Phase.CHECKPOINTING, "final checkpoint")
        ckpt.wait()
        _report_checkpoints(rt, ckpt)
        rt.set_phase(Phase.IDLE, f"all {alg.steps} steps done")
        cmd = rt.wait_command("stop", "become")
        return None if cmd.op == "stop" else cmd
    except _Stop:
        # asked to stop (end of run, or a move off a draining node): keep every step taken
        if version > last_ckpt:
            rt.set_phase(Phase.CHECKPOINTING, f"step {version} before stopping")
            ckpt.save_async(version, rt.held.tensors() if rt.held else trainer.state_dict_for_sync(),
                            copy.deepcopy(trainer.optimizer_state()), {"wepoch": wepoch})
        ckpt.wait()
        _report_checkpoints(rt, ckpt)
        return None
    finally:
        ckpt.close()


def make_trainer(rt: RoleRuntime, **sharding: Any) -> PolicyTrainer:
    """The policy trainer this run's config asks for (fresh weights from the run's model);
    `sharding` (ranks, wrap_model, autocast) makes one rank's part of a sharded trainer."""
    cfg, alg = rt.cfg, rt.cfg.algorithm
    tc = cfg.trainer
    return PolicyTrainer(rt.run.model, lr=alg.lr, clip_eps=alg.clip_eps, kl_coef=alg.kl_coef,
                         max_grad_norm=alg.max_grad_norm, device=resolve_device(tc.device),
                         dtype=cfg.model.dtype, seed=cfg.seed, temperature=alg.temperature,
                         scale_adv_by_std=alg.normalize_std, micro_batch_size=tc.micro_batch_size,
                         gradient_checkpointing=tc.gradient_checkpointing,
                         logprob_chunk_tokens=tc.logprob_chunk_tokens, **sharding)


def step_metrics(stats: Any, step_s: float) -> dict[str, float]:
    """What a StepDone reports of a step."""
    return {"reward_mean": stats.reward_mean, "loss": stats.loss, "kl": stats.kl, "clip_frac": stats.clip_frac,
            "grad_norm": stats.grad_norm, "tokens": float(stats.tokens), "staleness_mean": stats.staleness_mean,
            "staleness_max": float(stats.staleness_max), "informative_groups": float(stats.informative_groups),
            "step_s": step_s, "logp_diff_max": stats.logp_diff_max}


def _check_stop(rt: RoleRuntime) -> None:
    cmd = rt.next_command()
    if cmd is not None and cmd.op == "stop":
        raise _Stop(cmd.reason)


def _next_batch(rt: RoleRuntime, version: int, n: int, ckpt: SaveReports) -> tuple[list[P.GroupMsg], float]:
    t0 = time.time()
    rt.set_phase(Phase.WAITING_FOR_DATA, f"step {version + 1}")
    while True:
        _check_stop(rt)
        _report_checkpoints(rt, ckpt)
        reply = rt.call(P.FetchBatch(ident=rt.ident, step=version, n_groups=n), timeout_s=10.0, attempts=1)
        if reply is not None and reply.groups:
            return list(reply.groups), t0
        time.sleep(0.05)


def _tell(rt: RoleRuntime, msg: P.Request, ckpt: SaveReports) -> None:
    """The controller must learn of a step: retry until it answers (it may be restarting)."""
    delay = 0.2
    while rt.call(msg, timeout_s=10.0, attempts=2) is None:
        time.sleep(delay)
        delay = min(2 * delay, 5.0)


def _report_checkpoints(rt: RoleRuntime, ckpt: SaveReports) -> None:
    while True:
        try:
            res = ckpt.done.get_nowait()
        except Exception:
            return
        if res.path is None:
            rt.call(P.RoleEvent(ident=rt.ident, kind="checkpoint_failed",
                                msg=f"checkpoint at step {res.step} failed: {res.error}; training goes on"))
        else:
            _tell(rt, P.CheckpointSaved(ident=rt.ident, step=res.step, path=str(res.path)), ckpt)


def _to_group(g: P.GroupMsg) -> Group:
    return Group(prompt_id=str(g.problem_idx), samples=[
        Sample(prompt_ids=list(g.prompt_ids), completion_ids=list(s.completion_ids), logprobs=list(s.logprobs),
               reward=s.reward, version=g.version) for s in g.samples])


def _restore(rt: RoleRuntime, trainer: PolicyTrainer, ckpt: Checkpointer, step: int, *, staged: bool,
             t_promoted: float) -> bool:
    """Weights of version `step` and the newest usable optimizer state, with an event saying how and
    where the time went (building the trainer, verifying checkpoints, weights, optimizer state).
    True if checkpoint `step` itself verified but its optimizer state did not load."""
    t_verify = time.time()
    best, skipped = ckpt.newest_valid(at_most=step)
    for problem in skipped:
        rt.call(P.RoleEvent(ident=rt.ident, kind="checkpoint_fallback",
                            msg=f"skipped checkpoint {problem}; using an older one"))
    t_weights = time.time()
    if rt.held is not None and rt.held_version == step:
        trainer.load_weights(rt.held.tensors())
        source = "weights already held by this standby"
    elif best is not None and best.step == step:
        trainer.load_weights(ckpt.load_weights(step))
        source = f"checkpoint {step}"
    else:
        if rt.newest is None or rt.newest.version != step or not rt.sync_newest(
                lambda ws: trainer.load_weights(ws.tensors())):
            raise RuntimeError(f"cannot restore version {step}: no holder, no checkpoint")
        source = "a live holder"
    t_opt = time.time()
    had_any = best is not None
    best, unusable = _load_optimizer(rt, trainer, ckpt, best, step)
    if best is not None:
        opt = f"optimizer from checkpoint {best.step}" + (f" ({step - best.step} steps older)" if best.step < step else "")
    else:
        opt = "fresh optimizer (" + ("no checkpoint's optimizer state loads" if had_any else "no checkpoint yet") + ")"
    t_end = time.time()
    took = t_end - t_promoted
    built = "trainer staged by the standby" if staged else "trainer built now"
    rt.call(P.RoleEvent(ident=rt.ident, kind="trainer_restore",
                        msg=f"trainer restored at step {step} in {took:.1f}s: weights from {source}, {opt}, {built}",
                        data={"step": str(step), "weights": source, "optimizer_step": str(best.step if best else -1),
                              "staged": "yes" if staged else "no", "restore_s": f"{took:.3f}",
                              **restore_split(t_verify - t_promoted, t_weights - t_verify, t_opt - t_weights,
                                              t_end - t_opt)}))
    return unusable


def _load_optimizer(rt: RoleRuntime, trainer: PolicyTrainer, ckpt: Checkpointer, best: Restored | None,
                    step: int) -> tuple[Restored | None, bool]:
    """The newest optimizer state that loads, from `best` down; (the checkpoint used or None for a
    fresh optimizer, whether checkpoint `step`'s own was refused). A checkpoint whose files match its
    meta can still fail here (a hostile optimizer.pt `load_plain` refuses, an older writer's, or one
    damaged with its meta made to agree): it is skipped with a checkpoint_fallback event, else every
    restart would die on it again."""
    unusable = False
    while best is not None:
        try:
            # the fp32 master weights saved with an older optimizer state would roll the weights back
            trainer.load_optimizer_state(ckpt.load_optimizer(best.step), master_weights=best.step == step)
            return best, unusable
        except Exception as e:  # noqa: BLE001 - any failure to read or apply it: try an older one
            unusable |= best.step == step
            best = optimizer_fallback(rt, ckpt, best.step, e)
    return None, unusable


def optimizer_fallback(rt: RoleRuntime, ckpt: Checkpointer, step: int, e: BaseException | None) -> Restored | None:
    """Checkpoint `step`'s optimizer state did not load (`e`; None: on another rank of a sharded
    trainer): a checkpoint_fallback event, and the next older intact checkpoint (None: none left),
    each one skipped on the way said too."""
    if e is None:
        said, why = "on another rank", "another rank"
    else:
        why = (str(e).strip().splitlines() or [""])[0][:300] or e.__class__.__name__
        said = f"{e.__class__.__name__}: {why}"
        log.warning("optimizer state of checkpoint %d does not load: %s", step, e)
    rt.call(P.RoleEvent(ident=rt.ident, kind="checkpoint_fallback",
                        msg=f"optimizer state of checkpoint {step} does not load ({said}); using an older one or a "
                            "fresh optimizer", data={"step": str(step), "reason": why}))
    older, skipped = ckpt.newest_valid(at_most=step - 1)
    for problem in skipped:
        rt.call(P.RoleEvent(ident=rt.ident, kind="checkpoint_fallback",
                            msg=f"skipped checkpoint {problem}; using an older one"))
    return older


def restore_split(build: float, verify: float, weights: float, optimizer: float) -> dict[str, str]:
    """A trainer_restore event's breakdown of its time (seconds, as strings like all event data):
    build (the trainer, or its process group and shards), verify (checkpoint hashes), weights (pull
    or read, and scatter), optimizer (state from a checkpoint). `slurm-rl report` splits the
    trainer's MTTR with it."""
    return {"build_s": f"{build:.3f}", "verify_s": f"{verify:.3f}", "weights_s": f"{weights:.3f}",
            "optimizer_s": f"{optimizer:.3f}"}
