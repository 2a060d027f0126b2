"""Logging set-up for processes slurm-rl starts (library code only uses named loggers)."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable


class PrefixFilter(logging.Filter):
    """Adds `[role/replica job=ID step=N]` (or any prefix a callable returns) to each record."""

    def __init__(self, prefix: Callable[[], str]):
        super().__init__()
        self._prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            record.prefix = self._prefix()
        except Exception:
            record.prefix = "[?]"
        return True


def setup_process_logging(prefix: Callable[[], str], level: int = logging.INFO) -> None:
    """Log to stderr (the job's log file) with a prefix; for process entry points only."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(PrefixFilter(prefix))
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(prefix)s %(name)s: %(message)s"))
    root = logging.getLogger("slurm_rl")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False
