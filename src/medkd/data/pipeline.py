"""From case files to normalised arrays and to in-memory training samples.

The path is one straight line: :class:`~medkd.data.formats.Case` -> :func:`load_case` (nibabel / Pillow;
label mapping; simulated site) -> the steps of :mod:`medkd.data.preprocess` (orientation, resampling, crops,
percentile clipping) -> :func:`normalise` (MONAI intensity transforms, per channel) -> 2.5D neighbour
channels -> :class:`PreparedCase` -> 2D slices resized to a fixed size (:func:`slice_samples`) or whole
volumes for 3D patch training.

Pass the run's whole :class:`~medkd.config.DataConfig` to :func:`prepare_cases` to apply every step; a
normalisation name alone applies only that (the grid stays the file's).

A teacher trained on its own per-case normalisation (nnU-Net's) gets its own copy of its channels
(:class:`TeacherCopy`): its normalisation of the raw intensities on the run's grid (after the grid-changing steps,
before percentile clipping and ``data.normalize``), held as extra channels after the loaded ones, so every later
step (2.5D neighbours, slicing, resizing, patches, augmentation) treats it exactly like the student's image.

Example:
    >>> prepared = prepare_cases(index, ["case_000"], channels=[0], normalize=cfg.data)
    >>> images, labels, origin = slice_samples(prepared, size=(128, 128))
    >>> probs = prepared[0].restore(predict_volume(model, prepared[0].image, 2, (128, 128)))  # original grid
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
from monai.transforms import (
    NormalizeIntensity,
    Resize,
    ScaleIntensity,
    ScaleIntensityRangePercentiles,
)
from monai.utils import convert_to_tensor
from tqdm.auto import tqdm

from medkd.config import DataConfig
from medkd.data.formats import Case, DatasetIndex, read_image
from medkd.data.nifti_io import spacing_from_affine
from medkd.data.preprocess import GridRecord, add_neighbour_slices, apply_spatial, clip_percentiles
from medkd.data.protocols import apply_simulated_site
from medkd.errors import DataError

__all__ = [
    "CaseNormalization",
    "PreparedCase",
    "TeacherCopy",
    "label_lookup",
    "load_case",
    "normalise",
    "prepare_arrays",
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
        image: float32 array (C, *spatial), preprocessed (the file's grid unless a step changed it).
        label: int64 array (*spatial) of class indices 0..K-1 on the same grid, or None if unlabelled.
        affine: the file's 4x4 affine (used to write predictions back and for mm distances).
        original_label: class indices on the file's grid when the grid changed (else None: ``label`` is it).
        grid: how to map predictions back to the file's grid (None when the grid did not change).
    """

    case_id: str
    site: str | None
    image: np.ndarray
    label: np.ndarray | None
    affine: np.ndarray
    original_label: np.ndarray | None = None
    grid: GridRecord | None = None

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        return tuple(self.image.shape[1:])

    @property
    def reference(self) -> np.ndarray | None:
        """The label to evaluate against: class indices on the file's grid."""
        return self.original_label if self.grid is not None else self.label

    def restore(self, probs: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Class probabilities (K, *image grid) mapped to the file's grid (identity when it did not change)."""
        if self.grid is None:
            return torch.as_tensor(probs)
        return self.grid.restore(probs)


class CaseNormalization(Protocol):
    """A per-case intensity normalisation of a (C, *spatial) image (e.g. nnU-Net's, of a teacher)."""

    def __call__(self, image: np.ndarray) -> np.ndarray: ...

    def describe(self) -> dict[str, Any]:
        """JSON-ready facts that decide its numbers (fingerprinted by the prepared-sample cache)."""
        ...


@dataclass(frozen=True)
class TeacherCopy:
    """The teacher's own copy of its channels: ``normalize`` of the loaded channels at ``positions``.

    Attributes:
        positions: positions of the teacher's channels among the loaded channels (``data.teacher_channels`` order).
        normalize: the teacher's per-case normalisation of those channels (raw intensities in).
    """

    positions: tuple[int, ...]
    normalize: CaseNormalization

    def of(self, image: np.ndarray) -> np.ndarray:
        """The teacher's channels of the raw ``image`` (C, *spatial), normalised its way (float32)."""
        return np.asarray(self.normalize(image[list(self.positions)]), dtype=np.float32)

    def describe(self) -> dict[str, Any]:
        """JSON-ready facts of the copy (positions and normalisation)."""
        return {"positions": [int(p) for p in self.positions], "normalization": self.normalize.describe()}


def label_lookup(labels: dict[str, int]) -> np.ndarray:
    """Lookup table from label value to class index 0..K-1 (-1 for undeclared values)."""
    values = sorted(labels.values())
    table = np.full(max(values) + 1, -1, dtype=np.int64)
    for i, v in enumerate(values):
        table[v] = i
    return table


def load_case(case: Case, channels: Sequence[int], labels: dict[str, int] | None = None,
              index: DatasetIndex | None = None) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """Read a case's chosen channels as (C, *spatial) float32, its label as class indices, and its affine.

    Args:
        case: the case.
        channels: dataset channel indices to read.
        labels: class name -> label value (default: ``index.labels``); without labels the label is not read.
        index: the case's dataset: its ``merge_above`` / ``label_map`` are applied to the raw label values
            and, when it has simulated sites, the case's site profile to the image.

    Raises:
        DataError: unreadable file, shape mismatch, NaN / Inf voxels, undeclared label value.
    """
    if labels is None and index is not None:
        labels = index.labels
    if case.channel_axis is not None:
        data, affine = read_image(case.image_files[0])
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
            arr, aff = read_image(case.image_files[ch])
            if arrays and arr.shape != arrays[0].shape:
                raise DataError(f"{case.image_files[ch]}: shape {arr.shape} differs from channel 0 {arrays[0].shape}")
            affine = aff if affine is None else affine
            arrays.append(arr.astype(np.float32))
        image = np.stack(arrays)
    if not np.isfinite(image).all():
        raise DataError(f"{case.image_files[0]}: image contains NaN or Inf voxels")
    if index is not None and index.meta.get("simulated_sites") and case.site is not None:
        spacing = spacing_from_affine(affine)[: image.ndim - 1]
        image = apply_simulated_site(index, case, image, channels, spacing=spacing)
    label = None
    if case.label_file is not None and labels is not None:
        raw, _ = read_image(case.label_file)
        if raw.shape != image.shape[1:]:
            raise DataError(f"{case.label_file}: label shape {raw.shape} differs from image shape {image.shape[1:]}")
        raw = np.rint(raw).astype(np.int64)
        if index is not None:
            raw = index.map_label_values(raw)
        table = label_lookup(labels)
        bad = (raw < 0) | (raw >= len(table))
        if not bad.any():
            bad = table[raw] < 0
        if bad.any():
            value = int(raw[bad].flat[0])
            where = "dataset.json" if index is None or (index.root / "dataset.json").is_file() else "the dataset"
            raise DataError(f"{case.label_file}: label value {value} is not declared in {where} "
                            f"(declared: {sorted(labels.values())})")
        label = table[np.clip(raw, 0, len(table) - 1)]
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


def prepare_arrays(case_id: str, site: str | None, image: np.ndarray, label: np.ndarray | None,
                   affine: np.ndarray, data: DataConfig | str, teacher: TeacherCopy | None = None) -> PreparedCase:
    """Preprocess one loaded case (see the module docstring of :mod:`medkd.data.preprocess`).

    Args:
        case_id: the case id.
        site: its site, or None.
        image: (C, *spatial) float image on the file's grid.
        label: class indices on the same grid, or None.
        affine: the file's affine.
        data: the run's data config (every step), or a normalisation name (only that).
        teacher: the teacher's own copy of its channels, appended after the loaded ones (None: no copy).

    Returns:
        The prepared case; ``restore`` maps predictions back to the file's grid.
    """
    if isinstance(data, str):
        new_image = normalise(image, data)
        if teacher is not None:
            new_image = np.concatenate([new_image, teacher.of(image)])
        return PreparedCase(case_id, site, new_image, label, affine)
    new_image, new_label, grid = apply_spatial(image, label, affine, data)
    teacher_image = teacher.of(new_image) if teacher is not None else None
    if data.clip_percentiles:
        new_image = clip_percentiles(new_image, *data.clip_percentiles)
    new_image = normalise(new_image, data.normalize)
    if teacher_image is not None:
        new_image = np.concatenate([new_image, teacher_image])
    if data.neighbours:
        if new_image.ndim != 4:
            raise DataError(f"case {case_id}: data.neighbours needs (C, X, Y, Z) volumes, got {new_image.shape}")
        new_image = add_neighbour_slices(new_image, data.neighbours)
    return PreparedCase(case_id, site, new_image, new_label, affine,
                        original_label=label if grid is not None else None, grid=grid)


def prepare_cases(index: DatasetIndex, case_ids: Sequence[str], channels: Sequence[int],
                  normalize: str | DataConfig = "zscore", progress: str | None = None,
                  teacher: TeacherCopy | None = None) -> list[PreparedCase]:
    """Load and preprocess the given cases (labels mapped to class indices).

    Args:
        index: the dataset (its label mapping and simulated sites apply).
        case_ids: which cases.
        channels: dataset channel indices to hold, in this order.
        normalize: the run's :class:`~medkd.config.DataConfig` (all preprocessing steps), or only a
            normalisation mode name (``zscore``, ``zscore_nonzero``, ``minmax``, ``percentile``, ``none``).
        progress: a label to show a progress bar with, on a terminal (None: silent).
        teacher: the teacher's own copy of its channels (:class:`TeacherCopy`), held after ``channels``.
    """
    out = []
    for cid in tqdm(case_ids, desc=progress, disable=None if progress else True, leave=False, dynamic_ncols=True):
        case = index.case(cid)
        image, label, affine = load_case(case, channels, index.labels, index=index)
        out.append(prepare_arrays(cid, case.site, image, label, affine, normalize, teacher))
    return out


def resize_image(image: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Resize a (C, *spatial) tensor with (bi/tri)linear interpolation (MONAI ``Resize``)."""
    if tuple(image.shape[1:]) == tuple(size):
        return image
    mode = "bilinear" if len(size) == 2 else "trilinear"
    resized = Resize(spatial_size=tuple(size), mode=mode, anti_aliasing=False)(image)
    return convert_to_tensor(resized, track_meta=False)  # plain: MetaTensor dispatch slowed 2D inference ~14%


def resize_label(label: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Resize a (1, *spatial) label tensor with nearest-neighbour interpolation."""
    if tuple(label.shape[1:]) == tuple(size):
        return label
    out = Resize(spatial_size=tuple(size), mode="nearest")(label.float())
    return convert_to_tensor(out, track_meta=False).round().to(torch.int64)


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
