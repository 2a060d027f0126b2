"""How long a connection may stay unauthenticated, and how many may: shared by every listener a role
process runs for strangers to reach (the weight-sync transports, the liveness listener).

A connection that has not proved it holds the run's key within `AUTH_DEADLINE_S` of being accepted
is closed; at most `MAX_UNAUTHENTICATED` are held at once, and a new one beyond that closes the
oldest (`Pending.add`), so idle strangers can neither pin a listener's threads and descriptors nor
lock out a real peer, whose handshake takes milliseconds. Unauthenticated connections never count
toward a server's transfer limit.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Generic, TypeVar

AUTH_DEADLINE_S = 2.0
MAX_UNAUTHENTICATED = 64

T = TypeVar("T")


class Pending(Generic[T]):
    """The connections accepted and not yet authenticated, oldest first; thread-safe."""

    def __init__(self, cap: int = MAX_UNAUTHENTICATED):
        if cap < 1:
            raise ValueError("the cap on unauthenticated connections must be at least 1")
        self.cap = cap
        self._lock = threading.Lock()
        self._conns: OrderedDict[T, None] = OrderedDict()

    def add(self, conn: T) -> list[T]:
        """Hold `conn`; returns the oldest ones it pushes over the cap, which the caller closes."""
        with self._lock:
            self._conns[conn] = None
            out = []
            while len(self._conns) > self.cap:
                out.append(self._conns.popitem(last=False)[0])
            return out

    def done(self, conn: T) -> bool:
        """`conn` authenticated, failed or closed: forget it. False if it was not held (evicted)."""
        with self._lock:
            return self._conns.pop(conn, 0) is None

    def __len__(self) -> int:
        with self._lock:
            return len(self._conns)


__all__ = ["AUTH_DEADLINE_S", "MAX_UNAUTHENTICATED", "Pending"]
