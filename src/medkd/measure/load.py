"""How busy the machine is: CPU time of all processes (``/proc/stat``), of our children, and waiting for quiet."""

from __future__ import annotations

import os
import resource
import time
from pathlib import Path
from typing import Any

from .machine import load_average

__all__ = ["busy_cores", "children_cpu_seconds", "cpu_busy_seconds", "other_cores", "wait_for_quiet"]


def cpu_busy_seconds() -> float | None:
    """Busy CPU seconds of the whole machine since boot, summed over cores (``/proc/stat``), or None."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()
    except (OSError, IndexError):
        return None
    if fields[0] != "cpu":
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[1:9])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def children_cpu_seconds() -> float:
    """User + system CPU seconds of this process's finished (waited-for) children."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def other_cores(machine_busy_s: float | None, own_cpu_s: float, wall_s: float) -> float | None:
    """Cores other processes kept busy during ``wall_s`` seconds, at least 0 (None when ``machine_busy_s`` is).

    Args:
        machine_busy_s: busy CPU seconds of the whole machine in that time (a :func:`cpu_busy_seconds` difference).
        own_cpu_s: CPU seconds our own work used in it (e.g. a :func:`children_cpu_seconds` difference).
        wall_s: the elapsed time.
    """
    if machine_busy_s is None:
        return None
    return max(0.0, machine_busy_s - own_cpu_s) / wall_s


def busy_cores(interval: float = 2.0) -> float | None:
    """Cores kept busy by the whole machine over the next ``interval`` seconds (None without /proc/stat)."""
    first = cpu_busy_seconds()
    if first is None:
        return None
    t0 = time.monotonic()
    time.sleep(interval)
    return max(0.0, (cpu_busy_seconds() - first) / (time.monotonic() - t0))


def wait_for_quiet(max_busy: float, timeout_s: float = 600.0, poll_s: float = 5.0) -> dict[str, Any]:
    """Wait until the machine uses less than ``max_busy`` cores over a 2 s sample (at most ``timeout_s``).

    Without ``/proc/stat`` the 1-minute load average is compared instead.

    Returns:
        ``{"waited_s", "busy_cores", "load_average", "quiet"}``; ``quiet`` is false when the timeout passed first.
    """
    start = time.monotonic()
    while True:
        busy = busy_cores()
        load = load_average()
        level = busy if busy is not None else (load[0] if load else 0.0)
        done = level < max_busy
        if done or time.monotonic() - start >= timeout_s:
            return {"waited_s": round(time.monotonic() - start, 1),
                    "busy_cores": None if busy is None else round(busy, 2), "load_average": load, "quiet": done}
        time.sleep(poll_s)
