"""Processes as tests and benchmarks inspect them, from /proc: alive, children, groups, memory.

Linux only (as the services' sandboxes are). A zombie counts as gone: nobody may use it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

PROC = Path("/proc")


def stat_fields(pid: int) -> list[str] | None:
    """/proc/<pid>/stat after the command name (state, ppid, pgrp, ...); None once gone."""
    try:
        text = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    # The command name may hold spaces and parentheses: split after its last ")".
    fields = text.rpartition(")")[2].split()
    return fields or None


def alive(pid: int) -> bool:
    """Whether a process exists and is not a zombie."""
    fields = stat_fields(pid)
    return fields is not None and fields[0] != "Z"


def live_processes() -> Iterator[tuple[int, list[str]]]:
    """Every live process: its pid and its stat fields (`stat_fields`)."""
    for entry in PROC.iterdir():
        if entry.name.isdigit():
            fields = stat_fields(int(entry.name))
            if fields is not None and fields[0] != "Z":
                yield int(entry.name), fields


def children(pid: int) -> list[int]:
    """The live direct children of `pid`."""
    return [child for child, fields in live_processes() if int(fields[1]) == pid]


def descendants(pid: int) -> list[int]:
    """Every live process below `pid` (children first, then theirs)."""
    found = children(pid)
    return found + [d for child in found for d in descendants(child)]


def in_group(group: int) -> list[int]:
    """The live processes of process group `group`."""
    return [pid for pid, fields in live_processes() if int(fields[2]) == group]


def pss_mb(pid: int) -> float:
    """Proportional set size (shared pages split among their users) in MB; 0 once gone."""
    return _field_mb(PROC / str(pid) / "smaps_rollup", "Pss")


def rss_mb(pid: int) -> float:
    """Resident set size in MB; 0 once gone."""
    return _field_mb(PROC / str(pid) / "status", "VmRSS")


def tree_pss_mb(pid: int) -> float:
    """`pss_mb` of a process and of every process below it."""
    return sum(pss_mb(p) for p in [pid, *descendants(pid)])


def _field_mb(path: Path, field: str) -> float:
    with contextlib.suppress(OSError):
        for line in path.read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    return 0.0
