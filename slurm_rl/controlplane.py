"""ZeroMQ plumbing of the control plane: the controller's ROUTER and the roles' client.

CURVE gives every connection encryption and authentication with the run's keys (owner-only
files in the run dir). A client without the keys never completes the handshake, so it can
neither read nor change anything. Oversized messages are cut off by ZMQ_MAXMSGSIZE.
"""

from __future__ import annotations

import itertools
import logging
import os
import socket
import threading
import time
from dataclasses import dataclass

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from slurm_rl import protocol as P
from slurm_rl.errors import EnvironmentProblem, ProtocolError
from slurm_rl.rundir import RunDir

log = logging.getLogger("slurm_rl.controlplane")


class ControlServer:
    """The controller's ROUTER socket. `recv()` yields (peer, Envelope) or None on timeout."""

    def __init__(self, run: RunDir, *, bind: str, port: int, max_message_mb: float):
        self.ctx = zmq.Context()
        self.auth = ThreadAuthenticator(self.ctx, log=logging.getLogger("slurm_rl.controlplane.auth"))
        self.auth.start()
        self.auth.configure_curve(domain="*", location=str(run.allowed_keys))
        pub, sec = run.server_keys()
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.curve_secretkey = sec
        self.sock.curve_publickey = pub
        self.sock.curve_server = True
        self.sock.setsockopt(zmq.MAXMSGSIZE, int(max_message_mb * 1024 * 1024))
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.ROUTER_MANDATORY, 0)
        if port:
            self.sock.bind(f"tcp://{bind}:{port}")
            self.port = port
        else:
            self.port = self.sock.bind_to_random_port(f"tcp://{bind}")
        self.public_key = pub.decode()
        self.bad_messages = 0

    def recv(self, timeout_s: float) -> tuple[bytes, P.Envelope] | None:
        if not self.sock.poll(int(timeout_s * 1000)):
            return None
        frames = self.sock.recv_multipart(copy=True)
        if len(frames) != 2:
            self.bad_messages += 1
            log.warning("dropped a control message with %d frames", len(frames))
            return None
        peer, data = frames
        try:
            return peer, P.decode_request(data)
        except ProtocolError as e:
            self.bad_messages += 1
            log.warning("dropped a malformed control message from %r: %s", peer[:32], str(e)[:200])
            self.reply(peer, 0, P.Reply(ok=False, error="malformed request"))
            return None

    def reply(self, peer: bytes, req_id: int, body: P.Reply) -> None:
        try:
            self.sock.send_multipart([peer, P.encode(P.ReplyEnvelope(req_id=req_id, body=body))], flags=zmq.NOBLOCK)
        except zmq.Again:
            log.warning("reply to %r dropped (peer not reading)", peer[:32])

    def close(self) -> None:
        self.sock.close(0)
        self.auth.stop()
        self.ctx.term()


_ids = itertools.count(1)


@dataclass
class ClientStats:
    requests: int = 0
    timeouts: int = 0
    reconnects: int = 0


class ControlClient:
    """A role's (or the CLI's) connection to the controller. Not thread-safe: one per thread.

    Requests time out and reconnect (re-reading controller.json, so a controller restarted by
    `slurm-rl resume` on another port is found). Retried requests keep their req_id; requests
    are idempotent on the controller side (group ids, lease ownership), so a retry is safe.
    """

    def __init__(self, run: RunDir, name: str):
        self.run = run
        self.name = name
        self.ctx = zmq.Context.instance()
        self.pub, self.sec, self.spub = run.client_keys()
        self.sock: zmq.Socket | None = None
        self.endpoint: str | None = None
        self.stats = ClientStats()
        self._lock = threading.Lock()

    def _connect(self) -> bool:
        addr = self.run.read_controller()
        if addr is None:
            return False
        if self.sock is not None:
            self.sock.close(0)
            self.stats.reconnects += 1
        s = self.ctx.socket(zmq.DEALER)
        s.curve_secretkey = self.sec
        s.curve_publickey = self.pub
        s.curve_serverkey = addr.server_public_key.encode()
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.IMMEDIATE, 1)
        s.setsockopt(zmq.IDENTITY, f"{self.name}#{os.getpid()}#{next(_ids)}".encode())
        s.connect(addr.endpoint)
        self.sock = s
        self.endpoint = addr.endpoint
        return True

    def request(self, body: P.Request, *, timeout_s: float = 5.0, attempts: int = 3) -> P.Reply:
        """Send and wait for the reply. Raises EnvironmentProblem if the controller stays silent."""
        req_id = next(_ids)
        data = P.encode(P.Envelope(req_id=req_id, body=body))
        with self._lock:
            for attempt in range(attempts):
                if self.sock is None and not self._connect():
                    time.sleep(min(timeout_s, 0.5))
                    continue
                assert self.sock is not None
                self.stats.requests += 1
                deadline = time.monotonic() + timeout_s
                # IMMEDIATE: writable only once the CURVE handshake with a live controller is done
                if not self.sock.poll(int(timeout_s * 1000), zmq.POLLOUT):
                    self.stats.timeouts += 1
                    self._reset()
                    continue
                try:
                    self.sock.send(data, flags=zmq.NOBLOCK)
                except zmq.Again:
                    self.stats.timeouts += 1
                    self._reset()
                    continue
                while True:
                    left = deadline - time.monotonic()
                    if left <= 0 or not self.sock.poll(int(left * 1000)):
                        break
                    env = P.decode_reply(self.sock.recv())
                    if env.req_id == req_id:
                        return env.body
                self.stats.timeouts += 1
                self._reset()
        raise EnvironmentProblem(f"controller of run {self.run.name} did not answer ({attempts} tries)",
                                 hint=f"is it running? `slurm-rl status {self.run.path}`; `slurm-rl resume` restarts it")

    def _reset(self) -> None:
        if self.sock is not None:
            self.sock.close(0)
            self.sock = None

    def close(self) -> None:
        self._reset()


# ----------------------------------------------------------------------------- talking to a run's controller
def controller_alive(run: RunDir) -> bool:
    """Is the controller that wrote controller.json still running (on this host)?"""
    import psutil

    addr = run.read_controller()
    if addr is None:
        return False
    if addr.hostname != socket.gethostname():
        # another host (a login node, or a batch job): ask it instead of looking for its pid
        try:
            return ask(run, P.StatusRequest(events=0), timeout_s=2.0).ok
        except EnvironmentProblem:
            return False
    try:
        return psutil.Process(addr.pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True


def ask(run: RunDir, msg: P.Request, timeout_s: float = 5.0) -> P.Reply:
    client = ControlClient(run, name="cli")
    try:
        return client.request(msg, timeout_s=timeout_s, attempts=2)
    finally:
        client.close()
