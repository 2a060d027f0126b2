"""UCX transport through ucxx's synchronous core API (no asyncio), tuned as measured in
shared/reference/ucx/NOTES.md:

- blocking progress (`progress_worker_event` waits in epoll): about 2x the default progress thread;
- `RNDV_SCHEME=put_zcopy`: 4.8 GB/s here vs 3.4 for a raw socket (the default scheme: 1.2);
- endpoint error handling ON, so a killed peer fails requests in well under a second. (UCX's own
  shared-memory transports need it OFF and then a killed peer crashes or hangs us; same-host pulls use
  our `shm` transport instead.)
- a hung peer is invisible to UCX (keepalive does not notice SIGSTOP): every wait runs against the
  transfer's deadline, after which requests are cancelled and the endpoint is closed;
- `TCP_CM_REUSEADDR=y` so a restarted holder can listen on its old port while connections sit in TIME_WAIT.

Everything is a tagged message. The holder never keeps a receive posted: it probes for control
messages (REQUEST, DONE) whose tag carries the connection id it handed out in HELLO, and receives each
by its probe handle. A receive left posted on an endpoint survives the endpoint's close and keeps the
listener (and its port) alive, so a server could not stop cleanly; probing leaves nothing behind.
Buckets go out as messages of at most `CHUNK_BYTES`, up to `WINDOW_BYTES` in flight per transfer.

Connecting costs 20-50 ms here (CM handshake plus wireup), as much as moving 100 MB, so a puller keeps
its connection to a holder for `SESSION_TTL_S` and reuses it for the next version. Each connection
has its own UCX context and worker and serves one transfer at a time; a connection on which anything
failed is destroyed, never reused, so no stray message can reach a later transfer. Every ucxx call of
a server happens on its progress thread.

Our own UCX settings go into the UCX context config unless the user set the same `UCX_*` variable.
"""

from __future__ import annotations

import atexit
import enum
import logging
import os
import struct
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from slurm_rl.errors import SyncError
from slurm_rl.sync.base import (
    Assembler,
    Deadline,
    Manifest,
    ProgressFn,
    TransportUnavailable,
    WeightSet,
)
from slurm_rl.sync.holdings import Holdings
from slurm_rl.sync.wire import (
    DONE_SIZE,
    HELLO_SIZE,
    MAX_PAYLOAD,
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

log = logging.getLogger("slurm_rl.sync")

# Buckets travel as messages of at most CHUNK_BYTES, up to WINDOW_BYTES of them posted at once on
# both sides. Measured here (1 GB): 8 x 32 MiB outstanding 2.5-3.5 GB/s (the two ends wait on each
# other to refill a short window), everything posted 4.0. Message size, medians of 8 (256 MB / 1 GB):
# 4 MiB 3.2 / 3.9, 8 MiB 3.6 / 4.0, 32 MiB 3.4 / 3.9 GB/s. The buffers exist anyway: a deep window
# costs no memory.
CHUNK_BYTES = 8 << 20
WINDOW_BYTES = 1 << 30


def _chunks(m: Manifest) -> list[tuple[int, int, int]]:
    """(bucket, start, end) of every message, in order; a bucket's last chunk completes it."""
    out = []
    for k in range(m.num_buckets):
        s, e = m.bucket_range(k)
        out += [(k, c, min(e, c + CHUNK_BYTES)) for c in range(s, e, CHUNK_BYTES)]
    return out


_WINDOW = max(2, WINDOW_BYTES // CHUNK_BYTES)


# Tags. Puller -> holder: _C2S | kind << 40 | connection id (the holder probes the _C2S prefix).
# Holder -> puller (the puller's worker has this one peer, so no id needed): _S2C | kind; buckets.
_PREFIX_MASK = 0xF << 60
_C2S = 0xC << 60
_S2C = 0xA << 60
_REQUEST, _DONE, _HELLO, _REPLY = 1, 2, 3, 4
BUCKET_TAG = 1 << 40
_CONN_ID = struct.Struct("!Q")
SESSION_TTL_S = 120.0          # puller keeps an idle connection this long
SERVER_IDLE_S = 300.0          # holder drops a connection idle (between transfers) this long
MAX_IDLE_SESSIONS = 8
CLOSE_NS = 200_000_000         # longest an endpoint close may wait for a (dead or hung) peer
_POLL_MS = 50
_TUNING = {"RNDV_SCHEME": "put_zcopy", "TCP_CM_REUSEADDR": "y"}

_lock = threading.Lock()
_status: tuple[bool, str] | None = None


def ucx_status() -> tuple[bool, str]:
    """(available, reason). Importing ucxx is attempted once per process."""
    global _status
    with _lock:
        if _status is None:
            # UCX prints a warning for every UCX_* variable it does not use, including the one ucxx
            # itself sets on import; the user's own setting wins.
            os.environ.setdefault("UCX_WARN_UNUSED_ENV_VARS", "n")
            try:
                import ucxx._lib.libucxx  # noqa: F401
                from ucxx._lib.arr import Array  # noqa: F401
                _status = (True, "")
            except Exception as e:     # ImportError, or OSError from a missing libucx
                _status = (False, f"ucxx does not import: {e!r}")
        return _status


def _api() -> tuple[Any, Any]:
    ok, why = ucx_status()
    if not ok:
        raise TransportUnavailable(f"ucx transport unavailable: {why}", hint="pip install 'slurm-rl[ucx]' or use tcp")
    import ucxx._lib.libucxx as ucx
    from ucxx._lib.arr import Array
    return ucx, Array


def _context(ucx: Any) -> Any:
    config = {k: v for k, v in _TUNING.items() if f"UCX_{k}" not in os.environ}
    return ucx.UCXContext(config, feature_flags=(ucx.Feature.TAG, ucx.Feature.WAKEUP))


def _u8(data: bytes) -> np.ndarray:
    # ucxx takes buffer-protocol objects; bytearray/bytes crash some paths, numpy arrays do not.
    return np.frombuffer(bytearray(data), dtype=np.uint8)


def _failed(req: Any) -> Exception | None:
    try:
        req.check_error()
    except Exception as e:
        return e
    return None


def _close_ep(ep: Any) -> None:
    try:
        # Blocking close (bounded by CLOSE_NS) as ucxx's own Endpoint.abort() does: a non-blocking
        # close() leaves a callback behind that can fire into freed memory later.
        ep.close_blocking(period=CLOSE_NS, max_attempts=1)
        ep.remove_close_callback()
    except Exception as e:
        log.debug("closing a UCX endpoint: %r", e)


# ----------------------------------------------------------------------------------------------- server


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
    """UCX listener + progress thread serving a `Holdings`."""

    def __init__(self, host: str, port: int, holdings: Holdings, key: bytes | None, *,
                 stall_timeout_s: float, max_transfers: int):
        self.host = host
        self.port = port
        self.holdings = holdings
        self.key = key
        self.stall_timeout_s = stall_timeout_s
        self.max_transfers = max_transfers
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._bound_port = 0
        self._thread: threading.Thread | None = None
        self._incoming: list[Any] = []

    def start(self) -> str:
        ucx, array = _api()
        self._thread = threading.Thread(target=self._run, args=(ucx, array), name="slurm-rl-sync-ucx", daemon=True)
        self._thread.start()
        self._ready.wait(30)
        if self._error is not None or not self._bound_port:
            raise SyncError(f"cannot start the UCX weight server on port {self.port}: {self._error!r}")
        return f"ucx://{self.host}:{self._bound_port}"

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
        if not request.valid(c.hello, self.key):
            status, payload = Status.AUTH_FAILED, b"wrong auth key"
        elif serving >= self.max_transfers:
            status, payload = Status.BUSY, f"{serving} transfers already running".encode()
        else:
            c.ws = self.holdings.acquire(request.version)
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


# ----------------------------------------------------------------------------------------------- client


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
             key: bytes | None) -> WeightSet:
    ucx, array = _api()
    session = SESSIONS.take(host, port)
    if session is not None:
        try:
            return _transfer(session, version, deadline, progress, key, reused=True)
        except _Stale as e:
            log.debug("kept UCX connection to %s was stale (%s); reconnecting", session.peer, e)
    try:
        session = _Session(ucx, array, host, port)
    except ucx.UCXError as e:
        raise SyncError(f"cannot connect to ucx://{host}:{port}: {e!r}") from None
    return _transfer(session, version, deadline, progress, key, reused=False)


def _transfer(s: _Session, version: int, deadline: Deadline, progress: ProgressFn | None,
              key: bytes | None, *, reused: bool) -> WeightSet:
    keep = False
    answered = False
    try:
        msg = s.recv(_HELLO, "hello", deadline, HELLO_SIZE + _CONN_ID.size)
        if len(msg) != HELLO_SIZE + _CONN_ID.size:
            raise SyncError(f"{s.peer} sent a malformed hello")
        hello = Hello.unpack(msg[:HELLO_SIZE])
        (cid,) = _CONN_ID.unpack(msg[HELLO_SIZE:])
        request = Request.make(hello, version, key)
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
        if manifest.version != version:
            raise SyncError(f"{s.peer} answered v{manifest.version} to a request for v{version}")
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
