"""``bench infer`` worker: the ONNX export with onnxruntime's CPU provider (``python -m medkd.bench.infer_onnx``).

Imports numpy and onnxruntime only, never torch (recorded as ``imports_torch``), so its peak RSS is what an
onnxruntime deployment needs.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from medkd.bench.worker import timing_stats, worker_main
from medkd.measure.memory import current_rss_mib, peak_rss_mib
from medkd.measure.timing import time_ms

__all__ = ["measure_onnx"]


def _session(path: Path, threads: int) -> ort.InferenceSession:
    """A sequential CPU session with ``threads`` intra-op threads."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def measure_onnx(spec: dict[str, Any]) -> dict[str, Any]:
    """Time ``workdir/model.onnx`` on a slice and a volume with onnxruntime."""
    base = current_rss_mib()
    session = _session(Path(spec["workdir"]) / "model.onnx", spec["threads"])
    name = session.get_inputs()[0].name
    rng = np.random.default_rng(0)
    size, depth, c = spec["size"], spec["depth"], spec["in_channels"]
    slice_x = rng.standard_normal((1, c, size, size), dtype=np.float32)
    volume_x = rng.standard_normal((depth, c, size, size), dtype=np.float32)
    slice_t = time_ms(lambda: session.run(None, {name: slice_x}), spec["repeats"], spec["warmup"], spec["max_seconds"])
    volume_t = time_ms(lambda: np.argmax(session.run(None, {name: volume_x})[0], axis=1), spec["volume_repeats"],
                       min(1, spec["warmup"]), spec["max_seconds"])
    return {
        "onnxruntime_version": ort.__version__,
        "engine": {"ms_per_slice": timing_stats(slice_t), "ms_per_volume": timing_stats(volume_t),
                   "peak_rss_mb": peak_rss_mib(), "base_rss_mb": base, "threads": spec["threads"],
                   "imports_torch": "torch" in sys.modules},
    }


if __name__ == "__main__":
    sys.exit(worker_main(measure_onnx, sys.argv[1:]))
