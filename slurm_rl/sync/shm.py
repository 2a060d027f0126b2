"""Same-host transport: the holder passes a read-only descriptor of the version's memfd buffer over a
Unix socket (SCM_RIGHTS); the puller maps it read-only and copies out bucket by bucket, hashing each.

Why this shape (and not named /dev/shm segments):
- The version's buffer already *is* the segment (see `buffers`): publishing costs no copy and no RAM.
- There is no name to leak. A SIGKILLed holder's memory is freed by the kernel as soon as no process
  holds a descriptor or mapping of it; `stop()` has nothing to unlink; multiprocessing's
  resource_tracker (which deletes segments it thinks it owns, Python 3.11) never sees it.
- The control socket lives in the abstract namespace (`\\0slurm-rl-sync.<pid>.<token>`), which also
  disappears with the process. Only processes of the same user may connect (SO_PEERCRED), and the
  run's HMAC handshake applies as on TCP.
- A holder that dies or hangs mid-copy cannot hurt the puller: the mapping stays valid, the copy
  completes and is verified. The copy is the puller's own memory (charged to its own Slurm job).

Mapping a buffer costs a page-table fill (~0.06 s/GB here); holders recycle their buffers, so the
puller keeps the last few mappings (keyed by inode) for `MAPPING_TTL_S`: steady-state pulls skip the
fill. A cached mapping can keep a stopped holder's buffer alive until it expires or
`release_cached_memory()` is called.
"""

from __future__ import annotations

import logging
import mmap
import os
import socket
import struct
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import xxhash

from slurm_rl.errors import SyncError
from slurm_rl.sync.base import Assembler, Deadline, ProgressFn, WeightSet, hasher
from slurm_rl.sync.buffers import HAVE_MEMFD
from slurm_rl.sync.holdings import Holdings
from slurm_rl.sync.stream import client_handshake, send_done
from slurm_rl.sync.tcp import SocketServer
from slurm_rl.sync.wire import Outcome

log = logging.getLogger("slurm_rl.sync")

MAPPING_TTL_S = 120.0
MAPPING_MAX = 4
_FD_MSG = struct.Struct("!4sQ")
_SO_PEERCRED = struct.Struct("3i")
COPY_CHUNK = 4 << 20      # copy + hash in chunks that stay in cache between the two


def shm_status() -> tuple[bool, str]:
    if not HAVE_MEMFD or not hasattr(socket, "send_fds") or not hasattr(socket, "AF_UNIX"):
        return False, "needs Linux (memfd_create, SCM_RIGHTS)"
    return True, ""


class ShmServer(SocketServer):
    kind = "shm"

    def __init__(self, host_id: str, holdings: Holdings, key: bytes | None, **opts: Any):
        super().__init__(holdings, key, **opts)
        self.host_id = host_id
        self.name = f"slurm-rl-sync.{os.getpid()}.{os.urandom(6).hex()}"

    def start(self) -> str:
        ok, why = shm_status()
        if not ok:
            raise SyncError(f"shm transport unavailable: {why}")
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.bind("\0" + self.name)
        s.listen(128)
        self._listen = s
        self._start_thread()
        return f"shm://{self.host_id}/{self.name}"

    def _refuse(self, conn: socket.socket) -> str | None:
        _pid, uid, _gid = _SO_PEERCRED.unpack(conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _SO_PEERCRED.size))
        if uid != os.getuid():
            return f"shm pulls only from the same user (peer uid {uid})"
        return None

    def _done_timeout(self, ws: WeightSet) -> float:
        # The puller copies without reporting back; give a big version time to be copied at even
        # 0.5 GB/s before declaring the puller stuck and unpinning the version.
        return self.stall_timeout_s + ws.nbytes / 0.5e9

    def _send_body(self, conn: socket.socket, ws: WeightSet, peer: str) -> None:
        fd = ws._host.readonly_fd()
        deadline = Deadline(self.stall_timeout_s)
        try:
            conn.settimeout(deadline.remaining(f"send to {peer}"))
            socket.send_fds(conn, [_FD_MSG.pack(b"SRLF", ws.nbytes)], [fd])
        except OSError as e:
            raise SyncError(f"passing the weights descriptor to {peer} failed: {e}") from None


@dataclass(eq=False)
class _Mapping:
    key: tuple[int, int]
    mm: mmap.mmap
    array: np.ndarray
    users: int = 0
    last_used: float = 0.0


class MappingCache:
    """Read-only mappings of holders' buffers, reused while a holder keeps recycling the same buffer."""

    def __init__(self, max_entries: int = MAPPING_MAX, ttl_s: float = MAPPING_TTL_S):
        self.max_entries = max_entries
        self.ttl_s = ttl_s
        self._lock = threading.Lock()
        self._maps: dict[tuple[int, int], _Mapping] = {}
        self._timer: threading.Timer | None = None

    def acquire(self, fd: int, need: int) -> _Mapping:
        """Map `fd` (or reuse the mapping of the same inode); takes ownership of `fd`."""
        try:
            st = os.fstat(fd)
            if st.st_size < need:
                raise SyncError(f"holder's weights segment has {st.st_size} bytes, manifest needs {need}")
            key = (st.st_dev, st.st_ino)
            with self._lock:
                m = self._maps.get(key)
                if m is not None and m.array.nbytes >= need:
                    m.users += 1
                    return m
            # A live mapping pins the inode, so an equal (dev, ino) is the same buffer, never a reused number.
            mm = mmap.mmap(fd, st.st_size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ)
        finally:
            os.close(fd)
        m = _Mapping(key, mm, np.frombuffer(mm, dtype=np.uint8), users=1)
        with self._lock:
            cur = self._maps.get(key)
            if cur is not None and cur.array.nbytes >= need:
                # Another puller mapped the same buffer meanwhile: share its mapping, drop ours.
                cur.users += 1
                m, old = cur, m
            else:
                self._maps[key] = m
                # A mapping still in use by another pull is only forgotten here; the GC unmaps it.
                old = cur if cur is not None and cur.users == 0 else None
        if old is not None:
            self._close(old)
        return m

    def release(self, m: _Mapping) -> None:
        with self._lock:
            m.users -= 1
            m.last_used = time.monotonic()
            victims = self._evict_locked(time.monotonic())
            if self._maps and self._timer is None:
                self._timer = threading.Timer(self.ttl_s + 1.0, self._expire)
                self._timer.daemon = True
                self._timer.start()
        for v in victims:
            self._close(v)

    def trim(self) -> int:
        with self._lock:
            victims = [m for m in self._maps.values() if m.users == 0]
            for v in victims:
                del self._maps[v.key]
        for v in victims:
            self._close(v)
        return sum(v.array.nbytes for v in victims)

    def _expire(self) -> None:
        with self._lock:
            self._timer = None
            victims = self._evict_locked(time.monotonic())
            again = bool(self._maps)
        for v in victims:
            self._close(v)
        if again:
            with self._lock:
                if self._timer is None:
                    self._timer = threading.Timer(self.ttl_s + 1.0, self._expire)
                    self._timer.daemon = True
                    self._timer.start()

    def _evict_locked(self, now: float) -> list[_Mapping]:
        idle = sorted((m for m in self._maps.values() if m.users == 0), key=lambda m: m.last_used)
        victims = [m for m in idle if now - m.last_used > self.ttl_s]
        extra = len(self._maps) - len(victims) - self.max_entries
        victims += [m for m in idle if m not in victims][:max(0, extra)]
        for v in victims:
            del self._maps[v.key]
        return victims

    @staticmethod
    def _close(m: _Mapping) -> None:
        m.array = np.empty(0, np.uint8)
        try:
            m.mm.close()
        except BufferError:
            pass     # a copy in another thread still reads it; the GC unmaps it afterwards


MAPPINGS = MappingCache()


def pull_shm(host_id: str, name: str, version: int, *, deadline: Deadline, progress: ProgressFn | None,
             key: bytes | None, part: int = 0) -> WeightSet:
    peer = f"shm://{host_id}/{name}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    outcome = Outcome.FAILED
    try:
        try:
            sock.settimeout(deadline.remaining(f"connect to {peer}"))
            sock.connect("\0" + name)
        except OSError as e:
            raise SyncError(f"cannot connect to {peer}: {e} (holder gone, or not on this host/network namespace)") from None
        manifest = client_handshake(sock, version, key, deadline, peer, part)
        try:
            sock.settimeout(deadline.remaining(f"receive from {peer}"))
            msg, fds, flags, _ = socket.recv_fds(sock, _FD_MSG.size, 1)
        except TimeoutError:
            raise SyncError(f"{peer} sent no descriptor until the {deadline.seconds:.1f}s deadline (hung?)") from None
        except OSError as e:
            raise SyncError(f"connection to {peer} broke: {e}") from None
        if len(fds) != 1 or len(msg) != _FD_MSG.size or flags & socket.MSG_CTRUNC:
            for fd in fds:
                os.close(fd)
            raise SyncError(f"{peer} did not pass a weights descriptor")
        mapping = MAPPINGS.acquire(fds[0], manifest.total_bytes)
        try:
            asm = Assembler(manifest, progress)
            src = mapping.array
            pool = hasher()
            for k in range(manifest.num_buckets):
                deadline.remaining(f"copy from {peer}")
                s, e = manifest.bucket_range(k)
                dst = asm.array(k)
                h = xxhash.xxh3_64()
                # Copy a chunk here while the hasher thread hashes the previous one (both release the
                # GIL): the hash reads from cache, not from memory a second time, and runs in parallel.
                for c in range(0, e - s, COPY_CHUNK):
                    np.copyto(dst[c:c + COPY_CHUNK], src[s + c:min(e, s + c + COPY_CHUNK)])
                    pool.submit(h.update, memoryview(dst[c:c + COPY_CHUNK]))
                asm.landed(k, pool.submit(h.intdigest))
            ws = asm.result()
        finally:
            MAPPINGS.release(mapping)
        outcome = Outcome.VERIFIED
        return ws
    finally:
        try:
            send_done(sock, outcome, Deadline(0.5), peer)
        except SyncError:
            pass
        sock.close()
