"""The `slurm-rl` command line.

Exit codes: 0 success, 1 the run failed (or was stopped before it finished), 2 bad input
(config, arguments, files), 3 the environment cannot do it (Slurm missing, controller
unreachable), 130 interrupted.
"""

from __future__ import annotations

import json
import signal
import sys
import time
from pathlib import Path
from typing import Any

import click
from rich.console import Console

from slurm_rl import __version__
from slurm_rl import protocol as P
from slurm_rl.errors import BadInput, EnvironmentProblem, SlurmRLError

EPILOG_EXIT = "Exit codes: 0 ok, 1 run failed/stopped, 2 bad input, 3 environment problem, 130 interrupted."


def _console(stderr: bool = False) -> Console:
    return Console(stderr=stderr, highlight=False, soft_wrap=False)


class UserError(click.ClickException):
    """A SlurmRLError shown as one clear message with its own exit code (no traceback)."""

    def __init__(self, err: SlurmRLError):
        super().__init__(str(err))
        self.exit_code = err.exit_code

    def show(self, file: Any = None) -> None:
        click.echo(f"error: {self.format_message()}", err=True)


class _Group(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except SlurmRLError as e:
            raise UserError(e) from None


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
             epilog=EPILOG_EXIT)
@click.version_option(__version__, prog_name="slurm-rl")
def cli() -> None:
    """Fault-tolerant RL post-training on Slurm: recover only the role that failed.

    \b
    Typical session:
      slurm-rl launch configs/demo.yaml            # local processes, the embedded default
      slurm-rl launch configs/demo.yaml --backend slurm --detach
      slurm-rl status runs/demo --watch            # live view (another terminal/host is fine)
      slurm-rl inject runs/demo rollout/1 --fault crash
      slurm-rl report runs/demo --plot runs/demo/plots
    """


# ----------------------------------------------------------------------------- launch
@cli.command(epilog="Example:\n\n\b\n  slurm-rl launch configs/demo.yaml --set rollout.replicas=4 --set recovery.policy=full-restart")
@click.argument("config", type=click.Path(dir_okay=False))
@click.option("--backend", type=click.Choice(["local", "slurm"]), help="Override the config's backend.")
@click.option("--run-dir", help="Directory for this run (default: <runs_dir>/<name>).")
@click.option("--name", help="Run name (default: the config's name, else the config file's stem).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a config value, e.g. --set algorithm.steps=50 (repeatable).")
@click.option("--detach", is_flag=True, help="Start the run and return; follow it with `slurm-rl status --watch`.")
@click.option("--quiet", is_flag=True, help="No live view; print one line per 10 steps instead.")
def launch(config: str, backend: str | None, run_dir: str | None, name: str | None, overrides: tuple[str, ...],
           detach: bool, quiet: bool) -> None:
    """Start a run from CONFIG (YAML): controller, trainer, rollouts and spares."""
    from slurm_rl import launcher
    from slurm_rl.config import load_config

    cfg = load_config(config, overrides, backend=backend)
    run = launcher.resolve_run_dir(cfg, config, name=name, run_dir=run_dir)
    launcher.preflight(cfg)
    err = _console(stderr=True)
    with err.status(f"preparing {run.path} (model, problems, keys)"):
        launcher.prepare(cfg, run, config_source=str(Path(config).resolve()))
    proc = launcher.start_controller(run)
    err.print(f"run [bold]{run.name}[/] started: {run.path}  (backend {cfg.backend.value}, "
              f"recovery {cfg.recovery.policy.value}, controller pid {proc.pid})")
    if detach:
        err.print(f"follow it:  slurm-rl status {run.path} --watch\nstop it:    slurm-rl stop {run.path}")
        return
    sys.exit(_attach(run, quiet=quiet))


def _attach(run: Any, *, quiet: bool) -> int:
    """Follow a run until it ends; Ctrl-C stops it. Returns the exit code."""
    from slurm_rl import launcher
    from slurm_rl.report import report_dict, status_dict

    err = _console(stderr=True)
    interactive = err.is_terminal and not quiet

    def on_term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt   # `timeout`, scancel of a batch launch: stop the run like Ctrl-C

    signal.signal(signal.SIGTERM, on_term)
    try:
        if interactive:
            from rich.live import Live

            from slurm_rl.ui.status import render_status

            with Live(render_status(status_dict(run, live=True)), console=err, refresh_per_second=4,
                      transient=False) as live:
                while launcher.controller_alive(run):
                    time.sleep(0.5)
                    live.update(render_status(status_dict(run, live=True)))
                live.update(render_status(status_dict(run, live=False)))
        else:
            last = -1
            while launcher.controller_alive(run):
                time.sleep(1.0)
                st = status_dict(run, live=True)
                if st["step"] // 10 != last // 10 or st["step"] == st.get("steps_total"):
                    if st["step"] != last:
                        err.print(f"step {st['step']}/{st.get('steps_total')} reward {_f(st.get('reward'))} "
                                  f"ETTR {_f(st.get('ettr'))} roles "
                                  + " ".join(f"{r['slot']}={r['state']}" for r in st["roles"]
                                             if r["state"] != "STOPPED"))
                        last = st["step"]
    except KeyboardInterrupt:
        err.print("interrupted: stopping the run (Ctrl-C again to leave it running)")
        try:
            launcher.ask(run, P.StopRequest(reason="interrupted (Ctrl-C in slurm-rl launch)"))
            while launcher.controller_alive(run):
                time.sleep(0.2)
        except (KeyboardInterrupt, SlurmRLError):
            pass
        return 130
    rep = report_dict(run)
    _print_summary(rep)
    return 0 if rep["state"] == "finished" else 1


def _f(v: Any) -> str:
    return "-" if v is None else f"{v:.3f}"


def _print_summary(rep: dict[str, Any]) -> None:
    out = _console()
    t = rep["trajectories"]
    r = rep["reward"]
    out.print(f"[bold]{rep['run']}[/]: {rep['state']}"
              + (f" ({rep['end_reason']})" if rep.get("end_reason") else ""))
    out.print(f"  steps {rep['steps']}  wall {rep['wall_s']:.1f}s (+{rep['startup_s']:.1f}s start-up)  "
              f"ETTR {rep['ettr']:.1%}")
    out.print(f"  reward first10 {_f(r['first'])} -> last10 {_f(r['last'])}")
    out.print(f"  trajectories generated {t['generated']} = consumed {t['consumed']} + stale {t['dropped_stale']} "
              f"+ rolled back {t['dropped_rollback']} + queued {t['queued']};  lost {t['lost']}")
    rs = rep["restarts"]
    out.print(f"  faults {len(rep['faults'])}  restarts trainer {rs['trainer']} rollout {rs['rollout']} "
              f"spare {rs['spare']} full {rs['full']}")


# ----------------------------------------------------------------------------- status / events
@cli.command(epilog="Example:\n\n\b\n  slurm-rl status runs/demo --watch")
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--watch", is_flag=True, help="Refresh until the run ends (Ctrl-C leaves).")
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON (schema: docs/cli.md).")
@click.option("--events", "n_events", default=10, show_default=True, help="How many latest events to show.")
def status(run_dir: str, watch: bool, as_json: bool, n_events: int) -> None:
    """Show a run: step, reward, ETTR, every role's state, phase and heartbeat, latest events.

    Reads the run directory's state store, so it works from any host that sees the directory,
    also after the controller is gone.
    """
    from slurm_rl import launcher
    from slurm_rl.report import status_dict
    from slurm_rl.rundir import require_run
    from slurm_rl.ui.status import render_status

    run = require_run(run_dir)
    if as_json:
        click.echo(json.dumps(status_dict(run, live=launcher.controller_alive(run), n_events=n_events), indent=2))
        return
    out = _console()
    if not watch:
        out.print(render_status(status_dict(run, live=launcher.controller_alive(run), n_events=n_events)))
        return
    from rich.live import Live

    try:
        with Live(console=out, refresh_per_second=4) as live:
            while True:
                alive = launcher.controller_alive(run)
                live.update(render_status(status_dict(run, live=alive, n_events=n_events)))
                if not alive and launcher.run_state(run) in launcher.TERMINAL_STATES:
                    break
                time.sleep(0.5)
    except KeyboardInterrupt:
        pass


@cli.command(epilog="Example:\n\n\b\n  slurm-rl events runs/demo --follow\n  slurm-rl events runs/demo --json --kind dead")
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--follow", "-f", is_flag=True, help="Keep printing new events until the run ends.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.option("--kind", "kinds", multiple=True, help="Only events of this kind (repeatable).")
def events(run_dir: str, follow: bool, as_json: bool, kinds: tuple[str, ...]) -> None:
    """The fault and recovery timeline of a run."""
    from slurm_rl import launcher
    from slurm_rl.report import open_store
    from slurm_rl.rundir import require_run
    from slurm_rl.store import read_events

    run = require_run(run_dir)
    last = 0
    t0: float | None = None
    try:
        while True:
            conn = open_store(run)
            try:
                evs = read_events(conn, after_id=last)
                if t0 is None:
                    row = conn.execute("SELECT value FROM meta WHERE key='started'").fetchone()
                    t0 = json.loads(row[0]) if row else None
            finally:
                conn.close()
            for e in evs:
                last = e.id
                if kinds and e.kind not in kinds:
                    continue
                if as_json:
                    click.echo(json.dumps({"id": e.id, "t": e.t, "kind": e.kind, "slot": e.slot, "job_id": e.job_id,
                                           "node": e.node, "msg": e.msg, "data": e.data}))
                else:
                    rel = f"+{e.t - t0:8.2f}s" if t0 else time.strftime("%H:%M:%S", time.localtime(e.t))
                    click.echo(f"{rel}  {e.kind:<18} {e.msg}")
            if not follow or (not launcher.controller_alive(run)
                              and launcher.run_state(run) in launcher.TERMINAL_STATES):
                break
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass


# ----------------------------------------------------------------------------- inject / stop / resume
FAULTS = ("crash", "hang", "exit:N", "node-down", "drain")


@cli.command(epilog="Examples:\n\n\b\n  slurm-rl inject runs/demo rollout/1 --fault crash\n"
                    "  slurm-rl inject runs/demo trainer/0 --fault exit:3\n"
                    "  slurm-rl inject runs/demo rollout/0 --fault node-down   # local cluster or operator rights")
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.argument("target", metavar="ROLE/INDEX")
@click.option("--fault", required=True, metavar="KIND",
              help="crash (SIGKILL), hang (SIGSTOP), exit:N (exit with code N), node-down, drain.")
def inject(run_dir: str, target: str, fault: str) -> None:
    """Inject a fault into one role of a live run (for tests, demos and benchmarks).

    node-down and drain act on the role's node. On a production Slurm cluster they need
    operator rights (scontrol update nodename=... state=down|drain); on the local test
    cluster node-down kills the node's namespace.
    """
    from slurm_rl import launcher
    from slurm_rl.rundir import require_run

    run = require_run(run_dir)
    kind, _, idx = target.partition("/")
    if kind not in ("trainer", "rollout", "spare") or not idx.isdigit():
        raise BadInput(f"target {target!r} is not ROLE/INDEX", hint="e.g. rollout/1 or trainer/0 (see `slurm-rl status`)")
    code = 1
    name = fault
    if fault.startswith("exit"):
        _, _, n = fault.partition(":")
        if not n.lstrip("-").isdigit():
            raise BadInput(f"--fault {fault!r}: write exit:N with an integer N, e.g. exit:3")
        code, name = int(n), "exit"
    elif fault not in FAULTS:
        raise BadInput(f"--fault {fault!r} is not a fault kind", hint=f"use one of: {', '.join(FAULTS)}")
    if not launcher.controller_alive(run):
        raise EnvironmentProblem(f"the controller of {run.name} is not running", hint=f"`slurm-rl resume {run.path}`")
    reply = launcher.ask(run, P.InjectRequest(slot=target, fault=name, exit_code=code))
    if not reply.ok:
        raise BadInput(reply.error)
    info = json.loads(reply.payload or b"{}")
    click.echo(f"injected {info.get('fault')} into {info.get('slot')} (job {info.get('job_id')}, node {info.get('node')})")


@cli.command(epilog="Example:\n\n\b\n  slurm-rl stop runs/demo")
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--reason", default="stopped by user", show_default=True)
@click.option("--timeout", default=60.0, show_default=True, help="Seconds to wait for every job to end.")
def stop(run_dir: str, reason: str, timeout: float) -> None:
    """Stop a run: roles finish their step (the trainer checkpoints), every job is cancelled.

    Without a live controller, cancels the run's jobs straight from the state store.
    """
    from slurm_rl import launcher
    from slurm_rl.rundir import require_run

    run = require_run(run_dir)
    if launcher.controller_alive(run):
        launcher.ask(run, P.StopRequest(reason=reason))
        deadline = time.time() + timeout
        with _console(stderr=True).status("stopping"):
            while launcher.controller_alive(run) and time.time() < deadline:
                time.sleep(0.2)
        if launcher.controller_alive(run):
            raise EnvironmentProblem(f"the run did not stop within {timeout:.0f}s", hint="try again with a larger --timeout")
    else:
        launcher.cancel_all_jobs(run, reason)
    click.echo(f"{run.name}: {launcher.run_state(run)}")


@cli.command(epilog="Example:\n\n\b\n  slurm-rl resume runs/demo --detach")
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--detach", is_flag=True, help="Return once the controller is up.")
@click.option("--quiet", is_flag=True, help="No live view.")
def resume(run_dir: str, detach: bool, quiet: bool) -> None:
    """Restart a run's controller from its state store and re-attach to the live role jobs
    (they are not restarted; they reconnect on their own)."""
    from slurm_rl import launcher
    from slurm_rl.rundir import require_run

    run = require_run(run_dir)
    if launcher.controller_alive(run):
        raise BadInput(f"the controller of {run.name} is still running", hint=f"`slurm-rl status {run.path}`")
    state = launcher.run_state(run)
    if state in launcher.TERMINAL_STATES:
        raise BadInput(f"run {run.name} has ended ({state}); nothing to resume",
                       hint="start a new run with `slurm-rl launch`")
    proc = launcher.start_controller(run, resume=True)
    _console(stderr=True).print(f"controller of {run.name} resumed (pid {proc.pid})")
    if not detach:
        sys.exit(_attach(run, quiet=quiet))


# ----------------------------------------------------------------------------- report / ls
@cli.command(epilog="Example:\n\n\b\n  slurm-rl report runs/demo --json | jq .ettr\n  slurm-rl report runs/demo --plot runs/demo/plots")
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable report (schema: docs/cli.md).")
@click.option("--plot", "plot_dir", type=click.Path(file_okay=False), help="Write reward.png and goodput.png here.")
def report(run_dir: str, as_json: bool, plot_dir: str | None) -> None:
    """ETTR, reward, trajectory accounting, faults with MTTR and badput, restarts per role."""
    from slurm_rl.report import report_dict, write_plots
    from slurm_rl.rundir import require_run

    run = require_run(run_dir)
    rep = report_dict(run)
    if plot_dir:
        for p in write_plots(run, Path(plot_dir)):
            click.echo(f"wrote {p}", err=True)
    if as_json:
        click.echo(json.dumps(rep, indent=2))
        return
    from slurm_rl.ui.report import render_report

    _console().print(render_report(rep))


@cli.command(name="ls", epilog="Example:\n\n\b\n  slurm-rl ls runs")
@click.argument("runs_dir", default="runs", type=click.Path(file_okay=False))
@click.option("--json", "as_json", is_flag=True)
def ls_cmd(runs_dir: str, as_json: bool) -> None:
    """List the runs in RUNS_DIR with their state and key figures."""
    from slurm_rl.ui.report import list_runs, render_runs

    rows = list_runs(Path(runs_dir))
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    _console().print(render_runs(rows))


# ----------------------------------------------------------------------------- entry point
def main(argv: list[str] | None = None) -> None:
    """Entry point: user mistakes become one clear line and an exit code, never a traceback."""
    try:
        cli.main(args=argv, prog_name="slurm-rl")
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
