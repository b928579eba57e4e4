"""How busy the machine was during a measurement: the CPU share of processes that are not the
benchmark's own (from /proc/stat), so a results file can say what else was running."""

from __future__ import annotations

import contextlib
import os
import time


def process_cpu(pid: int) -> float:
    """CPU seconds of another process (all its threads), from its POSIX CPU clock (ns resolution)."""
    return time.clock_gettime(((~pid) << 3) | 2)  # MAKE_PROCESS_CPUCLOCK(pid, CPUCLOCK_SCHED)


def busy_cpu_seconds() -> float:
    """CPU seconds the whole machine has been busy (all processes), from /proc/stat."""
    with open("/proc/stat") as stat:
        ticks = [int(x) for x in stat.readline().split()[1:9]]
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


class LoadMeter:
    """Share of the machine's CPU used by processes other than this one, its waited-for
    children and the `server_pids` it names."""

    def __init__(self, server_pids: list[int] | None = None) -> None:
        self.pids = server_pids or []
        self.start()

    def own(self) -> float:
        t = os.times()
        own = t.user + t.system + t.children_user + t.children_system
        for pid in self.pids:
            with contextlib.suppress(OSError):
                own += process_cpu(pid)
        return own

    def start(self) -> None:
        self.t0, self.busy0, self.own0 = time.perf_counter(), busy_cpu_seconds(), self.own()

    def foreign(self) -> tuple[float, float]:
        """(foreign share of all cores, seconds) since `start`."""
        wall = time.perf_counter() - self.t0
        foreign = max(0.0, (busy_cpu_seconds() - self.busy0) - (self.own() - self.own0))
        return foreign / (wall * (os.cpu_count() or 1)), wall
