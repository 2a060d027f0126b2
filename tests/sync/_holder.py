"""A weight holder in its own process, for tests that kill or freeze the holder."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
from dataclasses import dataclass
from multiprocessing.connection import Connection

import torch

from slurm_rl.sync import WeightServer, WeightSet


def make_state(nbytes: int, seed: int) -> dict[str, torch.Tensor]:
    """Deterministic weights of about `nbytes`, several dtypes and odd sizes (cheap to build when large)."""
    g = torch.Generator().manual_seed(seed)
    small = {
        "embed.weight": torch.randn(13, 7, generator=g),
        "norm.weight": torch.randn(13, generator=g).to(torch.bfloat16),
        "pos_ids": torch.arange(5, dtype=torch.int64) + seed,
        "empty": torch.empty(0, 3),
        "scale": torch.tensor(1.5 + seed),
    }
    rest = max(0, nbytes - 2048)
    if rest:
        # Arithmetic content instead of randn: 256 MB in milliseconds, and still seed-dependent.
        small["big.weight"] = torch.arange(rest // 4, dtype=torch.int32) * 40503 + seed
    return small


@dataclass(frozen=True)
class HolderSpec:
    transports: tuple[str, ...]
    version: int = 1
    nbytes: int = 1 << 20
    seed: int = 0
    bucket_bytes: int = 4 << 20
    auth_key: bytes | None = None


def _main(conn: Connection, spec: HolderSpec) -> None:
    ws = WeightSet.from_state_dict(make_state(spec.nbytes, spec.seed), spec.version, bucket_bytes=spec.bucket_bytes)
    server = WeightServer(host="127.0.0.1", transports=spec.transports, auth_key=spec.auth_key)
    conn.send(server.start())
    server.publish(ws)
    conn.send("published")
    try:
        conn.recv()          # until the test says stop (or goes away)
    except EOFError:
        pass
    server.stop()


_CTX = mp.get_context("forkserver")
# Children fork from a server that has torch and slurm_rl.sync imported (fast), but no UCX state.
_CTX.set_forkserver_preload(["tests.sync._holder"])


class Holder:
    """Context manager: a holder process serving `spec`; `addresses` maps transport -> address."""

    def __init__(self, spec: HolderSpec):
        self.spec = spec
        self._conn, child = _CTX.Pipe()
        self.proc = _CTX.Process(target=_main, args=(child, spec), daemon=True)
        self.proc.start()
        child.close()
        if not self._conn.poll(60):
            self.proc.kill()
            raise RuntimeError("holder process did not start")
        self.addresses: dict[str, str] = self._conn.recv()
        assert self._conn.recv() == "published"

    @property
    def pid(self) -> int:
        assert self.proc.pid is not None
        return self.proc.pid

    def kill(self) -> None:
        os.kill(self.pid, signal.SIGKILL)

    def freeze(self) -> None:
        os.kill(self.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        os.kill(self.pid, signal.SIGCONT)

    def close(self) -> None:
        if self.proc.is_alive():
            self.thaw()
            try:
                self._conn.send("stop")
            except OSError:
                pass
            self.proc.join(5)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(5)
        self._conn.close()

    def __enter__(self) -> Holder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
