"""CPU inference of teachers vs students (PyTorch eager and onnxruntime); writes inference_cpu.json / .md here.

Same as ``medkd bench infer --out benchmarks/inference``, with the defaults of the committed results:
UNet++ and DeepLabV3+ (teachers), ENet, ESPNet, ERFNet and the small U-Net (students), 256 x 256 slices,
a 256 x 256 x 10 volume, all logical cores, random-init weights (timing does not depend on them), each model and
engine measured in 5 fresh processes (the table gives the median of their medians).

Usage::

    python benchmarks/inference/run.py                    # each measurement waits for a quiet CPU (< 0.1 cores
                                                          # busy elsewhere) and is redone if disturbed
    python benchmarks/inference/run.py --quick            # smoke test: 32 x 32, 1 repeat, writes nothing
"""

from __future__ import annotations

import argparse
from pathlib import Path

from medkd.bench.infer import DEFAULT_MODELS, run_bench


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(DEFAULT_MODELS))
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--depth", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--processes", type=int, default=5, help="fresh processes per model and engine")
    parser.add_argument("--max-busy", type=float, default=0.1, help="CPU cores other processes may use")
    parser.add_argument("--wait-budget", type=float, default=600.0, help="seconds of waiting / re-runs at most")
    parser.add_argument("--stem", default="inference_cpu", help="output file name stem")
    parser.add_argument("--note", default=None, help="a paragraph for the markdown")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    models = [m for m in args.models.split(",") if m]
    if args.quick:
        result = run_bench(models[-2:], size=32, depth=2, repeats=1, warmup=0, threads=args.threads)
    else:
        result = run_bench(models, size=args.size, depth=args.depth, repeats=args.repeats, threads=args.threads,
                           max_busy=args.max_busy, wait_budget_s=args.wait_budget, stem=args.stem, note=args.note,
                           processes=args.processes,
                           out=Path(__file__).resolve().parent)
    print(result["markdown"])


if __name__ == "__main__":
    main()
