"""One line per event for `slurm-rl events`: time since launch, kind (coloured by meaning), role, message."""

from __future__ import annotations

import time
from typing import Any

from rich.text import Text

from slurm_rl.ui.theme import event_style


def event_line(e: dict[str, Any], t0: float | None, *, absolute: bool = False) -> Text:
    """`+  12.34s  dead              rollout/1   rollout/1 is DEAD: ...`; wall-clock time with `absolute`
    or when the run's start is unknown."""
    if t0 is not None and not absolute:
        when = f"+{e['t'] - t0:8.2f}s"
    else:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e["t"]))
    line = Text.assemble((when, "dim"), "  ", (f"{e['kind']:<17}", event_style(e["kind"])), " ",
                         (f"{e.get('slot') or '-':<10}", "bold"), " ", e["msg"])
    return line


def event_json(e: Any, t0: float | None) -> dict[str, Any]:
    """The JSON object of one event (schema: docs/schemas/event.json)."""
    return {"id": e.id, "t": e.t, "t_rel": None if t0 is None else round(e.t - t0, 3), "kind": e.kind,
            "slot": e.slot, "job_id": e.job_id, "node": e.node, "msg": e.msg, "data": e.data}


__all__ = ["event_json", "event_line"]
