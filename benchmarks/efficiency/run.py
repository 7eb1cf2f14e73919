"""Efficiency of every zoo model: parameters, GFLOPs, safetensors checkpoint size, CPU latency (batch 1).

Writes, beside this file:

- ``efficiency_2d.json`` / ``.md``: every 2D model at 1 x 256 x 256 (1 input channel, 2 classes);
- ``efficiency_3d.json`` / ``.md``: every 3D model at 1 x 64 x 64 x 64 (KD-Net's input size).

FLOPs come from ``torch.utils.flop_counter.FlopCounterMode`` (2 FLOPs per multiply-accumulate; convolutions,
matrix products and attention only). Latency is the median of the timed batch-1 forward passes in eval mode
under ``torch.inference_mode`` after warm-up, with one torch thread by default: on a small machine shared
with other jobs, more threads than free cores make the timings swing by an order of magnitude (``--threads``
changes it; ``--threads 0`` keeps torch's default).
The machine (CPU model, cores, torch version, threads) and its load average before and after are recorded.

Usage::

    python benchmarks/efficiency/run.py                  # full run, writes the four files
    python benchmarks/efficiency/run.py --quick          # smoke test (tiny inputs, 1 repeat), writes nothing
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from medkd.measure.machine import load_average, machine_info
from medkd.models import list_models
from medkd.models.efficiency import FLOP_COUNTING, measure, render_markdown

HERE = Path(__file__).resolve().parent

SHARED_CPU_NOTE = (
    "Measured on a small shared CPU machine while other jobs were running on it, so latencies are indicative "
    "(compare their ratios rather than absolute values; the load average before and after is recorded). "
    "Parameters, GFLOPs and checkpoint sizes do not depend on the machine."
)


def run_table(
    dims: int, size: tuple[int, ...], repeats_student: int, repeats_teacher: int, warmup: int, threads: int | None
) -> dict:
    """Measure every zoo model of ``dims`` spatial dimensions at ``size``."""
    names = list_models(spatial_dims=dims)
    load_before = load_average()
    rows = []
    for name in names:
        t0 = time.perf_counter()
        teacher = name in list_models(role="teacher")
        repeats = repeats_teacher if teacher else repeats_student
        row = measure(
            name, in_channels=1, num_classes=2, input_size=size, repeats=repeats, warmup=warmup, threads=threads
        )
        rows.append(row)
        print(
            f"  {name:<22} {row['params']:>12,} params {row['gflops']:>9.3f} GFLOPs "
            f"{row['latency_ms_median']:>9.1f} ms  ({time.perf_counter() - t0:.0f} s)",
            flush=True,
        )
    return {
        "input": "x".join(str(s) for s in (1, *size)),
        "num_classes": 2,
        "flop_counting": FLOP_COUNTING,
        "machine": machine_info(),
        "timing_threads": threads if threads is not None else torch.get_num_threads(),
        "load_average_before": load_before,
        "load_average_after": load_average(),
        "note": SHARED_CPU_NOTE,
        "rows": rows,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10, help="timed runs per student model")
    parser.add_argument("--repeats-teacher", type=int, default=5, help="timed runs per teacher model")
    parser.add_argument("--warmup", type=int, default=2, help="untimed runs before timing")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads during timing (default 1; 0 = torch's default)"
    )
    parser.add_argument("--quick", action="store_true", help="tiny inputs, 1 repeat; writes nothing")
    parser.add_argument("--out-dir", type=Path, default=None, help="where to write (default: beside this file)")
    args = parser.parse_args(argv)

    if args.quick:
        plans = [(2, (32, 32)), (3, (32, 32, 32))]
        args.repeats = args.repeats_teacher = 1
        args.warmup = 0
    else:
        plans = [(2, (256, 256)), (3, (64, 64, 64))]
    out_dir = args.out_dir or (None if args.quick else HERE)
    if args.threads == 0:
        args.threads = None

    for dims, size in plans:
        threads = args.threads or torch.get_num_threads()
        print(f"{dims}D models at 1x{'x'.join(map(str, size))} (torch threads: {threads})")
        result = run_table(dims, size, args.repeats, args.repeats_teacher, args.warmup, args.threads)
        if out_dir is not None:
            out_dir.mkdir(parents=True, exist_ok=True)
            stem = out_dir / f"efficiency_{dims}d"
            stem.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
            stem.with_suffix(".md").write_text(render(result, dims), encoding="utf-8")
            print(f"wrote {stem.with_suffix('.json')} and {stem.with_suffix('.md')}")
    return 0


def render(result: dict, dims: int) -> str:
    """The markdown report of one :func:`run_table` result."""
    return render_markdown(
        result["rows"],
        title=f"Model zoo efficiency, {dims}D, input {result['input']}, 2 classes",
        machine=result["machine"],
        note=f"{SHARED_CPU_NOTE} Timed with {result['timing_threads']} torch thread(s) (column threads). "
        f"Load average (1, 5, 15 min) before: {result['load_average_before']}, "
        f"after: {result['load_average_after']}. Regenerate with `python benchmarks/efficiency/run.py`.",
    )


if __name__ == "__main__":
    sys.exit(main())
