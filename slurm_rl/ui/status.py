"""The status view of a run: header, one line per role, what is in progress, the latest events.

`StatusView` renders a status dict (`slurm_rl.report.status_dict`, schema docs/schemas/status.json)
and picks its layout from the width it is given: 80 columns get one line per role with the phase
detail folded into the phase column; 110 and more get every column. Colour is only a second
channel: states, kinds and the progress bar read the same without it (NO_COLOR, a pipe, a log).
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable
from typing import Any

from rich import box
from rich.console import Console, ConsoleOptions, Group, RenderableType, RenderResult
from rich.panel import Panel
from rich.spinner import Spinner
from rich.table import Table
from rich.text import Text

from slurm_rl.ui.theme import RUN_STYLE, STATE_STYLE, event_style, fmt_age

WIDE = 110          # from this many columns on, every role column is shown

# phases in which a starting role has something worth a progress line
_START_PHASES = ("loading", "restoring", "syncing_weights")


def _fmt(v: Any, spec: str = "") -> str:
    if v is None:
        return "-"
    return format(v, spec) if spec else str(v)


def _plain(console: Console) -> bool:
    """No colour: the progress bar and spinners need characters that stand on their own."""
    return console.no_color or console.color_system is None


def progress_bar(done: int, total: int | None, width: int, *, plain: bool) -> Text:
    """A text progress bar: coloured blocks, or `#`/`.` where colour is off."""
    width = max(4, width)
    frac = 0.0 if not total else max(0.0, min(1.0, done / total))
    n = round(frac * width)
    if plain:
        return Text("[" + "#" * n + "." * (width - n) + "]")
    return Text.assemble(("━" * n, "green"), ("━" * (width - n), "grey23"))


def _flow(items: Iterable[Text], width: int, gap: str = "   ") -> list[Text]:
    """Lay label/value items left to right, starting a new line when the next one would not fit."""
    lines: list[Text] = []
    cur = Text()
    for it in items:
        if cur.cell_len and cur.cell_len + len(gap) + it.cell_len > width:
            lines.append(cur)
            cur = Text()
        if cur.cell_len:
            cur.append(gap)
        cur.append_text(it)
    if cur.cell_len:
        lines.append(cur)
    return lines


def _kv(label: str, value: str | Text, style: str = "") -> Text:
    t = Text()
    t.append(label + " ", style="dim")
    t.append_text(value if isinstance(value, Text) else Text(value, style=style))
    return t


def collapse_routine(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Consecutive checkpoint events as one line ('checkpoints at steps 440-490 saved (6)'): a fast
    run checkpoints every second and would push the faults out of a short event list."""
    out: list[dict[str, Any]] = []
    run: list[dict[str, Any]] = []

    def flush() -> None:
        if len(run) == 1:
            out.append(run[0])
        elif run:
            steps = [int(x) for e in run for x in re.findall(r"step (\d+)", e["msg"])[:1]]
            span = f"steps {steps[0]}-{steps[-1]}" if len(steps) == len(run) else f"{len(run)} checkpoints"
            out.append({**run[-1], "msg": f"checkpoints at {span} saved ({len(run)})"})
        run.clear()

    for e in events:
        if e["kind"] == "checkpoint":
            run.append(e)
            continue
        flush()
        out.append(e)
    flush()
    return out


def activity(role: dict[str, Any]) -> str | None:
    """What a role is waiting for, with how long, when that is worth a progress line: queued in the
    scheduler, starting, loading the model, restoring a checkpoint, pulling weights, suspected, dead."""
    state, phase = role.get("state"), role.get("phase")
    age = role.get("state_age_s")
    took = f" {fmt_age(age)}" if age is not None else ""
    detail = role.get("detail") or ""
    job = role.get("job_id")
    if state == "PENDING":
        if role.get("job_state") == "PENDING" or job is None:
            where = f"job {job}" if job else "submitting"
            return f"queued{took} ({where})"
        running = role.get("job_running_s")
        run_s = f" {fmt_age(running)}" if running is not None else ""
        return f"job {job} running{run_s}, waiting for it to connect"
    if state == "STARTING" or (state == "READY" and phase == "restoring"):
        if role.get("phase_age_s") is not None:
            took = f" {fmt_age(role['phase_age_s'])}"        # measured by the controller
        if phase == "loading":
            return f"loading model{took}" + (f": {detail}" if detail else "")
        if phase == "restoring":
            return f"restoring checkpoint{took}" + (f": {detail}" if detail else "")
        if phase == "syncing_weights":
            return f"pulling weights{took}" + (f": {detail}" if detail else "")
        return f"starting{took}" + (f" ({phase})" if phase else "")
    if state == "SUSPECT":
        hb = role.get("heartbeat_age_s")
        return f"SUSPECT{took}: no heartbeat for {fmt_age(hb)}, confirming" if hb is not None else f"SUSPECT{took}"
    if state == "DEAD":
        return f"DEAD{took}: recovery decided"
    if state == "MOVING":
        return f"moving off a draining node{took}"
    return None


class StatusView:
    """A rich renderable of one status dict; the layout follows the width it gets."""

    def __init__(self, st: dict[str, Any], *, spinners: bool = True, spinner_cache: dict[str, Spinner] | None = None,
                 fit_height: int | None = None):
        self.st = st
        # a live view must fit the terminal, or rich crops its bottom: the newest events
        self.fit_height = fit_height
        self.spinners = spinners        # animate in-progress lines (a live view); a static print says '*'
        # a live view passes the same dict on every refresh, so a spinner keeps turning instead of restarting
        self.cache = spinner_cache if spinner_cache is not None else {}

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        width = options.max_width
        header = self._header(console, width)
        yield header
        roles = self.st.get("roles") or []
        if not roles:
            yield Text("  no roles yet: the controller is starting", style="dim")
        else:
            yield self._roles(width)
        acts = list(self._activities(console))
        if acts:
            yield Group(*acts)
        events = collapse_routine(self.st.get("events") or [])
        if self.fit_height is not None:
            head_lines = len(header.renderable.renderables) + 2     # type: ignore[attr-defined]
            used = head_lines + (len(roles) + 2 if roles else 1) + len(acts)
            room = self.fit_height - used - 3                  # the events panel's borders, a spare line
            events = events[-room:] if room > 0 else []
        if events:
            yield self._events(width, events)

    # ------------------------------------------------------------------ parts
    def _header(self, console: Console, width: int) -> Panel:
        st = self.st
        state = str(st.get("state", "unknown"))
        inner = width - 4                                   # panel border and padding
        top = Text.assemble((str(st.get("run")), "bold"), "  ", (state, RUN_STYLE.get(state, "")))
        if st.get("end_reason") and state in ("finished", "failed", "stopped"):
            top.append(f" ({st['end_reason']})", style="dim")
        src = "live controller" if st.get("source") == "controller" else (
            "state store, controller up" if st.get("live") else "state store, controller not running")
        lines = _flow([top, _kv("backend", str(st.get("backend") or "-")),
                       _kv("recovery", str(st.get("recovery") or "-")), _kv("source", src)], inner)
        step, total = int(st.get("step") or 0), st.get("steps_total")
        pct = f" {100 * step / total:3.0f}%" if total else ""
        label = Text.assemble(("step ", "dim"), f"{step}/{_fmt(total)}")
        # label, a space, the bar (plus its brackets without colour), the percentage
        bar_w = max(4, min(80, inner - label.cell_len - 1 - len(pct) - (2 if _plain(console) else 0)))
        lines.append(Text.assemble(label, " ", progress_bar(step, total, bar_w, plain=_plain(console)), pct))
        q = st.get("queue") or {}
        stale = st.get("staleness")
        lines += _flow([
            _kv("reward", _fmt(st.get("reward"), ".3f"), "bold"),
            _kv("ETTR", _fmt(st.get("ettr"), ".1%"), "bold"),
            _kv("weights", f"v{st.get('weight_version')}" + f" (committed {st.get('committed')})"),
            _kv("staleness", _fmt(stale, ".2f")),
            _kv("queue", f"{q.get('groups_waiting', 0)} groups, {q.get('leases', 0)} leases"),
            _kv("trajectories", f"{q.get('generated', 0)} made / {q.get('consumed', 0)} trained"),
            *([_kv("eval", f"pass@1 {_fmt(ev.get('pass_at_1'), '.3f')} at v{ev.get('version')}", "bold")]
              if (ev := st.get("eval")) else []),
        ], inner)
        return Panel(Group(*lines), title="slurm-rl status", title_align="left", box=box.ROUNDED,
                     padding=(0, 1))

    def _roles(self, width: int) -> Table:
        wide = width >= WIDE
        t = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, expand=True, padding=(0, 1))
        t.add_column("role", no_wrap=True)
        t.add_column("state", no_wrap=True)
        if wide:
            t.add_column("phase", no_wrap=True)
            t.add_column("progress", justify="right", no_wrap=True)
            t.add_column("detail", no_wrap=True, overflow="ellipsis", ratio=1, min_width=10)
            t.add_column("job", no_wrap=True, overflow="ellipsis", max_width=16)
        else:
            t.add_column("phase", no_wrap=True, overflow="ellipsis", ratio=1, min_width=12)
            t.add_column("job", no_wrap=True, overflow="ellipsis", max_width=10)
        t.add_column("node", no_wrap=True, overflow="ellipsis", max_width=12)
        t.add_column("ver", justify="right", no_wrap=True)
        t.add_column("heartbeat" if wide else "hb", justify="right", no_wrap=True)
        t.add_column("restarts" if wide else "rst", justify="right", no_wrap=True)
        for r in self.st.get("roles", []):
            state = str(r["state"])
            alive = state not in ("STOPPED", "DEAD")
            hb = r.get("heartbeat_age_s")
            hb_s = fmt_age(hb) if hb is not None and alive else "-"
            hb_style = "bold yellow" if alive and hb is not None and hb > 2.0 else ""
            ver = "-" if r.get("version") in (None, -1) else f"v{r['version']}"
            restarts = int(r.get("restarts") or 0)
            cells: list[RenderableType] = [r["slot"], Text(state, style=STATE_STYLE.get(state, ""))]
            # a job not yet connected has no phase of its own: the store still holds the default
            phase = "-" if state == "PENDING" else _fmt(r.get("phase"))
            if wide:
                cells += [phase, _fmt(r.get("progress")), Text(r.get("detail") or "", style="dim"),
                          _fmt(r.get("job_id"))]
            else:
                detail = r.get("detail") or ""
                cells += [Text.assemble(phase, (f" · {detail}" if detail else "", "dim")), _fmt(r.get("job_id"))]
            cells += [_fmt(r.get("node")), ver, Text(hb_s, style=hb_style),
                      Text(str(restarts), style="yellow" if restarts else "")]
            t.add_row(*cells, style="dim" if state == "STOPPED" else "")
        return t

    def _activities(self, console: Console) -> Iterable[RenderableType]:
        if self.st.get("state") in ("finished", "failed", "stopped"):
            return
        animate = self.spinners and console.is_terminal and not _plain(console)
        for r in self.st.get("roles", []):
            what = activity(r)
            if what is None:
                continue
            style = STATE_STYLE.get(str(r["state"]), "")
            text = Text.assemble((f"{r['slot']:<10}", "bold"), " ", (what, style))
            text.no_wrap, text.overflow = True, "ellipsis"
            if animate:
                sp = self.cache.get(r["slot"])
                if sp is None:
                    sp = self.cache[r["slot"]] = Spinner("dots", style=style or "cyan")
                sp.update(text=text, style=style or "cyan")
                yield sp
            else:
                yield Text.assemble("* ", text)

    def _events(self, width: int, events: list[dict[str, Any]]) -> Panel:
        g = Table.grid(padding=(0, 1), expand=True)
        g.add_column(style="dim", no_wrap=True)
        g.add_column(no_wrap=True, min_width=12 if width < WIDE else 16)
        g.add_column(no_wrap=True, overflow="ellipsis", ratio=1)
        for e in events:
            g.add_row(time.strftime("%H:%M:%S", time.localtime(e["t"])), Text(e["kind"], style=event_style(e["kind"])),
                      e["msg"])
        return Panel(g, title="latest events", title_align="left", box=box.ROUNDED, padding=(0, 1))


def render_status(st: dict[str, Any], *, spinners: bool = True) -> StatusView:
    """The status view of a status dict (kept for callers of the first version of this module)."""
    return StatusView(st, spinners=spinners)


__all__ = ["StatusView", "activity", "collapse_routine", "progress_bar", "render_status"]
