"""What one holder serves: the newest published version, plus older ones while transfers of them run."""

from __future__ import annotations

import logging
import threading

from slurm_rl.sync.base import WeightSet

log = logging.getLogger("slurm_rl.sync")


class Holdings:
    """Thread-safe version table shared by every transport of one WeightServer.

    A transfer pins the very WeightSet it serves (`acquire` ... `release`), so publishing another
    version never pulls bytes out from under a puller; a set that is no longer current is dropped
    (and its buffer recycled) once its last transfer ends.

    `publish` always makes the given set current, even when its version number is not larger or the
    same number had other contents: after a trainer fail-over the run resumes from an older
    checkpoint and republishes those numbers on a new lineage (the controller's weight epoch says
    which lineage is valid). WeightSets themselves never change.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._current: WeightSet | None = None
        self._older: dict[int, WeightSet] = {}      # version -> set still being transferred
        self._pins: dict[int, int] = {}             # id(set) -> transfers in flight

    def publish(self, ws: WeightSet) -> None:
        with self._lock:
            cur = self._current
            if cur is ws:
                return
            if cur is not None:
                if ws.version < cur.version:
                    log.info("weights v%d replace v%d (a new lineage after a restart)", ws.version, cur.version)
                elif ws.version == cur.version and ws.manifest.bucket_hashes != cur.manifest.bucket_hashes:
                    log.info("weights v%d republished with other contents (a new lineage after a restart)", ws.version)
                if self._pins.get(id(cur)):
                    self._older[cur.version] = cur
            self._older.pop(ws.version, None)
            self._current = ws

    def acquire(self, version: int) -> WeightSet | None:
        with self._lock:
            ws = self._current if self._current is not None and self._current.version == version else None
            ws = ws or self._older.get(version)
            if ws is not None:
                self._pins[id(ws)] = self._pins.get(id(ws), 0) + 1
            return ws

    def release(self, ws: WeightSet) -> None:
        with self._lock:
            n = self._pins.get(id(ws), 0) - 1
            if n > 0:
                self._pins[id(ws)] = n
                return
            self._pins.pop(id(ws), None)
            if self._older.get(ws.version) is ws:
                del self._older[ws.version]

    def versions(self) -> list[int]:
        with self._lock:
            held = set(self._older)
            if self._current is not None:
                held.add(self._current.version)
            return sorted(held)

    @property
    def current(self) -> int | None:
        with self._lock:
            return None if self._current is None else self._current.version

    def in_flight(self) -> int:
        with self._lock:
            return sum(self._pins.values())

    def clear(self) -> None:
        with self._lock:
            self._current = None
            self._older.clear()
            self._pins.clear()
