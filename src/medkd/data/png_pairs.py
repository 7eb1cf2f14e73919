"""2D image / mask PNG pairs.

Layout::

    ROOT/
      images/<id>.png      grayscale (one channel) or RGB (three channels; an alpha channel is dropped)
      masks/<id>.png       one label value per pixel (8- or 16-bit grayscale, or palette indices)
      dataset.json         optional: "labels" (and "channel_names"), nnU-Net or MSD style
      sites.json           optional: {"cases": {<id>: <site>}}

Ids are matched case-insensitively. Without a ``dataset.json`` the labels are ``{background: 0,
foreground: 1}`` and a mask value 255 reads as 1 (binary masks are often saved as 0 / 255). Pixels are
read with Pillow into (H, W, 1) arrays — a 2D case is a one-slice volume, nnU-Net's convention — with an
identity affine (1 mm pixels), so every later step treats PNG cases like NIfTI ones.

Example:
    >>> array, affine = read_png("ROOT/images/a.png")      # doctest: +SKIP
    >>> array.shape
    (256, 256, 1)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from medkd.data.formats_base import (
    Case,
    DatasetIndex,
    channel_names,
    labels_from_json,
    load_dataset_json,
    read_sites,
    register_format,
)
from medkd.errors import DataError

__all__ = ["read_png", "read_png_pairs"]

_GRAY_MODES = {"1", "L", "I", "I;16", "I;16B", "I;16L", "F", "P", "LA"}


def read_png(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read a PNG into an (H, W, 1) array ((H, W, 1, 3) for colour) and an identity affine.

    Palette images give their palette indices (what palette masks hold); an alpha channel is dropped.

    Raises:
        DataError: the file is missing, not an image, or truncated.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        with Image.open(path) as img:
            img.load()
            mode = img.mode
            if mode == "LA":
                img = img.convert("L")
            elif mode == "RGBA":
                img = img.convert("RGB")
            array = np.asarray(img)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"{path}: unreadable or truncated PNG file ({reason})") from None
    if array.dtype == bool:
        array = array.astype(np.uint8)
    if array.ndim == 2:
        array = array[:, :, None]
    elif array.ndim == 3:
        array = array[:, :, None, :]
    return np.ascontiguousarray(array), np.eye(4)


def _png_files(folder: Path) -> list[Path]:
    return sorted(f for f in folder.iterdir() if f.is_file() and f.suffix.lower() == ".png"
                  and not f.name.startswith("."))


def _is_png_pairs(root: Path) -> bool:
    return (root / "images").is_dir() and (root / "masks").is_dir() and bool(_png_files(root / "images"))


def _infer_channels(first: Path) -> list[str]:
    try:
        with Image.open(first) as img:
            mode = img.mode
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        return ["gray"]  # the check reports the unreadable file itself
    return ["gray"] if mode in _GRAY_MODES else ["R", "G", "B"]


@register_format("png_pairs", _is_png_pairs, order=30)
def read_png_pairs(root: Path) -> DatasetIndex:
    """Read a folder of image / mask PNG pairs (see the module docstring)."""
    root = Path(root)
    images_dir, masks_dir = root / "images", root / "masks"
    if not images_dir.is_dir() or not masks_dir.is_dir():
        raise DataError(f"{root}: expected 'images/' and 'masks/' folders of PNG files")
    json_path = root / "dataset.json"
    data = load_dataset_json(root, required=False)
    issues: list[str] = []
    images: dict[str, Path] = {}
    masks: dict[str, Path] = {}
    for folder, target in ((images_dir, images), (masks_dir, masks)):
        for f in _png_files(folder):
            key = f.stem.lower()
            if key in target:
                issues.append(f"{f}: duplicate case id {f.stem!r} (also {target[key]})")
                continue
            target[key] = f
    if not images:
        raise DataError(f"{images_dir}: no .png images")
    if "channel_names" in data or "modality" in data:
        channels = channel_names(data, json_path)
    else:
        channels = _infer_channels(next(iter(images.values())))
    if len(channels) not in (1, 3):
        raise DataError(f"{json_path}: PNG images have 1 (gray) or 3 (RGB) channels, {len(channels)} declared")
    label_map: dict[int, int] = {}
    if "labels" in data:
        labels = labels_from_json(data, json_path)
    else:
        labels, label_map = {"background": 0, "foreground": 1}, {255: 1}
    sites = read_sites(root)
    cases = []
    for key, image in images.items():
        if key not in masks:
            issues.append(f"{image}: mask missing (expected {masks_dir / image.name})")
            continue
        cases.append(Case(image.stem, (image,), masks[key], sites.get(image.stem),
                          channel_axis=-1 if len(channels) > 1 else None))
    for key, mask in masks.items():
        if key not in images:
            issues.append(f"{mask}: mask without an image in {images_dir.name}/")
    meta = {"label_map": {"255": 1}} if label_map else {}
    return DatasetIndex(root, "png_pairs", channels, labels, cases, meta=meta, label_map=label_map, issues=issues)
