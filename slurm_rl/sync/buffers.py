"""Host buffers for weight versions: one contiguous block per version, recycled between versions.

Why a pool: on first touch every page of a fresh buffer faults in, and on the VMs we measured that
costs ~1.4 s per GB, several times the transfer itself. A rollout alternates between two versions
(the one it serves, the one it is pulling), so two recycled buffers make every later pull land in
warm memory, as a hand-written baseline with a preallocated buffer would.

Why memfd: the buffer of a version *is* the same-host shared-memory segment. A holder serves a
same-host puller by passing a read-only file descriptor over a Unix socket, so publishing costs no
second copy and no second GB of RAM, the segment has no name in /dev/shm, and the kernel frees it when
the last process holding it exits, SIGKILL included: nothing can leak and no cleanup job is needed.
Off Linux (no memfd) buffers are anonymous memory and the shm transport is unavailable.
"""

from __future__ import annotations

import logging
import mmap
import os
import threading
import weakref
from dataclasses import dataclass, field

import numpy as np
import psutil

from slurm_rl.errors import SyncError

log = logging.getLogger("slurm_rl.sync")

PAGE = mmap.PAGESIZE
HAVE_MEMFD = hasattr(os, "memfd_create")


@dataclass(eq=False)
class HostBuffer:
    """A page-aligned block of host memory (memfd-backed on Linux). Owned by the pool or by one WeightSet."""

    size: int
    mm: mmap.mmap
    fd: int = -1                       # memfd, or -1 for anonymous memory
    _ro_fd: int = field(default=-1, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @classmethod
    def allocate(cls, size: int, name: str = "slurm-rl-weights") -> HostBuffer:
        size = max(PAGE, -(-size // PAGE) * PAGE)
        if HAVE_MEMFD:
            fd = os.memfd_create(name, os.MFD_CLOEXEC)
            try:
                os.ftruncate(fd, size)
                mm = mmap.mmap(fd, size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE)
            except BaseException:
                os.close(fd)
                raise
            return cls(size=size, mm=mm, fd=fd)
        return cls(size=size, mm=mmap.mmap(-1, size))

    def readonly_fd(self) -> int:
        """A read-only descriptor of the same memory, to hand to other processes (they cannot write it)."""
        if self.fd < 0:
            raise OSError("buffer is not memfd-backed")
        with self._lock:
            if self._ro_fd < 0:
                # Re-opening through /proc gives a new open file description with O_RDONLY,
                # so a peer that receives it cannot map the holder's weights writable.
                self._ro_fd = os.open(f"/proc/self/fd/{self.fd}", os.O_RDONLY | os.O_CLOEXEC)
            return self._ro_fd

    def close(self) -> None:
        try:
            self.mm.close()
        except BufferError:      # still exported (a view is alive): let the GC unmap it later
            log.debug("host buffer of %d bytes still has views; unmapping later", self.size)
        for fd in (self.fd, self._ro_fd):
            if fd >= 0:
                os.close(fd)
        self.fd = self._ro_fd = -1


class BufferPool:
    """Recycles host buffers: a buffer comes back when the last tensor viewing it is garbage-collected.

    `take` hands out a free buffer of a fitting size, else allocates. At most `max_free` free buffers
    are kept; `trim()` releases them all (e.g. before loading something big).
    """

    def __init__(self, max_free: int = 2):
        self.max_free = max_free
        self._free: list[HostBuffer] = []
        self._lock = threading.Lock()

    def take(self, nbytes: int, *, check_memory: bool = False) -> HostBuffer:
        """A buffer of at least `nbytes`; with `check_memory`, refuse (SyncError) rather than let a new
        allocation push the node into the OOM killer (the size may come from a peer's manifest)."""
        want = max(PAGE, -(-nbytes // PAGE) * PAGE)
        with self._lock:
            # Same-size first (a model's versions all have the same size), else a slightly larger one;
            # never a much larger one, which would pin a big block for a small set.
            fits = [b for b in self._free if want <= b.size <= want + want // 4 + PAGE]
            if fits:
                best = min(fits, key=lambda b: b.size)
                self._free.remove(best)
                return best
        if check_memory:
            free = psutil.virtual_memory().available
            if want > free:
                raise SyncError(f"weights need {want} bytes, only {free} available on this node")
        return HostBuffer.allocate(want)

    def array(self, buf: HostBuffer, nbytes: int) -> np.ndarray:
        """A uint8 array over `buf`; when it (and every view of it) dies, `buf` returns to the pool."""
        arr = np.frombuffer(buf.mm, dtype=np.uint8, count=nbytes) if nbytes else np.frombuffer(buf.mm, np.uint8, 0)
        weakref.finalize(arr, self._give_back, buf).atexit = False
        return arr

    def _give_back(self, buf: HostBuffer) -> None:
        with self._lock:
            if len(self._free) < self.max_free:
                self._free.append(buf)
                return
            # Evict the smallest: the big ones are the expensive ones to fault in again.
            self._free.append(buf)
            self._free.sort(key=lambda b: b.size)
            victim = self._free.pop(0)
        victim.close()

    def trim(self) -> int:
        """Release every free buffer; returns the bytes released."""
        with self._lock:
            free, self._free = self._free, []
        for b in free:
            b.close()
        return sum(b.size for b in free)

    @property
    def free_bytes(self) -> int:
        with self._lock:
            return sum(b.size for b in self._free)


POOL = BufferPool()


def trim_buffer_pool() -> int:
    """Release the recycled weight buffers this process keeps; returns bytes released."""
    return POOL.trim()
