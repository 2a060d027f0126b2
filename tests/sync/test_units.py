"""Pure pieces of weight sync: manifests, addresses, transport choice, relay plans, holdings, auth, buffers."""

from __future__ import annotations

import gc
import math
import os

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import slurm_rl.sync.ucx as ucx_mod
from slurm_rl.errors import SyncError
from slurm_rl.sync import (
    Address, Manifest, SyncAuthError, Transport, TransportUnavailable, VersionNotHeld, WeightServer, WeightSet,
    choose_address, host_id, pull, relay_plan, star_plan,
)
from slurm_rl.sync.buffers import POOL
from slurm_rl.sync.fanout import ORIGIN, rounds
from slurm_rl.sync.holdings import Holdings
from slurm_rl.sync.wire import Hello, Reply, Request, Status


def small(version: int = 1, seed: int = 0) -> WeightSet:
    g = torch.Generator().manual_seed(seed)
    return WeightSet.from_state_dict({"w": torch.randn(64, 3, generator=g), "b": torch.arange(5)}, version,
                                     bucket_bytes=256)


# ------------------------------------------------------------------------------------------ WeightSet


def test_tensors_are_views_with_dtype_and_shape() -> None:
    sd = {"a": torch.randn(3, 4).to(torch.bfloat16), "s": torch.tensor(7, dtype=torch.int64), "e": torch.empty(0, 2)}
    ws = WeightSet.from_state_dict(sd, 1)
    t = ws.tensors()
    assert {k: (v.dtype, v.shape) for k, v in t.items()} == {k: (v.dtype, v.shape) for k, v in sd.items()}
    assert t["a"].view(torch.int16).tolist() == sd["a"].view(torch.int16).tolist()
    assert t["a"].data_ptr() == ws.tensors()["a"].data_ptr()        # zero copy: same memory every time
    assert all(m.offset % 256 == 0 for m in ws.manifest.tensors)


def test_verify_detects_corruption() -> None:
    ws = small()
    ws.verify()
    ws._flat[300] ^= 1
    with pytest.raises(SyncError, match="bucket 1 hash mismatch"):
        ws.verify()


@pytest.mark.filterwarnings("ignore:ComplexHalf support is experimental")
def test_unsupported_dtype_is_a_clear_error() -> None:
    with pytest.raises(SyncError, match="unsupported tensor dtype 'complex32'"):
        WeightSet.from_state_dict({"q": torch.zeros(2, dtype=torch.complex32)}, 1)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([torch.float32, torch.bfloat16, torch.int64, torch.uint8, torch.bool]),
                          st.lists(st.integers(0, 5), max_size=3)), max_size=8),
       st.integers(1, 5000))
def test_manifest_round_trips_and_is_consistent(specs: list, bucket: int) -> None:
    sd = {f"t{i}": torch.zeros(shape, dtype=dt) for i, (dt, shape) in enumerate(specs)}
    ws = WeightSet.from_state_dict(sd, 42, bucket_bytes=bucket)
    m = Manifest.decode(ws.manifest.encode())
    assert m == ws.manifest
    assert m.num_buckets == math.ceil(m.total_bytes / bucket)


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d.update(total_bytes=10**6, bucket_hashes=[0] * math.ceil(10**6 / 256)), "tensors end at"),
    (lambda d: d["bucket_hashes"].append(1), "bucket hashes for"),
    (lambda d: d["tensors"][0].__setitem__(4, 999), "does not match"),
    (lambda d: d["tensors"][0].__setitem__(3, 10**9), "outside the buffer"),
    (lambda d: d["tensors"][0].__setitem__(1, "float128"), "unsupported tensor dtype"),
    (lambda d: d["tensors"].append(list(d["tensors"][0])), "appears twice"),
    (lambda d: d.pop("version"), "malformed manifest"),
    (lambda d: d.update(format=99), "format 99"),
])
def test_manifest_from_a_peer_is_validated(mutate, message: str) -> None:
    import json
    doc = json.loads(small().manifest.encode())
    mutate(doc)
    with pytest.raises(SyncError, match=message):
        Manifest.decode(json.dumps(doc).encode())


def test_buffers_are_recycled_between_versions() -> None:
    gc.collect()                                # earlier tests' buffers come back now, not mid-test
    POOL.trim()
    first = WeightSet.from_state_dict({"w": torch.ones(1 << 18)}, 1)
    host = first._host
    del first
    gc.collect()
    second = WeightSet.from_state_dict({"w": torch.zeros(1 << 18)}, 2)
    assert second._host is host                 # warm memory, no page faults the second time
    views = second.tensors()
    del second
    gc.collect()
    third = WeightSet.from_state_dict({"w": torch.zeros(1 << 18)}, 3)
    assert third._host is not host              # a live view keeps its buffer out of the pool
    assert views["w"].sum().item() == 0


# ------------------------------------------------------------------------------------------ holdings


def test_holdings_keep_old_versions_only_while_transferred() -> None:
    h = Holdings()
    v1, v2, v3 = small(1), small(2), small(3)
    h.publish(v1)
    pinned = h.acquire(1)
    assert pinned is v1 and h.acquire(7) is None
    h.publish(v2)
    assert h.versions() == [1, 2]
    h.publish(v3)
    assert h.versions() == [1, 3]           # v2 had no transfer: dropped at once
    h.release(v1)
    assert h.versions() == [3] and h.current == 3 and h.in_flight() == 0


def test_holdings_accept_a_new_lineage_after_failover() -> None:
    """A promoted trainer republishes older numbers from its checkpoint; the newest publish wins."""
    h = Holdings()
    h.publish(small(10, seed=1))
    old9 = small(9, seed=1)
    h.publish(old9)
    assert h.versions() == [9]
    new9 = small(9, seed=2)
    h.publish(new9)
    assert h.acquire(9) is new9


# ------------------------------------------------------------------------------------------ wire / auth


@pytest.mark.parametrize("server_key, client_key, error", [
    (b"k", b"k", None), (None, None, None), (b"k", None, "requires"), (None, b"k", "does not authenticate"),
])
def test_handshake_auth_settings(server_key, client_key, error) -> None:
    hello = Hello.unpack(Hello.make(server_key).pack())
    if error:
        with pytest.raises(SyncAuthError, match=error):
            Request.make(hello, 3, client_key)
        return
    req = Request.unpack(Request.make(hello, 3, client_key).pack())
    assert req.valid(hello, server_key)
    raw = Reply.make(Status.OK, b"payload", hello, req, server_key)
    reply = Reply.unpack(raw[:44])
    assert reply.check(raw[44:], hello, req, client_key, version=3, peer="p") == b"payload"


def test_wrong_key_and_forged_reply_are_refused() -> None:
    hello = Hello.make(b"secret")
    req = Request.make(hello, 3, b"guess")
    assert not req.valid(hello, b"secret")
    forged = Reply.make(Status.OK, b"evil manifest", hello, req, b"guess")
    with pytest.raises(SyncAuthError, match="failed to authenticate"):
        Reply.unpack(forged[:44]).check(forged[44:], hello, req, b"secret", version=3, peer="p")
    held = Reply.make(Status.NOT_HELD, b"4,5", hello, req, b"secret")
    with pytest.raises(VersionNotHeld) as err:
        Reply.unpack(held[:44]).check(held[44:], hello, req, b"secret", version=3, peer="p")
    assert err.value.held == (4, 5)


# ------------------------------------------------------------------------------------------ addresses


def test_address_parsing() -> None:
    assert Address.parse("tcp://10.0.0.1:5000") == Address(Transport.TCP, "10.0.0.1", 5000)
    assert Address.parse("ucx://[::1]:7") == Address(Transport.UCX, "::1", 7)
    assert Address.parse("shm://node1-abc/slurm-rl-sync.1.ff") == Address(Transport.SHM, "node1-abc", name="slurm-rl-sync.1.ff")
    for bad in ("10.0.0.1:5000", "gloo://x:1", "tcp://host", "shm://only-host"):
        with pytest.raises(SyncError):
            Address.parse(bad)


def test_choose_address(monkeypatch: pytest.MonkeyPatch) -> None:
    me = host_id()
    addrs = {"tcp": "tcp://h:1", "ucx": "ucx://h:2", "shm": f"shm://{me}/n"}
    monkeypatch.setattr(ucx_mod, "_status", (True, ""))
    assert choose_address(addrs, local_host_id=me) == f"shm://{me}/n"
    assert choose_address(addrs, local_host_id="other-host") == "ucx://h:2"
    assert choose_address(addrs, prefer="tcp", local_host_id=me) == "tcp://h:1"
    assert choose_address(addrs, prefer=Transport.SHM, local_host_id="other-host") == "ucx://h:2"
    monkeypatch.setattr(ucx_mod, "_status", (False, "simulated: no ucxx"))
    assert choose_address(addrs, local_host_id="other-host") == "tcp://h:1"
    assert choose_address(addrs, prefer="ucx", local_host_id="other-host") == "tcp://h:1"
    with pytest.raises(SyncError, match="no usable address"):
        choose_address({"shm": "shm://elsewhere/n"}, local_host_id=me)
    with pytest.raises(SyncError, match="valid: tcp, ucx, shm"):
        choose_address(addrs, prefer="nccl", local_host_id=me)


def test_without_ucxx_the_server_degrades_and_pull_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ucx_mod, "_status", (False, "simulated: no ucxx"))
    server = WeightServer(host="127.0.0.1", transports=("tcp", "ucx"))
    try:
        addrs = server.start()
        assert set(addrs) == {"tcp"} and "ucx" in {t.value for t in server.unavailable}
    finally:
        server.stop()
    with pytest.raises(TransportUnavailable, match="simulated"):
        pull("ucx://127.0.0.1:1", 1, deadline_s=1)


def test_host_id_is_stable_and_names_the_host() -> None:
    assert host_id() == host_id()
    assert host_id().startswith(os.uname().nodename.split(".")[0])


# ------------------------------------------------------------------------------------------ fan-out plans


def test_relay_plan_doubles_holders_each_round() -> None:
    plan = relay_plan(4)
    assert [(s.receiver, s.source, s.waits_for) for s in plan] == [
        (0, ORIGIN, ()), (1, ORIGIN, (0,)), (2, 0, (0,)), (3, ORIGIN, (1,)),
    ]
    for n in range(1, 40):
        p = relay_plan(n)
        assert sorted(s.receiver for s in p) == list(range(n))
        assert rounds(p) == math.ceil(math.log2(n + 1))
        # a source always holds the version before it serves it
        assert all(s.source == ORIGIN or s.source in s.waits_for for s in p)
    assert rounds(star_plan(4)) == 1
