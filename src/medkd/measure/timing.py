"""Wall-clock timing: one timing loop (warm-up, optional time budget, optional device sync) and its summary."""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["clock", "cuda_sync", "percentile", "summarize", "time_ms"]

Sync = Callable[[], Any] | None


def clock(sync: Sync = None) -> float:
    """``time.perf_counter()`` after ``sync()`` (e.g. :func:`cuda_sync`), so queued device work is counted."""
    if sync is not None:
        sync()
    return time.perf_counter()


def cuda_sync(device: Any) -> Sync:
    """``torch.cuda.synchronize`` for a CUDA ``device`` (a ``torch.device`` or a string), else None.

    torch is imported only for a CUDA device: :mod:`medkd.measure` stays importable without it.
    """
    if "cuda" not in str(device):
        return None
    import torch  # lazy: CPU-only callers (the onnxruntime benchmark worker) never load torch

    dev = torch.device(device)
    return lambda: torch.cuda.synchronize(dev)


def time_ms(
    fn: Callable[[], Any],
    repeats: int,
    warmup: int = 0,
    max_seconds: float | None = None,
    sync: Sync = None,
    before: Callable[[], Any] | None = None,
) -> list[float]:
    """Wall times in ms of ``repeats`` calls of ``fn`` after ``warmup`` untimed ones.

    Args:
        fn: the work to time.
        repeats: timed calls.
        warmup: untimed calls first.
        max_seconds: stop early once this many seconds of timed calls have passed and at least
            ``min(3, repeats)`` calls are timed (None: no limit).
        sync: called before each clock reading (see :func:`cuda_sync`).
        before: untimed set-up before every call (e.g. clearing gradients).
    """
    for _ in range(warmup):
        if before is not None:
            before()
        fn()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < repeats:
        if before is not None:
            before()
        t0 = clock(sync)
        fn()
        times.append((clock(sync) - t0) * 1e3)
        if max_seconds is not None and time.perf_counter() - start > max_seconds and len(times) >= min(3, repeats):
            break
    return times


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) of ``values`` with linear interpolation (numpy's default)."""
    if not values or not 0 <= q <= 100:
        raise ValueError(f"percentile {q} of {len(values)} values: need values and 0 <= q <= 100")
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    low, high = math.floor(pos), math.ceil(pos)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def summarize(times: Sequence[float], percentiles: Sequence[float] = ()) -> dict[str, Any]:
    """``{"median", "min", "max", "runs"}`` of ``times`` plus ``"p<q>"`` for each requested percentile."""
    out: dict[str, Any] = {"median": statistics.median(times), "min": min(times), "max": max(times),
                           "runs": len(times)}
    for q in percentiles:
        out[f"p{q:g}"] = percentile(times, q)
    return out
