"""From case files to normalised arrays and to in-memory training samples.

The path is one straight line: :class:`~medkd.data.formats.Case` -> :func:`load_case` (nibabel) ->
:func:`normalise` (MONAI intensity transforms, per channel) -> :class:`PreparedCase` -> 2D slices
resized to a fixed size (:func:`slice_samples`) or whole volumes for 3D patch training.

Example:
    >>> prepared = prepare_cases(index, ["case_000"], channels=[0], normalize="zscore")
    >>> images, labels = slice_samples(prepared, size=(128, 128))
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from monai.transforms import (
    NormalizeIntensity,
    Resize,
    ScaleIntensity,
    ScaleIntensityRangePercentiles,
)

from medkd.data.formats import Case, DatasetIndex
from medkd.data.nifti_io import read_nifti
from medkd.errors import DataError

__all__ = [
    "PreparedCase",
    "label_lookup",
    "load_case",
    "normalise",
    "prepare_cases",
    "resize_image",
    "resize_label",
    "slice_samples",
]


@dataclass
class PreparedCase:
    """A case ready for training or evaluation.

    Attributes:
        case_id: the case id.
        site: acquisition site or None.
        image: float32 array (C, *spatial), normalised per channel, in file orientation.
        label: int64 array (*spatial) of class indices 0..K-1, or None if unlabelled.
        affine: the image's 4x4 affine (used to write predictions back).
    """

    case_id: str
    site: str | None
    image: np.ndarray
    label: np.ndarray | None
    affine: np.ndarray

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        return tuple(self.image.shape[1:])


def label_lookup(labels: dict[str, int]) -> np.ndarray:
    """Lookup table from label value to class index 0..K-1 (-1 for undeclared values)."""
    values = sorted(labels.values())
    table = np.full(max(values) + 1, -1, dtype=np.int64)
    for i, v in enumerate(values):
        table[v] = i
    return table


def load_case(case: Case, channels: Sequence[int], labels: dict[str, int] | None = None
              ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """Read a case's chosen channels as (C, *spatial) float32, its label as class indices, and its affine."""
    if case.channel_axis is not None:
        data, affine = read_nifti(case.image_files[0])
        if data.ndim < 2:
            raise DataError(f"{case.image_files[0]}: expected a multi-channel image, got shape {data.shape}")
        data = np.moveaxis(data, case.channel_axis, 0)
        if max(channels) >= data.shape[0]:
            raise DataError(f"{case.image_files[0]}: has {data.shape[0]} channels, channel {max(channels)} requested")
        image = data[list(channels)].astype(np.float32)
    else:
        arrays = []
        affine = None
        for ch in channels:
            arr, aff = read_nifti(case.image_files[ch])
            if arrays and arr.shape != arrays[0].shape:
                raise DataError(f"{case.image_files[ch]}: shape {arr.shape} differs from channel 0 {arrays[0].shape}")
            affine = aff if affine is None else affine
            arrays.append(arr.astype(np.float32))
        image = np.stack(arrays)
    if not np.isfinite(image).all():
        raise DataError(f"{case.image_files[0]}: image contains NaN or Inf voxels")
    label = None
    if case.label_file is not None and labels is not None:
        raw, _ = read_nifti(case.label_file)
        if raw.shape != image.shape[1:]:
            raise DataError(f"{case.label_file}: label shape {raw.shape} differs from image shape {image.shape[1:]}")
        raw = np.rint(raw).astype(np.int64)
        table = label_lookup(labels)
        bad = (raw < 0) | (raw >= len(table))
        if not bad.any():
            bad = table[raw] < 0
        if bad.any():
            value = int(raw[bad].flat[0])
            raise DataError(f"{case.label_file}: label value {value} is not declared in dataset.json "
                            f"(declared: {sorted(labels.values())})")
        label = table[raw]
    return image, label, affine


def normalise(image: np.ndarray, mode: str) -> np.ndarray:
    """Per-channel intensity normalisation with MONAI transforms.

    Modes: ``zscore`` (whole image), ``zscore_nonzero`` (mean/std over non-zero voxels, zeros kept;
    paper C), ``minmax`` (to [0, 1]), ``percentile`` (0.5-99.5 percentiles to [0, 1], clipped), ``none``.
    """
    if mode == "none":
        return image.astype(np.float32)
    transforms = {
        "zscore": lambda: NormalizeIntensity(channel_wise=True),
        "zscore_nonzero": lambda: NormalizeIntensity(nonzero=True, channel_wise=True),
        "minmax": lambda: ScaleIntensity(channel_wise=True),
        "percentile": lambda: ScaleIntensityRangePercentiles(0.5, 99.5, 0.0, 1.0, clip=True, channel_wise=True),
    }
    out = transforms[mode]()(torch.from_numpy(np.ascontiguousarray(image)))
    return np.asarray(out, dtype=np.float32)


def prepare_cases(index: DatasetIndex, case_ids: Sequence[str], channels: Sequence[int],
                  normalize: str = "zscore") -> list[PreparedCase]:
    """Load and normalise the given cases (labels mapped to class indices)."""
    out = []
    for cid in case_ids:
        case = index.case(cid)
        image, label, affine = load_case(case, channels, index.labels)
        out.append(PreparedCase(cid, case.site, normalise(image, normalize), label, affine))
    return out


def resize_image(image: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Resize a (C, *spatial) tensor with (bi/tri)linear interpolation (MONAI ``Resize``)."""
    if tuple(image.shape[1:]) == tuple(size):
        return image
    mode = "bilinear" if len(size) == 2 else "trilinear"
    return torch.as_tensor(Resize(spatial_size=tuple(size), mode=mode, anti_aliasing=False)(image))


def resize_label(label: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Resize a (1, *spatial) label tensor with nearest-neighbour interpolation."""
    if tuple(label.shape[1:]) == tuple(size):
        return label
    out = Resize(spatial_size=tuple(size), mode="nearest")(label.float())
    return torch.as_tensor(out).round().to(torch.int64)


def slice_samples(cases: Sequence[PreparedCase], size: Sequence[int], foreground_only: bool = False
                  ) -> tuple[torch.Tensor, torch.Tensor, list[tuple[str, int]]]:
    """Cut every volume into 2D slices along its last axis and resize them to ``size``.

    Returns:
        images (N, C, H, W) float32, labels (N, 1, H, W) int64 and the (case id, slice index) of each.
    """
    images, labels, origin = [], [], []
    for pc in cases:
        if pc.label is None:
            raise DataError(f"case {pc.case_id}: no label file; cannot train on it")
        vol = torch.from_numpy(pc.image)
        lab = torch.from_numpy(pc.label)
        depth = vol.shape[-1] if vol.ndim == 4 else 1
        for z in range(depth):
            img2d = vol[..., z] if vol.ndim == 4 else vol
            lab2d = lab[..., z] if lab.ndim == 3 else lab
            if foreground_only and not bool((lab2d > 0).any()):
                continue
            images.append(resize_image(img2d, size))
            labels.append(resize_label(lab2d[None], size))
            origin.append((pc.case_id, z))
    if not images:
        raise DataError("no training slices: every slice was empty or filtered out")
    return torch.stack(images).float(), torch.stack(labels).long(), origin
