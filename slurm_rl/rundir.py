"""A run is a directory. This module knows its layout and creates it owner-only.

    runs/<name>/
      config.yaml        resolved config (every default filled in)
      run.json           name, backend, created, source config
      keys/              0700: CURVE keys of the control plane + weight-sync key (owner-only)
      controller.json    where the live controller listens (written by the controller)
      state.db           SQLite state store, written by the controller alone
      model/             the model every role loads (tiny demo model, or a pointer)
      data/problems.jsonl  training problems (every format is stored as JSONL)
      data/eval.jsonl      held-out eval problems, when the task has an eval split
      logs/              controller.log and one log per role job incarnation
      acks/              per-rollout journal of acknowledged trajectory groups (loss audit)
      checkpoints/       step-NNNNNN/ (atomic renames)
      slurm/             submitit folder (generated sbatch scripts, job stdout)
"""

from __future__ import annotations

import json
import os
import secrets
import stat
import time
from dataclasses import dataclass
from pathlib import Path

from slurm_rl.errors import BadInput, EnvironmentProblem


@dataclass(frozen=True)
class ControllerAddress:
    host: str
    port: int
    pid: int
    server_public_key: str
    started: float
    hostname: str

    @property
    def endpoint(self) -> str:
        return f"tcp://{self.host}:{self.port}"


class RunDir:
    """Paths of one run directory (nothing is created until `create`)."""

    def __init__(self, path: str | Path):
        self.path = Path(path).resolve()

    # --- layout
    @property
    def config(self) -> Path:
        return self.path / "config.yaml"

    @property
    def meta(self) -> Path:
        return self.path / "run.json"

    @property
    def keys(self) -> Path:
        return self.path / "keys"

    @property
    def allowed_keys(self) -> Path:
        return self.keys / "allowed"

    @property
    def controller_file(self) -> Path:
        return self.path / "controller.json"

    @property
    def db(self) -> Path:
        return self.path / "state.db"

    @property
    def model(self) -> Path:
        return self.path / "model"

    @property
    def problems(self) -> Path:
        return self.path / "data" / "problems.jsonl"

    @property
    def eval_problems(self) -> Path:
        return self.path / "data" / "eval.jsonl"

    @property
    def logs(self) -> Path:
        return self.path / "logs"

    @property
    def acks(self) -> Path:
        return self.path / "acks"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def slurm(self) -> Path:
        return self.path / "slurm"

    @property
    def name(self) -> str:
        return self.path.name

    def exists(self) -> bool:
        return self.meta.exists()

    # --- creation
    def create(self) -> None:
        """Make the directory tree owner-only (0700): shared login nodes have many users."""
        old = os.umask(0o077)
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            os.chmod(self.path, 0o700)
            for d in (self.keys, self.logs, self.acks, self.checkpoints, self.slurm, self.problems.parent):
                d.mkdir(exist_ok=True)
            os.chmod(self.keys, 0o700)
            self._make_keys()
        finally:
            os.umask(old)

    def _make_keys(self) -> None:
        import zmq.auth

        if not (self.keys / "server.key_secret").exists():
            zmq.auth.create_certificates(str(self.keys), "server")
            zmq.auth.create_certificates(str(self.keys), "client")
            # the authenticator allows every public key in allowed/: only the run's client key
            allowed = self.keys / "allowed"
            allowed.mkdir(mode=0o700, exist_ok=True)
            (allowed / "client.key").write_bytes((self.keys / "client.key").read_bytes())
            (self.keys / "sync.secret").write_bytes(secrets.token_bytes(32))
        for f in self.keys.rglob("*"):
            os.chmod(f, 0o700 if f.is_dir() else 0o600)

    # --- keys
    def _check_keys_private(self) -> None:
        st = self.keys.stat()
        if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise EnvironmentProblem(
                f"{self.keys} is readable by other users (mode {oct(st.st_mode & 0o777)}); "
                "the run's secret must be owner-only", hint=f"chmod -R go-rwx {self.keys}")

    def server_keys(self) -> tuple[bytes, bytes]:
        import zmq.auth

        self._check_keys_private()
        return zmq.auth.load_certificate(str(self.keys / "server.key_secret"))

    def client_keys(self) -> tuple[bytes, bytes, bytes]:
        """(client public, client secret, server public) for a CURVE client."""
        import zmq.auth

        if not self.keys.exists():
            raise BadInput(f"{self.path} is not a slurm-rl run directory (no keys/)")
        try:
            pub, sec = zmq.auth.load_certificate(str(self.keys / "client.key_secret"))
            spub, _ = zmq.auth.load_certificate(str(self.keys / "server.key"))
        except (OSError, ValueError) as e:
            raise EnvironmentProblem(f"cannot read the run's keys in {self.keys}: {e}",
                                     hint="only the run's owner can talk to its controller") from None
        assert sec is not None
        return pub, sec, spub

    def sync_key(self) -> bytes:
        return (self.keys / "sync.secret").read_bytes()

    # --- controller address
    def write_controller(self, addr: ControllerAddress) -> None:
        tmp = self.controller_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(addr.__dict__))
        os.replace(tmp, self.controller_file)

    def read_controller(self) -> ControllerAddress | None:
        try:
            return ControllerAddress(**json.loads(self.controller_file.read_text()))
        except (OSError, ValueError, TypeError):
            return None

    def clear_controller(self) -> None:
        try:
            self.controller_file.unlink()
        except FileNotFoundError:
            pass

    # --- meta
    def write_meta(self, **fields: object) -> None:
        data = self.read_meta()
        data.update(fields)
        tmp = self.meta.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=2))
        os.replace(tmp, self.meta)

    def read_meta(self) -> dict[str, object]:
        try:
            return json.loads(self.meta.read_text())
        except (OSError, ValueError):
            return {}


def require_run(path: str | Path) -> RunDir:
    """A RunDir that must exist (CLI arguments); BadInput naming the path otherwise."""
    run = RunDir(path)
    if not run.path.exists():
        raise BadInput(f"run directory {path} does not exist", hint="`slurm-rl ls` lists runs")
    if not run.exists():
        raise BadInput(f"{path} is not a slurm-rl run directory (no run.json)",
                       hint="pass the directory `slurm-rl launch` printed, e.g. runs/demo")
    return run


def now() -> float:
    return time.time()
