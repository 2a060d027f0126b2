"""One controller per run: an exclusive `flock` on RUN/controller.lock, held for the controller
process's lifetime (the kernel drops it when the process dies, SIGKILL included, so a crashed
controller never blocks its `resume`). A second controller on the same state store - `resume`
while the first is alive but slow to answer, two `resume`s at once - stops before it writes
anything. The file names the holder (pid, host, since) for the message.

On Slurm the controller may run on another node: flock over NFS is honoured by Linux NFSv4 clients
(byte-range locks through the server) but not by every shared file system; where it is not, the
status-request check of `slurm-rl resume` is what remains.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time

from slurm_rl.errors import BadInput
from slurm_rl.rundir import RunDir

NAME = "controller.lock"


class ControllerRunning(BadInput):
    """Another controller holds this run's lock (exit 2: the request cannot be done as asked)."""


def _holder_text(run: RunDir) -> str:
    try:
        h = json.loads((run.path / NAME).read_text() or "{}")
        return f"pid {h['pid']} on {h['host']} since {time.strftime('%H:%M:%S', time.localtime(h['since']))}"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"


def _refuse(run: RunDir) -> ControllerRunning:
    return ControllerRunning(f"the controller of {run.name} is running ({_holder_text(run)}); a second one on the "
                             f"same state store is refused", hint=f"`slurm-rl status {run.path}`; to replace it, "
                             f"`slurm-rl stop {run.path}` first (or kill that pid), then `slurm-rl resume`")


class ControllerLock:
    def __init__(self, run: RunDir):
        self.run = run
        self.fd: int | None = None

    def acquire(self) -> None:
        """Take the lock or raise ControllerRunning naming its holder; writes who holds it."""
        fd = os.open(self.run.path / NAME, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise _refuse(self.run) from None
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}).encode())
        os.fsync(fd)
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)          # closing the descriptor drops the lock
            self.fd = None


def check_free(run: RunDir) -> None:
    """Raise ControllerRunning if a controller holds `run`'s lock now (takes and drops it otherwise)."""
    if not (run.path / NAME).exists():
        return
    fd = os.open(run.path / NAME, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise _refuse(run) from None
    finally:
        os.close(fd)
