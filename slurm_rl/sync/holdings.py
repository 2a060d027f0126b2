"""What one holder serves: the newest published version, plus older ones while transfers of them run."""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence

from slurm_rl.sync.base import WeightSet

log = logging.getLogger("slurm_rl.sync")


class Holdings:
    """Thread-safe version table shared by every transport of one WeightServer.

    The current version is one whole set or some parts of a sharded trainer's version (a rank
    serves its own part, a relay every part); a puller asks for (version, part).

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
        self._current: dict[int, WeightSet] = {}             # part -> set, all of one version
        self._older: dict[tuple[int, int], WeightSet] = {}   # (version, part) -> set still being transferred
        self._pins: dict[int, int] = {}                      # id(set) -> transfers in flight

    def publish(self, sets: WeightSet | Sequence[WeightSet]) -> None:
        """Make `sets` (one version: a whole set, or parts of a sharded trainer's) what is served."""
        group = [sets] if isinstance(sets, WeightSet) else list(sets)
        if not group or len({ws.version for ws in group}) != 1 or len({ws.part for ws in group}) != len(group):
            raise ValueError("publish takes the parts of one version, each part once")
        with self._lock:
            cur = self._current
            if [id(ws) for ws in cur.values()] == [id(ws) for ws in group]:
                return
            version = group[0].version
            old = next(iter(cur.values()), None)
            if old is not None:
                if version < old.version:
                    log.info("weights v%d replace v%d (a new lineage after a restart)", version, old.version)
                elif version == old.version and any(
                        cur.get(ws.part) is not None and ws.manifest.bucket_hashes != cur[ws.part].manifest.bucket_hashes
                        for ws in group):
                    log.info("weights v%d republished with other contents (a new lineage after a restart)", version)
                for ws in cur.values():
                    if self._pins.get(id(ws)):
                        self._older[(ws.version, ws.part)] = ws
            for ws in group:
                self._older.pop((ws.version, ws.part), None)
            self._current = {ws.part: ws for ws in group}

    def acquire(self, version: int, part: int = 0) -> WeightSet | None:
        with self._lock:
            ws = self._current.get(part)
            ws = ws if ws is not None and ws.version == version else self._older.get((version, part))
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
            if self._older.get((ws.version, ws.part)) is ws:
                del self._older[(ws.version, ws.part)]

    def versions(self) -> list[int]:
        with self._lock:
            held = {v for v, _ in self._older}
            held.update(ws.version for ws in self._current.values())
            return sorted(held)

    def parts(self) -> list[int]:
        """The parts of the current version held here."""
        with self._lock:
            return sorted(self._current)

    @property
    def current(self) -> int | None:
        with self._lock:
            ws = next(iter(self._current.values()), None)
            return None if ws is None else ws.version

    def in_flight(self) -> int:
        with self._lock:
            return sum(self._pins.values())

    def clear(self) -> None:
        with self._lock:
            self._current = {}
            self._older.clear()
            self._pins.clear()
