"""``medkd data check``: read every case of a dataset and say whether it can be trained on.

:func:`check_dataset` reads the folder (any registered format), then every image and label file of every
case, and collects facts (cases, channels, label values and names, shape and spacing ranges, sites, classes
absent from some cases) and problems, each one line naming the file:

* a missing, unreadable, truncated or corrupt file; a file outside the naming scheme; duplicate case ids;
* image / label (or channel / channel) shape or affine mismatch;
* a channel count that differs from the declared one (a 4D file where one volume per channel is expected,
  an MSD image with the wrong number of modalities, an undeclared or missing channel file);
* label values that are not integers or not declared in ``dataset.json``;
* NaN or Inf voxels;
* an empty dataset.

Nothing is ever written to the dataset folder. :func:`ensure_usable` runs the same check before training
and raises :class:`~medkd.errors.DataError` with the first problem.

Example:
    >>> report = check_dataset("../shared/data/brats2015-sample")   # doctest: +SKIP
    >>> report.ok, report.n_cases, report.channel_names
    (True, 6, ['FLAIR', 'T1c'])
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from medkd.data.formats import Case, DatasetIndex, read_dataset, read_image, with_label_map
from medkd.data.nifti_io import spacing_from_affine
from medkd.errors import DataError
from medkd.io import atomic_write_json

__all__ = ["AFFINE_TOLERANCE", "CheckReport", "check_case", "check_dataset", "ensure_usable"]

#: Version of the passed-check memo key (bump when the check itself changes).
MEMO_VERSION = 1

#: Largest absolute difference (mm) between two affines that still counts as "the same grid".
AFFINE_TOLERANCE = 1e-3


@dataclass
class CheckReport:
    """What :func:`check_dataset` found.

    Attributes:
        root: the dataset folder.
        format: the format it was read as (None when it could not be read at all).
        n_cases: cases in the dataset (readable index entries).
        n_checked: cases whose files were read (``max_cases`` may limit it).
        channel_names: declared channel names.
        labels: class name -> label value (after any label mapping).
        label_values: raw label values found in the label files.
        shape_min / shape_max: per-axis range of the spatial shapes.
        spacing_min / spacing_max: per-axis range of the voxel sizes (mm).
        sites: site -> number of cases.
        absent: class name -> number of checked cases whose label lacks it.
        dtypes: on-disk image data types seen.
        problems: one line per problem, naming the file.
        from_memo: the dataset was not read: it passed before and no file changed (:func:`ensure_usable`).
    """

    root: Path
    format: str | None = None
    n_cases: int = 0
    n_checked: int = 0
    channel_names: list[str] = field(default_factory=list)
    labels: dict[str, int] = field(default_factory=dict)
    label_values: list[int] = field(default_factory=list)
    shape_min: tuple[int, ...] | None = None
    shape_max: tuple[int, ...] | None = None
    spacing_min: tuple[float, ...] | None = None
    spacing_max: tuple[float, ...] | None = None
    sites: dict[str, int] = field(default_factory=dict)
    absent: dict[str, int] = field(default_factory=dict)
    dtypes: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    from_memo: bool = False

    @property
    def ok(self) -> bool:
        """True when the dataset is usable (no problems)."""
        return not self.problems

    def summary(self) -> str:
        """A printable multi-line summary (problems are listed separately by the caller)."""
        lines = [f"dataset:  {self.root} ({self.format or 'unreadable'})"]
        verdict = "result:   " + ("usable" if self.ok else f"NOT usable: {len(self.problems)} problem(s)")
        if self.format is None:
            return "\n".join([*lines, verdict])
        checked = "" if self.n_checked == self.n_cases else f" ({self.n_checked} checked)"
        lines.append(f"cases:    {self.n_cases}{checked}")
        lines.append(f"channels: {len(self.channel_names)} ({', '.join(self.channel_names)})")
        lines.append("labels:   " + ", ".join(f"{v} {n}" for n, v in sorted(self.labels.items(), key=lambda kv: kv[1])))
        lines.append("values:   " + (", ".join(str(v) for v in self.label_values) or "none") + " (in label files)")
        if self.shape_min is not None and self.shape_max is not None:
            lines.append("shape:    " + " x ".join(_range(a, b, "d") for a, b in zip(self.shape_min, self.shape_max)))
        if self.spacing_min is not None and self.spacing_max is not None:
            lines.append("spacing:  " + " x ".join(_range(a, b, ".3g") for a, b in zip(self.spacing_min,
                                                                                     self.spacing_max)) + " mm")
        if self.dtypes:
            lines.append(f"dtypes:   {', '.join(self.dtypes)}")
        sites = ", ".join(f"{s} {n}" for s, n in self.sites.items()) if self.sites else "none"
        lines.append(f"sites:    {sites}")
        absent = "; ".join(f"{name} absent from {n} of {self.n_checked} cases" for name, n in self.absent.items() if n)
        lines.append(f"absent:   {absent or f'none (every class is present in all {self.n_checked} cases)'}")
        lines.append(verdict)
        return "\n".join(lines)


def _range(a: float, b: float, fmt: str) -> str:
    return f"{a:{fmt}}" if a == b else f"{a:{fmt}}-{b:{fmt}}"


def _read(path: Path, problems: list[str]) -> tuple[np.ndarray, np.ndarray] | None:
    try:
        return read_image(path)
    except DataError as exc:
        problems.append(str(exc))
        return None


def _same_affine(a: np.ndarray, b: np.ndarray) -> float:
    """Largest absolute difference between two affines (0 when equal)."""
    return float(np.max(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64))))


def _finite_problem(path: Path, array: np.ndarray) -> str | None:
    if not np.issubdtype(array.dtype, np.floating):
        return None
    bad = ~np.isfinite(array)
    if bad.any():
        return f"{path}: {int(bad.sum())} NaN/Inf voxel(s)"
    return None


def _label_values(raw: np.ndarray) -> np.ndarray:
    """Sorted distinct values of an integer array (bincount for small non-negative values: fast)."""
    ints = raw.astype(np.int64, copy=False)
    lo, hi = int(ints.min()), int(ints.max())
    if lo >= 0 and hi < 1 << 16:
        return np.flatnonzero(np.bincount(ints.ravel(), minlength=hi + 1))
    return np.unique(ints)


#: What a case's images show when they could be read: shape, affine, dtype (None when they could not).
ImageFacts = tuple[tuple[int, ...], np.ndarray, str] | None


def _check_stacked_image(index: DatasetIndex, case: Case, problems: list[str]) -> ImageFacts:
    """One file with every channel on ``case.channel_axis`` (MSD 4D images)."""
    n_channels = len(index.channel_names)
    path = case.image_files[0]
    got = _read(path, problems)
    if got is None:
        return None
    array, affine = got
    if array.ndim < 4 or array.shape[case.channel_axis] != n_channels:
        count = array.shape[case.channel_axis] if array.ndim >= 4 else 1
        problems.append(f"{path}: {count} channel(s) on the last axis of shape {array.shape}; "
                        f"the dataset declares {n_channels} ({', '.join(index.channel_names)})")
        return None
    finite = _finite_problem(path, array)
    if finite:
        problems.append(finite)
    return tuple(np.delete(np.asarray(array.shape), case.channel_axis % array.ndim)), affine, str(array.dtype)


def _check_channel_files(case: Case, problems: list[str]) -> ImageFacts:
    """One file per channel (nnU-Net ``_0000``, ``_0001``, ...): each readable, finite, on channel 0's grid."""
    shape, affine, dtype, fatal = None, None, None, False
    for path in case.image_files:
        got = _read(path, problems)
        if got is None:
            fatal = True
            continue
        array, aff = got
        if array.ndim > 3 and array.shape[3:] != (1,) * (array.ndim - 3):
            problems.append(f"{path}: {array.ndim}D image of shape {array.shape}; expected one 2D/3D volume "
                            "per channel file (channel count differs)")
            fatal = True
            continue
        array = array.reshape(array.shape[:3]) if array.ndim > 3 else array
        finite = _finite_problem(path, array)
        if finite:
            problems.append(finite)
        if shape is None:
            shape, affine, dtype = tuple(array.shape), aff, str(array.dtype)
        elif tuple(array.shape) != shape:
            problems.append(f"{path}: shape {array.shape} differs from channel 0 {shape}")
            fatal = True
        elif _same_affine(aff, affine) > AFFINE_TOLERANCE:
            problems.append(f"{path}: affine differs from channel 0 by up to {_same_affine(aff, affine):.4g} mm")
    return None if shape is None or fatal else (shape, affine, dtype)


def _check_label(index: DatasetIndex, case: Case, image: tuple[tuple[int, ...], np.ndarray, str],
                 problems: list[str]) -> dict[str, Any]:
    """Read and check the label file against the image's grid; returns ``values`` / ``present`` when valid."""
    shape, affine, _ = image
    if case.label_file is None:
        problems.append(f"{case.image_files[0]}: case {case.case_id!r} has no label file")
        return {}
    got = _read(case.label_file, problems)
    if got is None:
        return {}
    raw, laff = got
    if raw.ndim > 3 and raw.shape[3:] == (1,) * (raw.ndim - 3):
        raw = raw.reshape(raw.shape[:3])
    if tuple(raw.shape) != shape:
        problems.append(f"{case.label_file}: label shape {raw.shape} differs from image shape {shape}")
        return {}
    if _same_affine(laff, affine) > AFFINE_TOLERANCE:
        problems.append(f"{case.label_file}: label affine differs from the image's by up to "
                        f"{_same_affine(laff, affine):.4g} mm")
    finite = _finite_problem(case.label_file, raw)
    if finite:
        problems.append(finite)
        return {}
    if np.issubdtype(raw.dtype, np.floating) and not np.array_equal(np.rint(raw), raw):
        problems.append(f"{case.label_file}: label values are not integers (e.g. {raw[np.rint(raw) != raw].flat[0]})")
        return {}
    values = _label_values(raw)
    mapped = np.unique(index.map_label_values(values))
    declared = set(index.labels.values())
    undeclared = [int(v) for v in mapped if int(v) not in declared]
    if undeclared:
        where = "dataset.json" if (index.root / "dataset.json").is_file() else "the dataset's labels"
        problems.append(f"{case.label_file}: label value(s) {undeclared} not declared in {where} "
                        f"(declared: {sorted(declared)})")
    return {"values": [int(v) for v in values], "present": {int(v) for v in mapped}}


def check_case(index: DatasetIndex, case: Case, image_only: bool = False) -> tuple[dict[str, Any], list[str]]:
    """Read one case's files and check them (``image_only``: its images alone; the label file stays closed).

    Returns:
        Facts (``shape``, ``spacing``, ``dtype``, ``values`` raw label values, ``present`` mapped values) —
        empty when the files could not be read — and the problems found.
    """
    problems: list[str] = []
    if case.channel_axis is not None:
        image = _check_stacked_image(index, case, problems)
    else:
        image = _check_channel_files(case, problems)
    if image is None:
        return {}, problems
    shape, affine, dtype = image
    facts: dict[str, Any] = {"shape": shape, "spacing": tuple(spacing_from_affine(affine)), "dtype": dtype}
    if not image_only:
        facts.update(_check_label(index, case, image, problems))
    return facts, problems


def check_dataset(root: str | Path, format: str = "auto", max_cases: int | None = None,
                  label_map: dict[int, int] | None = None, images_only: Collection[str] = (),
                  progress: bool = False) -> CheckReport:
    """Check every case of a dataset folder (see the module docstring). Never writes to the folder.

    Args:
        root: the dataset folder.
        format: a registered format name or ``"auto"``.
        max_cases: check only the first ``max_cases`` cases (sorted by id); None checks all.
        label_map: the run's ``data.label_map`` (raw label value -> value), if any.
        images_only: ids of cases whose label files must not be opened (a run's images without labels).
        progress: show a progress bar over the cases (on a terminal only).

    Returns:
        The report; ``report.ok`` tells whether the dataset is usable.

    Raises:
        ConfigError: unknown format name or invalid ``label_map``.
    """
    root = Path(root)
    report = CheckReport(root=root)
    try:
        index = read_dataset(root, format, strict=False)
    except DataError as exc:
        report.problems.append(str(exc))
        return report
    index = with_label_map(index, label_map)
    report.format = index.format
    report.n_cases = len(index.cases)
    report.channel_names = list(index.channel_names)
    report.labels = dict(index.labels)
    report.problems.extend(index.issues)
    if not index.cases:
        report.problems.append(f"{root}: empty dataset: no readable cases")
        return report
    cases = sorted(index.cases, key=lambda c: c.case_id)
    if max_cases is not None:
        cases = cases[:max_cases]
    values: set[int] = set()
    shapes, spacings, dtypes = [], [], set()
    absent = {name: 0 for name, v in index.labels.items() if v != min(index.labels.values())}
    for case in tqdm(cases, desc=f"checking {root.name}", disable=None if progress else True, leave=False,
                     dynamic_ncols=True):
        facts, problems = check_case(index, case, image_only=case.case_id in images_only)
        report.problems.extend(problems)
        report.n_checked += 1
        if case.site is not None:
            report.sites[case.site] = report.sites.get(case.site, 0) + 1
        if "shape" in facts:
            shapes.append(facts["shape"])
            spacings.append(facts["spacing"])
            dtypes.add(facts["dtype"])
        if "values" in facts:
            values.update(facts["values"])
            for name in absent:
                if index.labels[name] not in facts["present"]:
                    absent[name] += 1
    report.sites = dict(sorted(report.sites.items()))
    if shapes and len({len(s) for s in shapes}) == 1:
        report.shape_min = tuple(int(v) for v in np.min(shapes, axis=0))
        report.shape_max = tuple(int(v) for v in np.max(shapes, axis=0))
        report.spacing_min = tuple(float(v) for v in np.min(spacings, axis=0))
        report.spacing_max = tuple(float(v) for v in np.max(spacings, axis=0))
    report.label_values = sorted(values)
    report.dtypes = sorted(dtypes)
    report.absent = absent
    return report


def ensure_usable(root: str | Path, format: str = "auto", label_map: dict[int, int] | None = None,
                  images_only: Collection[str] = (), progress: bool = False, memo: Path | None = None
                  ) -> CheckReport:
    """Run :func:`check_dataset` on every case and stop with the first problem (call before any training work).

    ``images_only``: cases checked without opening their label files (a run's images without labels).
    ``memo``: a folder remembering datasets that passed: when every file of the dataset still has the size and
    modification time it had then (and the label map and ``images_only`` are the same), the files are not read
    again and the returned report has ``from_memo`` set. Only a passed check is remembered.

    Raises:
        DataError: ``"<first problem> (+N more problem(s); run 'medkd data check ROOT')"``.
    """
    key = _memo_key(root, format, label_map, images_only) if memo is not None else None
    if key is not None and (memo / f"{key}.json").is_file():
        return CheckReport(root=Path(root), from_memo=True)
    report = check_dataset(root, format, label_map=label_map, images_only=images_only, progress=progress)
    if report.problems:
        n = len(report.problems) - 1
        more = f" (+{n} more problem(s); run 'medkd data check {root}')" if n else ""
        raise DataError(f"{report.problems[0]}{more}")
    if key is not None:
        with contextlib.suppress(OSError):  # the memo only saves time
            atomic_write_json(memo / f"{key}.json", {"root": str(Path(root).resolve()), "n_cases": report.n_cases})
    return report


def _memo_key(root: str | Path, format: str, label_map: dict[int, int] | None,
              images_only: Collection[str]) -> str | None:
    """sha256 of every file's path, size and modification time, and of the check's options (None: no memo)."""
    try:
        index = read_dataset(root, format, strict=False)
    except DataError:
        return None
    if index.issues:
        return None
    facts: list[Any] = [MEMO_VERSION, str(Path(root).resolve()), index.format, sorted((label_map or {}).items()),
                        sorted(images_only)]
    for case in sorted(index.cases, key=lambda c: c.case_id):
        files = [*case.image_files, *([case.label_file] if case.label_file is not None else [])]
        for path in files:
            st = os.stat(path)
            facts.append([case.case_id, str(path), st.st_size, st.st_mtime_ns])
    return hashlib.sha256(json.dumps(facts, default=str).encode()).hexdigest()
