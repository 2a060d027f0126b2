"""What every controller room is handed: the run, its config, the state store, the backend, and
the one way to record an event. Only the loop thread calls into rooms, so only it writes the store."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from slurm_rl.backends.base import Backend
from slurm_rl.config import RunConfig
from slurm_rl.rundir import RunDir
from slurm_rl.store import Store

log = logging.getLogger("slurm_rl.controller")


@dataclass
class Context:
    run: RunDir
    cfg: RunConfig
    store: Store
    backend: Backend

    def event(self, kind: str, msg: str, *, slot: str | None = None, job_id: str | None = None,
              node: str | None = None, data: dict[str, Any] | None = None) -> None:
        log.info("[%s] %s", kind, msg)
        self.store.event(time.time(), kind, msg, slot=slot, job_id=job_id, node=node, data=data)
