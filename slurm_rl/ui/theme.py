"""Colours and small formatters shared by every view (one place, so a state looks the same everywhere)."""

from __future__ import annotations

STATE_STYLE = {"READY": "green", "STARTING": "cyan", "PENDING": "blue", "SUSPECT": "bold yellow",
               "DEAD": "bold red", "MOVING": "magenta", "STOPPED": "dim"}
RUN_STYLE = {"running": "bold green", "finished": "bold green", "failed": "bold red", "stopped": "yellow",
             "stopping": "yellow", "created": "cyan", "queued": "dim", "starting": "cyan", "skipped": "dim",
             "interrupted": "yellow", "unknown": "dim"}

# event kinds by what they mean to someone watching a run (the controller's `event(...)` calls)
EVENT_KINDS: dict[str, tuple[str, ...]] = {
    "failure": ("dead", "fatal", "run_failed", "submit_failed", "cancel_failed", "commit_lost"),
    "warning": ("suspect", "fault_injected", "duplicate_job", "leases_requeued", "leases_expired", "node_excluded", "move_started",
                "trainer_rollback", "full_restart", "chaos_skipped", "run_stopped", "stopping", "reward_error"),
    "recovery": ("recovered", "promoted", "trainer_restored", "cleared", "moved", "ready", "run_finished"),
    "lifecycle": ("run_started", "controller_resumed", "submitted", "connected", "goodbye", "checkpoint",
                  "job_ended", "eval"),
}
_KIND_STYLE = {"failure": "bold red", "warning": "yellow", "recovery": "green", "lifecycle": "cyan"}
KNOWN_EVENT_KINDS: tuple[str, ...] = tuple(k for ks in EVENT_KINDS.values() for k in ks)


def event_style(kind: str) -> str:
    """The colour of an event kind; checkpoints and goodbyes stay quiet."""
    if kind in ("checkpoint", "goodbye"):
        return "dim"
    for group, kinds in EVENT_KINDS.items():
        if kind in kinds:
            return _KIND_STYLE[group]
    return ""


def fmt_age(seconds: float | None) -> str:
    """0.4s, 12s, 3m05s, 2h10m: short enough for a table column, exact enough to act on."""
    if seconds is None:
        return "-"
    s = max(0.0, float(seconds))
    if s < 10:
        return f"{s:.1f}s"
    if s < 60:
        return f"{s:.0f}s"
    if s < 3600:
        return f"{int(s // 60)}m{int(s % 60):02d}s"
    return f"{int(s // 3600)}h{int(s % 3600 // 60):02d}m"


def fmt_num(v: float | None, spec: str = ".2f") -> str:
    return "-" if v is None else format(v, spec)


__all__ = ["EVENT_KINDS", "KNOWN_EVENT_KINDS", "RUN_STYLE", "STATE_STYLE", "event_style", "fmt_age", "fmt_num"]
