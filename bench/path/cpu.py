"""CPU time of a path's processes, read from ``/proc/<pid>/stat`` (user + system, children included).

A path is a few named root processes (``api``, ``router``, ...); each one's CPU is its own plus that of
every descendant alive at the time of reading, plus what its reaped children left in ``cutime``/``cstime``,
so a worker process that exits between two readings is still counted.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")
CLOCK_TICKS_PER_S = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


@dataclass(frozen=True)
class ProcStat:
    """The fields of ``/proc/<pid>/stat`` the benchmark uses; times in clock ticks."""

    pid: int
    comm: str
    ppid: int
    utime: int
    stime: int
    cutime: int
    cstime: int

    @property
    def ticks(self) -> int:
        """Its own time and that of its children it has waited for."""
        return self.utime + self.stime + self.cutime + self.cstime


def parse_stat(text: str) -> ProcStat:
    """One ``/proc/<pid>/stat`` line. The command name sits in parentheses and may hold spaces and
    parentheses itself, so the fields are counted from the last ``)``."""
    head, _, tail = text.strip().rpartition(")")
    pid_text, _, comm = head.partition(" (")
    fields = tail.split()
    # After the name: state(3) ppid(4) ... utime(14) stime(15) cutime(16) cstime(17), 1-based in proc(5).
    if len(fields) < 15 or not pid_text.strip().isdigit():
        raise ValueError(f"not a /proc/<pid>/stat line: {text[:80]!r}")
    return ProcStat(
        pid=int(pid_text),
        comm=comm,
        ppid=int(fields[1]),
        utime=int(fields[11]),
        stime=int(fields[12]),
        cutime=int(fields[13]),
        cstime=int(fields[14]),
    )


def read_stat(pid: int, proc: Path = PROC) -> ProcStat | None:
    """The process's stat, or None when it is gone."""
    try:
        return parse_stat((proc / str(pid) / "stat").read_text())
    except (OSError, ValueError):
        return None


def all_stats(proc: Path = PROC) -> dict[int, ProcStat]:
    """Every process's stat (those that vanish while read are left out)."""
    found: dict[int, ProcStat] = {}
    for entry in proc.iterdir():
        if entry.name.isdigit():
            stat = read_stat(int(entry.name), proc)
            if stat is not None:
                found[stat.pid] = stat
    return found


def descendants(root: int, stats: Mapping[int, ProcStat]) -> list[int]:
    """``root`` and every process below it, ``root`` first."""
    children: dict[int, list[int]] = {}
    for stat in stats.values():
        children.setdefault(stat.ppid, []).append(stat.pid)
    found = [root]
    index = 0
    while index < len(found):
        found.extend(children.get(found[index], ()))
        index += 1
    return found


def tree_ticks(root: int, stats: Mapping[int, ProcStat]) -> int:
    """CPU ticks of ``root``'s tree: every live member's own time and that of the children it has reaped.

    No time counts twice: a reaped process is no longer listed, and its time (with what it had reaped
    itself) is in its parent's ``cutime``/``cstime`` only.
    """
    return sum(stats[pid].ticks for pid in descendants(root, stats) if pid in stats)


def sample(roots: Mapping[str, Iterable[int]], proc: Path = PROC) -> dict[str, int]:
    """CPU ticks per name, each the sum over its root processes' trees."""
    stats = all_stats(proc)
    return {name: sum(tree_ticks(pid, stats) for pid in pids) for name, pids in roots.items()}


def ticks_to_ms(ticks: int) -> float:
    return 1000.0 * ticks / CLOCK_TICKS_PER_S


def per_request_ms(before: Mapping[str, int], after: Mapping[str, int], requests: int) -> dict[str, float]:
    """CPU milliseconds per request of each named process between two samples."""
    if requests <= 0:
        return {name: 0.0 for name in after}
    return {name: ticks_to_ms(after[name] - before.get(name, 0)) / requests for name in after}
