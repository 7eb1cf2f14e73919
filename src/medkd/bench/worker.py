"""The worker protocol of ``medkd bench infer``: one measurement in a fresh Python process.

The parent writes a JSON spec, runs ``python -m <module> SPEC OUT`` and reads the JSON result; the worker module
calls :func:`worker_main` with its measuring function. Kept free of torch and numpy imports.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from medkd.errors import MedkdError
from medkd.measure.timing import summarize

__all__ = ["MIB", "run_worker", "timing_stats", "worker_main"]

MIB = 1024 * 1024

Spec = dict[str, Any]


def timing_stats(times: list[float]) -> dict[str, Any]:
    """What ``bench infer`` records of a timing: ``{"median", "min", "runs"}`` in ms."""
    stats = summarize(times)
    return {"median": stats["median"], "min": stats["min"], "runs": stats["runs"]}


def worker_main(measure: Callable[[Spec], dict[str, Any]], argv: Sequence[str]) -> int:
    """Child side: read the spec file ``argv[0]``, measure, write the result to ``argv[1]``."""
    spec_path, out_path = argv
    result = measure(json.loads(Path(spec_path).read_text()))
    Path(out_path).write_text(json.dumps(result))
    return 0


def _env(threads: int) -> dict[str, str]:
    """This environment with medkd's source on ``PYTHONPATH`` and the OpenMP / MKL threads set."""
    env = dict(os.environ)
    src = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = str(threads)
    return env


def run_worker(kind: str, module: str, spec: Spec, work: Path, timeout_s: float) -> dict[str, Any]:
    """Parent side: run ``module`` on ``spec`` in a fresh process (files ``<kind>_spec.json`` / ``_result.json``).

    Raises:
        MedkdError: the worker timed out or failed (its last stderr line is quoted).
    """
    spec_path, out_path = work / f"{kind}_spec.json", work / f"{kind}_result.json"
    spec_path.write_text(json.dumps(spec))
    try:
        proc = subprocess.run([sys.executable, "-m", module, str(spec_path), str(out_path)],
                              env=_env(spec["threads"]), capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        raise MedkdError(f"bench infer: {spec['model']} ({kind}) took longer than {timeout_s:.0f} s") from None
    if proc.returncode != 0 or not out_path.is_file():
        lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
        why = lines[-1] if lines else f"exit status {proc.returncode}"
        raise MedkdError(f"bench infer: {spec['model']} ({kind}) worker failed: {why}")
    return json.loads(out_path.read_text())
