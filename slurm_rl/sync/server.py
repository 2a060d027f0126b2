"""The holder side: one WeightServer per process serves its newest version(s) on every transport it runs."""

from __future__ import annotations

import atexit
import logging
import weakref
from collections.abc import Sequence
from typing import Protocol

from slurm_rl.errors import SyncError
from slurm_rl.netauth import AUTH_DEADLINE_S, MAX_UNAUTHENTICATED
from slurm_rl.sync.base import Transport, WeightSet
from slurm_rl.sync.holdings import Holdings
from slurm_rl.sync.hostid import host_id
from slurm_rl.sync.shm import ShmServer, shm_status
from slurm_rl.sync.tcp import TcpServer
from slurm_rl.sync.ucx import ucx_status
from slurm_rl.sync.ucx_server import UcxServer

log = logging.getLogger("slurm_rl.sync")


_RUNNING: weakref.WeakSet[WeightServer] = weakref.WeakSet()


@atexit.register
def _stop_all() -> None:
    # Stop transports while the interpreter is whole: a UCX progress thread torn down mid-call at
    # exit can crash the process on its way out.
    for server in list(_RUNNING):
        server.stop()


class _TransportServer(Protocol):
    def start(self) -> str: ...
    def stop(self) -> None: ...


class WeightServer:
    """Serves published weight versions to many pullers at once, point to point.

    Any process that holds a version (the trainer, or a rollout/spare that pulled it) publishes it
    here, which is what makes holders relay. Transports that cannot run in this process (no ucxx,
    not Linux) are skipped with a warning and are absent from `start()`'s addresses; the reasons are
    in `unavailable`.

    `port` is the TCP port (0: any); UCX listens on port+1 when a port is given. A transfer that
    makes no progress for `stall_timeout_s` (a hung or vanished puller) is cut so it cannot pin an
    old version forever; at most `max_transfers` run at once, later pullers are told BUSY. A
    connection that has not authenticated within `auth_deadline_s` is closed, at most
    `max_unauthenticated` are held (a new one closes the oldest), and they never count as
    transfers (slurm_rl.netauth).
    """

    def __init__(self, *, host: str, transports: Sequence[str | Transport] = ("tcp",), port: int = 0,
                 auth_key: bytes | None = None, stall_timeout_s: float = 60.0, max_transfers: int = 64,
                 auth_deadline_s: float = AUTH_DEADLINE_S, max_unauthenticated: int = MAX_UNAUTHENTICATED):
        self.host = host
        self.transports = tuple(dict.fromkeys(Transport.parse(t) for t in transports))
        if not self.transports:
            raise SyncError("a WeightServer needs at least one transport")
        self.port = port
        self.auth_key = auth_key
        self.stall_timeout_s = stall_timeout_s
        self.max_transfers = max_transfers
        self.auth_deadline_s = auth_deadline_s
        self.max_unauthenticated = max_unauthenticated
        self.unavailable: dict[Transport, str] = {}
        self.addresses: dict[str, str] = {}
        self._holdings = Holdings()
        self._servers: list[_TransportServer] = []

    def start(self) -> dict[str, str]:
        """Start listening; returns {transport: address} for the transports that run."""
        if self._servers:
            return dict(self.addresses)
        opts = dict(stall_timeout_s=self.stall_timeout_s, max_transfers=self.max_transfers,
                    auth_deadline_s=self.auth_deadline_s, max_unauthenticated=self.max_unauthenticated)
        try:
            for t in self.transports:
                server: _TransportServer
                if t is Transport.TCP:
                    server = TcpServer(self.host, self.port, self._holdings, self.auth_key, **opts)
                elif t is Transport.UCX:
                    ok, why = ucx_status()
                    if not ok:
                        self._skip(t, why)
                        continue
                    server = UcxServer(self.host, self.port + 1 if self.port else 0, self._holdings, self.auth_key, **opts)
                else:
                    ok, why = shm_status()
                    if not ok:
                        self._skip(t, why)
                        continue
                    server = ShmServer(host_id(), self._holdings, self.auth_key, **opts)
                try:
                    address = server.start()
                except SyncError as e:
                    if t is Transport.TCP:
                        raise
                    self._skip(t, str(e))
                    continue
                self._servers.append(server)
                self.addresses[t.value] = address
        except BaseException:
            self.stop()
            raise
        if not self.addresses:
            raise SyncError(f"no weight-sync transport could start: {self.unavailable}")
        _RUNNING.add(self)
        log.info("weight server listening: %s", " ".join(self.addresses.values()))
        return dict(self.addresses)

    def _skip(self, t: Transport, why: str) -> None:
        self.unavailable[t] = why
        log.warning("weight-sync transport %s not available here: %s", t, why)

    def publish(self, ws: WeightSet | Sequence[WeightSet]) -> None:
        """Serve `ws` from now on (a whole set, or parts of one version: slurm_rl.sync.parts); older
        versions stay only while transfers of them are in flight."""
        group = [ws] if isinstance(ws, WeightSet) else list(ws)
        self._holdings.publish(group)
        log.info("serving weights v%d%s (%.1f MB)", group[0].version,
                 "" if group[0].manifest.parts == 1 else f" parts {[g.part for g in group]}/{group[0].manifest.parts}",
                 sum(g.nbytes for g in group) / 1e6)

    def versions(self) -> list[int]:
        return self._holdings.versions()

    @property
    def current(self) -> int | None:
        return self._holdings.current

    def stop(self) -> None:
        """Stop listening, cut running transfers, drop every held version."""
        for s in self._servers:
            try:
                s.stop()
            except Exception:
                log.exception("stopping a weight-sync transport")
        self._servers.clear()
        self.addresses.clear()
        self._holdings.clear()
        _RUNNING.discard(self)

    def __enter__(self) -> WeightServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
