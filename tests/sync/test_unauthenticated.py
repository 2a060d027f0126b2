"""Strangers on a weight holder's ports (issue 17): a connection that does not authenticate within
`netauth.AUTH_DEADLINE_S` is closed, at most `max_unauthenticated` are held (a new one closes the
oldest), and none of them counts toward the transfer limit, so a real pull goes through while they
sit there. Every transport (tcp, ucx, shm); a stranger opens the transport's connection, reads the
holder's HELLO and then says nothing."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit

import pytest

from slurm_rl.netauth import AUTH_DEADLINE_S
from slurm_rl.sync import WeightServer, WeightSet, pull, shm_status, ucx_status
from slurm_rl.sync.base import Deadline
from slurm_rl.sync.wire import HELLO_SIZE
from tests.sync._holder import make_state

pytestmark = pytest.mark.timeout(120)

KEY = os.urandom(32)
MARGIN_S = 8.0        # CI runs under load: the closing may come late, never early


@pytest.fixture(params=("tcp", "ucx", "shm"))
def transport(request: pytest.FixtureRequest) -> str:
    t = request.param
    if t == "ucx" and not ucx_status()[0]:          # as tests/sync/test_contract.py: a broken setup
        pytest.fail(f"ucxx does not import here: {ucx_status()[1]} (install with: pip install -e '.[ucx]')")
    if t == "shm" and not shm_status()[0]:
        pytest.fail(f"no shm transport here: {shm_status()[1]}")
    return t


@contextmanager
def holder(transport: str, **opts: Any) -> Iterator[tuple[WeightServer, str]]:
    server = WeightServer(host="127.0.0.1", transports=(transport,), auth_key=KEY, **opts)
    addr = server.start()[transport]
    server.publish(WeightSet.from_state_dict(make_state(1 << 16, seed=1), 1))
    try:
        yield server, addr
    finally:
        server.stop()


class Stranger:
    """A connection that reads the HELLO and never sends its REQUEST."""

    def __init__(self, transport: str, address: str):
        self.transport = transport
        u = urlsplit(address)
        if transport == "ucx":
            from slurm_rl.sync.ucx import _HELLO, _api
            from slurm_rl.sync.ucx_client import _Session
            self.session = _Session(*_api(), u.hostname, u.port)
            self.session.recv(_HELLO, "hello", Deadline(10), 64)
            return
        if transport == "tcp":
            self.sock = socket.create_connection((u.hostname, u.port), timeout=10)
        else:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.settimeout(10)
            self.sock.connect("\0" + u.path.lstrip("/"))
        got = b""
        while len(got) < HELLO_SIZE:
            part = self.sock.recv(HELLO_SIZE - len(got))
            assert part, "the holder closed a new connection before its HELLO"
            got += part
        self.sock.setblocking(False)

    def closed(self) -> bool:
        """Whether the holder has closed this connection (looks without waiting)."""
        if self.transport == "ucx":
            self.session.worker.progress()
            return not self.session.ep.alive
        try:
            return self.sock.recv(4096) == b""
        except BlockingIOError:
            return False
        except OSError:
            return True

    def close(self) -> None:
        if self.transport == "ucx":
            self.session.close()
        else:
            self.sock.close()


@contextmanager
def strangers(transport: str, address: str, n: int) -> Iterator[list[Stranger]]:
    out: list[Stranger] = []
    try:
        for _ in range(n):
            out.append(Stranger(transport, address))
        yield out
    finally:
        for s in out:
            s.close()


def wait_for(cond: Callable[[], bool], timeout_s: float, what: str) -> float:
    """Poll `cond` until true; returns the seconds it took, fails after `timeout_s`."""
    t0 = time.monotonic()
    while not cond():
        if time.monotonic() - t0 > timeout_s:
            raise AssertionError(f"{what}: not within {timeout_s:.1f}s")
        time.sleep(0.02)
    return time.monotonic() - t0


def test_idle_strangers_are_closed_at_the_auth_deadline(transport: str) -> None:
    with holder(transport) as (_, addr), strangers(transport, addr, 8) as idle:
        assert not any(s.closed() for s in idle)
        wait_for(lambda: all(s.closed() for s in idle), AUTH_DEADLINE_S + MARGIN_S,
                 f"8 idle unauthenticated {transport} connections closed by the holder")
        # the holder still serves
        assert pull(addr, 1, deadline_s=10, auth_key=KEY).version == 1


def test_strangers_neither_count_as_transfers_nor_block_a_pull(transport: str) -> None:
    with holder(transport, max_transfers=1) as (_, addr), strangers(transport, addr, 8) as idle:
        for _ in range(2):
            got = pull(addr, 1, deadline_s=10, auth_key=KEY)
            assert got.version == 1 and got.manifest.num_buckets >= 1
        assert not any(s.closed() for s in idle)       # they were there all along


def test_unauthenticated_connections_are_capped_the_oldest_closed_first(transport: str) -> None:
    # a deadline far beyond the test, so only the cap can close them
    with holder(transport, auth_deadline_s=300.0, max_unauthenticated=4) as (_, addr), \
            strangers(transport, addr, 7) as idle:
        wait_for(lambda: all(s.closed() for s in idle[:3]), MARGIN_S, "the 3 oldest strangers closed at the cap")
        assert not any(s.closed() for s in idle[3:])
        # at the cap, a real puller still gets in: its connection pushes out the oldest stranger
        assert pull(addr, 1, deadline_s=10, auth_key=KEY).version == 1
        wait_for(lambda: idle[3].closed(), MARGIN_S, "the oldest stranger closed for a real puller")
        assert not any(s.closed() for s in idle[4:])
