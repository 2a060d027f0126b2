"""Who pulls from whom when several receivers need the same new version (a pure plan, no I/O).

Star: every receiver pulls from the origin at once; the origin's link carries N copies.
Relay (doubling): each holder serves one receiver at a time and every receiver that finishes becomes
a holder, so the number of holders doubles each round: ceil(log2(N+1)) rounds of one copy per link
instead of N copies through one link. Fencing is unchanged: a receiver serves a version only after it
has it complete and verified.
"""

from __future__ import annotations

from dataclasses import dataclass

ORIGIN = -1


@dataclass(frozen=True, slots=True)
class RelayStep:
    """Receiver `receiver` pulls from `source` (ORIGIN or a receiver index) once every receiver in
    `waits_for` has its copy (the source itself, and the source's previous client)."""

    receiver: int
    source: int
    waits_for: tuple[int, ...] = ()


def star_plan(n: int) -> tuple[RelayStep, ...]:
    return tuple(RelayStep(r, ORIGIN) for r in range(n))


def relay_plan(n: int) -> tuple[RelayStep, ...]:
    """Doubling schedule for `n` receivers, in start order."""
    steps: list[RelayStep] = []
    holders = [ORIGIN]
    last_client: dict[int, int] = {}       # holder -> receiver it served last
    nxt = 0
    while nxt < n:
        for h in list(holders):
            if nxt >= n:
                break
            waits = set()
            if h != ORIGIN:
                waits.add(h)
            if h in last_client:
                waits.add(last_client[h])
            steps.append(RelayStep(nxt, h, tuple(sorted(waits))))
            last_client[h] = nxt
            holders.append(nxt)
            nxt += 1
    return tuple(steps)


def rounds(plan: tuple[RelayStep, ...]) -> int:
    """Number of sequential transfer rounds the plan needs (its critical path)."""
    depth: dict[int, int] = {}
    for s in plan:
        depth[s.receiver] = 1 + max((depth[w] for w in s.waits_for), default=0)
    return max(depth.values(), default=0)
