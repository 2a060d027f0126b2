"""The crash signal of slurm_rl.liveness: a role process's death ends the controller's connection."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from slurm_rl.liveness import LinkWatcher, LivenessListener

ROLE = textwrap.dedent("""
    import sys, time
    from slurm_rl.liveness import LivenessListener
    live = LivenessListener("127.0.0.1")
    print(live.address, flush=True)
    time.sleep(600)
""")


@pytest.fixture
def role_process():
    procs = []

    def start():
        p = subprocess.Popen([sys.executable, "-c", ROLE], stdout=subprocess.PIPE, text=True)
        procs.append(p)
        return p, p.stdout.readline().strip()

    yield start
    for p in procs:
        if p.poll() is None:
            os.kill(p.pid, signal.SIGCONT)
            p.kill()
        p.wait()


@pytest.fixture
def watcher():
    w = LinkWatcher(connect_timeout_s=1.0)
    yield w
    w.close()


def _connected(w: LinkWatcher, address: str) -> None:
    deadline = time.time() + 5
    while time.time() < deadline:
        with w._lock:
            if w._socks.get(address) is not None:
                return
        time.sleep(0.01)
    raise AssertionError(f"never connected to {address}")


def test_a_killed_process_is_reported_at_once(role_process, watcher):
    p, address = role_process()
    watcher.watch(address)
    _connected(watcher, address)
    t0 = time.monotonic()
    p.kill()
    lost = watcher.lost.get(timeout=5)
    assert lost.address == address and ("closed" in lost.why or "reset" in lost.why)
    assert lost.at - t0 < 0.5, f"took {lost.at - t0:.2f}s"


def test_a_stopped_process_keeps_its_link(role_process, watcher):
    p, address = role_process()
    watcher.watch(address)
    _connected(watcher, address)
    os.kill(p.pid, signal.SIGSTOP)
    with pytest.raises(queue.Empty):
        watcher.lost.get(timeout=1.5)        # hung, not dead: only time (the hang timeout) tells
    os.kill(p.pid, signal.SIGCONT)


def test_unwatched_and_unreachable_addresses_report_nothing(role_process, watcher):
    p, address = role_process()
    watcher.watch(address)
    _connected(watcher, address)
    watcher.unwatch(address)
    p.kill()
    # nothing listens here: a failed connect is not a death (the probe and heartbeats decide)
    free = LivenessListener("127.0.0.1")
    gone = free.address
    free.close()
    watcher.watch(gone)
    with pytest.raises(queue.Empty):
        watcher.lost.get(timeout=1.0)


def test_the_listener_lets_a_reconnecting_controller_go(role_process):
    """Each watcher connection is its own: a controller that restarts connects again, and the old
    connection's end does not disturb the new one."""
    p, address = role_process()
    first = LinkWatcher()
    first.watch(address)
    _connected(first, address)
    first.close()
    second = LinkWatcher()
    try:
        second.watch(address)
        _connected(second, address)
        with pytest.raises(queue.Empty):
            second.lost.get(timeout=0.5)
        p.kill()
        assert second.lost.get(timeout=5).address == address
    finally:
        second.close()
