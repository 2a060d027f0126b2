"""The `slurm-rl` command line (reference: docs/cli.md).

Exit codes: 0 success, 1 the run failed (or was stopped before it finished), 2 bad input
(config, arguments, files), 3 the environment cannot do it (Slurm missing, controller
unreachable), 130 interrupted. Viewers (`status --watch`, `events --follow`) exit 0 on Ctrl-C:
leaving them is how they are used.

Shell completion (bash; zsh and fish alike with zsh_source / fish_source):
    eval "$(_SLURM_RL_COMPLETE=bash_source slurm-rl)"
"""

from __future__ import annotations

import json
import re
import signal
import sqlite3
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import click
from click.shell_completion import CompletionItem
from rich.console import Console

from slurm_rl import __version__
from slurm_rl import protocol as P
from slurm_rl.errors import BadInput, EnvironmentProblem, SlurmRLError

EPILOG_EXIT = "Exit codes: 0 ok, 1 run failed/stopped, 2 bad input, 3 environment problem, 130 interrupted."
INTERRUPTED = 130
FAULTS = ("crash", "hang", "exit:N", "node-down", "drain")
ROLE_KINDS = ("trainer", "rollout", "spare")


def _console(stderr: bool = False) -> Console:
    return Console(stderr=stderr, highlight=False)


class UserError(click.ClickException):
    """A SlurmRLError shown as one clear message with its own exit code (no traceback)."""

    def __init__(self, err: SlurmRLError):
        super().__init__(str(err))
        self.exit_code = err.exit_code

    def show(self, file: Any = None) -> None:
        click.echo(f"error: {self.format_message()}", err=True)


class _Group(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(self.commands)          # the order they are defined in: the order of a session

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except SlurmRLError as e:
            raise UserError(e) from None
        except PermissionError as e:
            # run directories are owner-only: another user's run is not readable, by design
            raise UserError(EnvironmentProblem(
                f"permission denied: {e.filename or e}", hint="run directories are readable by their owner only; "
                "run this as the user who launched the run")) from None
        except sqlite3.Error as e:
            # a store we cannot read (another user's run, a damaged file, a full disk under the writer)
            raise UserError(EnvironmentProblem(f"cannot read the run's state store: {e}",
                                               hint="check the run directory's permissions and disk")) from None


def _example(*lines: str) -> str:
    """An epilog with examples; \b keeps click from re-wrapping them."""
    return "Example" + ("s" if len(lines) > 1 else "") + ":\n\n\b\n" + "\n".join(f"  {x}" for x in lines)


# ----------------------------------------------------------------------------- completion
def _complete_run_dir(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    """Run directories under ./runs (and its sweep folders) first, then ordinary directory completion."""
    found: list[CompletionItem] = []
    root = Path(ctx.params.get("runs_dir") or "runs")
    try:
        for d in sorted(root.iterdir()) if root.is_dir() else []:
            cands = [d] + ([s for s in sorted(d.iterdir()) if s.is_dir()] if (d / "sweep.json").exists() else [])
            for c in cands:
                if (c / "run.json").exists() and str(c).startswith(incomplete):
                    found.append(CompletionItem(str(c)))
    except OSError:
        pass
    return found + [CompletionItem(incomplete, type="dir")]


def _complete_target(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    """The role slots of the run given before (trainer/0, rollout/1, ...)."""
    from slurm_rl.report import open_store
    from slurm_rl.rundir import RunDir

    run_dir = ctx.params.get("run_dir")
    slots: list[str] = []
    if run_dir:
        try:
            conn = open_store(RunDir(run_dir))
            try:
                slots = [r[0] for r in conn.execute("SELECT slot FROM roles ORDER BY slot")]
            finally:
                conn.close()
        except (sqlite3.Error, OSError):
            pass
    slots = slots or ["trainer/0", "rollout/0", "rollout/1", "spare/0"]
    return [CompletionItem(s) for s in slots if s.startswith(incomplete)]


def _complete_fault(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    return [CompletionItem(f) for f in ("crash", "hang", "exit:1", "node-down", "drain") if f.startswith(incomplete)]


def _complete_kind(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    from slurm_rl.ui.theme import KNOWN_EVENT_KINDS

    return [CompletionItem(k) for k in sorted(KNOWN_EVENT_KINDS) if k.startswith(incomplete)]


RUN_DIR = click.argument("run_dir", type=click.Path(file_okay=False), shell_complete=_complete_run_dir)


# ----------------------------------------------------------------------------- the group
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
      slurm-rl sweep configs/sweep-example.yaml    # one run per point of a grid

    \b
    Shell completion (bash; zsh_source / fish_source likewise):
      eval "$(_SLURM_RL_COMPLETE=bash_source slurm-rl)"
    """


def _quiet_hf() -> None:
    """Building the tiny model prints a Hugging Face progress bar per shard; it is noise here."""
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except ImportError:
        pass


def _on_sigterm() -> None:
    """`timeout`, or scancel of a batch job running the CLI: stop like Ctrl-C."""

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)


# ----------------------------------------------------------------------------- launch
@cli.command(short_help="Start a run (live view until it ends).",
             epilog=_example("slurm-rl launch configs/demo.yaml --set rollout.replicas=4 "
                             "--set recovery.policy=full-restart",
                             "slurm-rl launch configs/demo.yaml --backend slurm --detach"))
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
    """Start a run from CONFIG (YAML): controller, trainer, rollouts and spares.

    In a terminal it shows the live status view until the run ends (Ctrl-C stops the run);
    elsewhere, or with --quiet, one line per 10 steps.
    """
    from slurm_rl import launcher
    from slurm_rl.config import load_config

    cfg = load_config(config, overrides, backend=backend)
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


class _LiveStatus:
    """The live status view, with spinners that keep turning across refreshes."""

    def __init__(self, run: Any, console: Console, n_events: int = 12):
        self.run = run
        self.n_events = n_events
        self.spinners: dict[str, Any] = {}
        self.console = console

    @property
    def height(self) -> int | None:
        return self.console.size.height if self.console.is_terminal else None

    def view(self, st: dict[str, Any]) -> Any:
        from slurm_rl.ui.status import StatusView

        return StatusView(st, spinner_cache=self.spinners, fit_height=self.height)


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
    rep = report_dict(run)
    _print_summary(rep)
    if rep["state"] not in launcher.TERMINAL_STATES:
        err.print(f"the controller exited without ending the run; see {run.logs / 'controller.log'}, then "
                  f"`slurm-rl resume {run.path}`", soft_wrap=True, markup=False)
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


# ----------------------------------------------------------------------------- status / events
@cli.command(short_help="Live view of a run: roles, phases, events.",
             epilog=_example("slurm-rl status runs/demo", "slurm-rl status runs/demo --watch",
                             "slurm-rl status runs/demo --json | jq '.roles[] | {slot, state}'"))
@RUN_DIR
@click.option("--watch", "-w", is_flag=True, help="Refresh until the run ends (Ctrl-C leaves; the run goes on).")
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON (docs/schemas/status.json).")
@click.option("--events", "n_events", default=8, show_default=True, type=click.IntRange(0, 1000),
              help="How many latest events to show.")
def status(run_dir: str, watch: bool, as_json: bool, n_events: int) -> None:
    """Show a run: step, reward, ETTR, weights, every role's state, phase and heartbeat, what is
    starting (queue wait, model load, checkpoint restore), the latest events.

    Asks the live controller when it is reachable (from any host, over the control plane), else
    reads the run directory's state store, so it also works after the controller is gone.
    """
    from slurm_rl import launcher
    from slurm_rl.report import read_status
    from slurm_rl.rundir import require_run

    run = require_run(run_dir)
    if as_json:
        if watch:
            raise BadInput("--watch and --json do not go together", hint="poll `slurm-rl status --json` instead")
        click.echo(json.dumps(read_status(run, n_events=n_events), indent=2))
        return
    out = _console()
    ls = _LiveStatus(run, out, n_events)
    if not watch:
        from slurm_rl.ui.status import StatusView

        out.print(StatusView(read_status(run, n_events=n_events), spinners=False))
        return
    from rich.live import Live

    try:
        with Live(console=out, refresh_per_second=8) as live:
            while True:
                st = read_status(run, n_events=n_events)
                live.update(ls.view(st))
                if not st["live"] and launcher.run_state(run) in launcher.TERMINAL_STATES:
                    break
                time.sleep(0.5)
    except KeyboardInterrupt:
        pass


_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhd])")


def _parse_since(text: str, now: float, t0: float | None) -> float:
    """--since: `10m` (ago), `+90s` (after the run started), `14:05[:30]` (today) or an ISO date-time."""
    s = text.strip()
    rel = s.startswith("+")
    body = s[1:] if rel else s
    if body and _DURATION.sub("", body) == "":
        secs = sum(float(n) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[u] for n, u in _DURATION.findall(body))
        if rel:
            if t0 is None:
                raise BadInput(f"--since {text}: the run has not started, so there is no start to count from")
            return t0 + secs
        return now - secs
    try:
        if re.fullmatch(r"\d{1,2}:\d{2}(:\d{2})?", s):
            parts = [int(x) for x in s.split(":")] + [0]
            d = datetime.fromtimestamp(now).replace(hour=parts[0], minute=parts[1], second=parts[2], microsecond=0)
            return d.timestamp()
        return datetime.fromisoformat(s).timestamp()
    except ValueError:
        raise BadInput(f"--since {text!r} is not a time",
                       hint="write 10m or 1h30m (ago), +90s (after the run started), 14:05, "
                            "or 2025-01-31T14:05") from None


@cli.command(short_help="The fault and recovery timeline of a run.",
             epilog=_example("slurm-rl events runs/demo", "slurm-rl events runs/demo --follow --since 5m",
                             "slurm-rl events runs/demo --kind dead --kind recovered --slot rollout/1",
                             "slurm-rl events runs/demo --json | jq -c 'select(.kind == \"dead\")'"))
@RUN_DIR
@click.option("--follow", "-f", is_flag=True, help="Keep printing new events until the run ends (Ctrl-C leaves).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line (docs/schemas/event.json).")
@click.option("--kind", "kinds", multiple=True, metavar="KIND", shell_complete=_complete_kind,
              help="Only events of this kind, e.g. dead, recovered, suspect (repeatable).")
@click.option("--slot", "slots", multiple=True, metavar="ROLE/INDEX", shell_complete=_complete_target,
              help="Only events of this role replica, e.g. rollout/1 (repeatable).")
@click.option("--since", metavar="WHEN", help="Only events from WHEN on: 10m (ago), +90s (after launch), 14:05, "
                                              "or an ISO date-time.")
@click.option("--absolute", is_flag=True, help="Wall-clock times instead of seconds since launch.")
def events(run_dir: str, follow: bool, as_json: bool, kinds: tuple[str, ...], slots: tuple[str, ...],
           since: str | None, absolute: bool) -> None:
    """The fault and recovery timeline of a run, coloured by what each event means:
    red failures, yellow warnings, green recoveries."""
    from slurm_rl import launcher
    from slurm_rl.report import open_store
    from slurm_rl.rundir import require_run
    from slurm_rl.store import read_events
    from slurm_rl.ui.events import event_json, event_line
    from slurm_rl.ui.theme import KNOWN_EVENT_KINDS

    run = require_run(run_dir)
    for s in slots:
        _check_target(s)
    conn = open_store(run)
    try:
        row = conn.execute("SELECT value FROM meta WHERE key='started'").fetchone()
        t0: float | None = json.loads(row[0]) if row else None
        in_store = {r[0] for r in conn.execute("SELECT DISTINCT kind FROM events")}
    finally:
        conn.close()
    for k in kinds:
        if k not in KNOWN_EVENT_KINDS and k not in in_store:
            import difflib

            known = sorted(set(KNOWN_EVENT_KINDS) | in_store)
            close = difflib.get_close_matches(k, known, n=1)
            raise BadInput(f"--kind {k!r} is not an event kind" + (f"; did you mean {close[0]!r}?" if close else ""),
                           hint=f"kinds: {', '.join(known)}")
    t_min = _parse_since(since, time.time(), t0) if since else None
    out = _console()
    last = 0
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
                if (kinds and e.kind not in kinds) or (slots and e.slot not in slots) or \
                        (t_min is not None and e.t < t_min):
                    continue
                if as_json:
                    click.echo(json.dumps(event_json(e, t0)))
                else:
                    out.print(event_line({"t": e.t, "kind": e.kind, "slot": e.slot, "msg": e.msg}, t0,
                                         absolute=absolute), soft_wrap=True)
            if not follow or (not launcher.controller_alive(run)
                              and launcher.run_state(run) in launcher.TERMINAL_STATES):
                break
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass


# ----------------------------------------------------------------------------- inject / stop / resume
def _check_target(target: str) -> tuple[str, int]:
    kind, _, idx = target.partition("/")
    if kind not in ROLE_KINDS or not (idx.isascii() and idx.isdigit()):
        raise BadInput(f"{target!r} is not ROLE/INDEX", hint="e.g. rollout/1 or trainer/0 (see `slurm-rl status`)")
    return kind, int(idx)


def _parse_fault(fault: str) -> tuple[str, int]:
    if fault.startswith("exit"):
        _, _, n = fault.partition(":")
        if not (n.isascii() and n.isdigit()) or not 0 <= int(n) <= 255:
            raise BadInput(f"--fault {fault!r}: write exit:N with an exit code N from 0 to 255, e.g. exit:3")
        return "exit", int(n)
    if fault not in FAULTS:
        import difflib

        close = difflib.get_close_matches(fault, FAULTS, n=1)
        raise BadInput(f"--fault {fault!r} is not a fault kind" + (f"; did you mean {close[0]!r}?" if close else ""),
                       hint=f"use one of: {', '.join(FAULTS)}")
    return fault, 1


@cli.command(short_help="Inject a fault into one role of a live run.",
             epilog=_example("slurm-rl inject runs/demo rollout/1 --fault crash",
                             "slurm-rl inject runs/demo trainer/0 --fault exit:3",
                             "slurm-rl inject runs/demo rollout/0 --fault node-down   "
                             "# local cluster or operator rights"))
@RUN_DIR
@click.argument("target", metavar="ROLE/INDEX", shell_complete=_complete_target)
@click.option("--fault", required=True, metavar="KIND", shell_complete=_complete_fault,
              help="crash (SIGKILL), hang (SIGSTOP), exit:N (exit with code N), node-down, drain.")
def inject(run_dir: str, target: str, fault: str) -> None:
    """Inject a fault into one role of a live run (for tests, demos and benchmarks).

    node-down and drain act on the role's node. On a production Slurm cluster they need
    operator rights (scontrol update nodename=... state=down|drain); on the local test
    cluster node-down kills the node's namespace.
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
    reply = launcher.ask(run, P.InjectRequest(slot=target, fault=name, exit_code=code))
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
        launcher.ask(run, P.StopRequest(reason=reason))
        deadline = time.time() + timeout
        with _console(stderr=True).status("stopping"):
            while launcher.controller_alive(run) and time.time() < deadline:
                time.sleep(0.2)
        if launcher.controller_alive(run):
            raise EnvironmentProblem(f"the run did not stop within {timeout:.0f}s",
                                     hint="try again with a larger --timeout")
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
@cli.command(short_help="ETTR, MTTR per fault, badput, plots.",
             epilog=_example("slurm-rl report runs/demo", "slurm-rl report runs/demo --json | jq .ettr",
                             "slurm-rl report runs/demo --plot runs/demo/plots"))
@RUN_DIR
@click.option("--json", "as_json", is_flag=True, help="Machine-readable report (docs/schemas/report.json).")
@click.option("--plot", "plot_dir", type=click.Path(file_okay=False),
              help="Write reward.png, goodput.png (and recovery.png when there were faults) here.")
def report(run_dir: str, as_json: bool, plot_dir: str | None) -> None:
    """ETTR, reward, trajectory accounting, faults with MTTR split into detect / schedule / load /
    weight sync, and the replay and idle time each fault cost (badput attribution)."""
    from slurm_rl.report import report_dict, write_plots
    from slurm_rl.rundir import require_run

    run = require_run(run_dir)
    rep = report_dict(run)
    if plot_dir:
        try:
            paths = write_plots(run, Path(plot_dir))
        except OSError as e:
            raise BadInput(f"cannot write plots to {plot_dir}: {e.strerror or e}") from None
        for p in paths:
            click.echo(f"wrote {p}", err=True)
    if as_json:
        click.echo(json.dumps(rep, indent=2))
        return
    from slurm_rl.ui.report import ReportView

    _console().print(ReportView(rep))


@cli.command(short_help="List runs with state and key figures.",
             name="ls", epilog=_example("slurm-rl ls", "slurm-rl ls /scratch/$USER/runs --json"))
@click.argument("runs_dir", default="runs", type=click.Path(file_okay=False), shell_complete=_complete_run_dir)
@click.option("--json", "as_json", is_flag=True, help="A JSON list (docs/schemas/ls.json).")
def ls_cmd(runs_dir: str, as_json: bool) -> None:
    """List the runs in RUNS_DIR (default: ./runs), sweeps included, with state and key figures."""
    from slurm_rl.ui.report import RunsView, list_runs

    root = Path(runs_dir)
    if not root.is_dir():
        raise BadInput(f"{runs_dir} is not a directory",
                       hint="pass the runs_dir of your config, e.g. `slurm-rl ls runs`")
    rows = list_runs(root)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    _console().print(RunsView(rows, root))


# ----------------------------------------------------------------------------- sweep
@cli.command(short_help="Run a grid/list of config variants.",
             epilog=_example("slurm-rl sweep configs/sweep-example.yaml",
                             "slurm-rl sweep configs/sweep-example.yaml --dry-run",
                             "slurm-rl sweep my-sweep.yaml --max-concurrent 4 --set algorithm.steps=50 --json > s.json",
                             "slurm-rl sweep my-sweep.yaml --resume          # after Ctrl-C: run what did not finish"))
@click.argument("sweep_file", metavar="SWEEP.yaml", type=click.Path(dir_okay=False))
@click.option("--max-concurrent", type=click.IntRange(min=1),
              help="Runs at the same time (default: the file's, else 1).")
@click.option("--runs-dir",
              help="Where the sweep's directory goes (default: the file's runs_dir, else the base config's).")
@click.option("--summary", "summary", type=click.Path(dir_okay=False),
              help="CSV summary path (default: <runs_dir>/<name>/summary.csv).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a config value in every run.")
@click.option("--backend", type=click.Choice(["local", "slurm"]), help="Override the backend of every run.")
@click.option("--dry-run", is_flag=True, help="Validate the file and list its runs; start nothing.")
@click.option("--resume", is_flag=True, help="Keep runs of this sweep that finished; run the others again "
                                              "(their old directories are kept as NAME.old-N).")
@click.option("--json", "as_json", is_flag=True, help="Print the summary (or with --dry-run the plan) as JSON "
                                                      "(docs/schemas/sweep.json).")
@click.option("--quiet", is_flag=True, help="No live table; one line per run start and end.")
def sweep(sweep_file: str, max_concurrent: int | None, runs_dir: str | None, summary: str | None,
          overrides: tuple[str, ...], backend: str | None, dry_run: bool, resume: bool, as_json: bool,
          quiet: bool) -> None:
    """Run one training run per point of a grid and/or list of config overrides (SWEEP.yaml,
    format in docs/cli.md), at most --max-concurrent at a time, each launched like
    `slurm-rl launch --detach`; follow them to the end, then print a summary table and write it
    as CSV. Ctrl-C stops the sweep's runs.

    Exit code 0 when every run finished, 1 when one failed, was stopped or could not start.
    """
    from slurm_rl.sweep import SweepRunner, load_sweep
    from slurm_rl.ui.sweep import PlanView, SweepView

    spec = load_sweep(sweep_file, runs_dir=runs_dir, max_concurrent=max_concurrent, summary=summary,
                      extra_sets=overrides, backend=backend)
    if dry_run:
        if as_json:
            click.echo(json.dumps(spec.plan(), indent=2))
        else:
            _console().print(PlanView(spec))
        return
    runner = SweepRunner(spec, resume=resume)
    err = _console(stderr=True)
    live_table = err.is_terminal and not quiet
    _quiet_hf()
    code = 0
    with _deferred_interrupt() as interrupted:
        if live_table:
            from rich.live import Live

            # transient: the summary printed below replaces the live table
            with Live(SweepView(runner), console=err, refresh_per_second=4, transient=True) as live:
                while not runner.done and not interrupted():
                    runner.tick()
                    live.update(SweepView(runner))
                    if not runner.done:
                        time.sleep(0.5)
        else:
            _follow_quiet(runner, err, interrupted)
        if interrupted():
            code = INTERRUPTED
            asked = runner.stop("sweep interrupted (Ctrl-C in slurm-rl sweep)")
            err.print(f"interrupted: stopping {len(asked)} running run(s) (Ctrl-C again to leave them running)")
            try:
                runner.wait_stopped(timeout_s=90)
            except KeyboardInterrupt:
                err.print("leaving them running: `slurm-rl ls` lists them, `slurm-rl stop RUN` stops one")
    path = runner.write_csv()
    if as_json:
        click.echo(json.dumps(runner.summary(), indent=2))
    else:
        from slurm_rl.ui.sweep import SummaryView

        _console().print(SummaryView(runner))
    err.print(f"summary written to {path}", soft_wrap=True)
    sys.exit(code or (0 if runner.ok else 1))


@contextmanager
def _deferred_interrupt() -> Iterator[Any]:
    """Ctrl-C (or SIGTERM) during a sweep only raises a flag, read between two steps of the loop, so
    a run half-way through its start is never left behind; a second one interrupts at once."""
    hits = [0]

    def handler(signum: int, frame: Any) -> None:
        hits[0] += 1
        if hits[0] > 1:
            raise KeyboardInterrupt

    old = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield lambda: hits[0] > 0
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)


def _follow_quiet(runner: Any, err: Console, interrupted: Any) -> None:
    """A sweep without a terminal: one line per run start and end."""
    seen: dict[str, str] = {}
    while not interrupted():
        runner.tick()
        for r in runner.runs:
            before = seen.get(r.point.name)
            if before != r.phase.value:
                seen[r.point.name] = r.phase.value
                if r.phase.value in ("queued",) and before is None:
                    continue
                extra = ""
                if r.report is not None:
                    extra = f"  steps {r.report['steps']}  ETTR {r.report['ettr']:.1%}"
                if r.error:
                    extra += f"  ({r.error})"
                err.print(f"{r.point.name}: {r.phase.value}{extra}", soft_wrap=True, markup=False)
        if runner.done:
            return
        time.sleep(0.5)


# ----------------------------------------------------------------------------- simulate
def _floats(ctx: click.Context, param: click.Parameter, value: str | None) -> list[float] | None:
    if value is None:
        return None
    try:
        return [float(x) for x in value.split(",") if x.strip()]
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a comma-separated list of numbers, e.g. 0,0.01,0.05") from None


def _kinds(ctx: click.Context, param: click.Parameter, value: str | None) -> dict[Any, float] | None:
    from slurm_rl.states import FaultKind

    if value is None:
        return None
    out: dict[Any, float] = {}
    for item in value.split(","):
        name, _, w = item.partition("=")
        try:
            out[FaultKind(name.strip())] = float(w or 1.0)
        except ValueError:
            raise click.BadParameter(f"{item!r}: write KIND=WEIGHT with KIND one of "
                                     f"{', '.join(k.value for k in FaultKind)}") from None
    return out


@cli.command(short_help="ETTR at cluster scale (discrete-event model).",
             epilog=_example("slurm-rl simulate                                  # 256 GPUs, 3 days, both policies",
                             "slurm-rl simulate --rates 0.01,0.05,0.1 --spares 4 --trials 10 --days 7",
                             "slurm-rl report runs/rb --json > rb.json; slurm-rl report runs/fr --json > fr.json",
                             "slurm-rl simulate --measured rb.json fr.json --bench-config runs/rb/config.yaml",
                             "slurm-rl simulate --json | jq '.table.rows[] | {label, policy, spares, ettr}'"))
@click.option("--rates", callback=_floats, metavar="R1,R2,...",
              help="Failures per node per day, one table row each (default 0,0.005,0.01,0.02,0.05,0.1,0.2).")
@click.option("--fraction-failing", type=click.FloatRange(0, 1, max_open=True), default=0.10, show_default=True,
              help="Add a row at the rate where this fraction of nodes fails during the run (0: none).")
@click.option("--kinds", callback=_kinds, metavar="KIND=W,...", help="Fault kind mix, e.g. node-down=0.6,crash=0.4.")
@click.option("--spares", type=click.IntRange(min=0), default=2, show_default=True,
              help="N in the 'with N spares' columns.")
@click.option("--trials", type=click.IntRange(min=1), default=5, show_default=True, help="Seeds per cell (mean ± std).")
@click.option("--seed", type=int, default=0, show_default=True, help="First seed.")
@click.option("--days", type=click.FloatRange(min=0, min_open=True), default=3.0, show_default=True,
              help="Wall time of each simulated run.")
@click.option("--gpus-per-node", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--trainer-nodes", type=click.IntRange(min=1), default=16, show_default=True)
@click.option("--rollouts", type=click.IntRange(min=1), default=16, show_default=True, help="Rollout replicas.")
@click.option("--rollout-nodes", type=click.IntRange(min=1), default=1, show_default=True,
              help="Nodes per rollout replica.")
@click.option("--standby", type=click.Choice(["spare-then-rollout", "spare-only", "none"]),
              default="spare-then-rollout", show_default=True, help="Who may take over a dead trainer.")
@click.option("--step-s", type=click.FloatRange(min=0, min_open=True), help="Trainer compute per step (s).")
@click.option("--checkpoint-every", type=click.IntRange(min=1), help="Steps between checkpoints.")
@click.option("--measured", nargs=2, type=click.Path(dir_okay=False), metavar="ROLE.json FULL.json",
              help="Validate the model first: two `slurm-rl report --json` files of one benchmark "
                   "(role-based and full-restart, same seed and fault plan).")
@click.option("--bench-config", type=click.Path(dir_okay=False),
              help="The measured runs' resolved config (runs/NAME/config.yaml); default: the demo benchmark.")
@click.option("--no-table", is_flag=True, help="Only the validation (needs --measured).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output (docs/schemas/simulate.json).")
def simulate(rates: list[float] | None, fraction_failing: float, kinds: dict[Any, float] | None, spares: int,
             trials: int, seed: int, days: float, gpus_per_node: int, trainer_nodes: int, rollouts: int,
             rollout_nodes: int, standby: str, step_s: float | None, checkpoint_every: int | None,
             measured: tuple[str, str] | None, bench_config: str | None, no_table: bool, as_json: bool) -> None:
    """ETTR at cluster scale: a discrete-event simulation of a run (the real recovery policy, the
    report's ETTR) over node failure rates, role-based vs full restart, with 0 and N spares.

    With --measured, first checks the model against a real benchmark: simulated with the recovery
    times measured in it, on its own fault plan (docs/simulation.md).
    """
    import dataclasses

    from slurm_rl.sim import (
        DEFAULT_RATES,
        LocalBenchmark,
        NodeFailures,
        Standby,
        Topology,
        load_reports,
        table,
        validate,
    )
    from slurm_rl.sim.config import cluster_config, config_dict
    from slurm_rl.sim.render import format_table, format_validation

    if no_table and not measured:
        raise BadInput("--no-table leaves nothing to do without --measured ROLE.json FULL.json")
    out: dict[str, Any] = {"schema": 1}
    err = _console(stderr=True)
    if measured:
        bench = LocalBenchmark.from_config_file(bench_config) if bench_config else LocalBenchmark()
        mt = load_reports(*measured)
        t0 = time.perf_counter()
        rows = validate(mt, bench, trials=max(1, trials), seed=seed + 1)
        out["validation"] = [{"pair": "measured", "measured_components": mt.to_dict(),
                              "rows": [r.to_dict() for r in rows]}]
        out["validation_s"] = round(time.perf_counter() - t0, 2)
        if not as_json:
            click.echo(format_validation([("measured", mt, bench, rows)]) + "\n")
    if not no_table:
        base = cluster_config(days=days)
        base = base.replace(
            topology=Topology(gpus_per_node=gpus_per_node, trainer_nodes=trainer_nodes, rollout_replicas=rollouts,
                              rollout_nodes=rollout_nodes),
            work=dataclasses.replace(base.work, **({"step_compute_s": step_s} if step_s else {}),
                                     **({"checkpoint_every": checkpoint_every} if checkpoint_every else {})),
            failures=NodeFailures(per_node_per_day=0.0, **({"kinds": kinds} if kinds else {})),
            rules=dataclasses.replace(base.rules, standby=Standby(standby)))
        t0 = time.perf_counter()
        with _progress(err, "simulating", enabled=not as_json) as tick:
            t = table(base, rates=rates if rates is not None else DEFAULT_RATES,
                      fraction_failing=fraction_failing or None, spares=(0, spares), trials=trials, seed=seed,
                      progress=tick)
        out["table"] = t.to_dict() | {"config": config_dict(base)}
        out["table_s"] = round(time.perf_counter() - t0, 2)
        if not as_json:
            click.echo(format_table(t, spares))
            click.echo(f"({len(t.rows) * t.trials} simulated runs in {out['table_s']:.1f} s)")
    if as_json:
        click.echo(json.dumps(out, indent=1))


@contextmanager
def _progress(console: Console, what: str, *, enabled: bool) -> Iterator[Any]:
    """A progress bar on stderr (terminals only) fed by a `progress(done, total)` callback."""
    if not (enabled and console.is_terminal):
        yield None
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    with Progress(TextColumn(what), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console,
                  transient=True) as prog:
        task = prog.add_task(what, total=None)

        def tick(done: int, total: int) -> None:
            prog.update(task, completed=done, total=total)

        yield tick


# ----------------------------------------------------------------------------- entry point
def main(argv: list[str] | None = None) -> None:
    """Entry point: user mistakes become one clear line and an exit code, never a traceback."""
    try:
        cli.main(args=argv, prog_name="slurm-rl")
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(INTERRUPTED)


if __name__ == "__main__":
    main()
