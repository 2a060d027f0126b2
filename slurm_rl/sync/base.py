"""The data of weight sync: a version is one contiguous byte buffer plus a manifest that describes it.

A `WeightSet` is immutable once built: the trainer builds one per step with `from_state_dict` (one
copy into one buffer), holders serve it, pullers rebuild it byte for byte and verify it against the
manifest's per-bucket xxh3-64 hashes before anyone sees it (fencing).
"""

from __future__ import annotations

import enum
import json
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
import xxhash

from slurm_rl.errors import SyncError
from slurm_rl.sync.buffers import POOL, HostBuffer

ALIGN = 256                          # tensor offsets: enough for any dtype and for DMA engines
DEFAULT_BUCKET_BYTES = 32 << 20      # hash + progress granularity; also the UCX message size
MANIFEST_FORMAT = 1

ProgressFn = Callable[[int, int], None]

_DTYPES: dict[str, torch.dtype] = {
    str(d).removeprefix("torch."): d
    for d in (
        torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.complex64, torch.complex128,
        torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8, torch.uint16, torch.uint32,
        torch.uint64, torch.bool, torch.float8_e4m3fn, torch.float8_e5m2, torch.float8_e4m3fnuz,
        torch.float8_e5m2fnuz,
    )
}


class Transport(str, enum.Enum):
    """How bytes move. `shm` only works between processes of one host (same kernel, same netns)."""

    TCP = "tcp"
    UCX = "ucx"
    SHM = "shm"

    def __str__(self) -> str:
        return self.value

    @classmethod
    def parse(cls, value: str | Transport) -> Transport:
        try:
            return cls(value)
        except ValueError:
            valid = ", ".join(t.value for t in cls)
            raise SyncError(f"unknown weight-sync transport {value!r}; valid: {valid}") from None


class VersionNotHeld(SyncError):
    """The holder does not (or no longer) hold the requested version. Ask the controller for another holder."""

    def __init__(self, message: str, *, held: tuple[int, ...] = ()):
        super().__init__(message, hint="pull from a holder that registered this version")
        self.held = held


class SyncAuthError(SyncError):
    """The holder and the puller do not share the run's secret (or one side has none)."""


class TransportUnavailable(SyncError):
    """This process cannot use the transport (e.g. ucxx does not import)."""


class Deadline:
    """An absolute point in time; every blocking call of a transfer waits at most until it."""

    __slots__ = ("end", "seconds")

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.end = time.monotonic() + seconds

    def remaining(self, what: str = "transfer") -> float:
        """Seconds left; raises SyncError once the deadline has passed (the peer is hung or too slow)."""
        left = self.end - time.monotonic()
        if left <= 0:
            raise SyncError(f"{what} missed its {self.seconds:.1f}s deadline (peer hung or too slow)")
        return left


def dtype_from_name(name: str) -> torch.dtype:
    try:
        return _DTYPES[name]
    except KeyError:
        raise SyncError(f"unsupported tensor dtype {name!r}; supported: {', '.join(sorted(_DTYPES))}") from None


def dtype_name(dtype: torch.dtype) -> str:
    name = str(dtype).removeprefix("torch.")
    dtype_from_name(name)   # validates
    return name


@dataclass(frozen=True, slots=True)
class TensorMeta:
    """Where one named tensor lives in the version's buffer."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    offset: int
    nbytes: int


@dataclass(frozen=True, slots=True)
class Manifest:
    """Everything a puller needs to allocate, receive and verify one version."""

    version: int
    tensors: tuple[TensorMeta, ...]
    total_bytes: int
    bucket_bytes: int
    bucket_hashes: tuple[int, ...]       # xxh3_64 of each bucket_bytes slice of the buffer
    # a version the ranks of a sharded trainer publish is `parts` sets, one per rank; this is `part`
    # (slurm_rl.sync.parts). A whole version is part 0 of 1.
    part: int = 0
    parts: int = 1

    @property
    def num_buckets(self) -> int:
        return len(self.bucket_hashes)

    def bucket_range(self, k: int) -> tuple[int, int]:
        start = k * self.bucket_bytes
        return start, min(self.total_bytes, start + self.bucket_bytes)

    def encode(self) -> bytes:
        doc = {
            "format": MANIFEST_FORMAT, "version": self.version, "total_bytes": self.total_bytes,
            "bucket_bytes": self.bucket_bytes, "bucket_hashes": list(self.bucket_hashes),
            "tensors": [[t.name, t.dtype, list(t.shape), t.offset, t.nbytes] for t in self.tensors],
            "part": self.part, "parts": self.parts,
        }
        return json.dumps(doc, separators=(",", ":")).encode()

    @classmethod
    def decode(cls, data: bytes) -> Manifest:
        """Parse and validate a manifest from a peer; anything inconsistent raises SyncError."""
        try:
            doc = json.loads(data)
            if doc["format"] != MANIFEST_FORMAT:
                raise SyncError(f"manifest format {doc['format']} is not {MANIFEST_FORMAT}: peer runs another slurm-rl")
            m = cls(
                version=int(doc["version"]), total_bytes=int(doc["total_bytes"]),
                bucket_bytes=int(doc["bucket_bytes"]),
                bucket_hashes=tuple(int(h) for h in doc["bucket_hashes"]),
                tensors=tuple(TensorMeta(str(n), str(d), tuple(int(s) for s in shape), int(o), int(b))
                              for n, d, shape, o, b in doc["tensors"]),
                part=int(doc.get("part", 0)), parts=int(doc.get("parts", 1)),
            )
        except SyncError:
            raise
        except (ValueError, KeyError, TypeError) as e:
            raise SyncError(f"malformed manifest from peer: {e!r}") from None
        m.check()
        return m

    def expect(self, version: int, part: int, peer: str) -> None:
        """The holder answered what was asked: that version, that part."""
        if self.version != version:
            raise SyncError(f"{peer} answered v{self.version} to a request for v{version}")
        if self.part != part:
            raise SyncError(f"{peer} answered part {self.part} of v{version} to a request for part {part}")

    def check(self) -> None:
        """Internal consistency: sizes, offsets, bucket count. Guards allocations driven by a peer."""
        if not 0 <= self.part < self.parts:
            raise SyncError(f"manifest v{self.version}: part {self.part} of {self.parts}")
        if self.total_bytes < 0 or self.bucket_bytes <= 0:
            raise SyncError(f"manifest v{self.version}: bad sizes total={self.total_bytes} bucket={self.bucket_bytes}")
        if self.num_buckets != math.ceil(self.total_bytes / self.bucket_bytes):
            raise SyncError(f"manifest v{self.version}: {self.num_buckets} bucket hashes for {self.total_bytes} bytes")
        names = set()
        end = 0
        for t in self.tensors:
            itemsize = dtype_from_name(t.dtype).itemsize
            if any(s < 0 for s in t.shape) or t.nbytes != math.prod(t.shape) * itemsize:
                raise SyncError(f"manifest v{self.version}: tensor {t.name!r} shape {t.shape} does not match {t.nbytes} bytes")
            if t.offset < 0 or t.offset % itemsize or t.offset + t.nbytes > self.total_bytes:
                raise SyncError(f"manifest v{self.version}: tensor {t.name!r} lies outside the buffer")
            if t.name in names:
                raise SyncError(f"manifest v{self.version}: tensor {t.name!r} appears twice")
            names.add(t.name)
            end = max(end, t.offset + t.nbytes)
        if self.total_bytes > end + ALIGN:
            raise SyncError(f"manifest v{self.version}: {self.total_bytes} bytes but tensors end at {end}")


def _bucket_hashes(flat: np.ndarray, total: int, bucket_bytes: int) -> tuple[int, ...]:
    view = memoryview(flat)
    return tuple(xxhash.xxh3_64_intdigest(view[s:min(total, s + bucket_bytes)]) for s in range(0, total, bucket_bytes))


class WeightSet:
    """One complete, verified version: a single contiguous uint8 buffer + manifest. Tensors are zero-copy views.

    Treat it as immutable. When the last reference to it and to its tensors is gone, its buffer is
    recycled for the next version (see `buffers.BufferPool`); copy tensors out if you keep them longer.
    """

    __slots__ = ("__weakref__", "_flat", "_host", "manifest")

    def __init__(self, manifest: Manifest, flat: np.ndarray, host: HostBuffer):
        """Internal: use `from_state_dict` or `pull`. `flat` is a uint8 array of total_bytes over `host`."""
        self.manifest = manifest
        self._flat = flat
        self._host = host

    @property
    def version(self) -> int:
        return self.manifest.version

    @property
    def nbytes(self) -> int:
        return self.manifest.total_bytes

    @property
    def part(self) -> int:
        return self.manifest.part

    @classmethod
    def from_state_dict(cls, sd: Mapping[str, torch.Tensor], version: int,
                        bucket_bytes: int = DEFAULT_BUCKET_BYTES, *, part: int = 0, parts: int = 1) -> WeightSet:
        """Pack a state dict (CPU or GPU tensors, any supported dtype) into one buffer: one copy per tensor.
        `part`/`parts`: this is one rank's share of a sharded trainer's version (slurm_rl.sync.parts)."""
        if bucket_bytes <= 0:
            raise SyncError(f"bucket_bytes must be positive, got {bucket_bytes}")
        metas: list[TensorMeta] = []
        offset = 0
        for name, t in sd.items():
            if not isinstance(t, torch.Tensor):
                raise SyncError(f"state dict entry {name!r} is a {type(t).__name__}, not a tensor")
            offset = -(-offset // ALIGN) * ALIGN
            nbytes = t.numel() * t.element_size()
            metas.append(TensorMeta(name, dtype_name(t.dtype), tuple(t.shape), offset, nbytes))
            offset += nbytes
        total = offset
        host = POOL.take(total)
        flat = POOL.array(host, total)
        dst = torch.from_numpy(flat)
        for meta, t in zip(metas, sd.values()):
            if meta.nbytes:
                # Raw bytes, whatever the dtype (bf16 has no numpy twin). copy_ also does the D2H for GPU tensors.
                src = t.detach().contiguous().reshape(-1).view(torch.uint8)
                dst[meta.offset:meta.offset + meta.nbytes].copy_(src)
        manifest = Manifest(version=int(version), tensors=tuple(metas), total_bytes=total,
                            bucket_bytes=bucket_bytes, bucket_hashes=_bucket_hashes(flat, total, bucket_bytes),
                            part=part, parts=parts)
        manifest.check()
        return cls(manifest, flat, host)

    def tensors(self) -> dict[str, torch.Tensor]:
        """Zero-copy views into the buffer with their dtype and shape (fresh dict, same memory)."""
        flat = torch.from_numpy(self._flat)
        out: dict[str, torch.Tensor] = {}
        for m in self.manifest.tensors:
            out[m.name] = flat[m.offset:m.offset + m.nbytes].view(dtype_from_name(m.dtype)).view(m.shape)
        return out

    def buffer(self) -> memoryview:
        """The raw bytes (read them, do not write them: versions are immutable)."""
        return memoryview(self._flat)

    def verify(self) -> None:
        """Recompute every bucket hash; raises SyncError on a size or hash mismatch."""
        m = self.manifest
        if self._flat.nbytes != m.total_bytes:
            raise SyncError(f"weights v{m.version}: buffer holds {self._flat.nbytes} bytes, manifest says {m.total_bytes}")
        got = _bucket_hashes(self._flat, m.total_bytes, m.bucket_bytes)
        for k, (a, b) in enumerate(zip(got, m.bucket_hashes)):
            if a != b:
                raise SyncError(f"weights v{m.version}: bucket {k} hash mismatch (corrupt data)")

    def __repr__(self) -> str:
        return f"WeightSet(version={self.version}, tensors={len(self.manifest.tensors)}, bytes={self.nbytes})"


_hasher_lock = threading.Lock()
_hasher_pool: ThreadPoolExecutor | None = None


def hasher() -> ThreadPoolExecutor:
    """One background thread that hashes received buckets while the next one arrives.

    xxhash releases the GIL for large buffers, so hashing overlaps the receive (socket copy, UCX
    progress, shm copy) instead of stalling it; one worker keeps tasks in submission order, which
    lets a bucket be hashed incrementally chunk by chunk.
    """
    global _hasher_pool
    with _hasher_lock:
        if _hasher_pool is None:
            _hasher_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="slurm-rl-sync-hash")
        return _hasher_pool


class Assembler:
    """Receiver side of one transfer: one buffer of total_bytes, each bucket hashed as it lands.

    Transports write bucket k into `view(k)` and call `landed(k)`, which hands the hash to the
    background hasher; digests are checked (and progress reported) in order as they finish.
    `result()` gives the WeightSet only when every bucket has landed and matched its hash, so a
    broken transfer never escapes.
    """

    def __init__(self, manifest: Manifest, progress: ProgressFn | None = None):
        self.manifest = manifest
        self.host = POOL.take(manifest.total_bytes, check_memory=True)
        self.flat = POOL.array(self.host, manifest.total_bytes)
        self._mv = memoryview(self.flat)
        self._progress = progress
        self._landed = 0
        self._checked = 0
        self._done = 0
        self._pending: deque[tuple[int, Future[int]]] = deque()

    def view(self, k: int) -> memoryview:
        s, e = self.manifest.bucket_range(k)
        return self._mv[s:e]

    def array(self, k: int) -> np.ndarray:
        s, e = self.manifest.bucket_range(k)
        return self.flat[s:e]

    def landed(self, k: int, digest: Future[int] | None = None) -> None:
        """Bucket k is complete. Its hash is computed in the background (or `digest` is a future the
        transport already started, e.g. while copying); mismatches raise here or in `result()`."""
        if k != self._landed:
            raise SyncError(f"bucket {k} landed out of order (expected {self._landed})")
        self._landed += 1
        fut = digest if digest is not None else hasher().submit(xxhash.xxh3_64_intdigest, self.view(k))
        self._pending.append((k, fut))
        self._check(block=False)

    def _check(self, *, block: bool) -> None:
        while self._pending and (block or self._pending[0][1].done()):
            k, fut = self._pending.popleft()
            if fut.result() != self.manifest.bucket_hashes[k]:
                raise SyncError(f"weights v{self.manifest.version}: bucket {k} hash mismatch (corrupt data)")
            s, e = self.manifest.bucket_range(k)
            self._checked += 1
            self._done += e - s
            if self._progress is not None:
                self._progress(self._done, self.manifest.total_bytes)

    def result(self) -> WeightSet:
        self._check(block=True)
        if self._checked != self.manifest.num_buckets:
            raise SyncError(f"weights v{self.manifest.version}: only {self._checked}/{self.manifest.num_buckets} buckets arrived")
        return WeightSet(self.manifest, self.flat, self.host)
