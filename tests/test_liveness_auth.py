"""Strangers on a role's liveness port (issue 17): only the controller's links, which prove the run's
key (`liveness.link_token`), are held; a connection that does not within `netauth.AUTH_DEADLINE_S`
is closed, a wrong or replayed token at once, and at most `max_unauthenticated` wait (a new one
closes the oldest), so strangers can neither pile up nor keep the controller's link out."""

from __future__ import annotations

import os
import queue
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit

import pytest

from slurm_rl.liveness import LinkWatcher, LivenessListener, link_token
from slurm_rl.netauth import AUTH_DEADLINE_S

pytestmark = pytest.mark.timeout(120)

KEY = os.urandom(32)
MARGIN_S = 8.0        # CI runs under load: the closing may come late, never early


class Stranger:
    def __init__(self, address: str, send: bytes = b""):
        u = urlsplit(address)
        self.sock = socket.create_connection((u.hostname, u.port), timeout=10)
        if send:
            self.sock.sendall(send)
        self.sock.setblocking(False)

    def closed(self) -> bool:
        try:
            return self.sock.recv(4096) == b""
        except BlockingIOError:
            return False
        except OSError:
            return True


@contextmanager
def strangers(address: str, n: int) -> Iterator[list[Stranger]]:
    out: list[Stranger] = []
    try:
        for _ in range(n):
            out.append(Stranger(address))
        yield out
    finally:
        for s in out:
            s.sock.close()


@contextmanager
def listening(**opts: float) -> Iterator[LivenessListener]:
    live = LivenessListener("127.0.0.1", key=KEY, **opts)  # type: ignore[arg-type]
    try:
        yield live
    finally:
        live.close()


@contextmanager
def watching(address: str, key: bytes = KEY) -> Iterator[LinkWatcher]:
    w = LinkWatcher(connect_timeout_s=5.0, key=key)
    try:
        w.watch(address)
        wait_for(lambda: _linked(w, address), MARGIN_S, "the watcher connected")
        yield w
    finally:
        w.close()


def _linked(w: LinkWatcher, address: str) -> bool:
    with w._lock:
        return w._socks.get(address) is not None


def wait_for(cond: Callable[[], bool], timeout_s: float, what: str) -> None:
    t0 = time.monotonic()
    while not cond():
        if time.monotonic() - t0 > timeout_s:
            raise AssertionError(f"{what}: not within {timeout_s:.1f}s")
        time.sleep(0.02)


def test_idle_strangers_are_closed_and_the_controllers_link_is_kept() -> None:
    with listening() as live, strangers(live.address, 8) as idle, watching(live.address) as w:
        wait_for(lambda: all(s.closed() for s in idle), AUTH_DEADLINE_S + MARGIN_S,
                 "8 idle unauthenticated liveness connections closed by the role")
        time.sleep(0.5)            # past the deadline for the watcher's link too: still held
        with pytest.raises(queue.Empty):
            w.lost.get_nowait()
        assert _linked(w, live.address)
        # and it still carries the crash signal: the role's end ends it
        live.close()
        assert w.lost.get(timeout=MARGIN_S).address == live.address


def test_a_wrong_key_a_bad_token_and_a_replayed_token_are_closed_at_once() -> None:
    with listening(auth_deadline_s=300.0) as live:
        token = link_token(KEY, live.address)
        first = Stranger(live.address, send=token)
        replay = Stranger(live.address, send=token)
        garbage = Stranger(live.address, send=os.urandom(48))
        other_key = Stranger(live.address, send=link_token(os.urandom(32), live.address))
        other_addr = Stranger(live.address, send=link_token(KEY, "tcp://127.0.0.1:1"))
        wait_for(lambda: all(s.closed() for s in (replay, garbage, other_key, other_addr)), MARGIN_S,
                 "connections with a bad token closed")
        assert not first.closed()
        for s in (first, replay, garbage, other_key, other_addr):
            s.sock.close()
        w = LinkWatcher(connect_timeout_s=5.0, key=os.urandom(32))   # a controller of another run
        try:
            w.watch(live.address)
            # its link is closed at once: lost (it may be gone before it can be seen connected)
            assert w.lost.get(timeout=MARGIN_S).address == live.address
        finally:
            w.close()


def test_unauthenticated_liveness_connections_are_capped_the_oldest_closed_first() -> None:
    with listening(auth_deadline_s=300.0, max_unauthenticated=4) as live, strangers(live.address, 7) as idle:
        wait_for(lambda: all(s.closed() for s in idle[:3]), MARGIN_S, "the 3 oldest strangers closed at the cap")
        assert not any(s.closed() for s in idle[3:])
        with watching(live.address) as w:                    # the controller still gets in
            wait_for(lambda: idle[3].closed(), MARGIN_S, "the oldest stranger closed for the controller")
            assert not any(s.closed() for s in idle[4:])
            with pytest.raises(queue.Empty):
                w.lost.get(timeout=0.5)
