"""The trainer's process group: which rank this process is, the rendezvous, and a clean teardown.

Ranks come from Slurm's srun (SLURM_PROCID / SLURM_NTASKS / SLURM_LOCALID) or from the local
backend's rank launcher (slurm_rl.roles.ranks, which sets the SLURM_RL_* equivalents). Rank 0 serves
the process group's TCPStore on a free port and tells the controller where (its Hello); the other
ranks learn the address from the controller's answer to theirs. A port chosen by the OS never
collides with another user's job on a shared node, which a port derived from the job id can.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class RankInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def leader(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def rank_info(env: Mapping[str, str] | None = None) -> RankInfo:
    """This process's rank, from the local rank launcher's variables, else srun's."""
    env = os.environ if env is None else env

    def get(ours: str, slurm: str, default: int) -> int:
        v = env.get(ours) or env.get(slurm)
        return int(v) if v not in (None, "") else default

    return RankInfo(rank=get("SLURM_RL_RANK", "SLURM_PROCID", 0), world_size=get("SLURM_RL_WORLD_SIZE", "SLURM_NTASKS", 1),
                    local_rank=get("SLURM_RL_LOCAL_RANK", "SLURM_LOCALID", 0))


def backend_for(device: str) -> str:
    return "nccl" if device.startswith("cuda") else "gloo"


def serve_store(host: str, world_size: int, timeout_s: float) -> tuple[Any, str]:
    """Rank 0: the process group's key-value store on a free port; returns (store, "host:port")."""
    import torch.distributed as dist

    store = dist.TCPStore(host, 0, world_size, True, timeout=datetime.timedelta(seconds=timeout_s),
                          wait_for_workers=False)
    return store, f"{host}:{store.port}"


def join(info: RankInfo, *, device: str, timeout_s: float, store: Any = None, rdzv: str = "") -> None:
    """Join the process group: rank 0 with the store it serves, the others with rank 0's address."""
    import torch
    import torch.distributed as dist

    if store is None:
        host, _, port = rdzv.rpartition(":")
        store = dist.TCPStore(host, int(port), info.world_size, False, timeout=datetime.timedelta(seconds=timeout_s))
    if device.startswith("cuda"):
        torch.cuda.set_device(info.local_rank)
    dist.init_process_group(backend_for(device), store=store, rank=info.rank, world_size=info.world_size,
                            timeout=datetime.timedelta(seconds=timeout_s))


def leave() -> None:
    """Leave the process group if this process is in one. The role exits with os._exit right after:
    interpreter teardown with gloo's threads alive can abort ('terminate called without an active
    exception'), which would turn a clean exit into a crash (docs/failure-model.md)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        try:
            dist.destroy_process_group()
        except Exception:       # a peer already gone: nothing left to leave cleanly
            pass


def broadcast(obj: Any, info: RankInfo) -> Any:
    """Rank 0's `obj`, on every rank (pickled; for small control records and batches)."""
    if not info.distributed:
        return obj
    import torch.distributed as dist

    box = [obj if info.leader else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_ok(ok: bool, info: RankInfo) -> bool:
    """True on every rank if `ok` is true on every rank (one small all-reduce; also a barrier)."""
    if not info.distributed:
        return ok
    import torch
    import torch.distributed as dist

    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
    flag = torch.tensor([1 if ok else 0], dtype=torch.int32, device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item())
