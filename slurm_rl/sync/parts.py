"""A sharded trainer's version in parts, one per rank, pulled in parallel.

Rank r of a W-rank FSDP2 trainer holds dim-0 rows of every parameter (torch.chunk's split) and
publishes them as part r of W: a WeightSet of its local rows under the parameters' names, with its
own manifest and bucket hashes, so every part is fenced like a whole version. Tensors that are not
sharded go in part 0 only. No rank gathers the model to publish it.

A rollout pulls all W parts at once, each from another source (the ranks themselves, or relays:
a holder that pulled the parts serves every one of them), and joins them (`Parts.tensors`: the
parts' rows concatenated in part order). A restored rank r of a trainer of the same shape pulls
part r alone: its own shard, from any relay, no disk read.

A whole version (a single-process trainer's) is part 0 of 1, so one code path serves both.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import torch

from slurm_rl.errors import SyncError
from slurm_rl.sync.base import ProgressFn, WeightSet
from slurm_rl.sync.client import BandwidthMeter, pull_any

log = logging.getLogger("slurm_rl.sync")


class Parts:
    """Every part of one version (a whole version: one part)."""

    __slots__ = ("sets",)

    def __init__(self, sets: Sequence[WeightSet]):
        ordered = sorted(sets, key=lambda ws: ws.part)
        if not ordered:
            raise SyncError("no parts")
        n = ordered[0].manifest.parts
        if [ws.part for ws in ordered] != list(range(n)) or any(ws.manifest.parts != n for ws in ordered):
            raise SyncError(f"weights v{ordered[0].version}: parts {[ws.part for ws in ordered]} "
                            f"do not make the {n} of the version")
        if len({ws.version for ws in ordered}) != 1:
            raise SyncError(f"parts of different versions: {sorted({ws.version for ws in ordered})}")
        self.sets: tuple[WeightSet, ...] = tuple(ordered)

    @classmethod
    def whole(cls, ws: WeightSet) -> Parts:
        return cls([ws])

    @property
    def version(self) -> int:
        return self.sets[0].version

    @property
    def count(self) -> int:
        return len(self.sets)

    @property
    def nbytes(self) -> int:
        return sum(ws.nbytes for ws in self.sets)

    def tensors(self) -> dict[str, torch.Tensor]:
        """The whole model's tensors: views into the set for a whole version, else each parameter's
        parts joined (one copy)."""
        if len(self.sets) == 1:
            return self.sets[0].tensors()
        return join([ws.tensors() for ws in self.sets], version=self.version)

    def __repr__(self) -> str:
        return f"Parts(version={self.version}, parts={self.count}, bytes={self.nbytes})"


def join(parts: Sequence[dict[str, torch.Tensor]], *, version: int = -1) -> dict[str, torch.Tensor]:
    """Whole tensors from per-rank parts: a name in every part is its rows in part order; a name in
    part 0 only is whole there. Anything else is a broken version (SyncError)."""
    out: dict[str, torch.Tensor] = {}
    names0 = set(parts[0])
    for p, sd in enumerate(parts[1:], 1):
        if not set(sd) <= names0:
            extra = sorted(set(sd) - names0)[:3]
            raise SyncError(f"weights v{version}: part {p} has tensors part 0 lacks: {extra}")
    for name, t0 in parts[0].items():
        pieces = [sd[name] for sd in parts if name in sd]
        if len(pieces) == 1:
            out[name] = t0
            continue
        if len(pieces) != len(parts):
            raise SyncError(f"weights v{version}: tensor {name!r} is in {len(pieces)} of {len(parts)} parts")
        if any(t.dtype != t0.dtype or t.dim() != t0.dim() or t.shape[1:] != t0.shape[1:] for t in pieces):
            raise SyncError(f"weights v{version}: the parts of {name!r} do not fit together "
                            f"({[tuple(t.shape) for t in pieces]})")
        out[name] = torch.cat(pieces, dim=0)
    return out


def sources_for(part: int, relays: Sequence[str], ranks: Sequence[str]) -> list[str]:
    """Where to pull `part` from, best first: relays (each part from another one, so the parts come
    in parallel from several), then the rank that holds it."""
    k = part % len(relays) if relays else 0
    out = list(relays[k:]) + list(relays[:k])
    if part < len(ranks) and ranks[part]:
        out.append(ranks[part])
    return out


def pull_parts(relays: Sequence[str], ranks: Sequence[str], version: int, parts: int, *, deadline_s: float,
               stall_s: float | None = None, total_deadline_s: float | None = None,
               progress: ProgressFn | None = None, auth_key: bytes | None = None,
               meter: BandwidthMeter | None = None, only: int | None = None) -> Parts | WeightSet:
    """All `parts` parts of `version` at once (or part `only` alone, returned as its WeightSet).

    `relays` serve every part, `ranks[p]` part p only. Each part tries its sources in turn (see
    `pull_any`); a part no source delivers fails the pull. A version that turns out to be in another
    number of parts than `parts` is pulled again once, in that number, from the relays; for one part
    alone (`only`) that raises `PartCount`, which says the number."""
    try:
        return _pull(relays, ranks, version, parts, deadline_s, stall_s, total_deadline_s, progress, auth_key,
                     meter, only)
    except PartCount as e:
        if not relays or only is not None:
            raise PartCount(f"weights v{version} is in {e.parts} parts, not {parts}", e.parts) from None
        log.info("weights v%d is in %d parts, not %d: pulling again", version, e.parts, parts)
        return _pull(relays, (), version, e.parts, deadline_s, stall_s, total_deadline_s, progress, auth_key,
                     meter, None)


class PartCount(SyncError):
    """The version is in another number of parts (`parts`) than asked for."""

    def __init__(self, message: str, parts: int):
        super().__init__(message)
        self.parts = parts


def _pull(relays: Sequence[str], ranks: Sequence[str], version: int, parts: int, deadline_s: float,
          stall_s: float | None, total_deadline_s: float | None, progress: ProgressFn | None,
          auth_key: bytes | None, meter: BandwidthMeter | None, only: int | None) -> Parts | WeightSet:
    wanted = [only] if only is not None else list(range(parts))
    lock = threading.Lock()
    seen: dict[int, tuple[int, int]] = {}

    def one(p: int) -> WeightSet:
        def report(done: int, total: int) -> None:
            if progress is None:
                return
            with lock:
                seen[p] = (done, total) if total else seen.get(p, (0, 0))
                d, t = sum(v[0] for v in seen.values()), sum(v[1] for v in seen.values())
            progress(d, t)

        addrs = sources_for(p, relays, ranks)
        if not addrs:
            raise SyncError(f"no holder of part {p} of weights v{version}")
        ws, _ = pull_any(addrs, version, deadline_s=deadline_s, progress=report, auth_key=auth_key,
                         total_deadline_s=total_deadline_s, stall_s=stall_s, meter=meter, part=p)
        if ws.manifest.parts != parts:
            raise PartCount(f"weights v{version} is in {ws.manifest.parts} parts, not {parts}", ws.manifest.parts)
        return ws

    if len(wanted) == 1:
        got = [one(wanted[0])]
    else:
        with ThreadPoolExecutor(max_workers=min(len(wanted), 16), thread_name_prefix="slurm-rl-pull") as pool:
            futures = [pool.submit(one, p) for p in wanted]
            got = [f.result() for f in futures]      # the first failure raises; the rest finish or fail
    if only is not None:
        return got[0]
    return Parts(got)


__all__ = ["PartCount", "Parts", "join", "pull_parts", "sources_for"]
