"""UCX transport, puller side: sessions kept per holder and reused across versions, and one
transfer's receive window (slurm_rl/sync/ucx.py says how the transport works)."""

from __future__ import annotations

import atexit
import logging
import threading
import time
from typing import Any

import numpy as np

from slurm_rl.errors import SyncError
from slurm_rl.sync.base import (
    Assembler,
    Deadline,
    Manifest,
    ProgressFn,
    WeightSet,
)
from slurm_rl.sync.ucx import (  # the transport's shared constants and ucxx helpers
    _C2S,
    _CONN_ID,
    _DONE,
    _HELLO,
    _POLL_MS,
    _REPLY,
    _REQUEST,
    _S2C,
    _WINDOW,
    BUCKET_TAG,
    MAX_IDLE_SESSIONS,
    SESSION_TTL_S,
    _api,
    _chunks,
    _close_ep,
    _context,
    _failed,
    _u8,
)
from slurm_rl.sync.wire import (
    HELLO_SIZE,
    MAX_PAYLOAD,
    REPLY_SIZE,
    Hello,
    Outcome,
    Reply,
    Request,
    Status,
    pack_done,
)

log = logging.getLogger("slurm_rl.sync")


class _Session:
    """A puller's connection to one holder: its own context, worker and endpoint."""

    def __init__(self, ucx: Any, array: Any, host: str, port: int):
        self.ucx = ucx
        self.array = array
        self.key = (host, port)
        self.peer = f"ucx://{host}:{port}"
        self.last_used = time.monotonic()
        self.context = _context(ucx)
        self.worker = ucx.UCXWorker(self.context)
        self.worker.init_blocking_progress_mode()
        self.ep = ucx.UCXEndpoint.create(self.worker, host, port, True)

    def _sleep(self, what: str, deadline: Deadline) -> None:
        if not self.ep.alive:
            raise SyncError(f"connection to {self.peer} failed during {what} (holder died?)")
        left = deadline.remaining(f"{what} from {self.peer}")
        self.worker.progress_worker_event(max(1, min(_POLL_MS, int(left * 1000))))

    def wait(self, reqs: list[Any], what: str, deadline: Deadline) -> None:
        while True:
            # progress_worker_event() progresses and then sleeps in epoll even if that progress just
            # completed our request; drain with a non-blocking progress first, sleep only if still pending.
            self.worker.progress()
            if all(r.completed for r in reqs):
                break
            self._sleep(what, deadline)
        for r in reqs:
            if (err := _failed(r)) is not None:
                raise SyncError(f"{what} from {self.peer} failed: {err!r} (holder died?)")

    def recv(self, kind: int, what: str, deadline: Deadline, max_len: int) -> bytes:
        """The next control message of `kind` from the holder, received by probe (nothing stays posted)."""
        while True:
            self.worker.progress()
            probe = self.worker.tag_probe(self.ucx.UCXXTag(_S2C | kind), remove=True)
            if probe.matched:
                break
            self._sleep(what, deadline)
        if probe.length > max_len:
            raise SyncError(f"{self.peer} sent a {probe.length}-byte {what}; refusing")
        buf = np.empty(probe.length, np.uint8)
        self.wait([self.worker.tag_recv_with_handle(self.array(buf), probe)], what, deadline)
        return buf.tobytes()

    def send(self, data: bytes, tag: int, what: str, deadline: Deadline) -> None:
        self.wait([self.ep.tag_send(self.array(_u8(data)), self.ucx.UCXXTag(tag))], what, deadline)

    def close(self) -> None:
        # Closing the endpoint cancels the receives still posted on it (after a failure).
        _close_ep(self.ep)


class _Sessions:
    """Idle connections kept for reuse, per holder, bounded in number and age."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._idle: list[_Session] = []

    def take(self, host: str, port: int) -> _Session | None:
        now = time.monotonic()
        with self._lock:
            stale = [s for s in self._idle if now - s.last_used > SESSION_TTL_S]
            self._idle = [s for s in self._idle if s not in stale]
            found = next((s for s in self._idle if s.key == (host, port)), None)
            if found is not None:
                self._idle.remove(found)
        for s in stale:
            s.close()
        return found

    def give_back(self, s: _Session) -> None:
        s.last_used = time.monotonic()
        with self._lock:
            self._idle.append(s)
            extra = self._idle[:-MAX_IDLE_SESSIONS]
            self._idle = self._idle[-MAX_IDLE_SESSIONS:]
        for e in extra:
            e.close()

    def close_all(self) -> int:
        with self._lock:
            idle, self._idle = self._idle, []
        for s in idle:
            s.close()
        return len(idle)


SESSIONS = _Sessions()
# Close idle connections while the interpreter is still whole; letting the GC tear down ucxx
# objects in arbitrary order at exit can crash.
atexit.register(SESSIONS.close_all)


class _Stale(Exception):
    """A reused connection failed before the holder answered: retry once on a fresh connection."""


def pull_ucx(host: str, port: int, version: int, *, deadline: Deadline, progress: ProgressFn | None,
             key: bytes | None, part: int = 0) -> WeightSet:
    ucx, array = _api()
    session = SESSIONS.take(host, port)
    if session is not None:
        try:
            return _transfer(session, version, deadline, progress, key, reused=True, part=part)
        except _Stale as e:
            log.debug("kept UCX connection to %s was stale (%s); reconnecting", session.peer, e)
    try:
        session = _Session(ucx, array, host, port)
    except ucx.UCXError as e:
        raise SyncError(f"cannot connect to ucx://{host}:{port}: {e!r}") from None
    return _transfer(session, version, deadline, progress, key, reused=False, part=part)


def _transfer(s: _Session, version: int, deadline: Deadline, progress: ProgressFn | None,
              key: bytes | None, *, reused: bool, part: int = 0) -> WeightSet:
    keep = False
    answered = False
    try:
        msg = s.recv(_HELLO, "hello", deadline, HELLO_SIZE + _CONN_ID.size)
        if len(msg) != HELLO_SIZE + _CONN_ID.size:
            raise SyncError(f"{s.peer} sent a malformed hello")
        hello = Hello.unpack(msg[:HELLO_SIZE])
        (cid,) = _CONN_ID.unpack(msg[HELLO_SIZE:])
        request = Request.make(hello, version, key, part)
        s.send(request.pack(), _C2S | _REQUEST << 40 | cid, "request", deadline)
        msg = s.recv(_REPLY, "reply", deadline, REPLY_SIZE + MAX_PAYLOAD)
        answered = True
        reply = Reply.unpack(msg[:REPLY_SIZE])
        if len(msg) != REPLY_SIZE + reply.payload_len:
            raise SyncError(f"{s.peer} sent a malformed reply")
        try:
            payload = reply.check(msg[REPLY_SIZE:], hello, request, key, version=version, peer=s.peer)
        except SyncError:
            if reply.status in (Status.NOT_HELD, Status.BUSY):
                # A normal answer: acknowledge it and keep the connection for the next request.
                s.send(pack_done(Outcome.FAILED), _C2S | _DONE << 40 | cid, "acknowledge", deadline)
                keep = True
            raise
        manifest = Manifest.decode(payload)
        manifest.expect(version, part, s.peer)
        asm = Assembler(manifest, progress)
        chunks = _chunks(manifest)
        recvs: dict[int, Any] = {}
        posted = 0
        for j, (k, _, end) in enumerate(chunks):
            while posted < len(chunks) and posted < j + _WINDOW:
                _, cs, ce = chunks[posted]
                recvs[posted] = s.ep.tag_recv(s.array(asm.flat[cs:ce]), s.ucx.UCXXTag(BUCKET_TAG + posted))
                posted += 1
            s.wait([recvs.pop(j)], f"bucket {k}", deadline)
            if end == manifest.bucket_range(k)[1]:
                asm.landed(k)
        ws = asm.result()
        # The holder re-greets (or closes) only after this acknowledgement (UCX close does not flush).
        s.send(pack_done(Outcome.VERIFIED), _C2S | _DONE << 40 | cid, "acknowledge", deadline)
        keep = True
        return ws
    except SyncError as e:
        if reused and not answered and "deadline" not in e.message:
            raise _Stale(e.message) from None
        raise
    except s.ucx.UCXError as e:     # a ucxx call raised directly instead of failing a request
        if reused and not answered:
            raise _Stale(repr(e)) from None
        raise SyncError(f"UCX pull from {s.peer} failed: {e!r}") from None
    finally:
        if keep:
            SESSIONS.give_back(s)
        else:
            s.close()
