"""Run exported ONNX models with onnxruntime's CPU provider (what ``medkd predict --engine onnx`` uses).

This module only *runs* ONNX graphs; :mod:`medkd.export` writes them (and uses :func:`onnx_session` to check each
export against PyTorch). onnxruntime is optional: it is imported on first use, with a one-line hint when missing.

Example::

    from medkd.onnx_runtime import OnnxPredictor

    predictor = OnnxPredictor("runs/distilled/export/model.onnx")
    logits = predictor(torch.randn(4, 1, 96, 96))     # (4, K, 96, 96), a CPU float tensor
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from medkd.errors import MedkdError

__all__ = ["OnnxPredictor", "onnx_session", "onnxruntime_module"]


def onnxruntime_module() -> Any:
    """The ``onnxruntime`` module.

    Raises:
        MedkdError: onnxruntime is not installed (with the install hint).
    """
    try:
        import onnxruntime  # optional dependency: imported when used
    except ImportError:
        raise MedkdError("the onnx engine needs onnxruntime; install it with `pip install medkd[onnx]`") from None
    return onnxruntime


def onnx_session(model: bytes | str | Path, threads: int | None = None) -> Any:
    """An onnxruntime CPU ``InferenceSession`` of an ONNX file or its bytes (no C++ log lines on stderr).

    Args:
        model: the ``.onnx`` file, or the serialized graph.
        threads: intra-op threads (default: onnxruntime's choice).
    """
    ort = onnxruntime_module()
    opts = ort.SessionOptions()
    opts.log_severity_level = 4  # failures surface as exceptions; no C++ log lines on stderr
    if threads:
        opts.intra_op_num_threads = int(threads)
        opts.inter_op_num_threads = 1
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, sess_options=opts, providers=["CPUExecutionProvider"])


class OnnxPredictor:
    """Run an exported ONNX model with onnxruntime's CPU provider, as a torch-tensor callable.

    Args:
        path: the ``.onnx`` file.
        threads: onnxruntime intra-op threads (default: onnxruntime's choice).

    Example::

        predictor = OnnxPredictor("runs/distilled/export/model.onnx")
        logits = predictor(torch.randn(4, 1, 96, 96))     # (4, K, 96, 96), a CPU float tensor
    """

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise MedkdError(f"{self.path}: ONNX file not found")
        try:
            self.session = onnx_session(self.path, threads)
        except MedkdError:
            raise
        except Exception as err:  # onnxruntime's own error types for a broken file
            raise MedkdError(f"{self.path}: not a loadable ONNX model ({str(err).splitlines()[0][:120]})") from None
        meta = self.session.get_inputs()[0]
        self.input_name = meta.name
        self.input_shape = list(meta.shape)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for a ``(B, C, *spatial)`` batch."""
        arr = np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)
        expect = self.input_shape
        fixed = [(i, d) for i, d in enumerate(expect) if isinstance(d, int)]
        if arr.ndim != len(expect) or any(arr.shape[i] != d for i, d in fixed):
            shown = "x".join(str(d) if isinstance(d, int) else "?" for d in expect)
            raise MedkdError(f"{self.path}: input of shape {tuple(arr.shape)} does not fit the model's {shown}")
        return torch.from_numpy(self.session.run(None, {self.input_name: arr})[0])
