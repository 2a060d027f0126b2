"""The weight-sync contract, one suite run against every transport (tcp, ucx, shm).

Holders that get killed or frozen run in their own process (tests/sync/_holder.py); the others run
in this process. Every transport must be available (scripts/test.sh installs ucxx).
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import psutil
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from slurm_rl.errors import SyncError
from slurm_rl.sync import (
    SyncAuthError, VersionNotHeld, WeightServer, WeightSet, pull, pull_any, shm_status, ucx_status,
)
from tests.sync._holder import Holder, HolderSpec, make_state

pytestmark = pytest.mark.timeout(120)

TRANSPORTS = ("tcp", "ucx", "shm")
BIG = 256 << 20        # large enough that a transfer is still running when the holder is killed or frozen


@pytest.fixture(params=TRANSPORTS)
def transport(request: pytest.FixtureRequest) -> str:
    t = request.param
    # scripts/test.sh installs ucxx and CI runs Linux (memfd): a missing transport is a broken setup
    if t == "ucx" and not ucx_status()[0]:
        pytest.fail(f"ucxx does not import here: {ucx_status()[1]} (install with: pip install -e '.[ucx]')")
    if t == "shm" and not shm_status()[0]:
        pytest.fail(f"no shm transport here: {shm_status()[1]}")
    return t


@contextmanager
def serving(transport: str, *sets: WeightSet, auth_key: bytes | None = None) -> Iterator[tuple[WeightServer, str]]:
    server = WeightServer(host="127.0.0.1", transports=(transport,), auth_key=auth_key)
    addrs = server.start()
    for ws in sets:
        server.publish(ws)
    try:
        yield server, addrs[transport]
    finally:
        server.stop()


def assert_same(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert list(got) == list(want)
    for name, w in want.items():
        g = got[name]
        assert (g.dtype, g.shape) == (w.dtype, w.shape), name
        # Compare bytes, not values: NaN != NaN, and bit-exact is the contract.
        assert torch.equal(g.contiguous().reshape(-1).view(torch.uint8), w.contiguous().reshape(-1).view(torch.uint8)), name


def odd_state() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    return {
        "model.embed_tokens.weight": torch.randn(97, 33, generator=g),
        "model.layers.0.input_layernorm.weight": torch.randn(33, generator=g).to(torch.bfloat16),
        "model.layers.0.mlp.up_proj.weight": torch.randn(5, 3, generator=g).to(torch.float16),
        "position_ids": torch.arange(11, dtype=torch.int64),
        "odd_bytes": torch.arange(7, dtype=torch.int8),
        "mask": torch.tensor([True, False, True]),
        "no_rows": torch.empty(0, 33),
        "scalar": torch.tensor(-2.5, dtype=torch.float64),
        "transposed": torch.randn(4, 6, generator=g).t(),        # non-contiguous source
    }


# ------------------------------------------------------------------------------------------ round trip


def test_round_trip_bit_exact(transport: str) -> None:
    sd = odd_state()
    ws = WeightSet.from_state_dict(sd, 3, bucket_bytes=1000)      # tensors straddle bucket edges
    seen: list[tuple[int, int]] = []
    with serving(transport, ws) as (_, addr):
        got = pull(addr, 3, deadline_s=10, progress=lambda d, t: seen.append((d, t)))
    assert got.version == 3 and got.manifest == ws.manifest
    assert_same(got.tensors(), sd)
    assert len(seen) == ws.manifest.num_buckets and seen[-1] == (ws.nbytes, ws.nbytes)
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)


def test_many_tensors(transport: str) -> None:
    """A real model's manifest (thousands of names) is larger than UCX's eager limit: still one message."""
    sd = {f"model.layers.{i // 9}.block.{i % 9}.weight": torch.full((3,), float(i)) for i in range(3000)}
    ws = WeightSet.from_state_dict(sd, 1)
    assert len(ws.manifest.encode()) > 100_000
    with serving(transport, ws) as (_, addr):
        assert_same(pull(addr, 1, deadline_s=10).tensors(), sd)


_dtypes = st.sampled_from([torch.float32, torch.bfloat16, torch.float16, torch.int64, torch.int8, torch.bool])
_shapes = st.lists(st.integers(0, 9), min_size=0, max_size=3).map(tuple)
_states = st.dictionaries(st.text("abcdefgh.", min_size=1, max_size=12), st.tuples(_dtypes, _shapes), max_size=6)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(spec=_states, bucket=st.integers(1, 700), seed=st.integers(0, 2**16))
def test_round_trip_random_shapes(transport: str, spec: dict, bucket: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    sd = {n: (torch.randint(0, 256, shape, generator=g, dtype=torch.uint8).view(torch.int8).to(dt) if dt != torch.bool
              else torch.randint(0, 2, shape, generator=g).bool())
          for n, (dt, shape) in spec.items()}
    ws = WeightSet.from_state_dict(sd, seed, bucket_bytes=bucket)
    with serving(transport, ws) as (_, addr):
        got = pull(addr, seed, deadline_s=10)
    assert_same(got.tensors(), sd)


# ------------------------------------------------------------------------------------------ fencing


def test_version_not_held(transport: str) -> None:
    with serving(transport, WeightSet.from_state_dict(odd_state(), 4)) as (_, addr):
        with pytest.raises(VersionNotHeld) as err:
            pull(addr, 5, deadline_s=5)
        assert err.value.held == (4,)
        assert_same(pull(addr, 4, deadline_s=5).tensors(), odd_state())     # same holder, next request


@pytest.mark.parametrize("transport", ["tcp", "ucx"])   # shm addresses are unique per server process by design
def test_holder_restarted_at_the_same_address(transport: str) -> None:
    """Pullers may keep connections between versions (UCX does); a restarted holder must still be reachable."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for version in (1, 2, 3):
        server = WeightServer(host="127.0.0.1", transports=(transport,), port=port)
        addr = server.start()[transport]
        server.publish(WeightSet.from_state_dict(make_state(1 << 16, seed=version), version))
        try:
            assert_same(pull(addr, version, deadline_s=10).tensors(), make_state(1 << 16, seed=version))
        finally:
            server.stop()


def test_corrupt_bucket_is_refused_then_another_holder_serves(transport: str) -> None:
    sd = make_state(1 << 20, seed=1)
    bad = WeightSet.from_state_dict(sd, 2, bucket_bytes=64 << 10)
    good = WeightSet.from_state_dict(sd, 2, bucket_bytes=64 << 10)
    bad._flat[700_000] ^= 0x10          # a holder whose memory went bad after it hashed the version
    with serving(transport, bad) as (_, bad_addr), serving(transport, good) as (_, good_addr):
        with pytest.raises(SyncError, match="hash mismatch"):
            pull(bad_addr, 2, deadline_s=5)
        got, used = pull_any([bad_addr, good_addr], 2, deadline_s=5)
    assert used == good_addr
    assert_same(got.tensors(), sd)


def test_publishing_keeps_a_version_while_it_is_transferred(transport: str) -> None:
    v1 = WeightSet.from_state_dict(make_state(4 << 20, seed=1), 1, bucket_bytes=1 << 20)
    v2 = WeightSet.from_state_dict(make_state(4 << 20, seed=2), 2, bucket_bytes=1 << 20)
    with serving(transport, v1) as (server, addr):
        def mid_transfer(done: int, total: int) -> None:
            if done == 1 << 20:
                server.publish(v2)                  # the trainer moves on while we pull v1
                assert server.versions() == [1, 2]
        got = pull(addr, 1, deadline_s=10, progress=mid_transfer)
        assert_same(got.tensors(), v1.tensors())
        deadline = time.monotonic() + 5
        while server.versions() != [2] and time.monotonic() < deadline:
            time.sleep(0.01)                        # the holder drops v1 once our transfer has ended
        assert server.versions() == [2]
        with pytest.raises(VersionNotHeld):
            pull(addr, 1, deadline_s=5)


# ------------------------------------------------------------------------------------------ faults


def test_killed_holder(transport: str) -> None:
    """SIGKILL mid-transfer: tcp/ucx fail within ~1 s; shm completes from the still-mapped buffer.
    Either way the result is never partial, and pull_any then succeeds from another holder."""
    spec = HolderSpec(transports=(transport,), nbytes=BIG, seed=3)
    killed_at: list[float] = []
    shm_before = set(os.listdir("/dev/shm")) if os.path.isdir("/dev/shm") else set()
    with Holder(spec) as victim:
        def kill_once(done: int, total: int) -> None:
            if not killed_at:
                victim.kill()
                killed_at.append(time.monotonic())

        addr = victim.addresses[transport]
        if transport == "shm":
            got = pull(addr, 1, deadline_s=30, progress=kill_once)
            assert killed_at
            assert_same(got.tensors(), make_state(BIG, seed=3))
        else:
            with pytest.raises(SyncError):
                pull(addr, 1, deadline_s=30, progress=kill_once)
            assert killed_at and time.monotonic() - killed_at[0] < 1.0
        victim.proc.join(5)
        # Nothing named is left behind by a SIGKILLed holder (shm segments are memfds).
        if os.path.isdir("/dev/shm"):
            assert not {n for n in set(os.listdir("/dev/shm")) - shm_before if "slurm" in n}
        with serving(transport, WeightSet.from_state_dict(make_state(1 << 20, seed=3), 1)) as (_, good):
            got, used = pull_any([addr, good], 1, deadline_s=5)
        assert used == good
        assert_same(got.tensors(), make_state(1 << 20, seed=3))


def test_hung_holder_before_transfer(transport: str) -> None:
    """A frozen (SIGSTOP) holder stalls the handshake: SyncError at the deadline, not before, not hung."""
    with Holder(HolderSpec(transports=(transport,), nbytes=1 << 20, seed=4)) as frozen:
        addr = frozen.addresses[transport]
        frozen.freeze()
        t0 = time.monotonic()
        with pytest.raises(SyncError, match="deadline"):
            pull(addr, 1, deadline_s=1.5)
        assert 1.5 <= time.monotonic() - t0 < 2.5
        frozen.thaw()
        got = pull(addr, 1, deadline_s=10)          # the holder recovers and serves again
        assert_same(got.tensors(), make_state(1 << 20, seed=4))


def test_hung_holder_mid_transfer(transport: str) -> None:
    """Frozen mid-transfer: tcp/ucx fail at the deadline; shm completes (nothing left to wait for)."""
    stopped: list[float] = []
    with Holder(HolderSpec(transports=(transport,), nbytes=BIG, seed=5)) as frozen:
        def freeze_once(done: int, total: int) -> None:
            if not stopped:
                frozen.freeze()
                stopped.append(time.monotonic())

        addr = frozen.addresses[transport]
        t0 = time.monotonic()
        try:
            if transport == "shm":
                pull(addr, 1, deadline_s=20, progress=freeze_once).verify()
            else:
                with pytest.raises(SyncError, match="deadline"):
                    pull(addr, 1, deadline_s=2.0, progress=freeze_once)
                assert 2.0 <= time.monotonic() - t0 < 3.0
        finally:
            frozen.thaw()
        assert stopped
        got = pull(addr, 1, deadline_s=20)
        got.verify()


# ------------------------------------------------------------------------------------------ fan-out


def test_two_receivers_at_once(transport: str) -> None:
    sd = make_state(16 << 20, seed=6)
    ws = WeightSet.from_state_dict(sd, 9, bucket_bytes=1 << 20)
    both_running = threading.Barrier(2, timeout=10)
    results: dict[int, WeightSet | BaseException] = {}

    def receiver(i: int, addr: str) -> None:
        def progress(done: int, total: int) -> None:
            if done == 1 << 20:
                both_running.wait()         # proves the two transfers overlap
        try:
            results[i] = pull(addr, 9, deadline_s=20, progress=progress)
        except BaseException as e:
            results[i] = e

    with serving(transport, ws) as (_, addr):
        threads = [threading.Thread(target=receiver, args=(i, addr)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
    for i in range(2):
        r = results[i]
        assert isinstance(r, WeightSet), r
        assert_same(r.tensors(), sd)


def test_relay(transport: str) -> None:
    """A receiver republishes what it pulled; a third process-level puller gets it from the relay."""
    sd = make_state(2 << 20, seed=8)
    with serving(transport, WeightSet.from_state_dict(sd, 12, bucket_bytes=1 << 20)) as (_, origin):
        first = pull(origin, 12, deadline_s=10)
    with serving(transport, first) as (relay_server, relay):     # origin is gone: only the relay holds v12
        assert relay_server.versions() == [12]
        second = pull(relay, 12, deadline_s=10)
    assert_same(second.tensors(), sd)
    assert second.manifest == first.manifest


# ------------------------------------------------------------------------------------------ auth


def test_auth(transport: str) -> None:
    key, other = b"run-secret-0123456789", b"someone-else"
    ws = WeightSet.from_state_dict(odd_state(), 1)
    with serving(transport, ws, auth_key=key) as (_, addr):
        with pytest.raises(SyncAuthError, match="refused"):
            pull(addr, 1, deadline_s=5, auth_key=other)
        with pytest.raises(SyncAuthError, match="requires"):
            pull(addr, 1, deadline_s=5)
        assert_same(pull(addr, 1, deadline_s=5, auth_key=key).tensors(), odd_state())
    with serving(transport, ws) as (_, open_addr):
        with pytest.raises(SyncAuthError, match="does not authenticate"):
            pull(open_addr, 1, deadline_s=5, auth_key=key)


def test_idle_holder_does_not_spin(transport: str) -> None:
    """After serving (with the puller's connection kept open), a holder sleeps: no busy progress loop."""
    with Holder(HolderSpec(transports=(transport,), nbytes=1 << 20, seed=9)) as holder:
        pull(holder.addresses[transport], 1, deadline_s=10).verify()
        proc = psutil.Process(holder.pid)
        time.sleep(0.2)
        before = sum(proc.cpu_times()[:2])
        time.sleep(1.0)
        assert sum(proc.cpu_times()[:2]) - before < 0.1


def test_unreachable_holder_fails_fast(transport: str) -> None:
    with serving(transport, WeightSet.from_state_dict(odd_state(), 1)) as (_, addr):
        pass                                                # stopped: nobody listens there any more
    t0 = time.monotonic()
    with pytest.raises(SyncError):
        pull(addr, 1, deadline_s=5)
    assert time.monotonic() - t0 < 2.0

