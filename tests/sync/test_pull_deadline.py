"""A weight pull's deadline scales with the bytes to move; a hung holder is still cut in seconds."""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from slurm_rl.config import RunConfig
from slurm_rl.errors import SyncError
from slurm_rl.roles.runtime import RoleRuntime
from slurm_rl.states import Phase
from slurm_rl.sync import (
    BandwidthMeter,
    StallDeadline,
    WeightServer,
    WeightSet,
    pull,
    pull_any,
)
from tests.sync._holder import Holder, HolderSpec, make_state

pytestmark = pytest.mark.timeout(120)
GB = 10**9


def test_deadline_grows_with_the_bytes_and_the_measured_bandwidth() -> None:
    m = BandwidthMeter()
    kw = dict(floor_s=30.0, slack=3.0, assumed_bytes_per_s=1.0 * GB)
    assert m.deadline_s(10 << 20, **kw) == 30.0                       # small: the floor
    assert m.deadline_s(16 * GB, **kw) == pytest.approx(48.0)           # 16 GB at the assumed 1 GB/s, x3
    assert m.deadline_s(64 * GB, **kw) == pytest.approx(4 * m.deadline_s(16 * GB, **kw))
    m.add(2 * GB, 10.0)                                                 # measured: 0.2 GB/s
    assert m.bytes_per_s() == pytest.approx(0.2 * GB)
    assert m.deadline_s(16 * GB, **kw) == pytest.approx(240.0)
    m.add(4 * GB, 4.0)
    m.add(3 * GB, 3.0)                                                  # median of 0.2, 1, 1 GB/s
    assert m.bytes_per_s() == pytest.approx(1.0 * GB)
    m.add(1000, 1e-6)                                                   # a tiny pull is latency, not bandwidth
    assert m.bytes_per_s() == pytest.approx(1.0 * GB)


def _runtime(tmp_path: Path, **sync: float) -> RoleRuntime:
    rt = RoleRuntime.__new__(RoleRuntime)
    rt.cfg = RunConfig.model_validate({"sync": sync, "recovery": {"phase_timeouts": {"syncing_weights": 40.0}}})
    rt.run = SimpleNamespace(model=tmp_path)
    rt.held, rt._model_bytes, rt.pull_meter = None, None, BandwidthMeter()
    return rt


def test_runtime_pull_deadline_from_held_or_model_bytes(tmp_path: Path) -> None:
    (tmp_path / "model-00001-of-00002.safetensors").write_bytes(b"\0" * (3 << 20))
    (tmp_path / "model-00002-of-00002.safetensors").write_bytes(b"\0" * (1 << 20))
    rt = _runtime(tmp_path, deadline_s=5.0, deadline_slack=2.0, assumed_gbps=0.001)   # 1 MB/s assumed
    assert rt.expected_pull_bytes() == 4 << 20                  # nothing held yet: the model's files
    total, stall = rt.pull_deadline()
    assert total == pytest.approx(2.0 * (4 << 20) / 1e6) and stall == pytest.approx(24.0)   # 0.6 x 40 s
    rt.held = WeightSet.from_state_dict(make_state(32 << 20, seed=1), 1)
    bigger, _ = rt.pull_deadline()
    assert bigger == pytest.approx(2.0 * rt.held.nbytes / 1e6) and bigger > 7 * total
    rt.pull_meter.add(64 << 20, 0.064)                         # this process measured 1 GB/s since
    assert rt.pull_deadline()[0] == 5.0                          # back to the floor


def test_a_hung_holder_is_cut_at_the_stall_bound_not_the_deadline() -> None:
    with Holder(HolderSpec(transports=("tcp",), nbytes=256 << 20, seed=5)) as frozen:
        stopped: list[float] = []

        def freeze_once(done: int, total: int) -> None:
            if not stopped:
                frozen.freeze()
                stopped.append(time.monotonic())

        try:
            with pytest.raises(SyncError, match="nothing arrived for 1.0s"):
                pull(frozen.addresses["tcp"], 1, deadline_s=60.0, stall_s=1.0, progress=freeze_once)
            assert stopped and time.monotonic() - stopped[0] < 2.5
        finally:
            frozen.thaw()


def test_a_slow_but_moving_pull_outlives_the_stall_bound() -> None:
    ws = WeightSet.from_state_dict(make_state(12 << 20, seed=2), 3, bucket_bytes=1 << 20)
    server = WeightServer(host="127.0.0.1", transports=("tcp",))
    addr = server.start()["tcp"]
    server.publish(ws)
    try:
        meter = BandwidthMeter()
        t0 = time.monotonic()
        got = pull(addr, 3, deadline_s=60.0, stall_s=0.8, meter=meter,
                   progress=lambda done, total: time.sleep(0.25))   # 12 buckets x 0.25 s: 3 s
        assert time.monotonic() - t0 > 3 * 0.8
        got.verify()
        assert meter.bytes_per_s() is not None                      # measured for the next deadline
    finally:
        server.stop()


def test_stall_deadline_ends_at_the_total() -> None:
    d = StallDeadline(0.2, stall_s=10.0)
    time.sleep(0.25)
    d.touch()
    with pytest.raises(SyncError, match="deadline"):
        d.remaining()


def test_pull_any_reports_moving_on_as_progress() -> None:
    ws = WeightSet.from_state_dict(make_state(1 << 20, seed=3), 1)
    server = WeightServer(host="127.0.0.1", transports=("tcp",))
    good = server.start()["tcp"]
    server.publish(ws)
    try:
        seen: list[tuple[int, int]] = []
        got, used = pull_any(["tcp://127.0.0.1:1", good], 1, deadline_s=5.0, stall_s=2.0,
                             progress=lambda d, t: seen.append((d, t)))
        assert used == good and seen[0] == (0, 0) and seen[-1][0] == seen[-1][1] > 0
        got.verify()
    finally:
        server.stop()


def test_config_fields() -> None:
    cfg = RunConfig.model_validate({})
    assert (cfg.sync.deadline_s, cfg.sync.deadline_slack, cfg.sync.assumed_gbps) == (30.0, 3.0, 1.0)
    assert float(cfg.recovery.phase_timeouts[Phase.SYNCING_WEIGHTS]) == 30.0
