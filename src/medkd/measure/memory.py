"""Peak memory: the process's resident set (Linux ``/proc``, ``getrusage`` elsewhere) and CUDA's allocator peak."""

from __future__ import annotations

import resource
import sys
from pathlib import Path
from typing import Any

__all__ = ["cuda_peak_mib", "current_rss_mib", "peak_rss_mib", "reset_cuda_peak", "rusage_peak_mib"]

_MIB = 1024 * 1024


def _proc_status_mib(field: str) -> float | None:
    """A ``kB`` field of ``/proc/self/status`` (``VmHWM``, ``VmRSS``) in MiB, or None without /proc."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def rusage_peak_mib() -> float:
    """Peak RSS of this process from ``getrusage`` ``ru_maxrss``, in MiB (bytes on macOS, KiB elsewhere)."""
    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / _MIB


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far, in MiB (``VmHWM``, else :func:`rusage_peak_mib`)."""
    peak = _proc_status_mib("VmHWM")
    return rusage_peak_mib() if peak is None else peak


def current_rss_mib() -> float:
    """Resident set size of this process now, in MiB (``VmRSS``, else the peak)."""
    now = _proc_status_mib("VmRSS")
    return peak_rss_mib() if now is None else now


def reset_cuda_peak(device: Any = None) -> None:
    """Start a new CUDA peak (``torch.cuda.reset_peak_memory_stats``) on ``device``."""
    import torch  # lazy: medkd.measure stays importable without torch

    torch.cuda.reset_peak_memory_stats(device)


def cuda_peak_mib(device: Any = None) -> float:
    """Peak memory allocated by tensors on the CUDA ``device`` since the last reset, in MiB."""
    import torch  # lazy: medkd.measure stays importable without torch

    return torch.cuda.max_memory_allocated(device) / _MIB
