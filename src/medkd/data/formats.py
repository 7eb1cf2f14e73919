"""Dataset folder formats: nnU-Net v2 raw and Medical Segmentation Decathlon (MSD).

Every format is read into the same :class:`DatasetIndex` of :class:`Case` records (id, one file per
channel or one multi-channel file, label file, site), so everything downstream is format-agnostic.

Example:
    >>> index = read_dataset("../shared/data/acdc")
    >>> index.format, len(index.cases), index.channel_names
    ('nnunet', 200, ['cine-MRI'])
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medkd.errors import ConfigError, DataError, unknown_name_error

__all__ = [
    "FORMAT_READERS",
    "Case",
    "DatasetIndex",
    "detect_format",
    "read_dataset",
    "read_msd",
    "read_nnunet",
    "register_format",
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
    """All cases of a dataset folder, with channel and label names."""

    root: Path
    format: str
    channel_names: list[str]
    labels: dict[str, int]
    cases: list[Case]
    meta: dict[str, Any] = field(default_factory=dict)

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
        return sorted({c.site for c in self.cases if c.site is not None})


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


def _load_dataset_json(root: Path) -> dict[str, Any]:
    path = root / "dataset.json"
    if not path.is_file():
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
    """Read an nnU-Net v2 raw dataset: ``imagesTr/<case>_<CCCC><ending>``, ``labelsTr/<case><ending>``."""
    root = Path(root)
    data = _load_dataset_json(root)
    json_path = root / "dataset.json"
    channels = _channel_names(data, json_path)
    labels = _labels_from_json(data, json_path)
    ending = str(data.get("file_ending", ".nii.gz"))
    images_dir = root / "imagesTr"
    if not images_dir.is_dir():
        raise DataError(f"{images_dir}: folder not found")
    pattern = re.compile(rf"^(?P<case>.+)_(?P<ch>\d{{4}}){re.escape(ending)}$")
    by_case: dict[str, dict[int, Path]] = {}
    for f in sorted(images_dir.iterdir()):
        m = pattern.match(f.name)
        if m is None:
            continue
        by_case.setdefault(m["case"], {})[int(m["ch"])] = f
    sites = _read_sites(root)
    cases = []
    for case_id, files in sorted(by_case.items()):
        missing = [i for i in range(len(channels)) if i not in files]
        if missing:
            raise DataError(
                f"{images_dir / f'{case_id}_{missing[0]:04d}{ending}'}: channel file missing "
                f"(dataset.json declares {len(channels)} channels)"
            )
        label = root / "labelsTr" / f"{case_id}{ending}"
        cases.append(Case(case_id, tuple(files[i] for i in range(len(channels))),
                          label if label.exists() else None, sites.get(case_id)))
    if not cases:
        raise DataError(f"{images_dir}: no images named <case>_0000{ending}")
    return DatasetIndex(root, "nnunet", channels, labels, cases, meta={"file_ending": ending})


@register_format("msd", _is_msd)
def read_msd(root: Path) -> DatasetIndex:
    """Read a Medical Segmentation Decathlon task folder (``training`` list; 4D images when multi-modal)."""
    root = Path(root)
    data = _load_dataset_json(root)
    json_path = root / "dataset.json"
    channels = _channel_names(data, json_path)
    labels = _labels_from_json(data, json_path)
    sites = _read_sites(root)
    cases = []
    for i, entry in enumerate(data.get("training", [])):
        if not isinstance(entry, dict) or "image" not in entry:
            raise DataError(f"{json_path}: training[{i}] needs an 'image' entry")
        image = (root / entry["image"]).resolve() if not Path(entry["image"]).is_absolute() else Path(entry["image"])
        label = entry.get("label")
        label_path = (root / label).resolve() if label else None
        case_id = image.name.split(".")[0]
        cases.append(Case(case_id, (image,), label_path, sites.get(case_id),
                          channel_axis=-1 if len(channels) > 1 else None))
    if not cases:
        raise DataError(f"{json_path}: 'training' list is empty")
    return DatasetIndex(root, "msd", channels, labels, cases)


def detect_format(root: Path) -> str:
    """Name of the first registered format whose detector accepts ``root``."""
    root = Path(root)
    if not root.exists():
        raise DataError(f"{root}: dataset folder not found")
    if not root.is_dir():
        raise DataError(f"{root}: not a folder")
    for name, detector in _DETECTORS:
        if detector(root):
            return name
    raise DataError(f"{root}: not a recognised dataset folder (formats: {', '.join(FORMAT_READERS)})")


def read_dataset(root: str | Path, format: str = "auto") -> DatasetIndex:
    """Read a dataset folder in the given (or detected) format."""
    root = Path(root)
    if format == "auto":
        format = detect_format(root)
    if format not in FORMAT_READERS:
        raise unknown_name_error("dataset format", format, FORMAT_READERS, cls=ConfigError)
    if not root.is_dir():
        raise DataError(f"{root}: dataset folder not found")
    index = FORMAT_READERS[format](root)
    ids = [c.case_id for c in index.cases]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        raise DataError(f"{root}: duplicate case id {dup[0]!r}")
    return index
