"""The puller side: fetch exactly one version from a holder, fenced and within a deadline.

Two bounds on a pull: a total deadline, sized by the caller to the bytes to move
(`BandwidthMeter.deadline_s`: bytes / the bandwidth measured on earlier pulls, times a slack,
never under a floor), and optionally a stall bound: a holder that delivers nothing for `stall_s`
is given up on at once, however much of the total is left. Large healthy pulls then get the time
they need while a hung holder still costs only seconds.
"""

from __future__ import annotations

import logging
import statistics
import threading
import time
from collections import deque
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
from slurm_rl.sync.ucx import ucx_status
from slurm_rl.sync.ucx_client import pull_ucx

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


class StallDeadline(Deadline):
    """A total deadline that also ends `stall_s` after the last sign of progress (`touch`).

    Transports read `end` before every blocking call, so moving it on progress is all it takes."""

    __slots__ = ("stall_s", "total_end")

    def __init__(self, seconds: float, stall_s: float):
        super().__init__(seconds)
        self.total_end = self.end
        self.stall_s = stall_s
        self.touch()

    def touch(self) -> None:
        self.end = min(self.total_end, time.monotonic() + self.stall_s)

    def stalled(self) -> bool:
        """The stall bound, not the total deadline, has passed."""
        return self.end < self.total_end and time.monotonic() >= self.end

    def remaining(self, what: str = "transfer") -> float:
        left = self.end - time.monotonic()
        if left <= 0 and self.end < self.total_end:
            raise SyncError(f"{what}: nothing arrived for {self.stall_s:.1f}s (peer hung or stalled)")
        return super().remaining(what)


class BandwidthMeter:
    """The bandwidth of this process's recent pulls, and the deadline it gives the next one. Thread-safe."""

    def __init__(self, keep: int = 8):
        self._seen: deque[float] = deque(maxlen=keep)
        self._lock = threading.Lock()

    def add(self, nbytes: int, seconds: float) -> None:
        # tiny pulls are all latency: they would make a later large pull look fast or slow at random
        if nbytes >= (1 << 20) and seconds > 0:
            with self._lock:
                self._seen.append(nbytes / seconds)

    def bytes_per_s(self) -> float | None:
        """Median of the recent pulls (one slow pull does not double every later deadline)."""
        with self._lock:
            return statistics.median(self._seen) if self._seen else None

    def deadline_s(self, nbytes: int, *, floor_s: float, slack: float, assumed_bytes_per_s: float) -> float:
        """`slack` times the expected duration of moving `nbytes`, at least `floor_s`; before any pull
        was measured, at `assumed_bytes_per_s`."""
        rate = self.bytes_per_s() or assumed_bytes_per_s
        return max(floor_s, slack * nbytes / rate)


def pull(address: str, version: int, *, deadline_s: float, progress: ProgressFn | None = None,
         auth_key: bytes | None = None, stall_s: float | None = None,
         meter: BandwidthMeter | None = None, part: int = 0) -> WeightSet:
    """Fetch exactly `version` (its `part`, for a sharded trainer's version: slurm_rl.sync.parts) from
    one holder; returns only complete, hash-verified data.

    Raises SyncError otherwise: a killed peer surfaces at once, a hung one at the deadline (or after
    `stall_s` without a verified bucket), a corrupt bucket as a hash mismatch, a version the holder
    does not hold as `VersionNotHeld`. Exceptions raised by `progress` propagate unchanged (they are
    the caller's). A successful pull's bytes and time go to `meter`.
    """
    if deadline_s <= 0:
        raise SyncError(f"deadline_s must be positive, got {deadline_s}")
    if stall_s is not None and stall_s <= 0:
        raise SyncError(f"stall_s must be positive, got {stall_s}")
    addr = Address.parse(address)
    deadline = Deadline(deadline_s) if stall_s is None else StallDeadline(deadline_s, stall_s)
    report = _guard(progress)
    if isinstance(deadline, StallDeadline):
        report = _touching(deadline, report)
    t0 = time.perf_counter()
    try:
        if addr.transport is Transport.TCP:
            ws = pull_tcp(addr.host, addr.port, version, deadline=deadline, progress=report, key=auth_key, part=part)
        elif addr.transport is Transport.UCX:
            ws = pull_ucx(addr.host, addr.port, version, deadline=deadline, progress=report, key=auth_key, part=part)
        else:
            ws = pull_shm(addr.host, addr.name, version, deadline=deadline, progress=report, key=auth_key, part=part)
    except SyncError as e:
        if isinstance(deadline, StallDeadline) and deadline.stalled():
            raise SyncError(f"pulling weights v{version} from {address}: nothing arrived for {deadline.stall_s:.1f}s "
                            f"(holder hung or stalled): {e.message}") from None
        raise
    except _CallerError as e:
        raise e.original from None
    except Exception as e:
        # A bug or an unforeseen error type: still a failed pull, never a crash of the role.
        log.exception("pulling weights v%d from %s failed unexpectedly", version, address)
        raise SyncError(f"pulling weights v{version} from {address} failed: {e!r}") from e
    dt = time.perf_counter() - t0
    if meter is not None:
        meter.add(ws.nbytes, dt)
    log.info("pulled weights v%d%s (%.1f MB) from %s in %.3fs (%.2f GB/s)", version,
             f" part {part}/{ws.manifest.parts}" if ws.manifest.parts > 1 else "", ws.nbytes / 1e6, address, dt,
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


def _touching(deadline: StallDeadline, report: ProgressFn | None) -> ProgressFn:
    def touched(done: int, total: int) -> None:
        deadline.touch()
        if report is not None:
            report(done, total)
    return touched


def pull_any(addresses: Sequence[str], version: int, *, deadline_s: float, progress: ProgressFn | None = None,
             auth_key: bytes | None = None, total_deadline_s: float | None = None, stall_s: float | None = None,
             meter: BandwidthMeter | None = None, part: int = 0) -> tuple[WeightSet, str]:
    """Try holders in order, moving to the next on SyncError; returns (weights, address used).

    Each attempt gets `deadline_s` (and `stall_s`, see `pull`); `total_deadline_s` (optional) bounds
    all attempts together. Moving on to the next holder is reported as `progress(0, 0)`: the puller
    is alive and trying, though no byte of this version has arrived yet.
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
            return pull(address, version, deadline_s=budget, progress=progress, auth_key=auth_key, stall_s=stall_s,
                        meter=meter, part=part), address
        except SyncError as e:
            # A holder that has moved on to a newer version is normal in a running job, not a fault.
            level = logging.INFO if isinstance(e, VersionNotHeld) else logging.WARNING
            log.log(level, "pulling weights v%d from %s failed, trying the next holder: %s", version, address, e)
            errors.append(f"{address}: {e.message}")
            if progress is not None:
                progress(0, 0)
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
