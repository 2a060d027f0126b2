"""Commands that look at a run: status, events, report, ls (and the live view they share)."""

from __future__ import annotations

import json
import re
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import click
from rich.console import Console

from slurm_rl.cli.base import (
    RUN_DIR,
    _check_target,
    _complete_kind,
    _complete_run_dir,
    _complete_target,
    _console,
    _example,
    cli,
)
from slurm_rl.errors import BadInput


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
    from slurm_rl.report import report_dict
    from slurm_rl.report_plots import write_plots
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

