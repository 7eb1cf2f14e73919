"""What every dataset format shares: the :class:`Case` / :class:`DatasetIndex` records, the format registry
and the ``dataset.json`` / ``sites.json`` readers.

Format modules (:mod:`medkd.data.nnunet_msd`, :mod:`medkd.data.site_folders`, :mod:`medkd.data.png_pairs`) import
only this module and register their reader with :func:`register_format`; :mod:`medkd.data.formats` imports them all
and detects or reads a folder.

Example:
    >>> @register_format("my_format", lambda root: (root / "my.txt").is_file(), order=90)  # doctest: +SKIP
    ... def read_my_format(root: Path) -> DatasetIndex:
    ...     ...
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from medkd.errors import ConfigError, DataError, unknown_name_error
from medkd.registry import Registry

__all__ = [
    "FORMATS",
    "Case",
    "DatasetIndex",
    "FormatReader",
    "channel_names",
    "labels_from_json",
    "list_formats",
    "load_dataset_json",
    "read_sites",
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


FormatReader = Callable[[Path], DatasetIndex]

#: Registered dataset formats: name -> reader (``reader(root) -> DatasetIndex``); each entry's metadata holds its
#: ``detector(root) -> bool`` and its detection ``order``.
FORMATS: Registry[FormatReader] = Registry("dataset format", skip_options=("root",))


def register_format(name: str, detector: Callable[[Path], bool], order: int = 100
                    ) -> Callable[[FormatReader], FormatReader]:
    """Decorator registering a dataset-format reader and the test that recognises its folders.

    Args:
        name: the format name (``data.format``).
        detector: ``detector(root) -> bool``, True for a folder in this format.
        order: detection rank; :func:`list_formats` (and detection) go from low to high, then by registration.

    Returns:
        The decorator; it returns the reader unchanged.
    """
    return FORMATS.register(name, detector=detector, order=order)


def list_formats() -> list[str]:
    """Registered format names in detection order."""
    return sorted(FORMATS, key=lambda n: FORMATS.meta(n)["order"])


def load_dataset_json(root: Path, required: bool = True) -> dict[str, Any]:
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


def read_sites(root: Path) -> dict[str, str]:
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


def labels_from_json(data: dict[str, Any], path: Path) -> dict[str, int]:
    """Class name -> label value from a ``dataset.json``'s ``labels`` (nnU-Net or MSD style), sorted by value."""
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


def channel_names(data: dict[str, Any], path: Path) -> list[str]:
    """Channel names in channel order from a ``dataset.json``'s ``channel_names`` (or MSD ``modality``)."""
    raw = data.get("channel_names", data.get("modality"))
    if not isinstance(raw, dict) or not raw:
        raise DataError(f"{path}: 'channel_names' (or MSD 'modality') missing or empty")
    try:
        return [str(raw[k]) for k in sorted(raw, key=lambda k: int(k))]
    except ValueError:
        raise DataError(f"{path}: channel keys must be integers, got {list(raw)}") from None
