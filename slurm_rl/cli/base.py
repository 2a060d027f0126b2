"""What every `slurm-rl` command shares: the group, errors, exit codes, completion, argument parsers.

Exit codes: 0 success, 1 the run failed (or was stopped before it finished), 2 bad input
(config, arguments, files), 3 the environment cannot do it (Slurm missing, controller
unreachable), 4 the run is in use (another controller of it runs), 130 interrupted. Viewers (`status --watch`, `events --follow`) exit 0 on Ctrl-C:
leaving them is how they are used.

Shell completion (bash; zsh and fish alike with zsh_source / fish_source):
    eval "$(_SLURM_RL_COMPLETE=bash_source slurm-rl)"
"""

from __future__ import annotations

import signal
import sqlite3
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click
from click.shell_completion import CompletionItem
from rich.console import Console

from slurm_rl import __version__
from slurm_rl.errors import FATAL_ROLE_EXITS, BadInput, EnvironmentProblem, SlurmRLError

EPILOG_EXIT = ("Exit codes: 0 ok, 1 run failed/stopped, 2 bad input, 3 environment problem, 4 run in use, "
               "130 interrupted.")
INTERRUPTED = 130
FAULTS = ("crash", "hang", "exit:N", "node-down", "drain")
ROLE_KINDS = ("trainer", "rollout", "spare", "trainer-spare")
COMMAND_ORDER = ("launch", "status", "events", "inject", "stop", "resume", "report", "export", "ls", "sweep",
                 "simulate", "make-tiny-model", "make-dataset")


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
        # the order of a session; commands not listed (added later) follow in registration order
        return [c for c in COMMAND_ORDER if c in self.commands] + [c for c in self.commands if c not in COMMAND_ORDER]

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


# ----------------------------------------------------------------------------- arguments
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
        if int(n) in FATAL_ROLE_EXITS:
            raise BadInput(f"--fault {fault!r}: exit {n} means a role cannot run at all (it ends the run, no "
                           "recovery)", hint="inject another code, e.g. exit:3")
        return "exit", int(n)
    if fault not in FAULTS:
        import difflib

        close = difflib.get_close_matches(fault, FAULTS, n=1)
        raise BadInput(f"--fault {fault!r} is not a fault kind" + (f"; did you mean {close[0]!r}?" if close else ""),
                       hint=f"use one of: {', '.join(FAULTS)}")
    return fault, 1


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

