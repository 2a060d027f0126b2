"""What the 2-rank FSDP2 benches share: a free port, their command line, a table of ratios."""

from __future__ import annotations

import argparse
import socket


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def model_args(description: str, count: str, default: int, help_count: str) -> argparse.Namespace:
    """--hidden/--layers of the random Llama, --`count` repetitions, --json."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--hidden", type=int, default=768)
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument(f"--{count}", type=int, default=default, help=help_count)
    ap.add_argument("--json", action="store_true", help="print the measurements as JSON instead of a table")
    return ap.parse_args()


def print_ratios(title: str, heads: tuple[str, str], rows: list[tuple[str, float, float, str]]) -> None:
    """One row per measure: what, the first way's seconds, the second's, first / second (`fmt`)."""
    from rich.console import Console
    from rich.table import Table

    t = Table(title=title)
    for c in ("what", f"{heads[0]} s", f"{heads[1]} s", f"{heads[0]} / {heads[1]}"):
        t.add_column(c, justify="left" if c == "what" else "right")
    for what, a, b, fmt in rows:
        t.add_row(what, f"{a:.3f}", f"{b:.3f}", f"{a / max(b, 1e-9):{fmt}}x")
    Console().print(t)
