"""Control plane: CURVE-authenticated; strangers, garbage and oversized messages change nothing."""

from __future__ import annotations

import os
import stat
import threading
import time

import pytest
import zmq

from slurm_rl import protocol as P
from slurm_rl.controlplane import ControlClient, ControlServer
from slurm_rl.errors import EnvironmentProblem
from slurm_rl.rundir import ControllerAddress, RunDir


def make_run(path) -> RunDir:
    run = RunDir(path)
    run.create()
    return run


@pytest.fixture
def served(tmp_path):
    """A ControlServer answering every request with ok, recording what it received."""
    run = make_run(tmp_path / "run")
    server = ControlServer(run, bind="127.0.0.1", port=0, max_message_mb=1)
    run.write_controller(ControllerAddress("127.0.0.1", server.port, os.getpid(), server.public_key, time.time(), "h"))
    got: list[P.Envelope] = []
    stop = threading.Event()

    def loop():
        while not stop.is_set():
            r = server.recv(0.05)
            if r is not None:
                peer, env = r
                got.append(env)
                server.reply(peer, env.req_id, P.Reply(ok=True))

    t = threading.Thread(target=loop, daemon=True)
    t.start()
    yield run, server, got
    stop.set()
    t.join()
    server.close()


def test_run_dir_and_keys_are_owner_only(tmp_path):
    run = make_run(tmp_path / "r")
    assert stat.S_IMODE(run.path.stat().st_mode) == 0o700
    assert stat.S_IMODE(run.keys.stat().st_mode) == 0o700
    for f in run.keys.rglob("*"):
        assert stat.S_IMODE(f.stat().st_mode) & 0o077 == 0, f


def test_authenticated_client_is_served(served):
    run, server, got = served
    c = ControlClient(run, "test")
    reply = c.request(P.StatusRequest(events=3), timeout_s=3)
    c.close()
    assert reply.ok and isinstance(got[-1].body, P.StatusRequest)


def test_client_without_the_run_keys_is_refused(served, tmp_path):
    run, server, got = served
    other = make_run(tmp_path / "stranger")          # valid keys, but of another run
    other.write_controller(run.read_controller())    # knows where the controller listens
    c = ControlClient(other, "stranger")
    with pytest.raises(EnvironmentProblem):
        c.request(P.StopRequest(reason="hostile"), timeout_s=0.5, attempts=2)
    c.close()
    assert got == []                                 # nothing reached the controller


def test_plain_tcp_client_gets_nothing(served):
    """No CURVE at all: the handshake never completes and no message is delivered."""
    run, server, got = served
    ctx = zmq.Context()
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.connect(run.read_controller().endpoint)
    s.send(P.encode(P.Envelope(req_id=1, body=P.StopRequest())))
    assert not s.poll(500)
    s.close(0)
    ctx.term()
    assert got == []


def _authed_socket(run: RunDir):
    ctx = zmq.Context.instance()
    pub, sec, spub = run.client_keys()
    s = ctx.socket(zmq.DEALER)
    s.curve_secretkey, s.curve_publickey, s.curve_serverkey = sec, pub, spub
    s.setsockopt(zmq.LINGER, 0)
    s.connect(run.read_controller().endpoint)
    return s


@pytest.mark.parametrize("payload", [b"", b"\x00garbage\xff", b"\x93\x01\x02\x03", P.encode(P.Reply())])
def test_garbage_from_an_authenticated_peer_is_dropped(served, payload):
    run, server, got = served
    s = _authed_socket(run)
    s.send(payload)
    assert s.poll(2000)
    env = P.decode_reply(s.recv())
    assert not env.body.ok and "malformed" in env.body.error
    s.close(0)
    assert got == [] and server.bad_messages >= 1
    c = ControlClient(run, "after")                  # and the controller still serves others
    assert c.request(P.StatusRequest(), timeout_s=3).ok
    c.close()


def test_oversized_message_is_cut_off(served):
    run, server, got = served
    s = _authed_socket(run)
    s.send(b"x" * (2 * 1024 * 1024))                 # max_message_mb=1
    assert not s.poll(500)
    s.close(0)
    assert got == []
    c = ControlClient(run, "after")
    assert c.request(P.StatusRequest(), timeout_s=3).ok
    c.close()
