"""Dataset folder formats: nnU-Net v2 raw, Medical Segmentation Decathlon (MSD), site folders, PNG pairs.

Every format is read into the same :class:`DatasetIndex` of :class:`Case` records (id, one file per
channel or one multi-channel file, label file, site), so everything downstream is format-agnostic.
Formats are detected in the order of :func:`list_formats` (``nnunet``, ``msd``, ``png_pairs``, ``site_folders``)
or named with ``data.format``. Each lives in its own module (:mod:`medkd.data.nnunet_msd`,
:mod:`medkd.data.png_pairs`, :mod:`medkd.data.site_folders`) built on :mod:`medkd.data.formats_base`, which holds
the records, the registry (:func:`register_format`) and the ``dataset.json`` helpers; this module imports them all.

Readers never stop at the first broken case: what they find wrong while indexing (a missing channel or
label file, a file that does not follow the naming scheme, a duplicate case id) is recorded in
:attr:`DatasetIndex.issues` and the case is left out. :func:`read_dataset` raises on the first issue
(``strict=True``, the default for training); ``medkd data check`` reads with ``strict=False`` and lists
them all.

Example:
    >>> index = read_dataset("../shared/data/acdc")
    >>> index.format, len(index.cases), index.channel_names
    ('nnunet', 200, ['cine-MRI'])
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medkd.data.formats_base import (
    FORMATS,
    Case,
    DatasetIndex,
    FormatReader,
    list_formats,
    load_dataset_json,
    register_format,
    with_label_map,
)
from medkd.data.nifti_io import read_nifti
from medkd.data.nnunet_msd import read_msd, read_nnunet
from medkd.data.png_pairs import read_png
from medkd.data.site_folders import read_site_folders  # noqa: F401  (registers the format)
from medkd.errors import DataError

__all__ = [
    "FORMATS",
    "FORMAT_READERS",
    "Case",
    "DatasetIndex",
    "FormatReader",
    "detect_format",
    "list_formats",
    "read_dataset",
    "read_image",
    "read_msd",
    "read_nnunet",
    "register_format",
    "with_label_map",
]

#: Name -> reader of every registered format (the registry itself; kept under its former name).
FORMAT_READERS = FORMATS


def read_image(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read an image or label file of any supported kind: NIfTI, or PNG (see :mod:`medkd.data.png_pairs`).

    Returns:
        ``(array, affine)``; a PNG gives an (H, W, 1) array (or (H, W, 1, C) for colour) and an identity affine.
    """
    path = Path(path)
    if path.suffix.lower() == ".png":
        return read_png(path)
    return read_nifti(path)


def detect_format(root: Path) -> str:
    """Name of the first registered format whose detector accepts ``root``."""
    root = Path(root)
    if not root.exists():
        raise DataError(f"{root}: dataset folder not found")
    if not root.is_dir():
        raise DataError(f"{root}: not a folder")
    if (root / "dataset.json").is_file():
        load_dataset_json(root)  # a broken dataset.json is named, not mistaken for another format
    for name in list_formats():
        if FORMATS.meta(name)["detector"](root):
            return name
    raise DataError(f"{root}: not a recognised dataset folder (formats: {', '.join(list_formats())})")


def read_dataset(root: str | Path, format: str = "auto", strict: bool = True) -> DatasetIndex:
    """Read a dataset folder in the given (or detected) format.

    Args:
        root: the dataset folder.
        format: a registered format name, or ``"auto"`` to detect it.
        strict: raise on the first indexing issue (missing / misnamed file, duplicate case id); with
            ``False`` the issues are kept in :attr:`DatasetIndex.issues` and the affected cases left out.

    Raises:
        DataError: the folder is missing or unreadable, or (strict) has an issue.
        ConfigError: unknown format name.
    """
    root = Path(root)
    if format == "auto":
        format = detect_format(root)
    reader = FORMATS.lookup(format)
    if not root.is_dir():
        raise DataError(f"{root}: dataset folder not found")
    index = reader(root)
    seen: dict[str, Case] = {}
    unique = []
    for c in index.cases:
        if c.case_id in seen:
            index.issues.append(f"{c.image_files[0]}: duplicate case id {c.case_id!r} "
                                f"(also {seen[c.case_id].image_files[0]})")
            continue
        seen[c.case_id] = c
        unique.append(c)
    index.cases = unique
    if strict and index.issues:
        more = f" (+{len(index.issues) - 1} more; run 'medkd data check {root}')" if len(index.issues) > 1 else ""
        raise DataError(f"{index.issues[0]}{more}")
    if strict and not index.cases:
        raise DataError(f"{root}: no readable cases")
    return index
