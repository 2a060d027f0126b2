"""Plain TCP transport: the handshake, then each bucket with `sendall` / `recv_into` straight into the
receiver's one buffer. No framing per bucket (sizes come from the manifest), no intermediate copies.

Socket buffers are left to Linux autotuning: setting SO_SNDBUF/SO_RCVBUF explicitly caps them at
net.core.[rw]mem_max (4 MiB here) and measured no faster on loopback, while autotuning grows them to
tcp_[rw]mem (32 MiB) where a real network's bandwidth-delay product needs it.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from typing import Any

from slurm_rl.errors import SyncError
from slurm_rl.netauth import AUTH_DEADLINE_S, MAX_UNAUTHENTICATED, Pending
from slurm_rl.sync.base import Assembler, Deadline, ProgressFn, WeightSet
from slurm_rl.sync.holdings import Holdings
from slurm_rl.sync.stream import (
    client_handshake,
    recv_done,
    recv_into_exact,
    send_all,
    send_done,
    server_handshake,
)
from slurm_rl.sync.wire import Outcome

log = logging.getLogger("slurm_rl.sync")


class ConnectionSet:
    """Live connection threads of a server, so `stop()` can cut them; those that authenticated are
    the transfers, which the cap counts (strangers are held apart, in `pending`, and never count)."""

    def __init__(self, max_unauthenticated: int) -> None:
        self._lock = threading.Lock()
        self._socks: set[socket.socket] = set()
        self._transfers: set[socket.socket] = set()
        self.pending: Pending[socket.socket] = Pending(max_unauthenticated)

    def add(self, s: socket.socket) -> None:
        """A new connection, unauthenticated; the oldest strangers beyond the cap are cut."""
        with self._lock:
            self._socks.add(s)
        for old in self.pending.add(s):
            _cut(old)

    def authenticated(self, s: socket.socket) -> int | None:
        """`s` proved the key: the number of transfers with it, or None if it was cut meanwhile."""
        if not self.pending.done(s):
            return None
        with self._lock:
            self._transfers.add(s)
            return len(self._transfers)

    def discard(self, s: socket.socket) -> None:
        self.pending.done(s)
        with self._lock:
            self._socks.discard(s)
            self._transfers.discard(s)

    def close_all(self) -> None:
        with self._lock:
            socks, self._socks = list(self._socks), set()
        for s in socks:
            _cut(s)


def _cut(s: socket.socket) -> None:
    """End a connection another thread serves: its blocked call fails at once, and it closes it."""
    try:
        s.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


class SocketServer:
    """Accept loop + one thread per connection, shared by the TCP and the shm transports.

    A connection must authenticate within `auth_deadline_s`; at most `max_unauthenticated` wait to
    (netauth); only authenticated ones count toward `max_transfers`.
    """

    kind = "socket"

    def __init__(self, holdings: Holdings, key: bytes | None, *, stall_timeout_s: float, max_transfers: int,
                 auth_deadline_s: float = AUTH_DEADLINE_S, max_unauthenticated: int = MAX_UNAUTHENTICATED):
        self.holdings = holdings
        self.key = key
        self.stall_timeout_s = stall_timeout_s
        self.max_transfers = max_transfers
        self.auth_deadline_s = auth_deadline_s
        self._listen: socket.socket | None = None
        self._stop = threading.Event()
        self._conns = ConnectionSet(max_unauthenticated)
        self._thread: threading.Thread | None = None

    def _serve_loop(self) -> None:
        assert self._listen is not None
        while not self._stop.is_set():
            try:
                conn, addr = self._listen.accept()
            except TimeoutError:
                continue
            except OSError:
                if self._stop.is_set():
                    return
                log.exception("%s weight server: accept failed", self.kind)
                time.sleep(0.1)
                continue
            peer = f"{self.kind} puller {addr or 'local'}"
            auth_deadline = Deadline(self.auth_deadline_s)      # from the accept on
            self._conns.add(conn)
            threading.Thread(target=self._handle, args=(conn, peer, auth_deadline), name=f"slurm-rl-sync-{self.kind}",
                             daemon=True).start()

    def _admit(self, conn: socket.socket) -> str | None:
        n = self._conns.authenticated(conn)
        if n is None:
            raise SyncError("cut while authenticating (too many unauthenticated connections)")
        refuse = self._refuse(conn)
        if refuse is None and n > self.max_transfers:
            refuse = f"{n - 1} transfers already running (max {self.max_transfers})"
        return refuse

    def _handle(self, conn: socket.socket, peer: str, auth_deadline: Deadline) -> None:
        ws: WeightSet | None = None
        try:
            ws = server_handshake(conn, self.holdings, self.key, Deadline(self.stall_timeout_s), peer,
                                  auth_deadline=auth_deadline, admit=lambda: self._admit(conn))
            if ws is None:
                return
            t0 = time.perf_counter()
            self._send_body(conn, ws, peer)
            outcome = recv_done(conn, Deadline(self._done_timeout(ws)), peer)
            dt = time.perf_counter() - t0
            if outcome == Outcome.VERIFIED:
                log.debug("served weights v%d (%d B) to %s in %.3fs", ws.version, ws.nbytes, peer, dt)
            else:
                log.warning("%s reported weights v%d failed verification", peer, ws.version)
        except SyncError as e:
            if not self._stop.is_set():
                log.info("transfer to %s ended early: %s", peer, e)
        except Exception:
            log.exception("transfer to %s failed", peer)
        finally:
            if ws is not None:
                self.holdings.release(ws)
            self._conns.discard(conn)
            conn.close()

    def _refuse(self, conn: socket.socket) -> str | None:
        return None

    def _done_timeout(self, ws: WeightSet) -> float:
        return self.stall_timeout_s

    def _send_body(self, conn: socket.socket, ws: WeightSet, peer: str) -> None:
        raise NotImplementedError

    def _start_thread(self) -> None:
        assert self._listen is not None
        self._listen.settimeout(0.5)   # the accept loop also wakes up now and then to notice stop()
        self._thread = threading.Thread(target=self._serve_loop, name=f"slurm-rl-sync-{self.kind}-accept", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._listen is not None:
            try:
                self._listen.shutdown(socket.SHUT_RDWR)     # wakes the accept loop at once
            except OSError:
                pass
            self._listen.close()
        self._conns.close_all()
        if self._thread is not None:
            self._thread.join(timeout=2)


class TcpServer(SocketServer):
    kind = "tcp"

    def __init__(self, host: str, port: int, holdings: Holdings, key: bytes | None, **opts: Any):
        super().__init__(holdings, key, **opts)
        self.host = host
        self.port = port

    def start(self) -> str:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        s = socket.socket(family, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((self.host, self.port))
        except OSError as e:
            s.close()
            raise SyncError(f"cannot listen for weight pulls on {self.host}:{self.port}: {e}",
                            hint="pick another port or port=0") from None
        s.listen(128)
        self._listen = s
        self._start_thread()
        port = s.getsockname()[1]
        host = f"[{self.host}]" if family == socket.AF_INET6 else self.host
        return f"tcp://{host}:{port}"

    def _send_body(self, conn: socket.socket, ws: WeightSet, peer: str) -> None:
        buf = ws.buffer()
        m = ws.manifest
        for k in range(m.num_buckets):
            s, e = m.bucket_range(k)
            # The deadline is per bucket: a slow-but-moving puller is fine, a stalled one is cut.
            send_all(conn, buf[s:e], Deadline(self.stall_timeout_s), peer)


def pull_tcp(host: str, port: int, version: int, *, deadline: Deadline, progress: ProgressFn | None,
             key: bytes | None, part: int = 0) -> WeightSet:
    peer = f"tcp://{host}:{port}"
    try:
        sock = socket.create_connection((host, port), timeout=deadline.remaining(f"connect to {peer}"))
    except TimeoutError:
        raise SyncError(f"connecting to {peer} timed out") from None
    except OSError as e:
        raise SyncError(f"cannot connect to {peer}: {e}") from None
    outcome = Outcome.FAILED
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        manifest = client_handshake(sock, version, key, deadline, peer, part)
        asm = Assembler(manifest, progress)
        for k in range(manifest.num_buckets):
            recv_into_exact(sock, asm.view(k), deadline, peer)
            asm.landed(k)
        ws = asm.result()
        outcome = Outcome.VERIFIED
        return ws
    finally:
        try:
            send_done(sock, outcome, Deadline(min(1.0, max(0.01, deadline.end - time.monotonic()))), peer)
        except SyncError:
            pass
        sock.close()
