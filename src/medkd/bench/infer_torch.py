"""``bench infer`` worker: a zoo model with PyTorch eager (run as ``python -m medkd.bench.infer_torch SPEC OUT``).

Times a slice and a volume, then saves the ``state_dict`` as safetensors and exports ONNX for the onnxruntime
worker (only where the spec's ``export`` is true: the first of several processes of one model exports, the
others reuse its files). The imports are part of the measurement: ``base_rss_mb`` is read with torch loaded,
before medkd's model zoo; the peak RSS before safetensors and :mod:`medkd.export` (which loads most of medkd)
are imported. So those imports are made inside :func:`measure_torch`, at those points.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch

from medkd.bench.worker import MIB, timing_stats, worker_main
from medkd.measure.memory import current_rss_mib, peak_rss_mib
from medkd.measure.timing import time_ms

__all__ = ["measure_torch"]


def measure_torch(spec: dict[str, Any]) -> dict[str, Any]:
    """Build the model, time it with PyTorch eager, then (``spec["export"]``, default true) save safetensors and
    export ONNX into ``workdir``; without the export the file-size keys are ``None``."""
    torch.set_num_threads(spec["threads"])
    base = current_rss_mib()
    from medkd.models import count_parameters, create_model, model_info, normalize_output  # after the base RSS

    torch.manual_seed(0)
    model = create_model(spec["model"], spec["in_channels"], spec["num_classes"], spatial_dims=2).eval()
    size, depth = spec["size"], spec["depth"]
    gen = torch.Generator().manual_seed(0)
    slice_x = torch.randn(1, spec["in_channels"], size, size, generator=gen)
    volume_x = torch.randn(depth, spec["in_channels"], size, size, generator=gen)
    with torch.inference_mode():
        slice_t = time_ms(lambda: model(slice_x), spec["repeats"], spec["warmup"], spec["max_seconds"])
        volume_t = time_ms(lambda: normalize_output(model(volume_x)).argmax(1), spec["volume_repeats"],
                           min(1, spec["warmup"]), spec["max_seconds"])
    peak = peak_rss_mib()
    threads = torch.get_num_threads()
    files = _save_and_export(model, slice_x, spec) if spec.get("export", True) else dict.fromkeys(_FILE_KEYS)
    return {
        "role": model_info(spec["model"])["role"],
        "params": count_parameters(model),
        **files,
        "torch_version": torch.__version__,
        "engine": {"ms_per_slice": timing_stats(slice_t), "ms_per_volume": timing_stats(volume_t),
                   "peak_rss_mb": peak, "base_rss_mb": base, "threads": threads, "imports_torch": True},
    }


#: What :func:`_save_and_export` reports.
_FILE_KEYS = ("safetensors_mb", "onnx_mb", "onnx_dynamic")


def _save_and_export(model: torch.nn.Module, slice_x: torch.Tensor, spec: dict[str, Any]) -> dict[str, Any]:
    """Save the weights as safetensors and export ONNX into ``workdir``; their sizes and the export's shape mode."""
    work = Path(spec["workdir"])
    from safetensors.torch import save_model  # after the peak RSS, as medkd.export (config, run folder, ...)

    from medkd.export import export_onnx_result

    save_model(model, str(work / "model.safetensors"))
    exported = export_onnx_result(model, work / "model.onnx", slice_x, check=spec["check_export"])
    return {"safetensors_mb": (work / "model.safetensors").stat().st_size / MIB,
            "onnx_mb": (work / "model.onnx").stat().st_size / MIB, "onnx_dynamic": exported["dynamic"]}


if __name__ == "__main__":
    sys.exit(worker_main(measure_torch, sys.argv[1:]))
