"""The small fixed-size messages every transport exchanges before and after the bulk bytes.

    holder -> puller   HELLO    magic, protocol, flags (auth required), holder nonce
    puller -> holder   REQUEST  magic, version, part, puller nonce, MAC
    holder -> puller   REPLY    magic, status, payload length, MAC; then the payload
                                (the manifest when OK, a reason otherwise)
    holder -> puller   ...      the buckets, in order (transport specific)
    puller -> holder   DONE     magic, outcome (lets the holder release the version it pinned)

Authentication is a challenge-response with HMAC-SHA256 over both nonces and the per-run secret, in
both directions: a stranger cannot read weights (the holder checks the REQUEST MAC) and cannot pose as
a holder (the puller checks the REPLY MAC, which covers the manifest and so every bucket hash).
It costs two HMACs per transfer. Bulk bytes are checked with xxh3 (fast, not cryptographic): this
protects against accidents and strangers, not against an attacker who can rewrite packets in flight.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import os
import struct
from dataclasses import dataclass

from slurm_rl.errors import SyncError
from slurm_rl.sync.base import SyncAuthError, VersionNotHeld

MAGIC = b"SRLW"
PROTOCOL = 2                    # 2: a request names the part (slurm_rl.sync.parts)
NONCE = 16
MAC = 32
MAX_PAYLOAD = 64 << 20          # a manifest of ~500k tensors; anything larger is a broken peer

_HELLO = struct.Struct("!4sHH16s")
_REQUEST = struct.Struct("!4sqH16s32s")
_REPLY = struct.Struct("!4sHHI32s")
_DONE = struct.Struct("!4sI")
HELLO_SIZE, REQUEST_SIZE, REPLY_SIZE, DONE_SIZE = _HELLO.size, _REQUEST.size, _REPLY.size, _DONE.size

FLAG_AUTH = 1
_NO_MAC = bytes(MAC)


class Status(enum.IntEnum):
    OK = 0
    NOT_HELD = 1
    AUTH_FAILED = 2
    BUSY = 3
    ERROR = 4


class Outcome(enum.IntEnum):
    VERIFIED = 0
    FAILED = 1


def _mac(key: bytes | None, *parts: bytes) -> bytes:
    if key is None:
        return _NO_MAC
    h = hmac.new(key, digestmod=hashlib.sha256)
    for p in parts:
        h.update(p)
    return h.digest()


@dataclass(frozen=True, slots=True)
class Hello:
    auth: bool
    nonce: bytes

    @classmethod
    def make(cls, key: bytes | None) -> Hello:
        return cls(auth=key is not None, nonce=os.urandom(NONCE))

    def pack(self) -> bytes:
        return _HELLO.pack(MAGIC, PROTOCOL, FLAG_AUTH if self.auth else 0, self.nonce)

    @classmethod
    def unpack(cls, data: bytes) -> Hello:
        magic, proto, flags, nonce = _HELLO.unpack(data)
        if magic != MAGIC:
            raise SyncError("peer is not a slurm-rl weight holder (bad magic)")
        if proto != PROTOCOL:
            raise SyncError(f"holder speaks weight-sync protocol {proto}, we speak {PROTOCOL}: mixed slurm-rl versions")
        return cls(auth=bool(flags & FLAG_AUTH), nonce=nonce)


@dataclass(frozen=True, slots=True)
class Request:
    version: int
    nonce: bytes
    mac: bytes
    part: int = 0

    @classmethod
    def make(cls, hello: Hello, version: int, key: bytes | None, part: int = 0) -> Request:
        """Build the request, refusing mismatched auth settings before sending anything."""
        if hello.auth and key is None:
            raise SyncAuthError("holder requires the run's auth key and none was given")
        if not hello.auth and key is not None:
            raise SyncAuthError("holder does not authenticate but we have an auth key: refusing an unauthenticated holder")
        if not 0 <= part < 1 << 16:
            raise SyncError(f"weights part {part} out of range")
        nonce = os.urandom(NONCE)
        return cls(version, nonce, _mac(key, b"req", hello.nonce, nonce, struct.pack("!qH", version, part)), part)

    def valid(self, hello: Hello, key: bytes | None) -> bool:
        if key is None:
            return True
        want = _mac(key, b"req", hello.nonce, self.nonce, struct.pack("!qH", self.version, self.part))
        return hmac.compare_digest(want, self.mac)

    def pack(self) -> bytes:
        return _REQUEST.pack(MAGIC, self.version, self.part, self.nonce, self.mac)

    @classmethod
    def unpack(cls, data: bytes) -> Request:
        magic, version, part, nonce, mac = _REQUEST.unpack(data)
        if magic != MAGIC:
            raise SyncError("bad request magic")
        return cls(version, nonce, mac, part)


@dataclass(frozen=True, slots=True)
class Reply:
    """Header of the holder's answer; `payload_len` bytes of payload follow it."""

    status: Status
    payload_len: int
    mac: bytes

    @staticmethod
    def make(status: Status, payload: bytes, hello: Hello, request: Request, key: bytes | None) -> bytes:
        """Packed header + payload, MAC'd unless the puller failed authentication (it gets no MAC)."""
        k = key if status != Status.AUTH_FAILED else None
        mac = _mac(k, b"rep", hello.nonce, request.nonce, struct.pack("!H", status), payload)
        return _REPLY.pack(MAGIC, status, 0, len(payload), mac) + payload

    @classmethod
    def unpack(cls, data: bytes) -> Reply:
        magic, status, _, n, mac = _REPLY.unpack(data)
        if magic != MAGIC:
            raise SyncError("bad reply magic")
        if n > MAX_PAYLOAD:
            raise SyncError(f"holder announced a {n}-byte reply; refusing")
        try:
            st = Status(status)
        except ValueError:
            raise SyncError(f"holder replied with unknown status {status}") from None
        return cls(st, n, mac)

    def check(self, payload: bytes, hello: Hello, request: Request, key: bytes | None, *, version: int, peer: str) -> bytes:
        """Verify the MAC and turn a non-OK status into the matching SyncError; returns the payload."""
        if self.status == Status.AUTH_FAILED:
            raise SyncAuthError(f"{peer} refused our auth key: {payload.decode(errors='replace')}",
                                hint="every role of a run must use the run's secret")
        want = _mac(key, b"rep", hello.nonce, request.nonce, struct.pack("!H", self.status), payload)
        if not hmac.compare_digest(want, self.mac):
            raise SyncAuthError(f"{peer} failed to authenticate its reply: not a holder of this run")
        if self.status == Status.NOT_HELD:
            held = tuple(int(v) for v in payload.decode().split(",") if v)
            raise VersionNotHeld(f"{peer} does not hold weights v{version} (holds {list(held) or 'nothing'})", held=held)
        if self.status != Status.OK:
            raise SyncError(f"{peer} could not serve weights v{version}: {self.status.name}: {payload.decode(errors='replace')}")
        return payload


def pack_done(outcome: Outcome) -> bytes:
    return _DONE.pack(MAGIC, outcome)


def unpack_done(data: bytes) -> Outcome:
    magic, outcome = _DONE.unpack(data)
    if magic != MAGIC:
        raise SyncError("bad done magic")
    return Outcome(outcome) if outcome in (0, 1) else Outcome.FAILED
