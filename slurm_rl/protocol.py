"""Control-plane messages between roles (and the CLI) and the controller.

Typed msgspec structs, msgpack on the wire, tagged by `type`; decoding validates every field,
so a malformed message is a `ProtocolError`, never a half-read dict. Transport: ZeroMQ
DEALER (clients) -> ROUTER (controller), CURVE-encrypted and authenticated with the run's keys
(see `slurm_rl.rundir`).

Every role request carries its identity (kind, index, incarnation) so the controller can fence
a stale incarnation: a zombie from before a restart is told to exit, and nothing it sends counts.
"""

from __future__ import annotations

import msgspec

from slurm_rl.errors import ProtocolError

# ----------------------------------------------------------------------------- shared records


class Ident(msgspec.Struct, frozen=True):
    kind: str              # RoleKind value
    index: int
    incarnation: int

    @property
    def slot(self) -> str:
        return f"{self.kind}/{self.index}"


class ProblemLease(msgspec.Struct, frozen=True):
    item_id: int
    problem_idx: int
    prompt: str
    answer: str


class SampleMsg(msgspec.Struct, frozen=True):
    completion_ids: list[int]
    logprobs: list[float]
    reward: float
    text: str = ""


class GroupMsg(msgspec.Struct, frozen=True):
    group_id: str                 # chosen by the rollout (uuid); makes resubmission idempotent
    item_id: int
    problem_idx: int
    prompt_ids: list[int]
    samples: list[SampleMsg]
    version: int                  # weight version used to generate
    wepoch: int                   # weight lineage (bumps when a trainer is restored)


class Command(msgspec.Struct, frozen=True):
    """Something the controller asks a role to do, carried in any reply."""

    op: str                       # become | exit | stop | pause
    kind: str = ""
    index: int = -1
    incarnation: int = -1
    resume_step: int = -1
    exit_code: int = 0
    reason: str = ""


class WeightsInfo(msgspec.Struct, frozen=True):
    """Newest weights a role should hold, and who can serve them."""

    version: int
    wepoch: int
    holders: list[dict[str, str]]  # transport -> address, best first
    holder_hosts: list[str] = []
    # the step each weight epoch forked from (the committed step of its rollback): versions up to
    # the fork are the same weights in the older epochs (`shared_with_later_epochs`)
    epoch_bases: list[int] = []
    # a sharded trainer's version is `parts` parts (slurm_rl.sync.parts): `holders` serve every
    # part (relays), part_holders[p] part p alone (the trainer's rank p)
    parts: int = 1
    part_holders: list[dict[str, str]] = []
    part_hosts: list[str] = []


def shared_with_later_epochs(epoch_bases: list[int], wepoch: int, version: int) -> bool:
    """Is `version` of weight epoch `wepoch` the same weights in every later epoch? Yes up to the
    oldest fork after it; beyond, a later epoch's version of that number was trained anew."""
    later = epoch_bases[wepoch + 1:]
    return bool(later) and version <= min(later)


# ----------------------------------------------------------------------------- requests


class Hello(msgspec.Struct, tag="hello", frozen=True):
    ident: Ident
    job_id: str
    node: str
    pid: int
    host_id: str
    sync_addrs: dict[str, str]
    live_addr: str = ""           # tcp://host:port the controller keeps one idle connection to (crash signal)
    rank: int = 0                 # a multi-rank trainer's rank (0 speaks for the role; others only heartbeat)
    world_size: int = 1
    rdzv: str = ""                # rank 0: host:port of its process-group store, handed to the other ranks


class Heartbeat(msgspec.Struct, tag="hb", frozen=True):
    ident: Ident
    phase: str
    progress: int                 # monotone counter: tokens generated, steps taken, bytes synced...
    version: int                  # weight version held (-1 none)
    wepoch: int
    detail: str = ""
    sync_addrs: dict[str, str] = {}
    live_addr: str = ""
    rank: int = 0
    parts: int = 1                # the parts the held version is in (slurm_rl.sync.parts)


class LeaseRequest(msgspec.Struct, tag="lease", frozen=True):
    ident: Ident
    max_items: int
    version: int
    wepoch: int


class SubmitGroups(msgspec.Struct, tag="submit", frozen=True):
    ident: Ident
    groups: list[GroupMsg]


class ReleaseLeases(msgspec.Struct, tag="release", frozen=True):
    ident: Ident
    item_ids: list[int]


class FetchBatch(msgspec.Struct, tag="fetch", frozen=True):
    ident: Ident
    step: int                     # the step about to be taken (= current version)
    n_groups: int


class StepDone(msgspec.Struct, tag="step", frozen=True):
    ident: Ident
    version: int                  # new version published (= steps completed)
    wepoch: int
    group_ids: list[str]
    t_start: float
    t_end: float
    wait_s: float
    metrics: dict[str, float]


class VersionHeld(msgspec.Struct, tag="held", frozen=True):
    ident: Ident
    version: int
    wepoch: int
    sync_addrs: dict[str, str]
    parts: int = 1


class CheckpointSaved(msgspec.Struct, tag="ckpt", frozen=True):
    ident: Ident
    step: int
    path: str


class RoleEvent(msgspec.Struct, tag="event", frozen=True):
    ident: Ident
    kind: str
    msg: str
    data: dict[str, str] = {}


class Goodbye(msgspec.Struct, tag="bye", frozen=True):
    ident: Ident
    reason: str
    fatal: str = ""      # "input" / "environment": the role cannot run and no restart would help


# CLI requests (authenticated like roles; the CLI reads the same run keys)
class StatusRequest(msgspec.Struct, tag="status", frozen=True):
    events: int = 10


class InjectRequest(msgspec.Struct, tag="inject", frozen=True):
    slot: str                     # e.g. rollout/1
    fault: str                    # FaultKind value
    exit_code: int = 1
    rank: int = 0                 # which rank of a multi-rank role: its process, node or hang


class StopRequest(msgspec.Struct, tag="stop", frozen=True):
    reason: str = "stopped by user"


class Pulse(msgspec.Struct, tag="pulse", frozen=True):
    """From a role job's batch-step agent (slurm_rl.roles.agent): the role process seen from outside."""
    job_id: str
    pid: int
    state: str                    # /proc state letter: R, S, D, T (stopped), Z ...
    cpu_s: float                  # CPU seconds the process has used


Request = (Hello | Heartbeat | LeaseRequest | SubmitGroups | ReleaseLeases | FetchBatch | StepDone | VersionHeld
           | CheckpointSaved | RoleEvent | Goodbye | StatusRequest | InjectRequest | StopRequest | Pulse)

# ----------------------------------------------------------------------------- replies


class Reply(msgspec.Struct, frozen=True):
    ok: bool = True
    error: str = ""
    commands: list[Command] = []
    weights: WeightsInfo | None = None
    # lease
    leases: list[ProblemLease] = []
    pause: str = ""               # non-empty: why the rollout should idle now
    # submit
    accepted: list[str] = []
    rejected: list[str] = []
    # fetch
    groups: list[GroupMsg] = []
    # status / inject
    payload: bytes = b""
    # hello of a rank > 0: rank 0's process-group store, once it has said hello
    rdzv: str = ""


class Envelope(msgspec.Struct, frozen=True):
    req_id: int
    body: Request


class ReplyEnvelope(msgspec.Struct, frozen=True):
    req_id: int
    body: Reply


_enc = msgspec.msgpack.Encoder()
_req_dec = msgspec.msgpack.Decoder(Envelope)
_rep_dec = msgspec.msgpack.Decoder(ReplyEnvelope)


def encode(obj: msgspec.Struct) -> bytes:
    return _enc.encode(obj)


def decode_request(data: bytes) -> Envelope:
    try:
        return _req_dec.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError, ValueError, OverflowError) as e:
        # invalid UTF-8 inside a string is a UnicodeDecodeError, not a DecodeError
        raise ProtocolError(f"malformed request: {e}") from None


def decode_reply(data: bytes) -> ReplyEnvelope:
    try:
        return _rep_dec.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError, ValueError, OverflowError) as e:
        raise ProtocolError(f"malformed reply: {e}") from None
