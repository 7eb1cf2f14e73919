"""Preprocessing steps of ``data.*`` with MONAI transforms, and how predictions go back to the original grid.

Order of the steps (each off by default, so a default config trains on the file grid as before):

1. ``orientation``: reorient to axis codes such as ``RAS`` (MONAI ``Orientationd``);
2. ``spacing``: resample to a voxel size in mm, linear for images and nearest for labels (``Spacingd``);
   a value <= 0 keeps that axis' spacing (e.g. ``[1.0, 1.0, 0]`` resamples in-plane only);
3. ``crop_foreground``: crop to the bounding box of the non-zero voxels of any channel, plus ``crop_margin``
   (``CropForegroundd``; nnU-Net's non-zero crop — skull-stripped brain MRI such as BraTS);
4. ``center_crop``: central crop (``CenterSpatialCropd``; paper C crops 128^3 around the centre, then
   ``volume_size`` downsamples);
5. ``clip_percentiles``: clip each channel to two percentiles (``ClipIntensityPercentiles``);
6. ``normalize``: per-channel intensity normalisation (:func:`medkd.data.pipeline.normalise`);
7. ``neighbours``: 2.5D input — ``k`` slices on each side of a 2D slice become extra channels
   (:func:`add_neighbour_slices`; paper A's option with ``k = 1``).

A teacher with its own normalisation (nnU-Net's) gets its own copy of its channels, normalised its way from the
raw intensities after steps 1-4 (so cropped and resampled like the student's image) and skipping steps 5-6;
step 7 and everything after treat it like the other channels (:class:`medkd.data.pipeline.TeacherCopy`).

**Evaluation is done on each case's original grid.** Steps 1-4 change the grid; they are recorded as MONAI
applied operations in a :class:`GridRecord`, and :meth:`GridRecord.restore` inverts them on the predicted class
probabilities (re-orientation and resampling back, crops padded with background), so the prediction has
the shape and affine of the input file and is compared with the untouched reference label. Validation during
training compares on the preprocessed grid (it only selects the best epoch).

Model input channels: with ``neighbours = k`` a network reads ``channels * (2k + 1)`` input channels
(:func:`model_in_channels`), channel ``c`` of the dataset contributing slices ``z-k .. z+k`` in that order.

BraTS regions: evaluation by region (``evaluate.regions: {WT: [1, 2, 3, 4], TC: [1, 3, 4], ET: [4]}``)
unites predicted label values, so a model trained on the classes 0..4 is scored per region. For region-based
(multi-label, sigmoid) training, :func:`region_targets` builds the overlapping region masks of a label map.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import (
    CenterSpatialCropd,
    ClipIntensityPercentiles,
    Compose,
    CropForegroundd,
    Orientationd,
    Spacingd,
)

from medkd.config import DataConfig

__all__ = [
    "GridRecord",
    "add_neighbour_slices",
    "apply_spatial",
    "build_spatial_transform",
    "changes_grid",
    "clip_percentiles",
    "model_in_channels",
    "neighbour_positions",
    "region_targets",
]

_AXIS_LABELS = (("L", "R"), ("P", "A"), ("I", "S"))


def changes_grid(data: DataConfig) -> bool:
    """Whether ``data`` asks for a step that changes the voxel grid (orientation, spacing, crops)."""
    return bool(data.orientation or data.spacing or data.crop_foreground or data.center_crop)


def _nonzero(x: torch.Tensor) -> torch.Tensor:
    return x != 0


def build_spatial_transform(data: DataConfig) -> Any | None:
    """The MONAI ``Compose`` of the grid-changing steps of ``data`` (keys ``image`` and ``label``), or None."""
    if not changes_grid(data):
        return None
    keys = ("image", "label")
    steps: list[Any] = []
    if data.orientation:
        steps.append(Orientationd(keys, axcodes=data.orientation.upper(), labels=_AXIS_LABELS,
                                  allow_missing_keys=True))
    if data.spacing:
        steps.append(Spacingd(keys, pixdim=[float(s) for s in data.spacing], mode=("bilinear", "nearest"),
                              dtype=np.float32, allow_missing_keys=True))
    if data.crop_foreground:
        steps.append(CropForegroundd(keys, source_key="image", select_fn=_nonzero, margin=data.crop_margin,
                                     allow_smaller=True, start_coord_key=None, end_coord_key=None,
                                     allow_missing_keys=True))
    if data.center_crop:
        steps.append(CenterSpatialCropd(keys, roi_size=[int(s) for s in data.center_crop], allow_missing_keys=True))
    return Compose(steps)


@dataclass
class GridRecord:
    """What the grid-changing steps did to one case, so that predictions can be mapped back.

    Attributes:
        transform: the MONAI ``Compose`` that was applied.
        meta: the image's meta dict after the steps.
        operations: the image's MONAI applied operations (inverted in reverse order by :meth:`restore`).
        original_shape: the spatial shape of the file.
    """

    transform: Any
    meta: dict[str, Any]
    operations: list[dict[str, Any]]
    original_shape: tuple[int, ...]

    def restore(self, probs: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Map class probabilities (K, *preprocessed grid) back to (K, *original grid).

        Voxels outside a crop get background probability 1; probabilities still sum to one.
        """
        x = MetaTensor(torch.as_tensor(probs, dtype=torch.float32), meta=copy.deepcopy(self.meta))
        x.applied_operations = copy.deepcopy(self.operations)
        out = self.transform.inverse({"image": x})["image"]
        out = torch.as_tensor(out.as_tensor() if isinstance(out, MetaTensor) else out, dtype=torch.float32)
        out = out.clamp_min(0)
        out[0] += (1.0 - out.sum(0)).clamp_min(0)
        return out / out.sum(0, keepdim=True).clamp_min(1e-8)


def apply_spatial(image: np.ndarray, label: np.ndarray | None, affine: np.ndarray, data: DataConfig
                  ) -> tuple[np.ndarray, np.ndarray | None, GridRecord | None]:
    """Apply the grid-changing steps of ``data`` to a (C, X, Y, Z) image and its (X, Y, Z) class-index label.

    Returns:
        The image (float32) and label (int64) on the new grid, and the record that inverts the steps
        (None, with the inputs unchanged, when ``data`` changes no grid).
    """
    transform = build_spatial_transform(data)
    if transform is None:
        return image, label, None
    aff = torch.as_tensor(np.asarray(affine, dtype=np.float64))
    sample: dict[str, Any] = {"image": MetaTensor(torch.as_tensor(image, dtype=torch.float32), affine=aff)}
    if label is not None:
        sample["label"] = MetaTensor(torch.as_tensor(label[None], dtype=torch.float32), affine=aff.clone())
    out = transform(sample)
    img = out["image"]
    record = GridRecord(transform, copy.deepcopy(dict(img.meta)), copy.deepcopy(list(img.applied_operations)),
                        tuple(int(n) for n in image.shape[1:]))
    new_image = np.ascontiguousarray(img.as_tensor().numpy(), dtype=np.float32)
    new_label = None
    if label is not None:
        new_label = np.rint(out["label"].as_tensor().numpy()[0]).astype(np.int64)
    return new_image, new_label, record


def clip_percentiles(image: np.ndarray, low: float, high: float) -> np.ndarray:
    """Clip each channel of a (C, *spatial) image to its ``low`` and ``high`` percentiles (MONAI)."""
    out = ClipIntensityPercentiles(low, high, channel_wise=True)(torch.as_tensor(image, dtype=torch.float32))
    return np.asarray(out, dtype=np.float32)


def add_neighbour_slices(image: np.ndarray, k: int) -> np.ndarray:
    """2.5D input: stack slices ``z-k .. z+k`` (along the last axis) of every channel as channels.

    Args:
        image: (C, X, Y, Z) volume.
        k: neighbours on each side; slices beyond the ends repeat the end slice.

    Returns:
        (C * (2k + 1), X, Y, Z): channel ``c * (2k + 1) + j`` holds slice ``z + j - k`` of channel ``c``.
    """
    if k <= 0:
        return image
    depth = image.shape[-1]
    z = np.arange(depth)
    out = [image[c][..., np.clip(z + j - k, 0, depth - 1)] for c in range(image.shape[0]) for j in range(2 * k + 1)]
    return np.ascontiguousarray(np.stack(out), dtype=np.float32)


def model_in_channels(n_channels: int, neighbours: int = 0) -> int:
    """Input channels of a network that reads ``n_channels`` dataset channels with ``neighbours`` per side."""
    return n_channels * (2 * neighbours + 1)


def neighbour_positions(positions: Sequence[int], neighbours: int = 0) -> list[int]:
    """Positions of the expanded (2.5D) channels of the held channels at ``positions``."""
    width = 2 * neighbours + 1
    return [p * width + j for p in positions for j in range(width)]


def region_targets(label_values: np.ndarray, regions: Mapping[str, Sequence[int] | int]) -> np.ndarray:
    """Overlapping region masks (multi-label targets), e.g. BraTS WT / TC / ET from label values 0..4.

    Args:
        label_values: integer map of label values (not class indices), any shape.
        regions: region name -> label values it unites.

    Returns:
        uint8 array (R, *shape), one mask per region in the mapping's order.
    """
    values = np.asarray(label_values)
    masks = [np.isin(values, [v] if isinstance(v, int) else list(v)) for v in regions.values()]
    return np.stack(masks).astype(np.uint8)
