"""A compact copy of a dataset: every slice resized in-plane, optionally stored as uint8, nnU-Net v2 raw layout.

What it is for: carrying a real dataset to another machine (a GPU box with a size cap on what travels), and
experiments that train and score at a reduced in-plane size (e.g. ACDC at 128 x 128). The copy is an ordinary
dataset folder: ``dataset.json``, ``imagesTr/<case>_<channel>.nii.gz``, ``labelsTr/<case>.nii.gz``; the source's
``splits.json`` and ``sites.json`` come along. Every case keeps its slices (the last axis); the first two axes are
resized (bilinear for images, nearest neighbour for labels, both MONAI ``Resize``) and the affine's in-plane
columns are scaled so the physical extent is unchanged. Label values are written as the source declares them.

``dtype="uint8"`` stores each channel of each volume min-max scaled to 0..255: a per-volume affine intensity map
plus quantisation, harmless for runs that z-score per volume (the default), wrong for CT windows in HU.

The copy is built in a temporary folder beside ``out`` and renamed into place, so a failed copy leaves nothing;
``out`` must not exist yet, and may not lie inside the source.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from medkd.data.formats import DatasetIndex, read_dataset
from medkd.data.nifti_io import write_nifti
from medkd.data.pipeline import load_case, resize_image, resize_label
from medkd.errors import MedkdError

__all__ = ["write_compact_copy"]

_DTYPES = ("uint8", "float32")  # NIfTI-1 has no half-precision type (nibabel refuses float16)


def write_compact_copy(source: str | Path, out: str | Path, size: Sequence[int] = (128, 128),
                       dtype: str = "uint8", fmt: str = "auto") -> DatasetIndex:
    """Write the compact copy of ``source`` to ``out`` (see the module docstring); returns the copy's index."""
    src, out = Path(source).resolve(), Path(out).resolve()
    _check_target(src, out, dtype, size)
    index = read_dataset(src, fmt)
    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    (tmp / "imagesTr").mkdir(parents=True)
    (tmp / "labelsTr").mkdir()
    try:
        values = np.array(sorted(index.labels.values()))
        for case in index.cases:
            image, label, affine = load_case(case, list(range(len(index.channel_names))), index=index)
            _write_case(tmp, case.case_id, image, None if label is None else values[label], affine, size, dtype)
        _write_metadata(src, tmp, index)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    tmp.rename(out)
    return read_dataset(out, "nnunet")


def _check_target(src: Path, out: Path, dtype: str, size: Sequence[int]) -> None:
    if dtype not in _DTYPES:
        why = " (NIfTI has no float16 data type)" if dtype == "float16" else ""
        raise MedkdError(f"--dtype {dtype}: expected one of {', '.join(_DTYPES)}{why}")
    if len(size) != 2 or min(size) < 1:
        raise MedkdError(f"--size {list(size)}: expected two positive in-plane sizes, e.g. 128x128")
    if out.exists():
        raise MedkdError(f"{out}: already exists; a compact copy is written to a new folder")
    if out == src or src in out.parents:
        raise MedkdError(f"{out}: lies inside the source dataset {src}; write the copy elsewhere")


def _write_case(root: Path, case_id: str, image: np.ndarray, label: np.ndarray | None, affine: np.ndarray,
                size: Sequence[int], dtype: str) -> None:
    """Resize one case in-plane (image (C, X, Y[, Z]), label (X, Y[, Z])) and write it."""
    vol = torch.from_numpy(image if image.ndim == 4 else image[..., None])
    slices = [resize_image(vol[..., z], size) for z in range(vol.shape[-1])]
    small = torch.stack(slices, dim=-1).numpy()
    new_affine = np.array(affine, dtype=float)
    for axis in range(2):
        new_affine[:3, axis] *= image.shape[1 + axis] / size[axis]
    for c in range(small.shape[0]):
        write_nifti(root / "imagesTr" / f"{case_id}_{c:04d}.nii.gz", _cast(small[c], dtype), affine=new_affine,
                    dtype=dtype)
    if label is not None:
        lab = torch.from_numpy(label if label.ndim == 3 else label[..., None])
        parts = [resize_label(lab[None, ..., z], size)[0] for z in range(lab.shape[-1])]
        write_nifti(root / "labelsTr" / f"{case_id}.nii.gz", torch.stack(parts, dim=-1).numpy().astype(np.uint8),
                    affine=new_affine, dtype="uint8")


def _cast(channel: np.ndarray, dtype: str) -> np.ndarray:
    if dtype != "uint8":
        return channel.astype(dtype)
    lo, hi = float(channel.min()), float(channel.max())
    scaled = (channel - lo) / (hi - lo) if hi > lo else np.zeros_like(channel)
    return np.rint(scaled * 255).astype(np.uint8)


def _write_metadata(src: Path, root: Path, index: DatasetIndex) -> None:
    labelled = sum(1 for c in index.cases if c.label_file is not None)
    meta = {"channel_names": {str(i): n for i, n in enumerate(index.channel_names)}, "labels": index.labels,
            "numTraining": labelled, "file_ending": ".nii.gz",
            "description": f"compact copy of {src.name} made by medkd data compact"}
    (root / "dataset.json").write_text(json.dumps(meta, indent=2))
    for name in ("splits.json", "sites.json"):
        if (src / name).is_file():
            shutil.copy2(src / name, root / name)
