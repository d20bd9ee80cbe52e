"""Memory and CPU of this process and all its descendants (the STT worker), from /proc (Linux)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path


def _tree(root: int) -> Iterator[int]:
    todo, seen = [root], set()
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.add(p)
        yield p
        try:
            for task in Path(f"/proc/{p}/task").iterdir():
                todo.extend(int(k) for k in (task / "children").read_text().split())
        except (OSError, ValueError):
            continue


def _self() -> int:
    return int(Path("/proc/self").resolve().name)


def rss_by_process(pid: int | None = None) -> dict[int, float]:
    """Resident memory of each process of the tree, in MB (which one grew, when the total did)."""
    out: dict[int, float] = {}
    for p in _tree(pid or _self()):
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    out[p] = int(line.split()[1]) / 1024.0
        except (OSError, ValueError):
            continue
    return out


def rss_mb(pid: int | None = None) -> float:
    """Resident memory of the process tree, in MB."""
    return sum(rss_by_process(pid).values())


def cpu_seconds(pid: int | None = None) -> float:
    """CPU time (user + system, every thread) the process tree has used so far, in seconds."""
    hz = os.sysconf("SC_CLK_TCK")
    ticks = 0
    for p in _tree(pid or _self()):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
        except (OSError, ValueError, IndexError):
            continue
    return ticks / hz
