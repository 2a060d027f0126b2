"""Tables that choose their columns from the width they get: the must-have columns always, then
the others by priority, as many as fit (the JSON and CSV outputs have them all)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

from rich import box
from rich.table import Table
from rich.text import Text

Row = TypeVar("Row")
PAD = 3     # a column's padding (1 each side) and the separator of these tables


@dataclasses.dataclass(frozen=True, slots=True)
class Col(Generic[Row]):
    header: str
    cell: Callable[[Row], str | Text]
    priority: int                 # 0 always stays; higher numbers go first when space is short
    right: bool = False
    max_width: int = 40
    fold: bool = False            # wrap instead of cutting with an ellipsis (names one must read whole)


def _len(x: str | Text) -> int:
    return x.cell_len if isinstance(x, Text) else len(x)


def fit(cols: Sequence[Col[Any]], rows: Sequence[Any], width: int) -> tuple[list[Col[Any]], int]:
    """The columns that fit in `width`, least important dropped first, in their given order; and
    how many were dropped."""
    widths = {id(c): min(c.max_width, max([len(c.header)] + [_len(c.cell(r)) for r in rows])) for c in cols}
    keep = list(cols)
    while sum(widths[id(c)] + PAD for c in keep) > width:
        droppable = [c for c in keep if c.priority > 0]
        if not droppable:
            break
        keep.remove(max(droppable, key=lambda c: (c.priority, list(cols).index(c))))
    return keep, len(cols) - len(keep)


def table(cols: Sequence[Col[Any]], rows: Sequence[Any], title: str | None = None) -> Table:
    t = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False,
              padding=(0, 1))
    for c in cols:
        t.add_column(c.header, justify="right" if c.right else "left", no_wrap=not c.fold,
                     overflow="fold" if c.fold else "ellipsis", max_width=c.max_width)
    for r in rows:
        t.add_row(*(c.cell(r) for c in cols))
    return t


__all__ = ["Col", "fit", "table"]
