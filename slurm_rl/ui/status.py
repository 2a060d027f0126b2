"""The terminal status view: header, role table, latest events. Renders a status dict with rich.

Works in a plain terminal without colour (rich drops styles when NO_COLOR is set or output is
not a TTY) and from another host than the controller's (it only needs the run directory).
"""

from __future__ import annotations

import time
from typing import Any

from rich.console import Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

_STATE_STYLE = {"READY": "green", "STARTING": "cyan", "PENDING": "yellow", "SUSPECT": "bold yellow",
                "DEAD": "bold red", "MOVING": "magenta", "STOPPED": "dim"}
_RUN_STYLE = {"running": "green", "finished": "bold green", "failed": "bold red", "stopped": "yellow",
              "stopping": "yellow", "created": "cyan"}


def _fmt(v: Any, spec: str = "") -> str:
    if v is None:
        return "-"
    return format(v, spec) if spec else str(v)


def render_status(st: dict[str, Any]) -> Group:
    state = st.get("state", "unknown")
    total = st.get("steps_total")
    head = Table.grid(padding=(0, 2))
    head.add_column()
    head.add_column()
    head.add_column()
    head.add_column()
    head.add_row(
        Text.assemble(("run ", "dim"), (st["run"], "bold")),
        Text.assemble(("backend ", "dim"), str(st.get("backend"))),
        Text.assemble(("recovery ", "dim"), str(st.get("recovery"))),
        Text.assemble(("state ", "dim"), (state, _RUN_STYLE.get(state, ""))),
    )
    head.add_row(
        Text.assemble(("step ", "dim"), f"{st.get('step')}/{_fmt(total)}", ("  committed ", "dim"),
                      str(st.get("committed"))),
        Text.assemble(("reward ", "dim"), _fmt(st.get("reward"), ".3f")),
        Text.assemble(("ETTR ", "dim"), _fmt(st.get("ettr"), ".1%")),
        Text.assemble(("weights ", "dim"), f"v{st.get('weight_version')}", ("  staleness ", "dim"),
                      _fmt(st.get("staleness"), ".2f")),
    )
    q = st.get("queue", {})
    head.add_row(
        Text.assemble(("trajectories ", "dim"), f"{q.get('generated', 0)} generated / {q.get('consumed', 0)} used"),
        Text.assemble(("waiting ", "dim"), f"{q.get('groups_waiting', 0)} groups"),
        Text.assemble(("leases ", "dim"), str(q.get("leases", 0))),
        Text.assemble(("source ", "dim"), "live controller" if st.get("live") else "state store"),
    )
    roles = Table(expand=True, show_edge=False, pad_edge=False)
    for col, kw in (("role", {}), ("state", {}), ("phase", {}), ("progress", {"justify": "right"}),
                    ("detail", {"overflow": "ellipsis", "max_width": 28}), ("job", {}), ("node", {}),
                    ("weights", {"justify": "right"}), ("heartbeat", {"justify": "right"}),
                    ("restarts", {"justify": "right"})):
        roles.add_column(col, **kw)
    for r in st.get("roles", []):
        hb = r.get("heartbeat_age_s")
        roles.add_row(
            r["slot"], Text(r["state"], style=_STATE_STYLE.get(r["state"], "")), _fmt(r.get("phase")),
            _fmt(r.get("progress")), r.get("detail") or "", _fmt(r.get("job_id")), _fmt(r.get("node")),
            "-" if r.get("version") in (None, -1) else f"v{r['version']}",
            "-" if hb is None else f"{hb:.1f}s", _fmt(r.get("restarts")))
    events = Table.grid(padding=(0, 1))
    events.add_column(style="dim")
    events.add_column(style="bold")
    events.add_column()
    for e in st.get("events", []):
        style = "red" if e["kind"] in ("dead", "run_failed") else ("yellow" if e["kind"] in ("suspect", "fault_injected")
                                                                   else ("green" if e["kind"] in ("recovered", "ready")
                                                                         else ""))
        events.add_row(time.strftime("%H:%M:%S", time.localtime(e["t"])), Text(e["kind"], style=style), e["msg"])
    return Group(Panel(head, title="slurm-rl", title_align="left"), roles,
                 Panel(events, title="latest events", title_align="left"))
