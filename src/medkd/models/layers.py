"""Small shared pieces of the model zoo: layer lookup by spatial dimension, input checks, the zoo base class."""

from __future__ import annotations

import torch
from torch import nn

from medkd.errors import ConfigError

from .taps import TapSpec

__all__ = [
    "ZooModel",
    "check_input",
    "conv_type",
    "conv_transpose_type",
    "batch_norm_type",
    "instance_norm_type",
    "max_pool_type",
    "dropout_type",
    "interp_mode",
    "count_parameters",
]

_CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
_CONVT = {1: nn.ConvTranspose1d, 2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}
_BN = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}
_IN = {1: nn.InstanceNorm1d, 2: nn.InstanceNorm2d, 3: nn.InstanceNorm3d}
_POOL = {1: nn.MaxPool1d, 2: nn.MaxPool2d, 3: nn.MaxPool3d}
_DROP = {1: nn.Dropout1d, 2: nn.Dropout2d, 3: nn.Dropout3d}
_INTERP = {1: "linear", 2: "bilinear", 3: "trilinear"}


def _lookup(table: dict, dims: int, what: str):
    if dims not in table:
        raise ConfigError(f"spatial_dims must be 2 or 3 for {what}, got {dims}")
    return table[dims]


def conv_type(dims: int) -> type[nn.Module]:
    """``nn.Conv{dims}d``."""
    return _lookup(_CONV, dims, "a convolution")


def conv_transpose_type(dims: int) -> type[nn.Module]:
    """``nn.ConvTranspose{dims}d``."""
    return _lookup(_CONVT, dims, "a transposed convolution")


def batch_norm_type(dims: int) -> type[nn.Module]:
    """``nn.BatchNorm{dims}d``."""
    return _lookup(_BN, dims, "batch norm")


def instance_norm_type(dims: int) -> type[nn.Module]:
    """``nn.InstanceNorm{dims}d``."""
    return _lookup(_IN, dims, "instance norm")


def max_pool_type(dims: int) -> type[nn.Module]:
    """``nn.MaxPool{dims}d``."""
    return _lookup(_POOL, dims, "max pooling")


def dropout_type(dims: int) -> type[nn.Module]:
    """Channel dropout ``nn.Dropout{dims}d``."""
    return _lookup(_DROP, dims, "dropout")


def interp_mode(dims: int) -> str:
    """Linear interpolation mode name for ``F.interpolate`` (``bilinear`` / ``trilinear``)."""
    return _lookup(_INTERP, dims, "interpolation")


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (shared tensors counted once)."""
    seen: set[int] = set()
    total = 0
    for p in model.parameters():
        if id(p) in seen or (trainable_only and not p.requires_grad):
            continue
        seen.add(id(p))
        total += p.numel()
    return total


def _tracing() -> bool:
    return bool(
        torch.jit.is_tracing()
        or torch.jit.is_scripting()
        or torch.onnx.is_in_onnx_export()
        or torch.compiler.is_compiling()
    )


def check_input(x: torch.Tensor, spatial_dims: int, divisor: int, name: str, min_size: int = 0) -> None:
    """Reject an input of the wrong rank or a spatial size not divisible by ``divisor``.

    Args:
        x: the input batch ``(B, C, *spatial)``.
        spatial_dims: expected number of spatial dimensions.
        divisor: every spatial size must be a multiple of it.
        name: the model name, for the message.
        min_size: smallest allowed spatial size.

    Raises:
        ConfigError: one line naming the model, the input shape and the divisor.
    """
    if _tracing():
        return
    if x.ndim != spatial_dims + 2:
        raise ConfigError(
            f"{name} expects a {spatial_dims}D input of shape (B, C, {', '.join('S' * spatial_dims)}), "
            f"got shape {tuple(x.shape)}"
        )
    bad = [int(s) for s in x.shape[2:] if int(s) % divisor]
    if bad:
        raise ConfigError(
            f"{name} needs spatial sizes divisible by {divisor} (its size_divisor), got {tuple(x.shape[2:])}; "
            f"pad or crop the input to a multiple of {divisor}"
        )
    if any(int(s) < min_size for s in x.shape[2:]):
        raise ConfigError(f"{name} needs spatial sizes of at least {min_size}, got {tuple(x.shape[2:])}")


class ZooModel(nn.Module):
    """Base class of the zoo networks: declares ``spatial_dims``, ``size_divisor`` and ``feature_taps``.

    Subclasses set these in ``__init__`` and call :meth:`check_input` at the start of ``forward``.
    """

    model_name: str = "model"
    size_divisor: int = 1
    min_size: int = 0

    def __init__(self, spatial_dims: int = 2) -> None:
        super().__init__()
        self.spatial_dims = spatial_dims
        self.feature_taps: dict[str, TapSpec] = {}

    def check_input(self, x: torch.Tensor) -> None:
        """See :func:`check_input`."""
        check_input(x, self.spatial_dims, self.size_divisor, self.model_name, self.min_size)
