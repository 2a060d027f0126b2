"""Checkpoints of a sharded trainer, in the Checkpointer's layout (slurm_rl.checkpoint):

    step-000040/  weights.safetensors (whole, written by rank 0)  optimizer.pt (version, scaler)
                  optimizer.dcp/ (AdamW state, + the fp32 masters under mixed precision: DCP shards)
                  meta.json (sizes + xxh3 of every file, the DCP ones under `dcp_files`)

A collective: every rank calls `save` and `load`. The DCP part reshards on load, so a checkpoint
written at 2 ranks restores at 1 (no process group, an unsharded trainer) or at 4. The step
directory is written under `.tmp` and renamed by rank 0 once every rank's shards are synced, so
`slurm_rl.checkpoint.verify`, `newest_valid` and `slurm-rl export` read it as any other checkpoint.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from slurm_rl.checkpoint import _NAME, _fsync_dir, _hash_file, load_plain
from slurm_rl.rl import dist as rd
from slurm_rl.rl import fsdp
from slurm_rl.rl.grpo import PolicyTrainer

DCP_DIR = "optimizer.dcp"


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


def save(root: Path, step: int, tr: PolicyTrainer, meta: dict[str, Any]) -> Path:
    """Write checkpoint `step` of a (sharded) trainer under `root`; returns its directory."""
    import torch.distributed.checkpoint as dcp
    from safetensors.torch import save_file

    final, tmp = root / _NAME.format(step), root / (_NAME.format(step) + ".tmp")
    leader = tr.ranks.leader
    if leader:
        shutil.rmtree(tmp, ignore_errors=True)
        (tmp / DCP_DIR).mkdir(parents=True)
    _barrier(tr)
    sd = fsdp.full_state_dict(tr.model) if tr.ranks.distributed else tr.state_dict_for_sync()
    dcp.save(_dcp_state(tr), checkpoint_id=str(tmp / DCP_DIR))
    if leader:
        want = tr.precision.sync_dtype
        save_file({k: (v.to(want) if v.is_floating_point() else v).contiguous() for k, v in sd.items()},
                  str(tmp / "weights.safetensors"))
        extra = {"version": tr.version, "layout": "dcp", "world_size": tr.ranks.world_size}
        if tr.scaler is not None:
            extra["scaler"] = tr.scaler.state_dict()
        torch.save(extra, tmp / "optimizer.pt")
        files, dcp_files = {}, {}
        for p in sorted(q for q in tmp.rglob("*") if q.is_file()):
            with open(p, "rb+") as f:
                os.fsync(f.fileno())
            size, digest = _hash_file(p)
            rel = str(p.relative_to(tmp))
            (dcp_files if rel.startswith(DCP_DIR + "/") else files)[rel] = {"size": size, "xxh3": digest}
        (tmp / "meta.json").write_text(json.dumps({"step": step, "time": time.time(), "files": files,
                                                   "dcp_files": dcp_files, **meta}))
        _fsync_dir(tmp / DCP_DIR)
        _fsync_dir(tmp)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_dir(root)
    _barrier(tr)
    return final


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


def load(path: Path, tr: PolicyTrainer, *, weights: bool = True) -> None:
    """Restore checkpoint directory `path` into `tr` at its own world size (a collective). `weights`:
    also the weights (rank 0 reads them, the load scatters them; with mixed precision the fp32
    masters come from the DCP shards); False keeps the weights already loaded (an older optimizer
    state under newer committed weights)."""
    import torch.distributed.checkpoint as dcp
    from safetensors.torch import load_file
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

    problem = rd.broadcast(verify_dcp(path) if tr.ranks.leader else "", tr.ranks)   # every rank stops, or none
    if problem:
        raise ValueError(f"{path}: {problem}")
    if weights and not tr.precision.mixed:
        sd = load_file(str(path / "weights.safetensors")) if tr.ranks.leader else {}
        if tr.ranks.distributed:
            fsdp.load_full_state_dict(tr.model, sd, rank=tr.ranks.rank)
        else:
            tr.load_weights(sd)
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
