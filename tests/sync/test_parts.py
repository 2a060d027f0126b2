"""A sharded trainer's version in parts (slurm_rl.sync.parts), over every transport: each rank
serves its part, a relay every part; a puller gets all parts at once or one part alone, each fenced
by its own manifest."""

from __future__ import annotations

import threading

import pytest
import torch

from slurm_rl.errors import SyncError
from slurm_rl.sync import Parts, VersionNotHeld, WeightServer, WeightSet, pull, pull_parts
from slurm_rl.sync.holdings import Holdings
from slurm_rl.sync.parts import PartCount, join, sources_for
from tests.sync.test_contract import transport  # noqa: F401  (the transport fixture)

pytestmark = pytest.mark.timeout(120)
KEY = b"k" * 32


def _whole(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"embed": torch.randn(21, 16, generator=g).to(torch.bfloat16),   # 21 rows: 11 / 10 at 2 ranks
            "layer.w": torch.randn(32, 8, generator=g), "norm": torch.randn(16, generator=g),
            "scale": torch.tensor([3.0])}                                       # not sharded: part 0 only


def _split(sd: dict[str, torch.Tensor], n: int, version: int) -> list[WeightSet]:
    """As FSDP2's ranks hold them: torch.chunk's rows of each sharded tensor, `scale` in part 0."""
    parts: list[dict[str, torch.Tensor]] = [{} for _ in range(n)]
    for k, t in sd.items():
        if k == "scale":
            parts[0][k] = t
            continue
        chunks = torch.chunk(t, n, dim=0)
        for r in range(n):
            parts[r][k] = chunks[r] if r < len(chunks) else t[t.shape[0]:]
    return [WeightSet.from_state_dict(p, version, bucket_bytes=256, part=r, parts=n) for r, p in enumerate(parts)]


def _equal(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert sorted(got) == sorted(want)
    for k in want:
        assert got[k].dtype == want[k].dtype and torch.equal(got[k], want[k]), k


def test_parts_from_the_ranks_and_from_a_relay(transport: str) -> None:  # noqa: F811
    whole = _whole()
    sets = _split(whole, 3, version=5)
    servers = [WeightServer(host="127.0.0.1", transports=(transport,), auth_key=KEY) for _ in range(4)]
    try:
        addrs = [s.start()[transport] for s in servers]
        for s, ws in zip(servers, sets):          # rank r serves part r alone
            s.publish(ws)
        got = pull_parts([], addrs[:3], 5, 3, deadline_s=30, auth_key=KEY)
        assert isinstance(got, Parts) and got.count == 3
        _equal(got.tensors(), whole)
        servers[3].publish(got.sets)              # the puller relays every part
        assert servers[3].versions() == [5]
        # a restored rank 1 pulls its own part alone, from the relay (the ranks are gone)
        for s in servers[:3]:
            s.stop()
        own = pull_parts([addrs[3]], [], 5, 3, deadline_s=30, auth_key=KEY, only=1)
        assert isinstance(own, WeightSet) and own.part == 1
        _equal(own.tensors(), sets[1].tensors())
        # a part the holder does not hold is refused as not held, naming the version it holds
        with pytest.raises(VersionNotHeld):
            pull(addrs[3], 5, deadline_s=10, auth_key=KEY, part=3)
    finally:
        for s in servers:
            s.stop()


def test_the_version_in_another_number_of_parts_is_pulled_again_from_relays(transport: str) -> None:  # noqa: F811
    whole = _whole(1)
    server = WeightServer(host="127.0.0.1", transports=(transport,), auth_key=KEY)
    try:
        addr = server.start()[transport]
        server.publish(_split(whole, 2, version=9))
        # the controller said 4 parts (the trainer it knows); the relay holds the version in 2
        got = pull_parts([addr], [], 9, 4, deadline_s=30, auth_key=KEY)
        assert isinstance(got, Parts) and got.count == 2
        _equal(got.tensors(), whole)
        with pytest.raises(PartCount, match="2 parts, not 4") as e:
            pull_parts([addr], [], 9, 4, deadline_s=30, auth_key=KEY, only=0)
        assert e.value.parts == 2
    finally:
        server.stop()


def test_a_missing_part_fails_the_pull() -> None:
    sets = _split(_whole(), 2, version=3)
    server = WeightServer(host="127.0.0.1", transports=("tcp",), auth_key=KEY)
    try:
        addr = server.start()["tcp"]
        server.publish(sets[0])                  # rank 1 is gone and nobody relays part 1
        with pytest.raises(SyncError, match="v3"):
            pull_parts([], [addr, ""], 3, 2, deadline_s=10, auth_key=KEY)
    finally:
        server.stop()


def test_a_whole_version_is_part_0_of_1() -> None:
    whole = _whole()
    ws = WeightSet.from_state_dict(whole, 2)
    assert ws.part == 0 and ws.manifest.parts == 1
    p = Parts.whole(ws)
    assert p.count == 1 and p.tensors()["embed"].data_ptr() == ws.tensors()["embed"].data_ptr()   # no copy


def test_parts_that_do_not_make_a_version_are_refused() -> None:
    a, b = _split(_whole(), 2, version=4)
    with pytest.raises(SyncError, match="do not make"):
        Parts([a])
    with pytest.raises(SyncError, match="do not make"):
        Parts([a, a])
    with pytest.raises(SyncError, match="different versions"):
        Parts([a, _split(_whole(), 2, version=5)[1]])
    with pytest.raises(SyncError, match="do not fit"):
        join([{"w": torch.zeros(2, 3)}, {"w": torch.zeros(2, 4)}])
    with pytest.raises(SyncError, match="part 0 lacks"):
        join([{"w": torch.zeros(2)}, {"v": torch.zeros(2)}])
    with pytest.raises(SyncError, match="in 2 of 3 parts"):
        join([{"w": torch.zeros(2)}, {"w": torch.zeros(2)}, {}])


def test_holdings_serve_each_part_and_keep_one_in_flight() -> None:
    old = _split(_whole(), 2, version=1)
    new = _split(_whole(2), 2, version=2)
    h = Holdings()
    h.publish(old)
    assert h.parts() == [0, 1] and h.current == 1
    pinned = h.acquire(1, 1)
    assert pinned is old[1] and h.acquire(1, 2) is None
    h.publish(new)                                 # part 1 of v1 stays while its transfer runs
    assert h.versions() == [1, 2] and h.acquire(1, 0) is None
    h.release(pinned)
    assert h.versions() == [2]
    with pytest.raises(ValueError):
        h.publish([new[0], new[0]])


def test_sources_spread_the_parts_over_relays() -> None:
    relays = ["a", "b", "c"]
    assert [sources_for(p, relays, ["r0", "r1", "r2", "r3"])[0] for p in range(4)] == ["a", "b", "c", "a"]
    assert sources_for(1, relays, ["r0", "r1"])[-1] == "r1" and sources_for(1, [], ["r0", ""]) == []
    assert sources_for(0, [], []) == []


def test_parts_come_in_parallel() -> None:
    """Each part's pull runs at once, in a thread of its own: the first progress report waits until
    a second part's pull reports too, which a serial puller never would."""
    sets = _split(_whole(), 2, version=6)
    servers = [WeightServer(host="127.0.0.1", transports=("tcp",), auth_key=KEY) for _ in range(2)]
    threads: set[str] = set()
    both = threading.Event()
    try:
        addrs = [s.start()["tcp"] for s in servers]
        for s, ws in zip(servers, sets):
            s.publish(ws)
        seen: list[tuple[int, int]] = []

        def progress(done: int, total: int) -> None:
            seen.append((done, total))
            threads.add(threading.current_thread().name)
            if len(threads) >= 2:
                both.set()
            both.wait(20)

        got = pull_parts([], addrs, 6, 2, deadline_s=60, auth_key=KEY, progress=progress)
        assert both.is_set() and len(threads) == 2
        assert isinstance(got, Parts) and seen[-1][0] == seen[-1][1] == sum(s.nbytes for s in sets)
    finally:
        for s in servers:
            s.stop()
