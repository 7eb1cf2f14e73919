"""Seconds from calling ``medkd train`` to its first training step, without and with the prepared-sample cache.

The run: 128x128 ACDC (``../shared/data/acdc``, its ``splits.json``), ``data.train_fraction: 0.5``, unet_s1,
one epoch of one step. Each try starts ``medkd train`` as a subprocess and polls ``metrics.jsonl`` until its
first ``"kind": "step"`` line appears; the process is then stopped (the rest of the run is not timed).
*cold*: an empty ``data.prepared_dir`` (the run prepares the slices and writes the cache); *warm*: the cache is
present. The median of ``--repeats`` tries of each is reported with the machine and its load average.
Usage (from the project root)::

    python benchmarks/startup/run.py [--repeats 3] [--data ../shared/data/acdc]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from medkd.measure.machine import machine_info
from medkd.measure.tables import markdown_table

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]


def _first_step(config: Path, run_dir: Path, timeout: float = 600.0) -> float:
    """Seconds from starting ``medkd train`` to the first step record in the run's ``metrics.jsonl``."""
    metrics = run_dir / "metrics.jsonl"
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "medkd", "train", str(config), "--out", str(run_dir),
                             "--device", "cpu", "--no-evaluate"], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        while time.perf_counter() - t0 < timeout:
            if metrics.is_file() and '"kind": "step"' in metrics.read_text():
                return time.perf_counter() - t0
            if proc.poll() is not None:
                raise RuntimeError(f"medkd train ended before its first step: {proc.stderr.read()[-2000:]}")
            time.sleep(0.02)
        raise RuntimeError(f"no step within {timeout} s")
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait()


def render_md(record: dict) -> str:
    """The markdown report of a ``startup_cpu.json`` record."""
    med, tries = record["median_s"], record["seconds"]
    labels = {"cold": "cold (empty `data.prepared_dir`: prepare + write)",
              "warm": "warm (prepared samples and validation cases present)"}
    rows = [[label, f"{med[k]:.2f}", ", ".join(f"{v:.2f}" for v in tries[k])] for k, label in labels.items()]
    table = "\n".join(markdown_table(["cache", "median (s)", "tries (s)"], rows, "lrl"))
    return (f"# Start-up: `medkd train` to the first step\n\n{record['machine']}; torch {record['torch']}; "
            f"load average {record['load_average_before'][0]:.2f} before, "
            f"{record['load_average_after'][0]:.2f} after.\n\n"
            f"Run: {record['run']}. Measure: {record['measure']}; median of {record['repeats']}.\n\n"
            f"{table}\n\nCache folders (training slices, validation cases): {record['cache_mib']:.1f} MiB.\n")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--data", default=str(ROOT / ".." / "shared" / "data" / "acdc"))
    args = parser.parse_args()
    data = Path(args.data).resolve()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="medkd-startup-") as tmp:
        tmp = Path(tmp)
        cache = tmp / "prepared"
        config = tmp / "run.yaml"
        config.write_text(yaml.safe_dump({
            "name": "startup", "seed": 0,
            "data": {"root": str(data), "dim": 2, "size": [128, 128], "split": {"file": "splits.json"},
                     "train_fraction": 0.5, "prepared_dir": str(cache)},
            "model": {"name": "unet_s1"},
            "train": {"epochs": 1, "max_steps_per_epoch": 1, "progress": False},
        }))
        times: dict[str, list[float]] = {"cold": [], "warm": []}
        for i in range(args.repeats):
            shutil.rmtree(cache, ignore_errors=True)
            times["cold"].append(_first_step(config, tmp / f"cold{i}"))
            print(f"cold {i + 1}: {times['cold'][-1]:.2f} s", flush=True)
        for i in range(args.repeats):
            times["warm"].append(_first_step(config, tmp / f"warm{i}"))
            print(f"warm {i + 1}: {times['warm'][-1]:.2f} s", flush=True)
        cache_mib = sum(f.stat().st_size for f in cache.rglob("*") if f.is_file()) / 2**20
    m = machine_info()
    record = {
        "machine": f"CPU {m['cpu']}, {m['logical_cores']} cores, {m['torch_threads']} torch threads "
                   "(the default of a fresh process)",
        "torch": m["torch"], "python": m["python"], "date_utc": m["date_utc"],
        "load_average_before": load_before, "load_average_after": os.getloadavg(),
        "run": "ACDC 128x128, splits.json, train_fraction 0.5 (70 training cases), unet_s1, batch 16, "
               "1 epoch x 1 step, --device cpu --no-evaluate",
        "measure": "seconds from starting `medkd train` to the first step line in metrics.jsonl",
        "cache_mib": round(cache_mib, 1), "repeats": args.repeats,
        "seconds": {k: [round(v, 2) for v in vs] for k, vs in times.items()},
        "median_s": {k: round(statistics.median(vs), 2) for k, vs in times.items()},
    }
    (HERE / "startup_cpu.json").write_text(json.dumps(record, indent=2) + "\n")
    md = render_md(record)
    (HERE / "startup_cpu.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
