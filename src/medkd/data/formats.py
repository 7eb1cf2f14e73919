"""Dataset folder formats: nnU-Net v2 raw, Medical Segmentation Decathlon (MSD), site folders, PNG pairs.

Every format is read into the same :class:`DatasetIndex` of :class:`Case` records (id, one file per
channel or one multi-channel file, label file, site), so everything downstream is format-agnostic.
Formats are detected in registration order (``nnunet``, ``msd``, ``site_folders``, ``png_pairs``) or named
with ``data.format``; :mod:`medkd.data.site_folders` and :mod:`medkd.data.png_pairs` hold the last two.

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

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from medkd.errors import ConfigError, DataError, unknown_name_error

__all__ = [
    "FORMAT_READERS",
    "Case",
    "DatasetIndex",
    "detect_format",
    "read_dataset",
    "read_image",
    "read_msd",
    "read_nnunet",
    "register_format",
    "with_label_map",
]


@dataclass(frozen=True)
class Case:
    """One case of a dataset.

    Attributes:
        case_id: unique id (file stem without channel suffix).
        image_files: one file per channel, or a single multi-channel (4D) file.
        label_file: label map, or None for unlabelled cases.
        site: acquisition site / group, if known.
        channel_axis: axis holding channels when ``image_files`` is one 4D file, else None.
    """

    case_id: str
    image_files: tuple[Path, ...]
    label_file: Path | None
    site: str | None = None
    channel_axis: int | None = None


@dataclass
class DatasetIndex:
    """All cases of a dataset folder, with channel and label names.

    Attributes:
        root: the dataset folder.
        format: the format name it was read as.
        channel_names: one name per channel, in channel order.
        labels: class name -> label value of the classes a model predicts (after ``label_map`` /
            ``merge_above``); class index ``i`` is the ``i``-th smallest value.
        cases: the readable cases.
        meta: JSON-ready facts recorded with a run (e.g. ``simulated_sites``, ``label_map``).
        label_map: raw label value -> label value, applied when a label file is read (e.g. ``{2: 1}``).
        merge_above: raw label values above this are set to it (site folders: 1, whole-gland prostate).
        issues: problems found while indexing (the affected cases are left out of ``cases``).
    """

    root: Path
    format: str
    channel_names: list[str]
    labels: dict[str, int]
    cases: list[Case]
    meta: dict[str, Any] = field(default_factory=dict)
    label_map: dict[int, int] = field(default_factory=dict)
    merge_above: int | None = None
    issues: list[str] = field(default_factory=list)

    def map_label_values(self, raw: np.ndarray) -> np.ndarray:
        """Apply ``merge_above`` and then ``label_map`` to an integer array of raw label values."""
        out = np.asarray(raw)
        if self.merge_above is not None:
            out = np.where(out > self.merge_above, self.merge_above, out)
        if self.label_map:
            mapped = out.copy()
            for src, dst in self.label_map.items():
                mapped[out == src] = dst
            out = mapped
        return out

    def case(self, case_id: str) -> Case:
        for c in self.cases:
            if c.case_id == case_id:
                return c
        raise unknown_name_error("case id", case_id, [c.case_id for c in self.cases], cls=DataError)

    def channel_indices(self, names: list[str] | None) -> list[int]:
        """Indices of the named channels (case-insensitive); all channels when ``names`` is None."""
        if names is None:
            return list(range(len(self.channel_names)))
        lower = [n.lower() for n in self.channel_names]
        out = []
        for name in names:
            if name.lower() not in lower:
                raise unknown_name_error(f"channel (dataset {self.root.name} has {self.channel_names})", name,
                                         self.channel_names)
            out.append(lower.index(name.lower()))
        return out

    @property
    def sites(self) -> list[str]:
        """Sorted names of the sites the cases belong to (empty when no case has a site)."""
        return sorted({c.site for c in self.cases if c.site is not None})


def with_label_map(index: DatasetIndex, label_map: dict[int, int] | None) -> DatasetIndex:
    """A copy of ``index`` whose label files are read through ``label_map`` (raw value -> value).

    Values mapped away disappear from the classes (``{2: 1}`` on labels ``{bg: 0, PZ: 1, TZ: 2}`` leaves
    ``{bg: 0, PZ: 1}``, the merged class keeping the target's name). Every target must be a label of the
    dataset; a source may also be an undeclared value (e.g. ``{255: 0}``).

    Raises:
        ConfigError: a target value is not a label of the dataset.
    """
    if not label_map:
        return index
    values = set(index.labels.values())
    mapping = {int(k): int(v) for k, v in label_map.items()}
    for src, dst in mapping.items():
        if dst not in values:
            raise ConfigError(f"data.label_map: {src} -> {dst}, but {dst} is not a label of {index.root} "
                              f"({index.labels})")
    labels = {n: v for n, v in index.labels.items() if v not in mapping or mapping[v] == v}
    combined = dict(index.label_map)
    combined = {k: mapping.get(v, v) for k, v in combined.items()}
    combined.update({k: v for k, v in mapping.items() if k not in combined})
    meta = {**index.meta, "label_map": {str(k): v for k, v in sorted(combined.items())}}
    return replace(index, labels=labels, label_map=combined, meta=meta)


def read_image(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read an image or label file of any supported kind: NIfTI, or PNG (see :mod:`medkd.data.png_pairs`).

    Returns:
        ``(array, affine)``; a PNG gives an (H, W, 1) array (or (H, W, 1, C) for colour) and an identity affine.
    """
    path = Path(path)
    if path.suffix.lower() == ".png":
        from medkd.data.png_pairs import read_png

        return read_png(path)
    from medkd.data.nifti_io import read_nifti

    return read_nifti(path)


FormatReader = Callable[[Path], DatasetIndex]
FORMAT_READERS: dict[str, FormatReader] = {}
_DETECTORS: list[tuple[str, Callable[[Path], bool]]] = []


def register_format(name: str, detector: Callable[[Path], bool]) -> Callable[[FormatReader], FormatReader]:
    """Register a reader for a dataset format and the test that recognises its folders."""

    def deco(fn: FormatReader) -> FormatReader:
        FORMAT_READERS[name] = fn
        _DETECTORS.append((name, detector))
        return fn

    return deco


def _load_dataset_json(root: Path, required: bool = True) -> dict[str, Any]:
    """``root/dataset.json`` as a dict; ``{}`` when it is absent and not ``required``."""
    path = root / "dataset.json"
    if not path.is_file():
        if not required:
            return {}
        raise DataError(f"{path}: dataset.json not found")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: not valid JSON ({exc.__class__.__name__}: {exc})") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a JSON object")
    return data


def _read_sites(root: Path) -> dict[str, str]:
    """Case -> site from an optional ``sites.json`` sidecar (written by ``medkd data synth``)."""
    path = root / "sites.json"
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError:
        raise DataError(f"{path}: not valid JSON") from None
    cases = data.get("cases", data) if isinstance(data, dict) else None
    if not isinstance(cases, dict):
        raise DataError(f"{path}: expected {{'cases': {{case_id: site}}}}")
    return {str(k): str(v) for k, v in cases.items()}


def _labels_from_json(data: dict[str, Any], path: Path) -> dict[str, int]:
    raw = data.get("labels")
    if not isinstance(raw, dict) or not raw:
        raise DataError(f"{path}: 'labels' missing or empty")
    labels: dict[str, int] = {}
    for k, v in raw.items():
        # nnU-Net v2: {"name": value}; MSD: {"value": "name"}
        if isinstance(v, int) or (isinstance(v, list) and v):
            labels[str(k)] = int(v if isinstance(v, int) else max(v))
        elif str(k).lstrip("-").isdigit():
            labels[str(v)] = int(k)
        else:
            raise DataError(f"{path}: label entry {k!r}: {v!r} is neither name->value nor value->name")
    return dict(sorted(labels.items(), key=lambda kv: kv[1]))


def _channel_names(data: dict[str, Any], path: Path) -> list[str]:
    raw = data.get("channel_names", data.get("modality"))
    if not isinstance(raw, dict) or not raw:
        raise DataError(f"{path}: 'channel_names' (or MSD 'modality') missing or empty")
    try:
        return [str(raw[k]) for k in sorted(raw, key=lambda k: int(k))]
    except ValueError:
        raise DataError(f"{path}: channel keys must be integers, got {list(raw)}") from None


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


@register_format("nnunet", _is_nnunet)
def read_nnunet(root: Path) -> DatasetIndex:
    """Read an nnU-Net v2 raw dataset: ``imagesTr/<case>_<CCCC><ending>``, ``labelsTr/<case><ending>``.

    Every case needs one file per declared channel and a label file; a case missing any of them, a
    channel number beyond the declared ones, or a label without an image is recorded as an issue. A folder
    with no ``labelsTr`` at all is a dataset of images without labels (every case's ``label_file`` is None),
    e.g. the extra images of distillation on images without labels (``data.unlabeled``); training on its
    cases with a segmentation loss fails with a one-line error naming the case.
    """
    root = Path(root)
    data = _load_dataset_json(root)
    json_path = root / "dataset.json"
    channels = _channel_names(data, json_path)
    labels = _labels_from_json(data, json_path)
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
    sites = _read_sites(root)
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


@register_format("msd", _is_msd)
def read_msd(root: Path) -> DatasetIndex:
    """Read a Medical Segmentation Decathlon task folder (``training`` list; 4D images when multi-modal).

    A multi-modal MSD image holds its channels on the last axis (X, Y, Z, C), in ``modality`` order.
    """
    root = Path(root)
    data = _load_dataset_json(root)
    json_path = root / "dataset.json"
    channels = _channel_names(data, json_path)
    labels = _labels_from_json(data, json_path)
    sites = _read_sites(root)
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


def detect_format(root: Path) -> str:
    """Name of the first registered format whose detector accepts ``root``."""
    root = Path(root)
    if not root.exists():
        raise DataError(f"{root}: dataset folder not found")
    if not root.is_dir():
        raise DataError(f"{root}: not a folder")
    if (root / "dataset.json").is_file():
        _load_dataset_json(root)  # a broken dataset.json is named, not mistaken for another format
    for name, detector in _DETECTORS:
        if detector(root):
            return name
    raise DataError(f"{root}: not a recognised dataset folder (formats: {', '.join(FORMAT_READERS)})")


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
    if format not in FORMAT_READERS:
        raise unknown_name_error("dataset format", format, FORMAT_READERS, cls=ConfigError)
    if not root.is_dir():
        raise DataError(f"{root}: dataset folder not found")
    index = FORMAT_READERS[format](root)
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


# the other formats register themselves on import (after the nnU-Net and MSD detectors)
from medkd.data import png_pairs as _png_pairs  # noqa: E402,F401
from medkd.data import site_folders as _site_folders  # noqa: E402,F401
