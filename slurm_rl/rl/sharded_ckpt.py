"""Checkpoints of a sharded trainer, in the Checkpointer's layout (slurm_rl.checkpoint):

    step-000040/  weights.safetensors (whole, written by rank 0)  optimizer.pt (version, scaler)
                  optimizer.dcp/ (AdamW state, + the fp32 masters under mixed precision: DCP shards)
                  meta.json (sizes + xxh3 of every file, the DCP ones under `dcp_files`)

A collective: every rank calls `save` and `load`. The DCP part reshards on load, so a checkpoint
written at 2 ranks restores at 1 (no process group, an unsharded trainer) or at 4. The step
directory is written under `.tmp` and renamed by rank 0 once every rank's shards are synced, so
`slurm_rl.checkpoint.verify`, `newest_valid` and `slurm-rl export` read it as any other checkpoint.
`ShardedSaver` does the same asynchronously: the training steps on while the shards are written.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import queue
import shutil
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from slurm_rl.checkpoint import _NAME, SaveResult, _fsync_dir, _hash_file, load_plain, put_in_place
from slurm_rl.rl import dist as rd
from slurm_rl.rl import fsdp
from slurm_rl.rl.grpo import PolicyTrainer

DCP_DIR = "optimizer.dcp"

log = logging.getLogger("slurm_rl.checkpoint")


def _barrier(tr: PolicyTrainer) -> None:
    if tr.ranks.distributed:
        import torch.distributed as dist

        dist.barrier()


def _dcp_state(tr: PolicyTrainer) -> dict[str, Any]:
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    state: dict[str, Any] = {"optimizer": get_optimizer_state_dict(tr.model, tr.optimizer)}
    if tr.precision.mixed:
        state["model"] = get_model_state_dict(tr.model)   # the fp32 masters below the saved weights
    return state


def _prepare(root: Path, step: int, tr: PolicyTrainer) -> tuple[Path, Path]:
    """Rank 0 makes the empty `.tmp` directory of step `step`; every rank returns (final, tmp)."""
    final, tmp = root / _NAME.format(step), root / (_NAME.format(step) + ".tmp")
    if tr.ranks.leader:
        shutil.rmtree(tmp, ignore_errors=True)
        (tmp / DCP_DIR).mkdir(parents=True)
    _barrier(tr)
    return final, tmp


def _extra(tr: PolicyTrainer) -> dict[str, Any]:
    """optimizer.pt: what is not a tensor shard (the version, the fp16 loss scaler)."""
    extra: dict[str, Any] = {"version": tr.version, "layout": "dcp", "world_size": tr.ranks.world_size}
    if tr.scaler is not None:
        extra["scaler"] = copy.deepcopy(tr.scaler.state_dict())
    return extra


def _finalize(step: int, final: Path, tmp: Path, weights: dict[str, torch.Tensor],
              extra: dict[str, Any], meta: dict[str, Any], sync_dtype: torch.dtype) -> None:
    """Rank 0, once every rank's DCP shards are written and synced: the whole weights, optimizer.pt,
    meta.json with every file's size and hash (all fsynced), then the atomic rename into place."""
    from safetensors.torch import save_file

    save_file({k: (v.to(sync_dtype) if v.is_floating_point() else v).contiguous() for k, v in weights.items()},
              str(tmp / "weights.safetensors"))
    torch.save(extra, tmp / "optimizer.pt")
    files, dcp_files = {}, {}
    for p in sorted(q for q in tmp.rglob("*") if q.is_file()):
        with open(p, "rb+") as f:
            os.fsync(f.fileno())
        size, digest = _hash_file(p)
        rel = str(p.relative_to(tmp))
        (dcp_files if rel.startswith(DCP_DIR + "/") else files)[rel] = {"size": size, "xxh3": digest}
    with open(tmp / "meta.json", "w") as f:
        f.write(json.dumps({"step": step, "time": time.time(), "files": files, "dcp_files": dcp_files, **meta}))
        f.flush()
        os.fsync(f.fileno())
    _fsync_dir(tmp / DCP_DIR)
    _fsync_dir(tmp)
    put_in_place(tmp, final)


def save(root: Path, step: int, tr: PolicyTrainer, meta: dict[str, Any]) -> Path:
    """Write checkpoint `step` of a (sharded) trainer under `root` and wait for it; returns its directory."""
    import torch.distributed.checkpoint as dcp

    final, tmp = _prepare(root, step, tr)
    sd = fsdp.full_state_dict(tr.model) if tr.ranks.distributed else tr.state_dict_for_sync()
    dcp.save(_dcp_state(tr), checkpoint_id=str(tmp / DCP_DIR))
    if tr.ranks.leader:
        _finalize(step, final, tmp, sd, _extra(tr), meta, tr.precision.sync_dtype)
    _barrier(tr)
    return final


class ShardedSaver:
    """Asynchronous checkpoints of one sharded trainer: `start` returns once every rank has copied its
    shards (DCP's staging), training goes on while a thread per rank writes them (over a process
    group of its own, so its collectives never interleave with the training's), and rank 0's thread
    then finalizes the directory (`_finalize`). One save in flight at a time; rank 0 finds each
    outcome in `done` (a `SaveResult`, as `Checkpointer.done`: a failed save is reported, not raised).

    Every rank makes one: creating it is a collective (the checkpoint process group)."""

    def __init__(self, root: Path, tr: PolicyTrainer, *, after_save: Callable[[], None] | None = None):
        self.root, self.tr, self.after_save = root, tr, after_save
        self.done: queue.SimpleQueue[SaveResult] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._pg = None
        if tr.ranks.distributed:
            import torch.distributed as dist

            self._pg = dist.new_group(backend="gloo")
        for stale in root.glob("*.tmp") if tr.ranks.leader else ():
            shutil.rmtree(stale, ignore_errors=True)

    @property
    def busy(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self, step: int, weights: Mapping[str, torch.Tensor], meta: dict[str, Any]) -> None:
        """Begin checkpoint `step` (a collective). `weights`: rank 0's whole weights of this version,
        which must not change afterwards (a published version); other ranks pass {}."""
        import torch.distributed.checkpoint as dcp

        self.wait()
        t0 = time.time()
        final, tmp = _prepare(self.root, step, self.tr)
        future = dcp.async_save(_dcp_state(self.tr), checkpoint_id=str(tmp / DCP_DIR), process_group=self._pg,
                                no_dist=not self.tr.ranks.distributed)
        extra, sync_dtype = _extra(self.tr), self.tr.precision.sync_dtype
        weights = dict(weights)

        def finish() -> None:
            try:
                future.result()
                if self.tr.ranks.leader:
                    _finalize(step, final, tmp, weights, extra, meta, sync_dtype)
                    if self.after_save is not None:
                        self.after_save()
                res = SaveResult(step, final, "", time.time() - t0)
            except BaseException as e:  # a full disk fails the save, not the trainer (as Checkpointer)
                if self.tr.ranks.leader:
                    shutil.rmtree(tmp, ignore_errors=True)
                log.error("checkpoint at step %d failed: %s", step, e)
                res = SaveResult(step, None, f"{e.__class__.__name__}: {e}", time.time() - t0)
            self.done.put(res)

        self._thread = threading.Thread(target=finish, name=f"checkpoint-{step}", daemon=True)
        self._thread.start()

    def wait(self, timeout_s: float | None = None) -> None:
        """Until the save in flight (if any) has ended, one way or the other."""
        if self._thread is not None:
            self._thread.join(timeout_s)


def verify_dcp(path: Path) -> str:
    """'' if the DCP files of checkpoint directory `path` match its meta.json, else what is wrong."""
    try:
        want = json.loads((path / "meta.json").read_text()).get("dcp_files") or {}
    except (OSError, ValueError) as e:
        return f"meta.json unreadable ({e.__class__.__name__})"
    if not want:
        return "no DCP optimizer state in meta.json"
    for rel, w in want.items():
        try:
            size, digest = _hash_file(path / rel)
        except OSError as e:
            return f"{rel} unreadable ({e.__class__.__name__})"
        if size != w.get("size") or digest != w.get("xxh3"):
            return f"{rel} does not match meta.json (truncated or corrupted)"
    return ""


def load(path: Path, tr: PolicyTrainer, *, weights: bool = True, times: dict[str, float] | None = None) -> None:
    """Restore checkpoint directory `path` into `tr` at its own world size (a collective). `weights`:
    also the weights (rank 0 reads them, the load scatters them; with mixed precision the fp32
    masters come from the DCP shards); False keeps the weights already loaded (an older optimizer
    state under newer committed weights). `times` gets the seconds of each part: verify, weights
    (the file), optimizer (the DCP shards, with the fp32 masters under mixed precision)."""
    import torch.distributed.checkpoint as dcp
    from safetensors.torch import load_file
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

    t0 = time.time()
    problem = rd.broadcast(verify_dcp(path) if tr.ranks.leader else "", tr.ranks)   # every rank stops, or none
    if problem:
        raise ValueError(f"{path}: {problem}")
    t1 = time.time()
    if weights and not tr.precision.mixed:
        sd = load_file(str(path / "weights.safetensors")) if tr.ranks.leader else {}
        if tr.ranks.distributed:
            fsdp.load_full_state_dict(tr.model, sd, rank=tr.ranks.rank)
        else:
            tr.load_weights(sd)
    t2 = time.time()
    state = _dcp_state(tr)
    if not weights:
        state.pop("model", None)
    dcp.load(state, checkpoint_id=str(path / DCP_DIR))
    set_optimizer_state_dict(tr.model, tr.optimizer, state["optimizer"])
    if "model" in state:
        set_model_state_dict(tr.model, state["model"])
    extra = load_plain(path / "optimizer.pt")
    if tr.scaler is not None and extra.get("scaler"):
        tr.scaler.load_state_dict(extra["scaler"])
    tr.version = int(extra["version"])
    if times is not None:
        times.update(verify_s=t1 - t0, weights_s=t2 - t1, optimizer_s=time.time() - t2)
