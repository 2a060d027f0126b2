"""The puller side: fetch exactly one version from a holder, fenced and within a deadline."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from slurm_rl.errors import SyncError
from slurm_rl.sync.base import (
    Deadline,
    ProgressFn,
    Transport,
    VersionNotHeld,
    WeightSet,
)
from slurm_rl.sync.shm import pull_shm
from slurm_rl.sync.tcp import pull_tcp
from slurm_rl.sync.ucx import pull_ucx, ucx_status

log = logging.getLogger("slurm_rl.sync")


@dataclass(frozen=True, slots=True)
class Address:
    """A parsed holder address: tcp://host:port, ucx://host:port or shm://<host-id>/<socket-name>."""

    transport: Transport
    host: str          # hostname/IP, or the host id for shm
    port: int = 0
    name: str = ""     # shm socket name

    @classmethod
    def parse(cls, address: str) -> Address:
        scheme, sep, rest = address.partition("://")
        if not sep:
            raise SyncError(f"weight holder address {address!r} has no scheme (tcp://, ucx://, shm://)")
        transport = Transport.parse(scheme)
        if transport is Transport.SHM:
            host, _, name = rest.partition("/")
            if not host or not name:
                raise SyncError(f"bad shm address {address!r}; expected shm://<host-id>/<name>")
            return cls(transport, host, name=name)
        host, _, port = rest.rpartition(":")
        host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
        if not host or not port.isdigit():
            raise SyncError(f"bad {transport} address {address!r}; expected {transport}://host:port")
        return cls(transport, host, int(port))


def pull(address: str, version: int, *, deadline_s: float, progress: ProgressFn | None = None,
         auth_key: bytes | None = None) -> WeightSet:
    """Fetch exactly `version` from one holder; returns only complete, hash-verified data.

    Raises SyncError otherwise: a killed peer surfaces at once, a hung one at the deadline, a corrupt
    bucket as a hash mismatch, a version the holder does not hold as `VersionNotHeld`. Exceptions
    raised by `progress` propagate unchanged (they are the caller's).
    """
    if deadline_s <= 0:
        raise SyncError(f"deadline_s must be positive, got {deadline_s}")
    addr = Address.parse(address)
    deadline = Deadline(deadline_s)
    report = _guard(progress)
    t0 = time.perf_counter()
    try:
        if addr.transport is Transport.TCP:
            ws = pull_tcp(addr.host, addr.port, version, deadline=deadline, progress=report, key=auth_key)
        elif addr.transport is Transport.UCX:
            ws = pull_ucx(addr.host, addr.port, version, deadline=deadline, progress=report, key=auth_key)
        else:
            ws = pull_shm(addr.host, addr.name, version, deadline=deadline, progress=report, key=auth_key)
    except SyncError:
        raise
    except _CallerError as e:
        raise e.original from None
    except Exception as e:
        # A bug or an unforeseen error type: still a failed pull, never a crash of the role.
        log.exception("pulling weights v%d from %s failed unexpectedly", version, address)
        raise SyncError(f"pulling weights v{version} from {address} failed: {e!r}") from e
    dt = time.perf_counter() - t0
    log.info("pulled weights v%d (%.1f MB) from %s in %.3fs (%.2f GB/s)", version, ws.nbytes / 1e6, address, dt,
             ws.nbytes / max(dt, 1e-9) / 1e9)
    return ws


class _CallerError(Exception):
    """Carries an exception raised by the caller's progress callback through the transport."""

    def __init__(self, original: BaseException):
        super().__init__(repr(original))
        self.original = original


def _guard(progress: ProgressFn | None) -> ProgressFn | None:
    if progress is None:
        return None

    def report(done: int, total: int) -> None:
        try:
            progress(done, total)
        except Exception as e:
            raise _CallerError(e) from e
    return report


def pull_any(addresses: Sequence[str], version: int, *, deadline_s: float, progress: ProgressFn | None = None,
             auth_key: bytes | None = None, total_deadline_s: float | None = None) -> tuple[WeightSet, str]:
    """Try holders in order, moving to the next on SyncError; returns (weights, address used).

    Each attempt gets `deadline_s`; `total_deadline_s` (optional) bounds all attempts together.
    """
    if not addresses:
        raise SyncError(f"no holder to pull weights v{version} from")
    overall = Deadline(total_deadline_s) if total_deadline_s is not None else None
    errors: list[str] = []
    for address in addresses:
        budget = deadline_s
        if overall is not None:
            left = overall.end - time.monotonic()
            if left <= 0:
                errors.append(f"{address}: not tried (total deadline)")
                continue
            budget = min(budget, left)
        try:
            return pull(address, version, deadline_s=budget, progress=progress, auth_key=auth_key), address
        except SyncError as e:
            # A holder that has moved on to a newer version is normal in a running job, not a fault.
            level = logging.INFO if isinstance(e, VersionNotHeld) else logging.WARNING
            log.log(level, "pulling weights v%d from %s failed, trying the next holder: %s", version, address, e)
            errors.append(f"{address}: {e.message}")
    raise SyncError(f"no holder delivered weights v{version}:\n  " + "\n  ".join(errors),
                    hint="the controller's holder list may be stale; ask it again")


def choose_address(addrs: Mapping[str, str], *, prefer: str | Transport = "auto", local_host_id: str) -> str:
    """Pick one of a holder's addresses ({transport: address}).

    auto: shm when the holder is on this host (same host id), else ucx if ucxx imports here, else tcp.
    A named `prefer` is used when the holder offers it (shm only on the same host), else auto applies.
    """
    if not addrs:
        raise SyncError("the holder advertised no address")
    usable: dict[Transport, str] = {}
    for key, address in addrs.items():
        t = Transport.parse(key)
        if t is Transport.SHM and Address.parse(address).host != local_host_id:
            continue
        if t is Transport.UCX and not ucx_status()[0]:
            continue
        usable[t] = address
    if prefer != "auto":
        want = Transport.parse(prefer)
        if want in usable:
            return usable[want]
    for t in (Transport.SHM, Transport.UCX, Transport.TCP):
        if t in usable:
            return usable[t]
    raise SyncError(f"no usable address among {dict(addrs)} from this host",
                    hint="run the holder with tcp enabled, or install ucxx here")
