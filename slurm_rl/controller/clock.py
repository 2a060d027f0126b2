"""The controller's two clocks (issue 17).

Every timeout and interval the controller judges (heartbeat silence, phase and loading timeouts,
suspicion, probes, restart budgets, retries, the stop grace) runs on `mono()`, time.monotonic: a
wall-clock step (NTP, `date -s`) of +10 s made every live role's last heartbeat 10 s old at once,
and every role DEAD. Those times live only in this process: the slots' timing fields are
monotonic, and times from other processes are never compared with them - a heartbeat counts at its
arrival here, measured here.

What is stored or shown (events, fault milestones, job rows, leases, the roles' heartbeat times
that `status` ages against its own clock, the controller's own heartbeat) stays wall-clock time,
`time.time()`: readers in other processes and a controller resumed later compare it with their
wall clock. `to_wall` / `from_wall` cross between the two where a monotonic time is stored or a
stored one is judged again (a job's submission time after a resume).
"""

from __future__ import annotations

import time


def mono() -> float:
    return time.monotonic()


def to_wall(t: float) -> float:
    """The wall-clock time of monotonic time `t` (as the wall clock reads now)."""
    return time.time() - (time.monotonic() - t)


def from_wall(t: float) -> float:
    """The monotonic time of wall-clock time `t` (a time stored by this or an earlier controller)."""
    return time.monotonic() - (time.time() - t)


__all__ = ["from_wall", "mono", "to_wall"]
