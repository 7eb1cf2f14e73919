"""The two ``dataset.json`` formats: nnU-Net v2 raw and the Medical Segmentation Decathlon (MSD).

* **nnU-Net v2 raw**: ``dataset.json`` (``channel_names``, ``labels``, ``file_ending``),
  ``imagesTr/<case>_<CCCC><ending>``, ``labelsTr/<case><ending>``;
* **MSD**: ``dataset.json`` with a ``training`` list of ``{"image", "label"}`` paths (multi-modal images as 4D
  NIfTI, channels on the last axis, in ``modality`` order).

Both register themselves (first in detection order) when this module is imported; read them through
:func:`medkd.data.formats.read_dataset`.

Example:
    >>> index = read_nnunet(Path("../shared/data/acdc"))      # doctest: +SKIP
    >>> index.format, index.channel_names
    ('nnunet', ['cine-MRI'])
"""

from __future__ import annotations

import json
import re
from pathlib import Path

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

__all__ = ["read_msd", "read_nnunet"]


def _is_nnunet(root: Path) -> bool:
    if not (root / "dataset.json").is_file() or not (root / "imagesTr").is_dir():
        return False
    try:
        data = json.loads((root / "dataset.json").read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return False
    return "channel_names" in data or "training" not in data


def _is_msd(root: Path) -> bool:
    if not (root / "dataset.json").is_file():
        return False
    try:
        data = json.loads((root / "dataset.json").read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return False
    return isinstance(data.get("training"), list)


@register_format("nnunet", _is_nnunet, order=10)
def read_nnunet(root: Path) -> DatasetIndex:
    """Read an nnU-Net v2 raw dataset: ``imagesTr/<case>_<CCCC><ending>``, ``labelsTr/<case><ending>``.

    Every case needs one file per declared channel and a label file; a case missing any of them, a
    channel number beyond the declared ones, or a label without an image is recorded as an issue. A folder
    with no ``labelsTr`` at all is a dataset of images without labels (every case's ``label_file`` is None),
    e.g. the extra images of distillation on images without labels (``data.unlabeled``); training on its
    cases with a segmentation loss fails with a one-line error naming the case.
    """
    root = Path(root)
    data = load_dataset_json(root)
    json_path = root / "dataset.json"
    channels = channel_names(data, json_path)
    labels = labels_from_json(data, json_path)
    ending = str(data.get("file_ending", ".nii.gz"))
    images_dir = root / "imagesTr"
    labels_dir = root / "labelsTr"
    if not images_dir.is_dir():
        raise DataError(f"{images_dir}: folder not found")
    pattern = re.compile(rf"^(?P<case>.+)_(?P<ch>\d{{4}}){re.escape(ending)}$")
    issues: list[str] = []
    by_case: dict[str, dict[int, Path]] = {}
    for f in sorted(images_dir.iterdir()):
        if f.name.startswith("."):
            continue
        m = pattern.match(f.name)
        if m is None:
            if f.name.endswith(ending):
                issues.append(f"{f}: image not named <case>_<4-digit channel>{ending}")
            continue
        by_case.setdefault(m["case"], {})[int(m["ch"])] = f
    sites = read_sites(root)
    cases = []
    for case_id, files in sorted(by_case.items()):
        extra = sorted(i for i in files if i >= len(channels))
        missing = [i for i in range(len(channels)) if i not in files]
        label = labels_dir / f"{case_id}{ending}"
        if extra:
            issues.append(f"{files[extra[0]]}: channel {extra[0]} not declared in dataset.json "
                          f"({len(channels)} channel(s): {channels})")
        if missing:
            issues.append(f"{images_dir / f'{case_id}_{missing[0]:04d}{ending}'}: channel file missing "
                          f"(dataset.json declares {len(channels)} channel(s))")
        images_only = not labels_dir.is_dir()
        if not images_only and not label.is_file():
            issues.append(f"{label}: label file missing for case {case_id!r}")
        if extra or missing or (not images_only and not label.is_file()):
            continue
        cases.append(Case(case_id, tuple(files[i] for i in range(len(channels))), None if images_only else label,
                          sites.get(case_id)))
    if labels_dir.is_dir():
        for f in sorted(labels_dir.iterdir()):
            if f.name.endswith(ending) and not f.name.startswith(".") and f.name[: -len(ending)] not in by_case:
                issues.append(f"{f}: label without an image in {images_dir.name}")
    if not by_case:
        raise DataError(f"{images_dir}: no images named <case>_0000{ending}")
    return DatasetIndex(root, "nnunet", channels, labels, cases, meta={"file_ending": ending}, issues=issues)


@register_format("msd", _is_msd, order=20)
def read_msd(root: Path) -> DatasetIndex:
    """Read a Medical Segmentation Decathlon task folder (``training`` list; 4D images when multi-modal).

    A multi-modal MSD image holds its channels on the last axis (X, Y, Z, C), in ``modality`` order.
    """
    root = Path(root)
    data = load_dataset_json(root)
    json_path = root / "dataset.json"
    channels = channel_names(data, json_path)
    labels = labels_from_json(data, json_path)
    sites = read_sites(root)
    issues: list[str] = []
    cases = []
    training = data.get("training", [])
    for i, entry in enumerate(training):
        if not isinstance(entry, dict) or "image" not in entry:
            issues.append(f"{json_path}: training[{i}] needs an 'image' entry")
            continue
        image = (root / entry["image"]).resolve() if not Path(entry["image"]).is_absolute() else Path(entry["image"])
        label = entry.get("label")
        label_path = (root / label).resolve() if label else None
        case_id = image.name.split(".")[0]
        bad = False
        if not image.is_file():
            issues.append(f"{image}: image file missing (dataset.json training[{i}])")
            bad = True
        if label_path is None:
            issues.append(f"{json_path}: training[{i}] ({case_id}) has no 'label' entry")
            bad = True
        elif not label_path.is_file():
            issues.append(f"{label_path}: label file missing (dataset.json training[{i}])")
            bad = True
        if not bad:
            cases.append(Case(case_id, (image,), label_path, sites.get(case_id),
                              channel_axis=-1 if len(channels) > 1 else None))
    if not training:
        raise DataError(f"{json_path}: 'training' list is empty")
    return DatasetIndex(root, "msd", channels, labels, cases, issues=issues)
