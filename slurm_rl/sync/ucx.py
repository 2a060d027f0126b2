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

Control messages use the stream API (per endpoint, so concurrent pullers never see each other's
bytes); buckets use tagged messages, at most `WINDOW` in flight per transfer. Each pull uses its own
UCX worker, so an aborted transfer cannot leave stray messages for the next one. Every ucxx call of a
server happens on its progress thread.

Our own UCX settings go into the UCX context config unless the user set the same `UCX_*` variable.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from slurm_rl.errors import SyncError
from slurm_rl.sync.base import Assembler, Deadline, Manifest, ProgressFn, TransportUnavailable, WeightSet
from slurm_rl.sync.holdings import Holdings
from slurm_rl.sync.wire import (
    DONE_SIZE, HELLO_SIZE, REPLY_SIZE, REQUEST_SIZE, Hello, Outcome, Reply, Request, Status,
    pack_done, unpack_done,
)

log = logging.getLogger("slurm_rl.sync")

WINDOW = 8                     # buckets in flight per transfer (8 x 32 MiB)
TAG_BASE = 1 << 40
_POLL_MS = 50
CLOSE_NS = 200_000_000         # longest an endpoint close may wait for a (dead or hung) peer
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
    return ucx.UCXContext(config, feature_flags=(ucx.Feature.TAG, ucx.Feature.STREAM, ucx.Feature.WAKEUP))


def _u8(data: bytes) -> np.ndarray:
    # ucxx takes buffer-protocol objects; bytearray/bytes crash some paths, numpy arrays do not.
    return np.frombuffer(bytearray(data), dtype=np.uint8)


def _failed(req: Any) -> Exception | None:
    try:
        req.check_error()
    except Exception as e:
        return e
    return None


# ----------------------------------------------------------------------------------------------- server


@dataclass(eq=False)
class _Conn:
    """One transfer on the holder side, advanced by the progress thread (a small state machine)."""

    ep: Any
    peer: str
    hello: Hello
    started: float
    last_progress: float
    reqs: list[Any] = field(default_factory=list)     # control requests in flight (keep buffers alive)
    bufs: list[np.ndarray] = field(default_factory=list)
    request_buf: np.ndarray = field(default_factory=lambda: np.empty(REQUEST_SIZE, np.uint8))
    request_req: Any = None
    ws: WeightSet | None = None
    sends: dict[int, Any] = field(default_factory=dict)
    next_bucket: int = 0
    done_buf: np.ndarray = field(default_factory=lambda: np.empty(DONE_SIZE, np.uint8))
    done_req: Any = None
    finished: bool = False


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
        self._pending: list[Any] = []

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

            def on_connect(conn_request: Any) -> None:
                self._pending.append(conn_request)

            listener = ucx.UCXListener.create(worker=worker, port=self.port, cb_func=on_connect)
            self._bound_port = listener.port
        except BaseException as e:
            self._error = e
            self._ready.set()
            return
        self._ready.set()
        conns: list[_Conn] = []
        try:
            while not self._stop.is_set():
                # Sleep in epoll only when nothing is pending (see _Pull.wait for why progress() first).
                worker.progress()
                if not self._pending and not any(self._ready_to_advance(c) for c in conns):
                    worker.progress_worker_event(_POLL_MS)
                while self._pending:
                    cr = self._pending.pop()
                    try:
                        ep = listener.create_endpoint_from_conn_request(cr, True)
                    except Exception as e:
                        log.info("UCX puller could not connect: %r", e)
                        continue
                    conns.append(self._open(ep, array))
                now = time.monotonic()
                for c in conns:
                    self._advance(c, ucx, array, now, len(conns))
                if any(c.finished for c in conns):
                    conns = [c for c in conns if not c.finished]
        except BaseException:
            log.exception("UCX weight server loop crashed")
        finally:
            for c in conns:
                self._finish(c, abort=True)
            for _ in range(3):          # let closes and cancels settle before the worker goes away
                worker.progress_worker_event(10)
            del listener, conns
            del worker, ctx

    @staticmethod
    def _ready_to_advance(c: _Conn) -> bool:
        return any(r is not None and r.completed
                   for r in (*c.reqs, c.request_req, c.done_req, *c.sends.values()))

    def _open(self, ep: Any, array: Any) -> _Conn:
        now = time.monotonic()
        c = _Conn(ep=ep, peer="ucx puller", hello=Hello.make(self.key), started=now, last_progress=now)
        hello = _u8(c.hello.pack())
        c.bufs.append(hello)
        c.reqs.append(ep.stream_send(array(hello)))
        c.request_req = ep.stream_recv(array(c.request_buf))
        return c

    def _advance(self, c: _Conn, ucx: Any, array: Any, now: float, n_conns: int) -> None:
        try:
            if c.ws is None and c.done_req is not None and c.done_req.completed:
                self._finish(c)             # a refused puller has read our answer and hung up
                return
            for r in (*c.reqs, c.request_req, c.done_req, *c.sends.values()):
                if r is not None and r.completed and (err := _failed(r)) is not None:
                    raise SyncError(f"{c.peer}: {err!r}")
            if c.request_req is not None and c.request_req.completed:
                c.request_req = None
                c.last_progress = now
                self._on_request(c, array, n_conns)
            if c.ws is not None:
                m = c.ws.manifest
                for k in [k for k, r in c.sends.items() if r.completed]:
                    del c.sends[k]
                    c.last_progress = now
                buf = c.ws.buffer()
                while c.next_bucket < m.num_buckets and len(c.sends) < WINDOW:
                    k = c.next_bucket
                    s, e = m.bucket_range(k)
                    c.sends[k] = c.ep.tag_send(array(np.frombuffer(buf[s:e], np.uint8)), ucx.UCXXTag(TAG_BASE + k))
                    c.next_bucket += 1
            if c.done_req is not None and c.done_req.completed and c.ws is not None:
                outcome = unpack_done(c.done_buf.tobytes())
                if outcome != Outcome.VERIFIED:
                    log.warning("%s reported weights v%d failed verification", c.peer, c.ws.version)
                else:
                    log.debug("served weights v%d over UCX in %.3fs", c.ws.version, now - c.started)
                self._finish(c)
                return
            c.reqs = [r for r in c.reqs if not r.completed]
            if now - c.last_progress > self.stall_timeout_s:
                raise SyncError(f"{c.peer} made no progress for {self.stall_timeout_s:.0f}s")
        except SyncError as e:
            if not self._stop.is_set():
                log.info("UCX transfer ended early: %s", e)
            self._finish(c, abort=True)
        except Exception:
            log.exception("UCX transfer failed")
            self._finish(c, abort=True)

    def _on_request(self, c: _Conn, array: Any, n_conns: int) -> None:
        request = Request.unpack(c.request_buf.tobytes())
        status, payload = Status.OK, b""
        if not request.valid(c.hello, self.key):
            status, payload = Status.AUTH_FAILED, b"wrong auth key"
        elif n_conns > self.max_transfers:
            status, payload = Status.BUSY, f"{n_conns - 1} transfers already running".encode()
        else:
            c.ws = self.holdings.acquire(request.version)
            if c.ws is None:
                status = Status.NOT_HELD
                payload = ",".join(str(v) for v in self.holdings.versions()).encode()
            else:
                payload = c.ws.manifest.encode()
        reply = _u8(Reply.make(status, payload, c.hello, request, self.key))
        c.bufs.append(reply)
        c.reqs.append(c.ep.stream_send(array(reply)))
        # Close only once the puller acknowledges or hangs up: a UCX close does not flush the reply.
        c.done_req = c.ep.stream_recv(array(c.done_buf))

    def _finish(self, c: _Conn, abort: bool = False) -> None:
        if c.finished:
            return
        c.finished = True
        if c.ws is not None:
            self.holdings.release(c.ws)
            c.ws = None
        try:
            # The puller acknowledged (or is gone): nothing left to flush.
            c.ep.close_blocking(period=CLOSE_NS, max_attempts=1)
            c.ep.remove_close_callback()
        except Exception as e:
            log.debug("closing UCX endpoint: %r", e)
        c.sends.clear()
        c.reqs.clear()


# ----------------------------------------------------------------------------------------------- client


class _Pull:
    """One pull on its own worker; `wait` drives progress against the deadline."""

    def __init__(self, ucx: Any, host: str, port: int, deadline: Deadline):
        self.ucx = ucx
        self.peer = f"ucx://{host}:{port}"
        self.deadline = deadline
        # A context per pull (~5 ms): pulls in different threads then share no UCX state at all.
        self.context = _context(ucx)
        self.worker = ucx.UCXWorker(self.context)
        self.worker.init_blocking_progress_mode()
        try:
            self.ep = ucx.UCXEndpoint.create(self.worker, host, port, True)
        except Exception as e:
            raise SyncError(f"cannot connect to {self.peer}: {e!r}") from None

    def wait(self, reqs: list[Any], what: str) -> None:
        while True:
            # progress_worker_event() progresses and then sleeps in epoll even if that progress just
            # completed our request; drain with a non-blocking progress first, sleep only if still pending.
            self.worker.progress()
            if all(r.completed for r in reqs):
                break
            left = self.deadline.remaining(f"{what} from {self.peer}")
            self.worker.progress_worker_event(max(1, min(_POLL_MS, int(left * 1000))))
        for r in reqs:
            if (err := _failed(r)) is not None:
                raise SyncError(f"{what} from {self.peer} failed: {err!r} (peer died?)")

    def close(self, clean: bool) -> None:
        try:
            if not clean:
                self.worker.cancel_inflight_requests()
            # Blocking close (bounded: CLOSE_NS) like ucxx's own Endpoint.abort(); a non-blocking
            # close() leaves a callback behind that can fire into freed memory later.
            self.ep.close_blocking(period=CLOSE_NS, max_attempts=1)
            self.ep.remove_close_callback()
        except Exception as e:
            log.debug("closing UCX endpoint to %s: %r", self.peer, e)


def pull_ucx(host: str, port: int, version: int, *, deadline: Deadline, progress: ProgressFn | None,
             key: bytes | None) -> WeightSet:
    ucx, array = _api()
    p = _Pull(ucx, host, port, deadline)
    clean = False
    outcome = Outcome.FAILED
    keep: list[Any] = []
    try:
        hello_buf = np.empty(HELLO_SIZE, np.uint8)
        p.wait([p.ep.stream_recv(array(hello_buf))], "hello")
        hello = Hello.unpack(hello_buf.tobytes())
        request = Request.make(hello, version, key)
        req_buf = _u8(request.pack())
        p.wait([p.ep.stream_send(array(req_buf))], "request")
        head = np.empty(REPLY_SIZE, np.uint8)
        p.wait([p.ep.stream_recv(array(head))], "reply")
        reply = Reply.unpack(head.tobytes())
        payload_buf = np.empty(reply.payload_len, np.uint8)
        if reply.payload_len:
            p.wait([p.ep.stream_recv(array(payload_buf))], "reply")
        manifest = Manifest.decode(reply.check(payload_buf.tobytes(), hello, request, key, version=version, peer=p.peer))
        if manifest.version != version:
            raise SyncError(f"{p.peer} answered v{manifest.version} to a request for v{version}")
        asm = Assembler(manifest, progress)
        recvs: dict[int, Any] = {}
        posted = 0
        for k in range(manifest.num_buckets):
            while posted < manifest.num_buckets and posted < k + WINDOW:
                recvs[posted] = p.ep.tag_recv(array(asm.array(posted)), ucx.UCXXTag(TAG_BASE + posted))
                posted += 1
            p.wait([recvs.pop(k)], f"bucket {k}")
            asm.landed(k)
        ws = asm.result()
        outcome = Outcome.VERIFIED
        done = _u8(pack_done(outcome))
        keep.append(done)
        # The holder closes only after this acknowledgement (UCX close does not flush).
        p.wait([p.ep.stream_send(array(done))], "acknowledge")
        clean = True
        return ws
    except ucx.UCXError as e:       # a ucxx call raised directly instead of failing a request
        raise SyncError(f"UCX pull from {p.peer} failed: {e!r}") from None
    finally:
        p.close(clean)
