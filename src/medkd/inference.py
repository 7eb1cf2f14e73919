"""Whole-volume inference: slice-wise for 2D models, sliding window for 3D models.

Predictions are always made at the case's original grid: 2D slices are resized to the training size,
predicted, and the class probabilities resized back before the argmax; 3D volumes go through MONAI's
``sliding_window_inference`` (after the optional ``volume_size`` resize, undone afterwards).

Example:
    >>> probs = predict_volume(model, image, dim=2, size=(128, 128))   # (K, X, Y, Z)
    >>> labels = probs.argmax(0)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from monai.inferers import sliding_window_inference

from medkd.data.pipeline import resize_image
from medkd.models import normalize_output

__all__ = ["logits_to_probabilities", "predict_volume", "predicted_classes"]


def logits_to_probabilities(logits: torch.Tensor) -> torch.Tensor:
    """Class probabilities from (B, C, ...) logits; one channel means binary (sigmoid -> 2 classes)."""
    if logits.shape[1] == 1:
        p = torch.sigmoid(logits)
        return torch.cat([1 - p, p], dim=1)
    return torch.softmax(logits, dim=1)


def predicted_classes(probs: torch.Tensor) -> np.ndarray:
    """Class index per voxel of (K, *spatial) probabilities: ``probs.argmax(0)`` (the first maximum on ties), read
    with ``max(0).indices``, which gives the same map ~20x faster on a CPU (argmax over the leading axis is slow)."""
    return torch.as_tensor(probs).max(0).indices.numpy()


def _forward(model: torch.nn.Module | Callable[[torch.Tensor], Any], x: torch.Tensor) -> torch.Tensor:
    """The model's logits tensor for ``x`` (deep-supervision lists give the full-resolution head)."""
    return normalize_output(model(x))


@torch.no_grad()
def predict_volume(model: torch.nn.Module | Callable[[torch.Tensor], Any], image: np.ndarray | torch.Tensor, dim: int,
                   size: Sequence[int], volume_size: Sequence[int] | None = None, batch_size: int = 16,
                   overlap: float = 0.25, device: torch.device | str = "cpu") -> torch.Tensor:
    """Class probabilities (K, *spatial) for one case image (C, *spatial) at its original grid.

    Args:
        model: network in eval mode, or any callable from a (B, C, *spatial) tensor to logits (e.g.
            :class:`medkd.onnx_runtime.OnnxPredictor`).
        image: normalised image, channels first; a 2D model takes (C, X, Y, Z) or (C, X, Y).
        dim: the model's spatial dims (2 or 3).
        size: 2D training size (H, W), or 3D sliding-window ROI.
        volume_size: 3D only: resize the volume to this shape before the window (undone after).
        batch_size: slices (2D) or windows (3D) per forward.
        overlap: sliding-window overlap.
        device: where to run.
    """
    x = torch.as_tensor(image, dtype=torch.float32)
    model_device = torch.device(device)
    if dim == 2:
        squeeze = x.ndim == 3
        vol = x[..., None] if squeeze else x
        depth = vol.shape[-1]
        original = tuple(vol.shape[1:3])
        out = []
        for start in range(0, depth, batch_size):
            slices = [resize_image(vol[..., z], size) for z in range(start, min(depth, start + batch_size))]
            logits = _forward(model, torch.stack(slices).to(model_device)).float().cpu()
            probs = logits_to_probabilities(logits)
            out.extend(resize_image(p, original) for p in probs)
        result = torch.stack(out, dim=-1)
        return result[..., 0] if squeeze else result
    original = tuple(x.shape[1:])
    vol = resize_image(x, volume_size) if volume_size is not None else x
    logits = sliding_window_inference(vol[None].to(model_device), roi_size=tuple(size), sw_batch_size=batch_size,
                                      predictor=lambda t: _forward(model, t), overlap=overlap, mode="gaussian")
    probs = logits_to_probabilities(torch.as_tensor(logits).float().cpu())[0]
    return resize_image(probs, original) if volume_size is not None else probs
