"""Liveness probes of role endpoints: the second signal that turns a SUSPECT role DEAD.

A TCP connect to the role's weight-server port tells apart the cases heartbeats cannot:
  refused -> the host answers but nothing listens: the process died (or its node rebooted);
  timeout -> nothing answers: the node is gone or cut off;
  ok      -> the process is alive (a SIGSTOPped process still accepts: the kernel completes the
             handshake), so the role is hung, not dead, and only its phase timeout confirms it.
Probes run on a small thread pool so the controller loop never blocks on the network.
"""

from __future__ import annotations

import queue
import socket
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from urllib.parse import urlsplit

from slurm_rl.controller.view import ProbeResult


@dataclass(frozen=True)
class ProbeDone:
    slot: str
    incarnation: int
    result: ProbeResult


def probe_endpoint(address: str, timeout_s: float) -> ProbeResult:
    """Connect to a tcp://host:port (any transport URL with host:port) and classify the outcome."""
    try:
        u = urlsplit(address)
        host, port = u.hostname, u.port
    except ValueError:
        return ProbeResult.UNKNOWN
    if not host or not port:
        return ProbeResult.UNKNOWN
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return ProbeResult.OK
    except ConnectionRefusedError:
        return ProbeResult.REFUSED
    except TimeoutError:
        return ProbeResult.TIMEOUT
    except OSError:
        # unreachable host/network: as good as a timeout for our purpose
        return ProbeResult.TIMEOUT


class Prober:
    def __init__(self, timeout_s: float):
        self.timeout_s = timeout_s
        self.results: queue.SimpleQueue[ProbeDone] = queue.SimpleQueue()
        self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="probe")

    def submit(self, slot: str, incarnation: int, address: str | None) -> None:
        if not address:
            self.results.put(ProbeDone(slot, incarnation, ProbeResult.UNKNOWN))
            return
        self._pool.submit(self._run, slot, incarnation, address)

    def _run(self, slot: str, incarnation: int, address: str) -> None:
        self.results.put(ProbeDone(slot, incarnation, probe_endpoint(address, self.timeout_s)))

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
