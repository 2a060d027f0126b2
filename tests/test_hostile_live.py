"""Hostile traffic against a LIVE run: the controller stays up, training goes on, the store stays whole.

One run serves every test of this module (start-up is the expensive part). Each test attacks,
then `assert_unharmed` checks: the same controller process, no role declared dead or suspect by
the attack, no fault or stop recorded, more committed steps, the store passing
`PRAGMA integrity_check`, and the trajectory accounting identity with nothing lost.

Who attacks:
  * someone with no keys at all (raw TCP, ZMTP without CURVE);
  * someone with keys, but another run's (a stranger on the same login node);
  * another user (another uid) using the CLI on the run;
  * the run's own keys (a buggy role or tool): random bytes, truncated and mistyped messages,
    oversized messages, many frames, forged requests of identities that no longer exist.
A role holding the run's keys and forging a live identity is a Byzantine role, outside the
failure model (docs/failure-model.md).
"""

from __future__ import annotations

import os
import random
import shutil
import socket
import sqlite3
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import msgspec
import pytest
import zmq
from click.testing import CliRunner

from slurm_rl import protocol as P
from slurm_rl.cli import cli
from slurm_rl.controlplane import ControlClient
from slurm_rl.errors import EnvironmentProblem
from slurm_rl.report import report_dict
from slurm_rl.rundir import RunDir
from tests import runs
from tests.test_hostile_input import as_stranger

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def live():
    """A live run in a directory every user can list (the shared-cluster layout), 1 MiB message cap."""
    root = Path(tempfile.mkdtemp(prefix="slurm-rl-live-"))
    os.chmod(root, 0o755)
    run = runs.launch(root, "algorithm.steps=100000", "controller.max_message_mb=1", name="target")
    try:
        runs.wait_ready(run)
        yield run
        res = CliRunner().invoke(cli, ["stop", str(run.path)])
        assert res.exit_code == 0, res.output
        rep = runs.wait_done(run)
        runs.assert_accounted(rep)
        runs.assert_no_prompt_done_twice(run)
        assert integrity(run) == "ok"
    finally:
        runs.cleanup(run)
        assert runs.run_processes(run) == []
        shutil.rmtree(root, ignore_errors=True)


def integrity(run: RunDir) -> str:
    conn = sqlite3.connect(f"file:{run.db}?mode=ro", uri=True)
    try:
        return conn.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        conn.close()


class Baseline:
    def __init__(self, run: RunDir):
        self.run = run
        self.pid = runs.controller_pid(run)
        self.committed = runs.committed(run)
        self.last_event = runs.q(run, "SELECT COALESCE(MAX(id), 0) FROM events")[0][0]
        self.faults = runs.q(run, "SELECT COUNT(*) FROM faults")[0][0]

    def assert_unharmed(self, more_steps: int = 5) -> None:
        run = self.run
        runs.wait_for(lambda: runs.committed(run) >= self.committed + more_steps, 60,
                      f"{more_steps} more committed steps after the attack", run)
        assert runs.controller_pid(run) == self.pid, "the controller process changed"
        new = runs.q(run, "SELECT kind, slot, msg FROM events WHERE id > ?", (self.last_event,))
        # (a SUSPECT that clears again is a late heartbeat on a loaded machine, not harm)
        bad = [tuple(e) for e in new if e["kind"] in ("dead", "fault_injected", "stopping", "full_restart",
                                                      "trainer_rollback", "commit_lost", "checkpoint_failed")]
        assert not bad, bad
        assert runs.q(run, "SELECT COUNT(*) FROM faults")[0][0] == self.faults
        assert runs.meta(run, "run_state") == "running"
        assert all(r["state"] == "READY" for r in runs.q(run, "SELECT state FROM roles"))
        assert integrity(run) == "ok"
        rep = report_dict(run)
        runs.assert_accounted(rep)
        runs.assert_no_prompt_done_twice(run)


def endpoint(run: RunDir) -> tuple[str, int]:
    addr = run.read_controller()
    assert addr is not None
    return addr.host, addr.port


def authed(run: RunDir, keys_of: RunDir | None = None) -> zmq.Socket:
    """A DEALER speaking CURVE with the keys of `keys_of` (default: the run's own) to run's controller."""
    pub, sec, _ = (keys_of or run).client_keys()
    spub = run.read_controller().server_public_key.encode()
    s = zmq.Context.instance().socket(zmq.DEALER)
    s.curve_secretkey, s.curve_publickey, s.curve_serverkey = sec, pub, spub
    s.setsockopt(zmq.LINGER, 0)
    s.connect(run.read_controller().endpoint)
    return s


def drain(s: zmq.Socket, wait_s: float = 0.5) -> list[list[bytes]]:
    out = []
    deadline = time.time() + wait_s
    while s.poll(int(max(0.0, deadline - time.time()) * 1000)):
        out.append(s.recv_multipart())
    return out


# ----------------------------------------------------------------------------- outsiders
def test_no_keys_raw_tcp_and_unauthenticated_zmtp(live):
    b = Baseline(live)
    rng = random.Random(1)
    host, port = endpoint(live)
    for i in range(50):                                   # raw bytes: not even ZMTP
        try:
            with socket.create_connection((host, port), timeout=2) as c:
                if i % 10 == 0:
                    c.sendall(b"\xff" + b"\x00" * 8 + b"\x7f" + rng.randbytes(64))  # a ZMTP-looking greeting
                c.sendall(rng.randbytes(rng.randint(1, 4096)))
        except OSError:
            pass                                          # the controller hung up on us: as it should
    ctx = zmq.Context.instance()
    plain = ctx.socket(zmq.DEALER)                        # ZMTP with the NULL mechanism: no CURVE
    plain.setsockopt(zmq.LINGER, 0)
    plain.connect(live.read_controller().endpoint)
    for body in (P.StopRequest(reason="hostile"), P.InjectRequest(slot="trainer/0", fault="crash")):
        plain.send(P.encode(P.Envelope(req_id=1, body=body)))
    assert not plain.poll(1000)
    plain.close(0)
    b.assert_unharmed()


def test_a_stranger_with_another_runs_keys_cannot_stop_or_inject(live, tmp_path):
    b = Baseline(live)
    other = RunDir(tmp_path / "other")
    other.create()                                        # valid CURVE keys, not this run's
    other.write_controller(live.read_controller())        # and knows the address
    c = ControlClient(other, "stranger")
    for body in (P.StopRequest(reason="hostile"), P.InjectRequest(slot="trainer/0", fault="crash"),
                 P.InjectRequest(slot="rollout/0", fault="exit", exit_code=3), P.StatusRequest()):
        with pytest.raises(EnvironmentProblem):
            c.request(body, timeout_s=0.5, attempts=1)
    c.close()
    b.assert_unharmed()


@pytest.mark.skipif(os.geteuid() != 0, reason="switching to another uid needs root")
def test_another_user_cannot_stop_inject_or_read_the_live_run(live):
    b = Baseline(live)
    for harmless in (["status", "{run}", "--json"], ["events", "{run}"], ["report", "{run}"]):
        CliRunner().invoke(cli, [a.replace("{run}", str(live.path)) for a in harmless])   # imports, as the owner
    for args in (["status", "{run}", "--json"], ["events", "{run}"], ["report", "{run}"], ["stop", "{run}"],
                 ["inject", "{run}", "trainer/0", "--fault", "crash"], ["resume", "{run}"]):
        res = as_stranger([a.replace("{run}", str(live.path)) for a in args])
        assert res["exception"] is None, res
        assert res["code"] in (2, 3), res
        assert "Traceback" not in res["output"]
    b.assert_unharmed()


# ----------------------------------------------------------------------------- the run's own keys
def _garbage(rng: random.Random) -> list[bytes]:
    """One hostile message (its frames), from a menu of ways to be wrong."""
    valid = P.encode(P.Envelope(req_id=7, body=P.Heartbeat(ident=P.Ident("rollout", 9, 1), phase="idle",
                                                           progress=0, version=0, wepoch=0)))
    kind = rng.randrange(9)
    if kind == 0:
        return [rng.randbytes(rng.randint(0, 2000))]
    if kind == 1:
        return [valid[: rng.randint(0, len(valid) - 1)]]                       # truncated
    if kind == 2:
        b = bytearray(valid)
        for _ in range(rng.randint(1, 5)):
            b[rng.randrange(len(b))] = rng.randrange(256)                       # flipped bytes
        return [bytes(b)]
    if kind == 3:                                                               # right shape, wrong types
        return [msgspec.msgpack.encode({"req_id": "x", "body": {"type": "hb", "ident": [1, 2]}})]
    if kind == 4:                                                               # an unknown tag
        return [msgspec.msgpack.encode({"req_id": 1, "body": {"type": "rm -rf", "x": 1}})]
    if kind == 5:                                                               # deep nesting
        return [b"\x91" * 5000 + b"\xc0"]
    if kind == 6:                                                               # a huge declared length
        return [b"\x82\xa6req_id\x01\xa4body\xdd\xff\xff\xff\xff"]
    if kind == 7:
        return [valid, valid, rng.randbytes(10)]                                # several frames
    return [b""]


def _kills_the_decoder(frames: list[bytes]) -> bool:
    """BUG-10 (tested on its own, last): invalid UTF-8 inside a msgpack string escapes decode_request."""
    try:
        P.decode_request(frames[-1])
    except UnicodeDecodeError:
        return True
    except Exception:  # noqa: BLE001
        pass
    return False


def test_garbage_from_an_authenticated_peer_is_dropped(live):
    b = Baseline(live)
    rng = random.Random(2)
    s = authed(live)
    sent = 0
    while sent < 600:
        frames = _garbage(rng)
        if _kills_the_decoder(frames):
            continue
        sent += 1
        i = sent
        s.send_multipart(frames)
        if i % 50 == 0:
            drain(s, 0.05)
    replies = drain(s, 1.0)
    for frames in replies:                                                      # whatever comes back is a clean refusal
        env = P.decode_reply(frames[-1])
        assert not env.body.ok
    s.close(0)
    assert "malformed" in (live.logs / "controller.log").read_text(errors="replace")
    b.assert_unharmed()


def test_oversized_messages_are_cut_off(live):
    b = Baseline(live)
    for size in (2 << 20, 8 << 20, 32 << 20):              # max_message_mb=1
        s = authed(live)
        s.send(os.urandom(16) * (size // 16))
        assert not s.poll(300)
        s.close(0)
    # a request that fits the cap but is made of many small pieces: decoded, refused as not ours
    groups = [P.GroupMsg(group_id=uuid.uuid4().hex, item_id=i, problem_idx=0, prompt_ids=[1], samples=[],
                         version=0, wepoch=0) for i in range(8000)]
    s = authed(live)
    s.send(P.encode(P.Envelope(req_id=3, body=P.SubmitGroups(ident=P.Ident("rollout", 0, 0), groups=groups))))
    assert s.poll(20000)
    env = P.decode_reply(s.recv())
    assert not env.body.accepted
    s.close(0)
    b.assert_unharmed()


def test_forged_requests_of_identities_that_do_not_exist_change_nothing(live):
    """Valid messages, hostile values, from identities that are not (or no longer) a live role."""
    b = Baseline(live)
    items = [r[0] for r in runs.q(live, "SELECT id FROM items ORDER BY id DESC LIMIT 20")]
    stored = runs.q(live, "SELECT COUNT(*) FROM groups")[0][0]
    ghosts = [P.Ident("rollout", 0, 0), P.Ident("rollout", 7, 1), P.Ident("trainer", 0, 99), P.Ident("spare", -1, 1),
              P.Ident("admin", 0, 1), P.Ident("rollout", 2**62, -5)]
    sample = P.SampleMsg(completion_ids=[1], logprobs=[0.0], reward=1.0)
    bodies: list[Any] = []
    for g in ghosts:
        bodies += [
            P.Heartbeat(ident=g, phase="stepping", progress=-1, version=10**9, wepoch=-3, detail="x" * 10000),
            P.Heartbeat(ident=g, phase="not-a-phase", progress=0, version=0, wepoch=0),
            P.LeaseRequest(ident=g, max_items=-1, version=0, wepoch=0),
            P.LeaseRequest(ident=g, max_items=10**9, version=0, wepoch=0),
            P.SubmitGroups(ident=g, groups=[P.GroupMsg(group_id=uuid.uuid4().hex, item_id=i, problem_idx=0,
                                                       prompt_ids=[1], samples=[sample], version=0, wepoch=0)
                                            for i in items]),
            P.ReleaseLeases(ident=g, item_ids=items),
            P.FetchBatch(ident=g, step=0, n_groups=-1),
            P.StepDone(ident=g, version=10**6, wepoch=0, group_ids=["x"], t_start=0, t_end=0, wait_s=0, metrics={}),
            P.VersionHeld(ident=g, version=10**6, wepoch=0, sync_addrs={"tcp": "tcp://127.0.0.1:1"}),
            P.CheckpointSaved(ident=g, step=10**6, path="/etc/passwd"),
            P.RoleEvent(ident=g, kind="dead", msg="forged"),
            P.Goodbye(ident=g, reason="forged"),
            P.Hello(ident=g, job_id="x", node="evil", pid=1, host_id="h", sync_addrs={}),
        ]
    bodies += [P.StatusRequest(events=-5), P.StatusRequest(events=2**62), P.InjectRequest(slot="rollout/9", fault="crash"),
               P.InjectRequest(slot="../../x", fault="crash"), P.InjectRequest(slot="trainer/0", fault="meteor")]
    c = ControlClient(live, "forger")
    answers = []
    for body in bodies:
        try:
            answers.append(c.request(body, timeout_s=5, attempts=1))
        except EnvironmentProblem:
            answers.append(None)
    c.close()
    assert all(a is not None for a in answers), "the controller stopped answering"
    # every forged hand-in refused; injections into nothing refused; nothing new stored
    for body, a in zip(bodies, answers):
        if isinstance(body, P.SubmitGroups):
            assert not a.accepted, body.ident
        if isinstance(body, P.InjectRequest):
            assert not a.ok
        assert not a.leases
        assert not a.groups
    assert runs.q(live, "SELECT COUNT(*) FROM groups WHERE slot IN ('rollout/7', 'admin/0', 'spare/-1')")[0][0] == 0
    assert runs.q(live, "SELECT COUNT(*) FROM checkpoints WHERE step >= 1000000")[0][0] == 0
    assert runs.q(live, "SELECT COUNT(*) FROM groups")[0][0] >= stored
    b.assert_unharmed()


def test_a_burst_of_status_requests_does_not_starve_heartbeats(live):
    """Many viewers at once (`slurm-rl status --watch` in several terminals, scripts polling
    `status --json`): 1000 status requests from 8 connections land together. Each is computed in
    the controller loop; ZeroMQ queues each connection fairly, so heartbeats still get through and
    no healthy role is declared dead. Prints what the burst cost."""
    b = Baseline(live)
    socks = [authed(live) for _ in range(8)]
    t0 = time.time()
    for i in range(125):
        for s in socks:
            s.send(P.encode(P.Envelope(req_id=i, body=P.StatusRequest(events=50))))
    got = 0
    deadline = time.time() + 120
    while got < 1000 and time.time() < deadline:
        for s in socks:
            got += len(drain(s, 0.0))
        time.sleep(0.01)
    took = time.time() - t0
    for s in socks:
        s.close(0)
    steps = runs.committed(live) - b.committed
    print(f"\n1000 status requests answered in {took:.1f}s ({1000 * took / max(got, 1):.1f} ms each); "
          f"{steps} steps committed meanwhile")
    assert got == 1000
    b.assert_unharmed()


# ----------------------------------------------------------------------------- keep this one last
def test_invalid_utf8_in_a_message_does_not_kill_the_controller(live):
    b = Baseline(live)
    valid = P.encode(P.Envelope(req_id=7, body=P.Heartbeat(ident=P.Ident("rollout", 9, 1), phase="idle",
                                                           progress=0, version=0, wepoch=0)))
    bad = valid.replace(b"idle", b"id\xd0e")                # one flipped bit in a string
    s = authed(live)
    s.send(bad)
    s.poll(2000)
    s.close(0)
    time.sleep(1.0)
    assert runs.controller_pid(live) == b.pid, "the controller died of one malformed message"
    b.assert_unharmed()
