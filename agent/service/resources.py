"""This process's memory and CPU use, read from /proc (Linux), for STATUS= and the status command.

Figures come from ``/proc/self/stat`` (CPU ticks, start time) and
``/proc/self/statm`` (resident pages); time since boot is CLOCK_BOOTTIME, not
``/proc/uptime``, so the service works with ``ProcSubset=pid`` (only the
per-process part of /proc visible).  No psutil.  ``proc`` and ``boottime``
can be replaced so that the parsing is testable on fixed files.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")


class ResourceError(OSError):
    """/proc is missing or holds something unexpected."""


@dataclass(frozen=True, slots=True)
class ProcessResources:
    rss_bytes: int
    user_seconds: float
    system_seconds: float
    threads: int
    process_uptime: float  # seconds since this process started
    system_uptime: float  # seconds since boot

    @property
    def cpu_seconds(self) -> float:
        return self.user_seconds + self.system_seconds

    @property
    def cpu_share(self) -> float:
        """Average CPU use since start, 1.0 = one core fully busy."""
        return self.cpu_seconds / self.process_uptime if self.process_uptime > 0 else 0.0

    def summary(self) -> str:
        return (f"rss {self.rss_bytes / 1048576:.1f} MiB, cpu {self.cpu_seconds:.1f} s "
                f"({self.cpu_share * 100:.1f}% avg), up {format_duration(self.process_uptime)}")

    def as_dict(self) -> dict[str, float | int]:
        return {"rss_bytes": self.rss_bytes, "cpu_seconds": round(self.cpu_seconds, 3),
                "user_seconds": self.user_seconds, "system_seconds": self.system_seconds, "threads": self.threads,
                "process_uptime": round(self.process_uptime, 3), "system_uptime": self.system_uptime}


def _boottime() -> float:
    return time.clock_gettime(time.CLOCK_BOOTTIME)


def read_resources(proc: Path = PROC, pid: str = "self", boottime: Callable[[], float] = _boottime) -> ProcessResources:
    ticks = os.sysconf("SC_CLK_TCK")
    page = os.sysconf("SC_PAGE_SIZE")
    base = proc / pid
    stat = _read(base / "stat")
    # The command name (field 2) is in parentheses and may contain spaces or ')': split after the last ')'.
    close = stat.rfind(")")
    rest = stat[close + 1:].split() if close >= 0 else []
    if len(rest) < 20:
        raise ResourceError(f"{base / 'stat'}: unexpected format")
    # rest[0] is field 3 (state): utime is field 14, stime 15, num_threads 20, starttime 22.
    try:
        utime, stime = int(rest[11]), int(rest[12])
        threads, start_ticks = int(rest[17]), int(rest[19])
        resident_pages = int(_read(base / "statm").split()[1])
    except (ValueError, IndexError) as exc:
        raise ResourceError(f"{base}: unexpected format: {exc}") from None
    system_uptime = boottime()
    return ProcessResources(rss_bytes=resident_pages * page, user_seconds=utime / ticks, system_seconds=stime / ticks,
                            threads=threads, process_uptime=max(0.0, system_uptime - start_ticks / ticks),
                            system_uptime=system_uptime)


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError as exc:
        raise ResourceError(f"cannot read {path}: {exc.strerror or exc}") from None


def format_duration(seconds: float) -> str:
    seconds = int(seconds)
    days, seconds = divmod(seconds, 86400)
    hours, seconds = divmod(seconds, 3600)
    minutes, seconds = divmod(seconds, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes}m"
    if minutes:
        return f"{minutes}m {seconds}s"
    return f"{seconds}s"
