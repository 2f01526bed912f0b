"""CPU time of a process from ``/proc/<pid>/stat`` (Linux), for CPU-per-request figures."""

from __future__ import annotations

import os
from pathlib import Path

_TICKS_PER_S = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpu_seconds(pid: int) -> float | None:
    """User plus system CPU seconds ``pid`` has used (all its threads), None when gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    fields = stat.rpartition(")")[2].split()
    # utime and stime are fields 14 and 15 of the line, 12th and 13th after the name.
    return (int(fields[11]) + int(fields[12])) / _TICKS_PER_S
