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

The holder side is in ucx_server.py, the puller side in ucx_client.py; this module holds what both
share. Our own UCX settings go into the UCX context config unless the user set the same `UCX_*` variable.
"""

from __future__ import annotations

import logging
import os
import struct
import threading
from typing import Any

import numpy as np

from slurm_rl.sync.base import (
    Manifest,
    TransportUnavailable,
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
