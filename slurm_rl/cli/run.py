"""Commands that start, follow, fault and stop a run: launch, inject, stop, resume."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import click

from slurm_rl import protocol as P
from slurm_rl.cli.base import (
    INTERRUPTED,
    RUN_DIR,
    _check_target,
    _complete_fault,
    _complete_target,
    _console,
    _example,
    _on_sigterm,
    _parse_fault,
    _quiet_hf,
    cli,
)
from slurm_rl.cli.view import _LiveStatus
from slurm_rl.errors import BadInput, EnvironmentProblem, RunInUse, SlurmRLError, fatal_exit_code


@cli.command(short_help="Start a run (live view until it ends).",
             epilog=_example("slurm-rl launch configs/demo.yaml --set rollout.replicas=4 "
                             "--set recovery.policy=full-restart",
                             "slurm-rl launch configs/demo.yaml --backend slurm --detach",
                             "slurm-rl launch configs/qwen3-8b-gsm8k.yaml --check   # validate, submit nothing"))
@click.argument("config", type=click.Path(dir_okay=False))
@click.option("--backend", type=click.Choice(["local", "slurm"]), help="Override the config's backend.")
@click.option("--run-dir", help="Directory for this run (default: <runs_dir>/<name>).")
@click.option("--name", help="Run name (default: the config's name, else the config file's stem).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a config value, e.g. --set algorithm.steps=50 (repeatable).")
@click.option("--detach", is_flag=True, help="Start the run and return; follow it with `slurm-rl status --watch`.")
@click.option("--quiet", is_flag=True, help="No live view; print one line per 10 steps instead.")
@click.option("--check", is_flag=True, help="Validate the config, data, reward and sbatch options (the model "
              "dir too when it is here), then exit 0 (ok) or 2 (bad input) without starting anything.")
def launch(config: str, backend: str | None, run_dir: str | None, name: str | None, overrides: tuple[str, ...],
           detach: bool, quiet: bool, check: bool) -> None:
    """Start a run from CONFIG (YAML): controller, trainer, rollouts and spares.

    In a terminal it shows the live status view until the run ends (Ctrl-C stops the run);
    elsewhere, or with --quiet, one line per 10 steps.
    """
    from slurm_rl import launcher
    from slurm_rl.config import load_config

    cfg = load_config(config, overrides, backend=backend)
    if check:
        _quiet_hf()
        notes = launcher.check(cfg)
        click.echo(f"{config}: ok, nothing submitted")
        for note in notes:
            click.echo(f"  {note}")
        return
    run = launcher.resolve_run_dir(cfg, config, name=name, run_dir=run_dir)
    launcher.preflight(cfg)
    err = _console(stderr=True)
    _quiet_hf()
    with err.status(f"preparing {run.path} (model, problems, keys)"):
        launcher.prepare(cfg, run, config_source=str(Path(config).resolve()))
    proc = launcher.start_controller(run)
    err.print(f"run [bold]{run.name}[/] started: {run.path}  (backend {cfg.backend.value}, "
              f"recovery {cfg.recovery.policy.value}, controller pid {proc.pid})", soft_wrap=True)
    if detach:
        err.print(f"follow it:  slurm-rl status {run.path} --watch\nstop it:    slurm-rl stop {run.path}",
                  soft_wrap=True)
        return
    sys.exit(_attach(run, quiet=quiet))



def _attach(run: Any, *, quiet: bool) -> int:
    """Follow a run until it ends; Ctrl-C stops it. Returns the exit code."""
    from slurm_rl import launcher
    from slurm_rl.report import read_status, report_dict, status_dict

    err = _console(stderr=True)
    interactive = err.is_terminal and not quiet
    addr = run.read_controller()
    _on_sigterm()
    try:
        if interactive:
            from rich.live import Live

            ls = _LiveStatus(run, err)
            with Live(ls.view(read_status(run, n_events=ls.n_events)), console=err, refresh_per_second=8,
                      transient=False) as live:
                while launcher.controller_alive(run):
                    time.sleep(0.5)
                    live.update(ls.view(read_status(run, n_events=ls.n_events)))
                live.update(ls.view(status_dict(run, live=False, n_events=ls.n_events)))
        else:
            last = -1
            while launcher.controller_alive(run):
                time.sleep(1.0)
                st = status_dict(run, live=True, n_events=0)
                # a line per 10 steps, and the last one
                if st["step"] != last and (st["step"] // 10 != last // 10 or st["step"] == st.get("steps_total")):
                    roles = " ".join(f"{r['slot']}={r['state']}" for r in st["roles"] if r["state"] != "STOPPED")
                    err.print(f"step {st['step']}/{st.get('steps_total')} reward {_f(st.get('reward'))} "
                              f"ETTR {_f(st.get('ettr'))} roles {roles}", soft_wrap=True, markup=False)
                    last = st["step"]
    except KeyboardInterrupt:
        err.print("interrupted: stopping the run (Ctrl-C again to leave it running)")
        try:
            launcher.ask(run, P.StopRequest(reason="interrupted (Ctrl-C in slurm-rl)"))
            while launcher.controller_alive(run):
                time.sleep(0.2)
        except (KeyboardInterrupt, SlurmRLError):
            pass
        return INTERRUPTED
    launcher.wait_controller_exit(run, addr)
    if launcher.run_state(run) in launcher.TERMINAL_STATES:
        launcher.wait_run_gone(run)       # nothing of an ended run is left running (a suspended one keeps its roles)
    rep = report_dict(run)
    _print_summary(rep)
    if rep["state"] not in launcher.TERMINAL_STATES:
        err.print(f"the controller exited without ending the run; see {run.logs / 'controller.log'}, then "
                  f"`slurm-rl resume {run.path}`", soft_wrap=True, markup=False)
    fatal = rep.get("fatal")
    if fatal and rep["state"] == "failed":
        # a role could not run (a broken model dir, vLLM missing): its message and hint, and the
        # input/environment exit code, as if launch had found it itself
        err.print(f"error: {fatal['slot']} cannot run: {fatal['message']}", soft_wrap=True, markup=False)
        return fatal_exit_code(fatal["kind"])
    return 0 if rep["state"] == "finished" else 1


def _f(v: Any) -> str:
    return "-" if v is None else f"{v:.3f}"


def _print_summary(rep: dict[str, Any]) -> None:
    out = _console()
    t = rep["trajectories"]
    r = rep["reward"]
    reason = f" ({rep['end_reason']})" if rep.get("end_reason") else ""
    lines = [f"[bold]{rep['run']}[/]: {rep['state']}{reason}",
             (f"  steps {rep['steps']}  wall {rep['wall_s']:.1f}s (+{rep['startup_s']:.1f}s start-up)  "
              f"ETTR {rep['ettr']:.1%}"),
             f"  reward first10 {_f(r['first'])} -> last10 {_f(r['last'])}",
             (f"  trajectories generated {t['generated']} = consumed {t['consumed']} + stale {t['dropped_stale']} "
              f"+ rolled back {t['dropped_rollback']} + queued {t['queued']};  lost {t['lost']}")]
    rs = rep["restarts"]
    lines.append(f"  faults {len(rep['faults'])}  restarts trainer {rs['trainer']} rollout {rs['rollout']} "
                 f"spare {rs['spare']} full {rs['full']}")
    for line in lines:
        out.print(line, soft_wrap=True)


@cli.command(short_help="Inject a fault into one role of a live run.",
             epilog=_example("slurm-rl inject runs/demo rollout/1 --fault crash",
                             "slurm-rl inject runs/demo trainer/0 --fault exit:3",
                             "slurm-rl inject runs/demo rollout/0 --fault node-down   "
                             "# local cluster or operator rights",
                             "slurm-rl inject runs/fsdp trainer/0 --fault node-down --rank 1   # a trainer rank's node"))
@RUN_DIR
@click.argument("target", metavar="ROLE/INDEX", shell_complete=_complete_target)
@click.option("--fault", required=True, metavar="KIND", shell_complete=_complete_fault,
              help="crash (SIGKILL), hang (SIGSTOP), exit:N (exit with code N), node-down, drain.")
@click.option("--rank", default=0, show_default=True, type=click.IntRange(min=0),
              help="Which rank of a multi-rank trainer: its process (crash, hang) or its node (node-down, drain).")
def inject(run_dir: str, target: str, fault: str, rank: int) -> None:
    """Inject a fault into one role of a live run (for tests, demos and benchmarks).

    node-down and drain act on the role's node (with --rank, that rank's node). On a production
    Slurm cluster they need operator rights (scontrol update nodename=... state=down|drain); on
    the local test cluster node-down kills the node's namespace.
    """
    from slurm_rl import launcher
    from slurm_rl.report import open_store
    from slurm_rl.rundir import require_run

    run = require_run(run_dir)
    _check_target(target)
    name, code = _parse_fault(fault)
    conn = open_store(run)
    try:
        slots = [r[0] for r in conn.execute("SELECT slot FROM roles ORDER BY slot")]
    finally:
        conn.close()
    if slots and target not in slots:
        raise BadInput(f"run {run.name} has no role {target}", hint=f"its roles: {', '.join(slots)}")
    if not launcher.controller_alive(run):
        state = launcher.run_state(run)
        if state in launcher.TERMINAL_STATES:
            raise BadInput(f"run {run.name} has ended ({state}); there is nothing to inject into")
        raise EnvironmentProblem(f"the controller of {run.name} is not running",
                                 hint=f"`slurm-rl resume {run.path}` restarts it")
    reply = launcher.ask(run, P.InjectRequest(slot=target, fault=name, exit_code=code, rank=rank))
    if not reply.ok:
        raise BadInput(reply.error)
    info = json.loads(reply.payload or b"{}")
    click.echo(f"injected {info.get('fault')} into {info.get('slot')} "
               f"(job {info.get('job_id')}, node {info.get('node')})")


@cli.command(short_help="Stop a run and cancel all its jobs.",
             epilog=_example("slurm-rl stop runs/demo", "slurm-rl stop runs/demo --reason 'node maintenance'"))
@RUN_DIR
@click.option("--reason", default="stopped by user", show_default=True)
@click.option("--timeout", default=60.0, show_default=True, type=click.FloatRange(min=0),
              help="Seconds to wait for every job to end.")
def stop(run_dir: str, reason: str, timeout: float) -> None:
    """Stop a run: roles finish their step (the trainer checkpoints), every job is cancelled.

    Without a live controller, cancels the run's jobs straight from the state store.
    """
    from slurm_rl import launcher
    from slurm_rl.rundir import require_run

    run = require_run(run_dir)
    if launcher.controller_alive(run):
        addr = run.read_controller()
        launcher.ask(run, P.StopRequest(reason=reason))
        deadline = time.monotonic() + timeout
        with _console(stderr=True).status("stopping"):
            while launcher.controller_alive(run) and time.monotonic() < deadline:
                time.sleep(0.2)
            if launcher.controller_alive(run):
                raise EnvironmentProblem(f"the run did not stop within {timeout:.0f}s",
                                         hint="try again with a larger --timeout")
            # it cleared its address first (its last writes done): its process must end too, and
            # whatever of the run's jobs its final cancel left
            launcher.wait_controller_exit(run, addr, timeout_s=max(launcher.GONE_WAIT_S, deadline - time.monotonic()),
                                          kill=True)
        launcher.wait_run_gone(run)
    elif launcher.run_state(run) in launcher.TERMINAL_STATES:
        click.echo(f"{run.name}: already {launcher.run_state(run)}")
        return
    else:
        launcher.cancel_all_jobs(run, reason)
    click.echo(f"{run.name}: {launcher.run_state(run)}")


@cli.command(short_help="Restart a run's controller, keep its jobs.",
             epilog=_example("slurm-rl resume runs/demo --detach"))
@RUN_DIR
@click.option("--detach", is_flag=True, help="Return once the controller is up.")
@click.option("--quiet", is_flag=True, help="No live view.")
def resume(run_dir: str, detach: bool, quiet: bool) -> None:
    """Restart a run's controller from its state store and re-attach to the live role jobs
    (they are not restarted; they reconnect on their own)."""
    from slurm_rl import launcher
    from slurm_rl.controller.lock import check_free
    from slurm_rl.rundir import require_run

    run = require_run(run_dir)
    check_free(run)                       # a live controller holds the run's lock, however slow it is to answer
    if launcher.controller_alive(run):
        raise RunInUse(f"the controller of run {run.path} is still running", hint=f"`slurm-rl status {run.path}`")
    state = launcher.run_state(run)
    if state in launcher.TERMINAL_STATES:
        raise BadInput(f"run {run.name} has ended ({state}); nothing to resume",
                       hint="start a new run with `slurm-rl launch`")
    proc = launcher.start_controller(run, resume=True)
    _console(stderr=True).print(f"controller of {run.name} resumed (pid {proc.pid})")
    if not detach:
        sys.exit(_attach(run, quiet=quiet))

