"""UCX transport, holder side: the listener and its progress thread (slurm_rl/sync/ucx.py says how
the transport works and why it is tuned as it is)."""

from __future__ import annotations

import enum
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from slurm_rl.errors import SyncError
from slurm_rl.netauth import AUTH_DEADLINE_S, MAX_UNAUTHENTICATED
from slurm_rl.sync.base import (
    WeightSet,
)
from slurm_rl.sync.holdings import Holdings
from slurm_rl.sync.ucx import (  # the transport's shared constants and ucxx helpers
    _C2S,
    _CONN_ID,
    _DONE,
    _HELLO,
    _POLL_MS,
    _PREFIX_MASK,
    _REPLY,
    _REQUEST,
    _S2C,
    _WINDOW,
    BUCKET_TAG,
    SERVER_IDLE_S,
    _api,
    _chunks,
    _close_ep,
    _context,
    _failed,
    _u8,
)
from slurm_rl.sync.wire import (
    DONE_SIZE,
    REQUEST_SIZE,
    Hello,
    Outcome,
    Reply,
    Request,
    Status,
    unpack_done,
)

log = logging.getLogger("slurm_rl.sync")

# how long a fixed port that is still bound (the previous listener closing) is retried at start
_REBIND_S = 5.0


class _Phase(enum.Enum):
    AWAIT_REQUEST = "await_request"     # HELLO sent, waiting for the puller's REQUEST
    SERVING = "serving"                 # buckets going out, waiting for DONE
    REFUSED = "refused"                 # refusal sent, waiting for DONE or hang-up
    CLOSED = "closed"


@dataclass(eq=False)
class _Conn:
    """One puller connection on the holder side; serves its transfers one after the other."""

    cid: int
    ep: Any
    phase: _Phase = _Phase.AWAIT_REQUEST
    hello: Hello | None = None
    transfers: int = 0
    authed: bool = False                                  # a REQUEST with the run's key came in
    opened: float = field(default_factory=time.monotonic)
    last_progress: float = field(default_factory=time.monotonic)
    started: float = 0.0
    ctrl: list[Any] = field(default_factory=list)        # control sends in flight
    bufs: list[np.ndarray] = field(default_factory=list)   # their buffers, alive until sent
    request: bytes | None = None
    done: bytes | None = None
    status: Status = Status.OK
    ws: WeightSet | None = None
    sends: dict[int, Any] = field(default_factory=dict)
    chunks: list[tuple[int, int, int]] = field(default_factory=list)
    next_chunk: int = 0


class UcxServer:
    """UCX listener + progress thread serving a `Holdings`.

    A connection that has sent no authenticated REQUEST within `auth_deadline_s` is closed, at most
    `max_unauthenticated` are held (a new one closes the oldest) and only SERVING ones count toward
    `max_transfers` (slurm_rl.netauth).
    """

    def __init__(self, host: str, port: int, holdings: Holdings, key: bytes | None, *,
                 stall_timeout_s: float, max_transfers: int, auth_deadline_s: float = AUTH_DEADLINE_S,
                 max_unauthenticated: int = MAX_UNAUTHENTICATED):
        self.host = host
        self.port = port
        self.holdings = holdings
        self.key = key
        self.stall_timeout_s = stall_timeout_s
        self.max_transfers = max_transfers
        self.auth_deadline_s = auth_deadline_s
        self.max_unauthenticated = max_unauthenticated
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._bound_port = 0
        self._thread: threading.Thread | None = None
        self._incoming: list[Any] = []

    def start(self) -> str:
        ucx, array = _api()
        # a holder restarted on its old port may find it still bound for a moment: UCX closes the
        # previous listener asynchronously (more slowly under load); a fixed port is retried briefly
        deadline = time.monotonic() + (_REBIND_S if self.port else 0.0)
        while True:
            self._error, self._bound_port = None, 0
            self._ready.clear()
            self._thread = threading.Thread(target=self._run, args=(ucx, array), name="slurm-rl-sync-ucx",
                                            daemon=True)
            self._thread.start()
            self._ready.wait(30)
            if self._error is None and self._bound_port:
                return f"ucx://{self.host}:{self._bound_port}"
            if "busy" not in repr(self._error).lower() or time.monotonic() > deadline:
                raise SyncError(f"cannot start the UCX weight server on port {self.port}: {self._error!r}")
            self._thread.join(timeout=5)
            time.sleep(0.2)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self, ucx: Any, array: Any) -> None:
        try:
            ctx = _context(ucx)
            worker = ucx.UCXWorker(ctx)
            worker.init_blocking_progress_mode()
            listener = ucx.UCXListener.create(worker=worker, port=self.port, cb_func=self._incoming.append)
            self._bound_port = listener.port
        except BaseException as e:
            self._error = e
            self._ready.set()
            return
        self._ready.set()
        conns: dict[int, _Conn] = {}
        inbox: list[tuple[int, int, np.ndarray, Any]] = []     # (conn id, kind, buffer, receive)
        next_id = 1
        try:
            while not self._stop.is_set():
                # progress_worker_event() progresses and then sleeps in epoll even when that progress
                # completed something; drain first and sleep only when nothing is ready.
                worker.progress()
                self._probe(ucx, worker, array, inbox)
                if not self._incoming and not inbox and not any(self._ready_to_advance(c) for c in conns.values()):
                    worker.progress_worker_event(_POLL_MS)
                    worker.progress()
                    self._probe(ucx, worker, array, inbox)
                while self._incoming:
                    try:
                        ep = listener.create_endpoint_from_conn_request(self._incoming.pop(), True)
                    except Exception as e:
                        log.info("UCX puller could not connect: %r", e)
                        continue
                    c = _Conn(cid=next_id, ep=ep)
                    next_id += 1
                    strangers = [o for o in conns.values() if not o.authed and o.phase is not _Phase.CLOSED]
                    for old in strangers[:max(0, len(strangers) + 1 - self.max_unauthenticated)]:
                        log.info("closing an unauthenticated UCX connection: more than %d", self.max_unauthenticated)
                        self._close(old)     # the oldest first (dicts keep insertion order)
                    conns[c.cid] = c
                    self._greet(c, ucx, array)
                for item in [i for i in inbox if i[3].completed]:
                    inbox.remove(item)
                    self._deliver(conns.get(item[0]), item[1], item[2], item[3])
                now = time.monotonic()
                serving = sum(c.phase is _Phase.SERVING for c in conns.values())
                for c in conns.values():
                    self._advance(c, ucx, array, now, serving)
                conns = {i: c for i, c in conns.items() if c.phase is not _Phase.CLOSED}
        except BaseException:
            log.exception("UCX weight server loop crashed")
        finally:
            for c in conns.values():
                self._close(c)
            # Drop every endpoint reference, then the listener, then progress so the closes finish
            # before the worker goes (an endpoint keeps its listener, and so the port, alive).
            c = ep = conns = inbox = None    # type: ignore[assignment]
            del listener
            for _ in range(3):
                worker.progress_worker_event(10)
            del worker, ctx

    def _probe(self, ucx: Any, worker: Any, array: Any, inbox: list[tuple[int, int, np.ndarray, Any]]) -> None:
        """Receive every control message that has arrived, by probe handle (nothing stays posted)."""
        while True:
            probe = worker.tag_probe(ucx.UCXXTag(_C2S), tag_mask=ucx.UCXXTagMask(_PREFIX_MASK), remove=True)
            if not probe.matched:
                return
            tag = probe.sender_tag.value
            # A control message is tiny; a larger one is a broken or hostile peer: receiving it into
            # a small buffer fails it (truncated) and its connection is closed.
            buf = np.empty(min(probe.length, 64), np.uint8)
            inbox.append((tag & ((1 << 40) - 1), (tag >> 40) & 0xFFFFF, buf, worker.tag_recv_with_handle(array(buf), probe)))

    @staticmethod
    def _ready_to_advance(c: _Conn) -> bool:
        """Something to act on now (else the loop may sleep in epoll until the next event)."""
        return (c.request is not None or (c.done is not None and (c.phase is _Phase.REFUSED or not c.sends))
                or any(r.completed for r in c.ctrl) or any(r.completed for r in c.sends.values()))

    def _deliver(self, c: _Conn | None, kind: int, buf: np.ndarray, req: Any) -> None:
        if c is None or c.phase is _Phase.CLOSED:
            return                                  # a connection we already closed
        if (err := _failed(req)) is not None:
            log.info("bad control message from a UCX puller: %r", err)
            self._close(c)
        elif kind == _REQUEST and buf.nbytes == REQUEST_SIZE and c.phase is _Phase.AWAIT_REQUEST:
            c.request = buf.tobytes()
        elif kind == _DONE and buf.nbytes == DONE_SIZE and c.phase in (_Phase.SERVING, _Phase.REFUSED):
            c.done = buf.tobytes()
        else:
            log.info("unexpected control message %d (%d bytes) from a UCX puller", kind, buf.nbytes)
            self._close(c)

    def _send_ctrl(self, c: _Conn, ucx: Any, array: Any, kind: int, data: bytes) -> None:
        buf = _u8(data)
        c.bufs.append(buf)
        c.ctrl.append(c.ep.tag_send(array(buf), ucx.UCXXTag(_S2C | kind)))

    def _greet(self, c: _Conn, ucx: Any, array: Any) -> None:
        """Start (another) transfer on this connection: a fresh nonce, then wait for the request."""
        c.phase = _Phase.AWAIT_REQUEST
        c.hello = Hello.make(self.key)
        c.request = c.done = None
        self._send_ctrl(c, ucx, array, _HELLO, c.hello.pack() + _CONN_ID.pack(c.cid))
        c.last_progress = time.monotonic()

    def _advance(self, c: _Conn, ucx: Any, array: Any, now: float, serving: int) -> None:
        if c.phase is _Phase.CLOSED:
            return
        try:
            idle = c.phase is _Phase.AWAIT_REQUEST and c.transfers > 0
            if not c.ep.alive:
                if idle:
                    log.debug("idle UCX puller went away")     # the normal end of a kept connection
                    self._close(c)
                    return
                raise SyncError("the puller's connection failed (puller died?)")
            for r in [*c.ctrl, *c.sends.values()]:
                if r.completed and (err := _failed(r)) is not None:
                    raise SyncError(repr(err))
            if not c.authed and now - c.opened > self.auth_deadline_s:
                raise SyncError(f"not authenticated within {self.auth_deadline_s:g}s")
            # Forget finished control sends, or the loop would see "something completed" forever and
            # never sleep in epoll (a busy holder burning a core).
            c.bufs = [b for b, r in zip(c.bufs, c.ctrl) if not r.completed]
            c.ctrl = [r for r in c.ctrl if not r.completed]
            if c.phase is _Phase.AWAIT_REQUEST and c.request is not None:
                c.last_progress = now
                self._on_request(c, ucx, array, serving)
            elif c.phase is _Phase.REFUSED and c.done is not None:
                # The puller read the refusal. Not held / busy: it may ask again on this connection.
                if c.status in (Status.NOT_HELD, Status.BUSY):
                    c.transfers += 1
                    self._greet(c, ucx, array)
                else:
                    self._close(c)
                return
            if c.phase is _Phase.SERVING:
                self._pump(c, ucx, array, now)
            limit = SERVER_IDLE_S if c.phase is _Phase.AWAIT_REQUEST and c.transfers else self.stall_timeout_s
            if c.phase is not _Phase.CLOSED and now - c.last_progress > limit:
                raise SyncError(f"no progress for {limit:.0f}s")
        except SyncError as e:
            if not self._stop.is_set():
                log.info("UCX transfer to a puller ended early: %s", e)
            self._close(c)
        except Exception:
            log.exception("UCX transfer to a puller failed")
            self._close(c)

    def _on_request(self, c: _Conn, ucx: Any, array: Any, serving: int) -> None:
        assert c.hello is not None and c.request is not None
        request = Request.unpack(c.request)
        c.request = None
        status, payload = Status.OK, b""
        valid = request.valid(c.hello, self.key)
        c.authed = c.authed or valid
        if not valid:
            status, payload = Status.AUTH_FAILED, b"wrong auth key"
        elif serving >= self.max_transfers:
            status, payload = Status.BUSY, f"{serving} transfers already running".encode()
        else:
            c.ws = self.holdings.acquire(request.version, request.part)
            if c.ws is None:
                status = Status.NOT_HELD
                payload = ",".join(str(v) for v in self.holdings.versions()).encode()
            else:
                payload = c.ws.manifest.encode()
        c.status = status
        self._send_ctrl(c, ucx, array, _REPLY, Reply.make(status, payload, c.hello, request, self.key))
        if c.ws is None:
            c.phase = _Phase.REFUSED     # close or re-greet once the puller acknowledges or hangs up
        else:
            c.phase, c.started, c.next_chunk = _Phase.SERVING, time.monotonic(), 0
            c.chunks = _chunks(c.ws.manifest)

    def _pump(self, c: _Conn, ucx: Any, array: Any, now: float) -> None:
        assert c.ws is not None
        for j in [j for j, r in c.sends.items() if r.completed]:
            del c.sends[j]
            c.last_progress = now
        buf = c.ws.buffer()
        while c.next_chunk < len(c.chunks) and len(c.sends) < _WINDOW:
            j = c.next_chunk
            _, s, e = c.chunks[j]
            c.sends[j] = c.ep.tag_send(array(np.frombuffer(buf[s:e], np.uint8)), ucx.UCXXTag(BUCKET_TAG + j))
            c.next_chunk += 1
        if c.done is not None and not c.sends and c.next_chunk == len(c.chunks):
            if unpack_done(c.done) != Outcome.VERIFIED:
                log.warning("a UCX puller reported weights v%d failed verification", c.ws.version)
            else:
                log.debug("served weights v%d over UCX in %.3fs", c.ws.version, now - c.started)
            self.holdings.release(c.ws)
            c.ws = None
            c.transfers += 1
            self._greet(c, ucx, array)

    def _close(self, c: _Conn) -> None:
        if c.phase is _Phase.CLOSED:
            return
        c.phase = _Phase.CLOSED
        if c.ws is not None:
            self.holdings.release(c.ws)
            c.ws = None
        _close_ep(c.ep)
        c.sends.clear()
        c.ctrl.clear()
        c.bufs.clear()
