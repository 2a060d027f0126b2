"""One controller per run: an exclusive `flock` on RUN/controller.lock, held for the controller
process's lifetime (the kernel drops it when the process dies, SIGKILL included, so a crashed
controller never blocks its `resume`). A second controller on the same state store - `resume`
while the first is alive but slow to answer, two `resume`s at once - stops before it writes
anything. The file names the holder (pid, host, since) for the message.

On Slurm the controller may run in a batch job on another node, so the lock lives on a shared file
system. Linux NFS clients turn flock into a whole-file lock on the server (NLM on NFSv3, NFSv4's own
locks), which holds across nodes - unless the file system is mounted `local_lock=flock` (or `all`),
where it only excludes processes of one node. A holder whose node dies keeps its lock until the
server's lease or NLM grace runs out (NFSv4: about 90 s): `resume` is refused until then. Lustre
honours flock across nodes only with `-o flock` (`localflock`: one node; neither: flock fails),
BeeGFS only with global file locks on. Where flock fails (ENOSYS, ENOLCK, EOPNOTSUPP) the controller
runs unlocked and says so in its log; `resume`'s status request to a live controller is then
what remains.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import socket
import time

from slurm_rl.errors import RunInUse
from slurm_rl.rundir import RunDir

NAME = "controller.lock"
log = logging.getLogger("slurm_rl.controller")


class ControllerRunning(RunInUse):
    """Another controller holds this run's lock (exit 4, the run is in use)."""


def _holder_text(run: RunDir) -> str:
    try:
        h = json.loads((run.path / NAME).read_text() or "{}")
        return f"pid {h['pid']} on {h['host']} since {time.strftime('%H:%M:%S', time.localtime(h['since']))}"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"


def refusal(run: RunDir) -> ControllerRunning:
    """The error for a second controller of `run`, naming the run dir and the lock's holder."""
    return ControllerRunning(f"the controller of run {run.path} is running ({_holder_text(run)}); a second one on "
                             f"the same state store is refused", hint=f"`slurm-rl status {run.path}`; to replace it, "
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
            raise refusal(self.run) from None
        except OSError as e:
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                os.close(fd)
                raise refusal(self.run) from None
            log.warning("the file system of %s does not take flock (%s): this controller runs without the lock that "
                        "keeps a second one off the run", self.run.path, e)
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
        raise refusal(run) from None
    except OSError as e:
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            raise refusal(run) from None
        return                     # no flock here: nothing can hold it (the controller says so in its log)
    finally:
        os.close(fd)
