"""A crash signal that needs no waiting: one idle TCP connection per role, held by the controller.

The role listens on a port of its own (`LivenessListener`) and never sends anything on it; the
controller connects once per role process (`LinkWatcher`) and waits for the connection to become
readable. The only thing that can arrive is its end: when the role's process dies, however it dies
(SIGKILL, a segfault, the OOM killer, its node's processes killed), its kernel closes the socket at
once, and the controller hears it within milliseconds instead of after `suspect_after_s` of
heartbeat silence. A stopped or hung process keeps the connection open (its kernel is fine), and a
node that loses power sends nothing: those are still found by heartbeat silence and the probe.

A lost link is only a reason to look (the role becomes SUSPECT and its endpoint is probed); the
probe's refusal is what confirms the death, so a connection lost for any other reason (the role
restarting its listener, a network blip) costs one probe, not a role.
"""

from __future__ import annotations

import collections
import hashlib
import hmac
import logging
import os
import queue
import selectors
import socket
import threading
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

from slurm_rl.netauth import AUTH_DEADLINE_S, MAX_UNAUTHENTICATED, Pending

log = logging.getLogger("slurm_rl.liveness")

_NONCE = 16
TOKEN_SIZE = _NONCE + 32
_USED_NONCES = 4096


def link_token(key: bytes | None, address: str, nonce: bytes | None = None) -> bytes:
    """What the controller sends first on a link: a fresh nonce and its HMAC under the run's key, bound
    to the listener's address (no round trip: a stopped role's kernel still takes it)."""
    nonce = nonce if nonce is not None else os.urandom(_NONCE)
    return nonce + hmac.new(key or b"", b"slurm-rl liveness\0" + address.encode() + b"\0" + nonce, hashlib.sha256).digest()


class LivenessListener:
    """The role side: accept the controller's connections and hold them until either side ends.

    A connection must deliver a valid `link_token` (the run's key, a nonce not seen before) within
    `auth_deadline_s` of its accept, or it is closed; at most `max_unauthenticated` wait to, a new
    one closing the oldest (slurm_rl.netauth). Only the controller's links are held for long.
    """

    def __init__(self, host: str, key: bytes | None = None, *, auth_deadline_s: float = AUTH_DEADLINE_S,
                 max_unauthenticated: int = MAX_UNAUTHENTICATED):
        self.key = key
        self.auth_deadline_s = auth_deadline_s
        self._listen = socket.create_server((host, 0))
        self.address = f"tcp://{host}:{self._listen.getsockname()[1]}"
        self._sel = selectors.DefaultSelector()
        self._sel.register(self._listen, selectors.EVENT_READ)
        self._pending: Pending[socket.socket] = Pending(max_unauthenticated)
        self._partial: dict[socket.socket, tuple[float, bytes]] = {}     # accepted at (monotonic), token so far
        self._used: collections.OrderedDict[bytes, None] = collections.OrderedDict()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="slurm-rl-liveness", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            timeout = 0.5
            if self._partial:
                now = time.monotonic()
                for sock, (t, _) in list(self._partial.items()):
                    if now - t > self.auth_deadline_s:
                        self._read(sock)          # a token that came in time (a stopped role) still counts
                        if sock in self._partial:
                            self._drop(sock)
                if self._partial:
                    first = min(t for t, _ in self._partial.values())
                    timeout = min(timeout, max(0.01, first + self.auth_deadline_s - now))
            for key, _ in self._sel.select(timeout=timeout):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                if sock is self._listen:
                    try:
                        conn, _ = self._listen.accept()
                    except OSError:
                        continue
                    conn.setblocking(False)
                    self._sel.register(conn, selectors.EVENT_READ)
                    self._partial[conn] = (time.monotonic(), b"")
                    for old in self._pending.add(conn):
                        self._drop(old)
                    continue
                self._read(sock)

    def _read(self, sock: socket.socket) -> None:
        try:
            data = sock.recv(TOKEN_SIZE)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:               # the controller went away (or reconnected): let it go
            self._drop(sock)
            return
        if sock not in self._partial:
            return                 # an authenticated link sends nothing; ignore what it does
        t, got = self._partial[sock]
        got += data
        if len(got) < TOKEN_SIZE:
            self._partial[sock] = (t, got)
            return
        nonce = got[:_NONCE]
        if nonce in self._used or not hmac.compare_digest(got[:TOKEN_SIZE], link_token(self.key, self.address, nonce)):
            log.info("closing a liveness connection that did not authenticate")
            self._drop(sock)
            return
        self._used[nonce] = None
        while len(self._used) > _USED_NONCES:
            self._used.popitem(last=False)
        del self._partial[sock]
        self._pending.done(sock)

    def _drop(self, sock: socket.socket) -> None:
        self._partial.pop(sock, None)
        self._pending.done(sock)
        try:
            self._sel.unregister(sock)
        except (KeyError, ValueError):
            pass
        sock.close()

    def close(self) -> None:
        if self._stop.is_set():
            return
        self._stop.set()
        self._thread.join(timeout=2)
        for key in list(self._sel.get_map().values()):
            key.fileobj.close()  # type: ignore[union-attr]
        self._sel.close()


@dataclass(frozen=True)
class LinkLost:
    address: str
    at: float                  # time.monotonic() (the controller judges it against its monotonic clock)
    why: str


class LinkWatcher:
    """The controller side: one connection per watched address; `lost` gets a LinkLost when one ends."""

    def __init__(self, connect_timeout_s: float = 1.0, key: bytes | None = None):
        self.connect_timeout_s = connect_timeout_s
        self.key = key
        self.lost: queue.SimpleQueue[LinkLost] = queue.SimpleQueue()
        self._sel = selectors.DefaultSelector()
        self._lock = threading.Lock()
        self._socks: dict[str, socket.socket] = {}
        self._stop = threading.Event()
        self._wake_r, self._wake_w = socket.socketpair()
        self._sel.register(self._wake_r, selectors.EVENT_READ, data=None)
        self._thread = threading.Thread(target=self._loop, name="slurm-rl-links", daemon=True)
        self._thread.start()

    def watch(self, address: str) -> None:
        """Connect to a role's liveness address (on a helper thread) and watch it; idempotent."""
        with self._lock:
            if not address or address in self._socks or self._stop.is_set():
                return
            self._socks[address] = None  # type: ignore[assignment]   # connecting
        threading.Thread(target=self._connect, args=(address,), name="slurm-rl-link-connect", daemon=True).start()

    def _connect(self, address: str) -> None:
        sock = None
        try:
            u = urlsplit(address)
            sock = socket.create_connection((u.hostname, u.port), timeout=self.connect_timeout_s)
            sock.sendall(link_token(self.key, address))     # 48 bytes: the kernel takes them at once
        except (OSError, ValueError) as e:
            if sock is not None:
                sock.close()
            # not a death signal (the process may be fine and the port filtered): heartbeats and
            # probes still cover this role, only the fast path is missing
            with self._lock:
                self._socks.pop(address, None)
            log.warning("cannot watch %s (%s); its crashes are found by heartbeat silence instead", address, e)
            return
        sock.setblocking(False)
        with self._lock:
            if self._socks.get(address, 0) is not None or self._stop.is_set():   # unwatched meanwhile
                sock.close()
                return
            self._socks[address] = sock
            self._sel.register(sock, selectors.EVENT_READ, data=address)
        self._wake_w.send(b"x")

    def unwatch(self, address: str) -> None:
        with self._lock:
            sock = self._socks.pop(address, None)
            if sock is not None:
                self._sel.unregister(sock)
                sock.close()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                events = self._sel.select(timeout=0.5)
            except (OSError, ValueError):      # a socket closed under select by unwatch: look again
                continue
            for key, _ in events:
                if key.data is None:
                    try:
                        self._wake_r.recv(4096)
                    except OSError:
                        pass
                    continue
                address = key.data
                try:
                    data = key.fileobj.recv(64)  # type: ignore[union-attr]
                    why = "closed by the role's host" if not data else ""
                except BlockingIOError:
                    continue
                except OSError as e:
                    why = f"reset ({e.strerror or e})"
                if not why:
                    continue                    # the role sent bytes: it never does; ignore
                with self._lock:
                    sock = self._socks.pop(address, None)
                    if sock is not None:
                        self._sel.unregister(sock)
                        sock.close()
                if sock is not None:
                    self.lost.put(LinkLost(address, time.monotonic(), why))

    def close(self) -> None:
        self._stop.set()
        self._wake_w.send(b"x")
        self._thread.join(timeout=2)
        with self._lock:
            for sock in self._socks.values():
                if sock is not None:
                    sock.close()
            self._socks.clear()
        self._sel.close()
        self._wake_r.close()
        self._wake_w.close()


__all__ = ["LinkLost", "LinkWatcher", "LivenessListener"]
