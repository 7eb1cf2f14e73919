"""Exported networks as teachers: TorchScript (``{torchscript: FILE}``) and ONNX (``{onnx: FILE}``).

Such a teacher is opaque: its only tap is ``logits`` (a feature-based loss on it is refused before the data
loads, :func:`medkd.teachers.check_teacher_taps`). It reads ``data.teacher_channels`` (default: the student's) in
that order and predicts the dataset's classes in order, unless ``distill.teacher.teacher_label_map`` maps its
output indices (``{"0": background, "1": liver, "2": liver}``). ONNX files run with onnxruntime on the CPU,
without gradients; with ``distill.cache: true`` the teacher runs once over the training images.
Each carries ``source_digest`` (SHA-256 of the file) so a teacher cache is never reused for another file.
"""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from medkd.config import TeacherConfig
from medkd.errors import ConfigError
from medkd.models.taps import normalize_output
from medkd.teachers.adapter import TeacherAdapter
from medkd.teachers.base import TeacherInputs, opaque_taps
from medkd.teachers.mapping import match_classes

__all__ = ["OnnxNetwork", "file_digest", "load_opaque_teacher"]


def file_digest(path: Path) -> str:
    """SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class OnnxNetwork(nn.Module):
    """An ONNX model run by onnxruntime (CPU) as a module: ``(B, C, *spatial)`` in, its first output out.

    Inputs are detached (no gradients reach or pass through it); the output comes back on the input's device
    as float32. A model exported with a fixed batch size is run in chunks of that size.
    """

    def __init__(self, path: Path):
        super().__init__()
        try:
            import onnxruntime as ort  # optional dependency: imported when used
        except ImportError:
            raise ConfigError("distill.teacher.onnx: needs onnxruntime (pip install medkd[onnx])") from None
        try:
            self.session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
            raise ConfigError(f"distill.teacher.onnx {path}: not a readable ONNX model "
                              f"({str(exc).strip().splitlines()[0]})") from None
        first = self.session.get_inputs()[0]
        self.input_name = first.name
        self.input_shape = list(first.shape)
        out_shape = self.session.get_outputs()[0].shape
        self.out_channels = out_shape[1] if len(out_shape) > 1 and isinstance(out_shape[1], int) else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        array = x.detach().to("cpu", torch.float32).contiguous().numpy()
        fixed = self.input_shape[0] if isinstance(self.input_shape[0], int) else None
        step = fixed or array.shape[0]
        parts = [self.session.run(None, {self.input_name: array[i:i + step]})[0] for i in range(0, len(array), step)]
        return torch.from_numpy(np.concatenate(parts).astype(np.float32)).to(x.device)


def _torchscript(path: Path) -> nn.Module:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated, still reads its files
            return torch.jit.load(str(path), map_location="cpu")
    except (RuntimeError, ValueError) as exc:
        raise ConfigError(f"distill.teacher.torchscript {path}: not a readable TorchScript file "
                          f"({str(exc).strip().splitlines()[0]})") from None


def _out_channels(net: nn.Module, inputs: TeacherInputs, size: list[int] | None) -> int:
    """The teacher's output channels, by one forward on zeros of the run's sample size."""
    shape = (1, inputs.in_channels, *(size or [64] * inputs.dim))
    with torch.no_grad():
        try:
            return int(normalize_output(net(torch.zeros(shape)), inputs.dim).shape[1])
        except Exception as exc:  # noqa: BLE001 - a foreign network may raise anything on a wrong input
            detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ConfigError(f"the teacher fails on an input of shape {list(shape)} ({detail}); check "
                              "data.teacher_channels and data.size") from None


def load_opaque_teacher(tcfg: TeacherConfig, inputs: TeacherInputs, size: list[int] | None = None) -> nn.Module:
    """The TorchScript or ONNX teacher of ``tcfg`` as a :class:`TeacherAdapter` whose only tap is ``logits``.

    Args:
        tcfg: the teacher config (``torchscript`` or ``onnx`` set).
        inputs: what the run gives the teacher.
        size: the run's sample size (``data.size``), for the probe forward that counts the teacher's classes.
    """
    kind = tcfg.source
    where = f"distill.teacher.{kind}"
    path = Path(getattr(tcfg, kind))
    if not path.is_file():
        raise ConfigError(f"{where} {path}: file not found")
    inputs.check_plain(where)
    net = OnnxNetwork(path) if kind == "onnx" else _torchscript(path)
    n_out = getattr(net, "out_channels", None)
    if kind == "onnx" and len(net.input_shape) != inputs.dim + 2:
        raise ConfigError(f"{where} {path}: the model takes {len(net.input_shape) - 2}D input, the run is "
                          f"{inputs.dim}D")
    if kind == "onnx" and isinstance(net.input_shape[1], int) and net.input_shape[1] != inputs.in_channels:
        raise ConfigError(f"{where} {path}: the model reads {net.input_shape[1]} channel(s), data.teacher_channels "
                          f"gives {inputs.in_channels}")
    if n_out is None:
        n_out = _out_channels(net, inputs, size)
    groups = match_classes([str(i) for i in range(n_out)], inputs.classes(), tcfg.teacher_label_map, where)
    adapter = TeacherAdapter(net, list(range(inputs.in_channels)), groups, spatial_dims=inputs.dim)
    object.__setattr__(adapter, "source_digest", file_digest(path))
    return opaque_taps(adapter, inputs.num_classes)
