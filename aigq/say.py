"""``Say``: how a stage reports progress in words — a callable taking one line (the CLI prints it above its progress
bar, a test collects it, a Ray job's log shows it). The one type every stage, actor driver and loop takes."""

from __future__ import annotations

import sys
from collections.abc import Callable

Say = Callable[[str], None]


def to_stderr(msg: str) -> None:
    """The default ``say`` of library code called without one."""
    print(msg, file=sys.stderr, flush=True)
