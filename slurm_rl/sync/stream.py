"""The handshake of `wire` over a stream socket (TCP or Unix), both sides, with deadlines.

Every receive waits at most until the transfer's deadline: a killed peer shows up at once as
EOF/reset, a hung one (SIGSTOP, dead node) as a timeout at the deadline. Socket errors never escape
as anything but SyncError.
"""

from __future__ import annotations

import socket
from collections.abc import Callable

from slurm_rl.errors import SyncError
from slurm_rl.sync.base import Deadline, Manifest, WeightSet
from slurm_rl.sync.holdings import Holdings
from slurm_rl.sync.wire import (
    DONE_SIZE,
    HELLO_SIZE,
    REPLY_SIZE,
    REQUEST_SIZE,
    Hello,
    Outcome,
    Reply,
    Request,
    Status,
    pack_done,
    unpack_done,
)


def recv_into_exact(sock: socket.socket, view: memoryview, deadline: Deadline, peer: str) -> None:
    """Fill `view` completely from `sock`, in place (no intermediate copies)."""
    pos, n = 0, len(view)
    try:
        while pos < n:
            sock.settimeout(deadline.remaining(f"receive from {peer}"))
            got = sock.recv_into(view[pos:])
            if not got:
                raise SyncError(f"{peer} closed the connection mid-transfer ({pos}/{n} bytes of this part)")
            pos += got
    except TimeoutError:
        raise SyncError(f"{peer} sent nothing until the {deadline.seconds:.1f}s deadline (hung?)") from None
    except OSError as e:
        raise SyncError(f"connection to {peer} broke: {e}") from None


def recv_exact(sock: socket.socket, n: int, deadline: Deadline, peer: str) -> bytes:
    buf = bytearray(n)
    recv_into_exact(sock, memoryview(buf), deadline, peer)
    return bytes(buf)


def send_all(sock: socket.socket, data: bytes | memoryview, deadline: Deadline, peer: str) -> None:
    try:
        sock.settimeout(deadline.remaining(f"send to {peer}"))
        sock.sendall(data)
    except TimeoutError:
        raise SyncError(f"{peer} stopped reading until the {deadline.seconds:.1f}s deadline (hung?)") from None
    except OSError as e:
        raise SyncError(f"connection to {peer} broke: {e}") from None


def client_handshake(sock: socket.socket, version: int, key: bytes | None, deadline: Deadline, peer: str,
                     part: int = 0) -> Manifest:
    """Puller side: authenticate, ask for `part` of `version`, return the holder's verified-MAC manifest."""
    hello = Hello.unpack(recv_exact(sock, HELLO_SIZE, deadline, peer))
    request = Request.make(hello, version, key, part)
    send_all(sock, request.pack(), deadline, peer)
    reply = Reply.unpack(recv_exact(sock, REPLY_SIZE, deadline, peer))
    payload = recv_exact(sock, reply.payload_len, deadline, peer)
    manifest = Manifest.decode(reply.check(payload, hello, request, key, version=version, peer=peer))
    manifest.expect(version, part, peer)
    return manifest


def server_handshake(sock: socket.socket, holdings: Holdings, key: bytes | None, deadline: Deadline,
                     peer: str, *, auth_deadline: Deadline | None = None,
                     admit: Callable[[], str | None] | None = None) -> WeightSet | None:
    """Holder side: returns the requested set, pinned (caller must `holdings.release`), or None if refused.

    HELLO out and the REQUEST in must both be done by `auth_deadline` (netauth.AUTH_DEADLINE_S: a
    stranger may not hold the connection); `admit`, called once the request is authenticated, gives
    a reason to turn the puller away (e.g. too many transfers) or None.
    """
    hello = Hello.make(key)
    auth_deadline = auth_deadline or deadline
    send_all(sock, hello.pack(), auth_deadline, peer)
    request = Request.unpack(recv_exact(sock, REQUEST_SIZE, auth_deadline, peer))
    if not request.valid(hello, key):
        send_all(sock, Reply.make(Status.AUTH_FAILED, b"wrong auth key", hello, request, key), deadline, peer)
        return None
    refuse = admit() if admit is not None else None
    if refuse is not None:
        send_all(sock, Reply.make(Status.BUSY, refuse.encode(), hello, request, key), deadline, peer)
        return None
    ws = holdings.acquire(request.version, request.part)
    if ws is None:
        held = ",".join(str(v) for v in holdings.versions()).encode()
        send_all(sock, Reply.make(Status.NOT_HELD, held, hello, request, key), deadline, peer)
        return None
    try:
        send_all(sock, Reply.make(Status.OK, ws.manifest.encode(), hello, request, key), deadline, peer)
    except BaseException:
        holdings.release(ws)
        raise
    return ws


def send_done(sock: socket.socket, outcome: Outcome, deadline: Deadline, peer: str) -> None:
    send_all(sock, pack_done(outcome), deadline, peer)


def recv_done(sock: socket.socket, deadline: Deadline, peer: str) -> Outcome:
    return unpack_done(recv_exact(sock, DONE_SIZE, deadline, peer))
