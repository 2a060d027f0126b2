"""The trainer as a multi-rank job: FSDP2 over `trainer.nodes` x ranks per node, one process each.

Rank 0 speaks for the role (batches, step reports, checkpoints); every rank steps. Each turn of the
loop begins with one broadcast from rank 0: the next batch, or stop, or done, so all ranks run the
same collectives in the same order. After each step every rank serves its own rows of the weights
as its part of the version (slurm_rl.sync.parts): nothing is gathered to publish. Checkpoints are
collective and asynchronous (slurm_rl.rl.sharded_ckpt.ShardedSaver: the whole weights, gathered to
rank 0 for the checkpoint, + DCP optimizer shards, written while the next steps train, restorable
at any world size).

A trainer-shaped standby (spare.trainer_nodes) is a job of the same shape whose ranks form their
process group and build their shards, then wait (`stand_by`); promoted, they restore as below
without the build.

Restoring at committed step c (a new trainer job, or the standby, after any rank's fault): each rank pulls its own
part of version c from the live holders (rollouts relay every part), and only if some rank gets
nothing do all read the checkpoint of c; the optimizer shards come from the newest intact
checkpoint at or before c.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import msgspec
import torch

from slurm_rl import protocol as P
from slurm_rl.checkpoint import Checkpointer
from slurm_rl.errors import SyncError
from slurm_rl.rl import dist as rd
from slurm_rl.rl import fsdp, sharded_ckpt
from slurm_rl.rl.grpo import PolicyTrainer
from slurm_rl.rl.precision import torch_dtype
from slurm_rl.roles.runtime import RoleRuntime
from slurm_rl.roles.trainer import (
    _next_batch,
    _report_checkpoints,
    _Stop,
    _tell,
    _to_group,
    make_trainer,
    optimizer_fallback,
    restore_split,
    step_metrics,
)
from slurm_rl.states import Phase
from slurm_rl.sync import WeightSet
from slurm_rl.sync.parts import PartCount

log = logging.getLogger("slurm_rl.roles.trainer")


def make_sharded_trainer(rt: RoleRuntime) -> PolicyTrainer:
    """This rank's part of the policy trainer: the model sharded over the process group (FSDP2's
    mixed-precision policy does the casts, so no autocast)."""
    compute = torch_dtype(rt.cfg.model.dtype)

    def wrap(model: torch.nn.Module) -> torch.nn.Module:
        fsdp.shard(model, compute_dtype=compute)
        return model

    return make_trainer(rt, ranks=rt.rank, wrap_model=wrap, autocast=False)


def stand_by(rt: RoleRuntime) -> tuple[PolicyTrainer, int] | None:
    """A trainer-shaped standby (spare.trainer_nodes), every rank: build the shards, then wait
    until rank 0 is told to become the trainer; returns (the built trainer, the step to resume),
    or None when told to stop. Each turn rank 0 broadcasts what it was told, so every rank takes
    its new identity and starts the restore together."""
    info = rt.rank
    rt.set_phase(Phase.LOADING, "building the trainer's shards")
    t0 = time.time()
    trainer = make_sharded_trainer(rt)
    rd.all_ok(True, info)
    log.info("trainer-shaped standby: shards built in %.1fs on %d ranks", time.time() - t0, info.world_size)
    rt.set_phase(Phase.IDLE, "standby (trainer-shaped)")
    while True:
        rec: tuple[Any, ...] | None = None
        if info.leader:
            cmd = rt.next_command()
            if cmd is not None and cmd.op == "stop":
                rec = ("stop",)
            elif cmd is not None and cmd.op == "become":
                rec = ("become", cmd.kind, cmd.index, cmd.incarnation, max(cmd.resume_step, 0), cmd.reason)
        rec = rd.broadcast(rec, info)
        if rec is None:
            time.sleep(_STANDBY_POLL_S)
            continue
        if rec[0] == "stop":
            return None
        _, kind, index, incarnation, resume, reason = rec
        rt.set_ident(P.Ident(kind=kind, index=index, incarnation=incarnation))
        if info.leader:
            log.info("promoted: %s", reason)
        return trainer, resume


# how often a standing-by rank 0 tells the others what it was told: the promotion's latency
_STANDBY_POLL_S = 0.05


def run_sharded_trainer(rt: RoleRuntime, *, resume_step: int, trainer: PolicyTrainer | None = None) -> None:
    """Every rank runs this; rank 0's `resume_step` is the one that counts. `trainer`: one a
    standby built already (else it is built now)."""
    cfg, alg, info = rt.cfg, rt.cfg.algorithm, rt.rank
    leader = info.leader
    t_start = time.time()
    rt.set_phase(Phase.RESTORING if resume_step > 0 else Phase.LOADING, f"step {resume_step}")
    staged = trainer is not None
    trainer = trainer or make_sharded_trainer(rt)
    version = rd.broadcast(resume_step, info)
    wepoch = rd.broadcast(rt.newest.wepoch if leader and rt.newest is not None else 0, info)
    reader = Checkpointer(rt.run.checkpoints, cfg.trainer.keep_checkpoints)    # reads and prunes
    saver = sharded_ckpt.ShardedSaver(rt.run.checkpoints, trainer, after_save=reader.prune)
    if leader:
        reader.set_aside_after(version)        # later checkpoints hold undone steps of an older lineage
    try:
        unusable = version > 0 and _restore(rt, trainer, reader, version, t_start, staged=staged)
        trainer.version = version
        if unusable:
            # the checkpoint of the resume step has optimizer shards that do not load: write it again
            # now, or a full restart would take it and fail the same way
            _save(rt, trainer, saver, version, wepoch)
        _publish(rt, trainer, version, wepoch)
        last_ckpt = version
        end = "done"
        while True:
            rec: tuple[Any, ...] = ("done",)
            if leader and version < alg.steps:
                try:
                    groups, t_wait = _next_batch(rt, version, alg.prompts_per_step, saver)
                    rec = ("step", groups, t_wait)
                except _Stop:
                    rec = ("stop",)
            rec = rd.broadcast(rec, info)
            if rec[0] != "step":
                end = rec[0]
                break
            t0 = time.time()
            rt.set_phase(Phase.STEPPING, f"step {version + 1}")
            stats = trainer.step([_to_group(g) for g in rec[1]], progress=rt.advance)
            version = trainer.version
            rt.bump()
            rt.set_phase(Phase.PUBLISHING, f"v{version}")
            _publish(rt, trainer, version, wepoch, report=False)
            t1 = time.time()
            if leader:
                metrics = {**step_metrics(stats, t1 - t0), "world_size": float(info.world_size)}
                _tell(rt, P.StepDone(ident=rt.ident, version=version, wepoch=wepoch,
                                     group_ids=[g.group_id for g in rec[1]], t_start=rec[2], t_end=t1,
                                     wait_s=t0 - rec[2], metrics=metrics), saver)
                log.info("step %d reward %.3f loss %.4f (%.2fs on %d ranks)", version, stats.reward_mean, stats.loss,
                         t1 - t0, info.world_size)
            if version % cfg.trainer.checkpoint_every == 0 or version == alg.steps:
                _save(rt, trainer, saver, version, wepoch)
                last_ckpt = version
        if end == "stop" and version > last_ckpt:
            _save(rt, trainer, saver, version, wepoch)      # asked to stop: keep every step taken
        rt.set_phase(Phase.CHECKPOINTING, "final checkpoint")
        saver.wait()
        if leader:
            _report_checkpoints(rt, saver)
        if leader and end == "done":
            rt.set_phase(Phase.IDLE, f"all {alg.steps} steps done")
            rt.wait_command("stop")
    finally:
        saver.wait()
        reader.close()


def _publish(rt: RoleRuntime, trainer: PolicyTrainer, version: int, wepoch: int, *, report: bool = True) -> None:
    """Every rank serves its own rows of the weights as its part of `version` (slurm_rl.sync.parts):
    no gather. Once all serve it (a barrier), rank 0 may say the version is held."""
    info = rt.rank
    want = trainer.precision.sync_dtype
    part = fsdp.local_state_dict(trainer.model, rank=info.rank)
    ws = WeightSet.from_state_dict({k: v.to(want) if v.is_floating_point() else v for k, v in part.items()}, version,
                                   part=info.rank, parts=info.world_size)
    rt.server.publish(ws)
    rt.held_version, rt.held_wepoch, rt.held_parts = version, wepoch, info.world_size
    rd.all_ok(True, info)
    if report and info.leader:
        rt.call(P.VersionHeld(ident=rt.ident, version=version, wepoch=wepoch, sync_addrs=rt.addrs,
                              parts=info.world_size), timeout_s=5.0, attempts=2)


def _save(rt: RoleRuntime, trainer: PolicyTrainer, saver: sharded_ckpt.ShardedSaver, version: int,
          wepoch: int) -> None:
    """Begin checkpoint `version` (collective: the whole weights are gathered to rank 0 for it); it
    is written while training goes on, and rank 0 tells the controller once it is in place
    (`_report_checkpoints`, each turn of the loop)."""
    if saver.busy:
        rt.set_phase(Phase.CHECKPOINTING, f"step {version}: the previous checkpoint is still being written")
    want = trainer.precision.sync_dtype
    whole = fsdp.full_state_dict(trainer.model)
    weights = {k: v.to(want) if v.is_floating_point() else v for k, v in whole.items()}
    saver.start(version, weights, {"wepoch": wepoch})


def _restore(rt: RoleRuntime, trainer: PolicyTrainer, reader: Checkpointer, step: int, t_start: float, *,
             staged: bool = False) -> bool:
    """Weights of version `step` on every rank, the newest usable optimizer shards, with an event
    saying how and where the time went (as the single-process trainer's: `restore_split`).

    Weights come from live holders first (no disk read): each rank pulls its own part, where the
    version is in as many parts as this trainer has ranks, else every rank the whole version (and
    takes its rows). Only if some rank gets nothing do they all read the checkpoint of `step`.
    True when checkpoint `step`'s own optimizer state verified but did not load."""
    t_verify = time.time()
    info, leader = rt.rank, rt.rank.leader
    best = reader.newest_valid(at_most=step)[0] if leader else None
    best_step, best_path = rd.broadcast((best.step, str(best.path)) if best is not None else (-1, ""), info)
    t_weights = time.time()
    newest = rt.newest if leader and rt.newest is not None and rt.newest.version == step else None
    encoded = rd.broadcast(msgspec.json.encode(newest) if newest is not None else b"", info)
    source = ""
    if encoded:
        rt.newest = msgspec.json.decode(encoded, type=P.WeightsInfo)
        ok = _pull_own_part(rt, trainer, rt.newest)
        if rd.all_ok(ok, info):
            source = "live holders (each rank its own part)" if rt.newest.parts == info.world_size \
                else "live holders (the whole version, on every rank)"
    ckpt_dir = Path(best_path) if best_path else None
    parts: dict[str, float] = {}
    unusable = False
    if not source:
        if best_step != step or ckpt_dir is None:
            raise RuntimeError(f"cannot restore version {step}: no holder, no checkpoint")
        sharded_ckpt.load(ckpt_dir, trainer, weights=True, times=parts)
        source = f"checkpoint {step}"
    else:
        pulled = time.time() - t_weights                    # every rank's pull of its part
        if ckpt_dir is not None:
            first = best_step
            best_step = _load_optimizer_shards(rt, trainer, reader, best_step, ckpt_dir, parts)
            unusable = first == step and best_step != step
        parts["weights_s"] = pulled
    if leader:
        took = time.time() - t_start
        opt = f"optimizer from checkpoint {best_step}" if best_step >= 0 else \
            "fresh optimizer (" + ("no checkpoint's optimizer state loads" if ckpt_dir else "no checkpoint yet") + ")"
        built = "shards built by the trainer-shaped standby" if staged else "shards built now"
        rt.call(P.RoleEvent(ident=rt.ident, kind="trainer_restore",
                            msg=f"trainer restored at step {step} in {took:.1f}s on {info.world_size} ranks: "
                                f"weights from {source}, {opt}, {built}",
                            data={"step": str(step), "weights": source, "optimizer_step": str(best_step),
                                  "staged": "yes" if staged else "no", "restore_s": f"{took:.3f}",
                                  **restore_split(t_verify - t_start, t_weights - t_verify + parts.get("verify_s", 0.0),
                                                  parts["weights_s"], parts.get("optimizer_s", 0.0))}))
    return unusable


def _load_optimizer_shards(rt: RoleRuntime, trainer: PolicyTrainer, reader: Checkpointer, step: int, path: Path,
                           times: dict[str, float]) -> int:
    """The newest optimizer shards that load on every rank, from checkpoint `step` (at `path`) down
    (a collective); returns the step used, -1 for a fresh optimizer. A checkpoint whose files match
    its meta can still fail here (an optimizer.pt `load_plain` refuses, shards an older writer
    wrote): it is skipped with a checkpoint_fallback event, as the single-process trainer does."""
    info = rt.rank
    while step >= 0:
        error: Exception | None = None
        try:
            sharded_ckpt.load(path, trainer, weights=False, times=times)
        except Exception as e:  # noqa: BLE001 - any failure to read or apply it: try an older one
            error = e
            if not info.leader:
                log.warning("rank %d: optimizer state of checkpoint %d does not load: %s", info.rank, step, e)
        if rd.all_ok(error is None, info):
            return step
        older = optimizer_fallback(rt, reader, step, error) if info.leader else None
        step, where = rd.broadcast((older.step, str(older.path)) if older is not None else (-1, ""), info)
        path = Path(where) if where else path
    trainer.optimizer.state.clear()          # nothing loaded: start the moments afresh
    return -1


def _pull_own_part(rt: RoleRuntime, trainer: PolicyTrainer, w: P.WeightsInfo) -> bool:
    """This rank's weights of version `w.version` from live holders, into its shards: its own part
    where the version is in as many parts as this trainer has ranks, else the whole (its rows)."""
    info = rt.rank
    try:
        parts = w.parts
        if parts == info.world_size:
            try:
                own = rt.pull_newest(part=info.rank)
                fsdp.load_local_state_dict(trainer.model, own.tensors(), rank=info.rank)
                return True
            except PartCount as e:
                parts = e.parts
        whole = rt.pull_newest(parts=parts)
        fsdp.load_whole_into_shards(trainer.model, whole.tensors(), rank=info.rank, world_size=info.world_size)
    except (SyncError, ValueError) as e:
        log.warning("rank %d: weights v%d from live holders failed: %s", info.rank, w.version, e)
        return False
    return True
