"""medkd.measure: what every benchmark measures the same way — timing, peak memory, the machine, tables.

* :mod:`~medkd.measure.timing` — one timing loop (warm-up, time budget, CUDA sync) and its summary;
* :mod:`~medkd.measure.memory` — peak / current RSS (``/proc``, ``getrusage`` incl. macOS) and CUDA's peak;
* :mod:`~medkd.measure.machine` — CPU, cores, versions, load average;
* :mod:`~medkd.measure.load` — how busy the CPU is, and waiting until it is quiet;
* :mod:`~medkd.measure.tables` — markdown tables.

Importing it loads neither torch nor numpy (the onnxruntime benchmark worker must stay torch-free); the
functions that need torch import it when called.

Example::

    from medkd.measure import peak_rss_mib, summarize, time_ms

    stats = summarize(time_ms(lambda: sum(range(10_000)), repeats=20, warmup=2), percentiles=(90,))
    print(stats["median"], stats["p90"], peak_rss_mib())
"""

from __future__ import annotations

from .load import busy_cores, children_cpu_seconds, cpu_busy_seconds, other_cores, wait_for_quiet
from .machine import cpu_model, load_average, machine_info, utc_now
from .memory import cuda_peak_mib, current_rss_mib, peak_rss_mib, reset_cuda_peak, rusage_peak_mib
from .tables import fmt, key_values, markdown_row, markdown_table
from .timing import clock, cuda_sync, percentile, summarize, time_ms

__all__ = [
    "busy_cores",
    "children_cpu_seconds",
    "clock",
    "cpu_busy_seconds",
    "cpu_model",
    "cuda_peak_mib",
    "cuda_sync",
    "current_rss_mib",
    "fmt",
    "key_values",
    "load_average",
    "machine_info",
    "markdown_row",
    "markdown_table",
    "other_cores",
    "peak_rss_mib",
    "percentile",
    "reset_cuda_peak",
    "rusage_peak_mib",
    "summarize",
    "time_ms",
    "utc_now",
    "wait_for_quiet",
]
