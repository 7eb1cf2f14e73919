"""Run ``medkd.bench.train`` for the issue's teacher -> student pairs and write JSON + markdown here.

On a GPU: UNet++ -> ENet at 256x256 batch 16 and kdnet3d -> kdnet3d at 64^3 (the issue's set-ups).
On a CPU the same pairs run at a reduced size so the benchmark finishes in minutes; the sizes are
recorded in every row. Usage (from the project root)::

    python benchmarks/training/run.py [--device cuda] [--steps 10] [--no-compile]

On a GPU the compiled modes run too unless ``--no-compile``: ``live_compiled`` (torch.compile, inductor) and
``student_graphs`` / ``cached_graphs`` (reduce-overhead: CUDA graphs, for the issue's student-alone and cached targets).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch

from medkd.bench.train import MODES, OPTIONAL_MODES, bench_train, render_markdown
from medkd.measure.machine import cpu_model, load_average, utc_now

HERE = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile modes on a GPU")
    args = parser.parse_args()
    gpu = args.device.startswith("cuda")
    if gpu:
        pairs = [("unetplusplus", "enet", (256, 256), 16), ("kdnet3d", "kdnet3d", (64, 64, 64), 2)]
        steps, warmup = args.steps or 20, 3
    else:
        pairs = [("unetplusplus", "enet", (128, 128), 4), ("kdnet3d", "kdnet3d", (32, 32, 32), 1)]
        steps, warmup = args.steps or 4, 2
    modes = MODES + OPTIONAL_MODES if gpu and not args.no_compile else MODES
    rows = bench_train(pairs, device=args.device, steps=steps, warmup=warmup, modes=modes)
    machine = (torch.cuda.get_device_name(0) if gpu else
               f"CPU {cpu_model()}, {os.cpu_count()} cores, "
               f"{torch.get_num_threads()} torch threads")
    stem = "training_gpu" if gpu else "training_cpu"
    record = {"machine": machine, "torch": torch.__version__, "date_utc": utc_now(),
              "load_average": load_average(), "steps": steps, "warmup": warmup, "rows": rows}
    (HERE / f"{stem}.json").write_text(json.dumps(record, indent=2) + "\n")
    note = ("\nCPU run at reduced sizes (the issue's 256x256 batch 16 / 64^3 set-ups are for a GPU); "
            f"load average at the end {(load_average() or [float('nan')])[0]:.2f}.\n" if not gpu else "")
    (HERE / f"{stem}.md").write_text(render_markdown(rows, machine) + note)
    print(render_markdown(rows, machine))


if __name__ == "__main__":
    main()
