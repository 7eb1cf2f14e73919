"""One description of the machine a measurement ran on: CPU, cores, library versions, load average, time."""

from __future__ import annotations

import datetime as _dt
import os
import platform
from pathlib import Path
from typing import Any

__all__ = ["cpu_model", "load_average", "machine_info", "utc_now"]


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else ``platform.processor()`` or the architecture."""
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_average() -> list[float] | None:
    """The 1, 5 and 15 minute load averages rounded to 0.01, or None where the platform has none."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:  # pragma: no cover - not on every platform
        return None


def utc_now() -> str:
    """The current UTC time as ``YYYY-MM-DDTHH:MM:SSZ``."""
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def machine_info() -> dict[str, Any]:
    """CPU model, logical cores, torch / MONAI / Python versions, torch threads, platform, UTC time.

    torch and MONAI are imported on the first call only (``monai`` is None where it is missing).
    """
    import torch  # lazy: the rest of medkd.measure runs in processes that must not load torch

    try:
        import monai

        monai_version = monai.__version__
    except ImportError:  # pragma: no cover
        monai_version = None
    return {
        "cpu": cpu_model(),
        "logical_cores": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "monai": monai_version,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "date_utc": utc_now(),
    }
