"""Preparing a run directory and starting, finding and stopping its controller process."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from slurm_rl.config import BackendKind, RunConfig
from slurm_rl.controlplane import ask, controller_alive  # noqa: F401  (the launcher's API too)
from slurm_rl.errors import BadInput, EnvironmentProblem
from slurm_rl.rundir import RunDir

TERMINAL_STATES = ("finished", "failed", "stopped")


def resolve_run_dir(cfg: RunConfig, config_path: str | None, *, name: str | None, run_dir: str | None) -> RunDir:
    """Where the run goes. An explicit --run-dir/--name must be new; a default name gets a suffix."""
    if run_dir:
        path = Path(run_dir)
        if (path / "run.json").exists():
            raise BadInput(f"{path} already holds a run", hint=f"`slurm-rl resume {path}` continues it; "
                                                                "pick another --run-dir to start a new one")
        return RunDir(path)
    base = name or cfg.name or (Path(config_path).stem if config_path else "run")
    root = Path(cfg.runs_dir)
    path = root / base
    if name and (path / "run.json").exists():
        raise BadInput(f"run {name!r} already exists in {root}", hint="choose another --name, or resume it with "
                                                                      f"`slurm-rl resume {path}`")
    n = 2
    while (path / "run.json").exists():
        path = root / f"{base}-{n}"
        n += 1
    return RunDir(path)


def prepare(cfg: RunConfig, run: RunDir, *, config_source: str | None) -> None:
    """Create the run dir: keys, resolved config, model, problems, state store. Nothing half-written:
    on failure the new directory is removed again."""
    created = not run.path.exists()
    try:
        _prepare(cfg, run, config_source=config_source)
    except BaseException:
        if created:
            shutil.rmtree(run.path, ignore_errors=True)
        raise


def _prepare(cfg: RunConfig, run: RunDir, *, config_source: str | None) -> None:
    from slurm_rl.rl.task import generate_arithmetic, read_jsonl, write_jsonl
    from slurm_rl.store import Store

    # user files are checked before anything is written
    if cfg.task.kind == "jsonl":
        assert cfg.task.path is not None
        problems = read_jsonl(Path(cfg.task.path))
    else:
        problems = generate_arithmetic(cfg.task.num_problems, seed=cfg.task.seed if cfg.task.seed is not None
                                       else cfg.seed, ops=cfg.task.ops, max_operand=cfg.task.max_operand,
                                       max_answer=cfg.task.max_answer)
    if cfg.model.path:
        src = Path(cfg.model.path).expanduser()
        if not (src / "config.json").is_file():
            raise BadInput(f"model.path {src} is not a Hugging Face model directory (no config.json)",
                           hint="point model.path at a directory written by save_pretrained, or unset it "
                                "to use the built-in tiny model")
    run.create()
    cfg = cfg.model_copy(update={"name": run.name})
    run.config.write_text(cfg.to_yaml())
    if cfg.model.path:
        os.symlink(Path(cfg.model.path).expanduser().resolve(), run.model)
    else:
        from slurm_rl.rl.model import build_tiny_model

        build_tiny_model(run.model, hidden=cfg.model.hidden, layers=cfg.model.layers, heads=cfg.model.heads,
                         kv_heads=cfg.model.kv_heads, seed=cfg.seed,
                         max_position_embeddings=max(cfg.model.max_model_len, 64))
    write_jsonl(problems, run.problems)
    store = Store(run.db)
    try:
        store.load_problems((p.prompt, p.answer) for p in problems)
        store.set_metas(run_state="created", created=time.time(), trainer_version=0, committed=0, wepoch=0,
                        epoch_bases=[0])
    finally:
        store.close()
    run.write_meta(name=run.name, backend=cfg.backend.value, recovery=cfg.recovery.policy.value,
                   created=time.time(), config_source=config_source, slurm_rl_pid=os.getpid())


def preflight(cfg: RunConfig, run: RunDir | None = None) -> None:
    """Backend checks before anything starts (Slurm commands present, partitions exist)."""
    if cfg.backend is BackendKind.SLURM:
        from slurm_rl.backends.slurm import SlurmBackend

        SlurmBackend.check(cfg)


def start_controller(run: RunDir, *, resume: bool = False, timeout_s: float = 60.0) -> subprocess.Popen[bytes]:
    """Start the controller as its own process session (it outlives this CLI with --detach)."""
    run.logs.mkdir(exist_ok=True)
    log = open(run.logs / "controller.log", "ab")
    argv = [sys.executable, "-m", "slurm_rl.controller", str(run.path)] + (["--resume"] if resume else [])
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    env["PYTHONUNBUFFERED"] = "1"
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True, env=env, cwd=str(run.path))
    log.close()
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        addr = run.read_controller()
        if addr is not None and addr.pid == proc.pid:
            return proc
        if proc.poll() is not None:
            raise EnvironmentProblem(f"the controller exited at start (code {proc.returncode})",
                                     hint=f"see {run.logs / 'controller.log'}:\n" + tail(run.logs / "controller.log"))
        time.sleep(0.05)
    proc.kill()
    raise EnvironmentProblem(f"the controller did not come up within {timeout_s:.0f}s",
                             hint=f"see {run.logs / 'controller.log'}")


def tail(path: Path, n: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


def wait_controller_exit(run: RunDir, addr: Any, timeout_s: float = 10.0) -> None:
    """After the run ended: let the controller process (on this host) finish exiting, so that
    nothing of the run is still running when `launch` returns."""
    import psutil

    if addr is None or addr.hostname != socket.gethostname():
        return
    try:
        psutil.Process(addr.pid).wait(timeout=timeout_s)
    except (psutil.NoSuchProcess, psutil.TimeoutExpired, psutil.AccessDenied, ChildProcessError):
        pass


def run_state(run: RunDir) -> str:
    from slurm_rl.report import open_store

    try:
        conn = open_store(run)
    except Exception:
        return "unknown"
    try:
        row = conn.execute("SELECT value FROM meta WHERE key='run_state'").fetchone()
        return json.loads(row[0]) if row else "unknown"
    finally:
        conn.close()


def cancel_all_jobs(run: RunDir, reason: str) -> int:
    """Stop a run whose controller is gone: cancel every job in its store, mark it stopped."""
    from slurm_rl.backends.factory import make_backend
    from slurm_rl.config import load_run_config
    from slurm_rl.store import Store

    cfg = load_run_config(run)
    backend = make_backend(run, cfg)
    store = Store(run.db)
    try:
        ids = [r["job_id"] for r in store.jobs()]
        if ids:
            backend.cancel(ids)
        if store.get_meta("run_state") not in TERMINAL_STATES:
            store.set_metas(run_state="stopped", ended=time.time(), end_reason=reason)
            store.event(time.time(), "run_stopped", f"run stopped without a controller: {reason}; "
                                                    f"{len(ids)} job(s) cancelled")
        return len(ids)
    finally:
        store.close()
        backend.close()
