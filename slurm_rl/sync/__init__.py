"""Point-to-point weight sync: holders publish versions, anyone pulls the newest from any holder.

    ws = WeightSet.from_state_dict(model.state_dict(), version=step)     # trainer: one copy
    server = WeightServer(host=ip, transports=("tcp", "ucx", "shm"), auth_key=secret)
    addrs = server.start(); server.publish(ws)                          # register addrs with the controller
    ...
    address = choose_address(addrs, local_host_id=host_id())            # puller
    ws = pull(address, step, deadline_s=60, progress=report, auth_key=secret)
    engine.load(ws.tensors()); my_server.publish(ws)                    # relay

See docs/weight-sync.md for the contract, the transports and the measured bandwidth.
"""

from slurm_rl.sync.base import (
    DEFAULT_BUCKET_BYTES,
    Manifest,
    SyncAuthError,
    TensorMeta,
    Transport,
    TransportUnavailable,
    VersionNotHeld,
    WeightSet,
)
from slurm_rl.sync.buffers import trim_buffer_pool
from slurm_rl.sync.client import Address, BandwidthMeter, StallDeadline, choose_address, pull, pull_any
from slurm_rl.sync.fanout import RelayStep, relay_plan, star_plan
from slurm_rl.sync.hostid import host_id
from slurm_rl.sync.parts import Parts, pull_parts
from slurm_rl.sync.server import WeightServer
from slurm_rl.sync.shm import MAPPINGS as _MAPPINGS
from slurm_rl.sync.shm import shm_status
from slurm_rl.sync.ucx import ucx_status


def release_cached_memory() -> int:
    """Free recycled weight buffers and cached same-host mappings; returns bytes released."""
    return trim_buffer_pool() + _MAPPINGS.trim()


__all__ = [
    "DEFAULT_BUCKET_BYTES", "Address", "BandwidthMeter", "Manifest", "Parts", "RelayStep", "StallDeadline", "SyncAuthError",
    "TensorMeta", "Transport", "TransportUnavailable", "VersionNotHeld", "WeightServer", "WeightSet", "choose_address", "host_id", "pull",
    "pull_any", "pull_parts", "relay_plan", "release_cached_memory", "shm_status", "star_plan", "trim_buffer_pool", "ucx_status",
]
