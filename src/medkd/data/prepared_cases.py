"""Whole prepared cases (a run's validation cases) in the prepared cache, written once and read back.

A sibling of :mod:`medkd.data.prepared`: the same cache root, fingerprint (with ``kind = "cases"``), atomic
folder write and damaged-folder rebuild. A folder holds ``image_NNNN.npy`` (the case's preprocessed image, its own
dtype), ``label_NNNN.npy`` (class indices in the smallest integer type that holds them; absent for a case without
labels) and ``index.json`` (per case: id, site, affine, each array's shape, dtype and sha256). Cases read back are
bit-identical to :func:`medkd.data.pipeline.prepare_cases`. Cases whose grid a preprocessing step changed carry a
MONAI transform to map predictions back; they are prepared in memory every run and never written.

Example:
    >>> cases, info = prepared_cases(cfg.data, index, split["val"], channels)
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medkd.config import DataConfig
from medkd.data.formats import DatasetIndex
from medkd.data.pipeline import PreparedCase, prepare_cases
from medkd.data.prepared import (
    FORMAT_VERSION,
    PreparedInfo,
    array_spec,
    checked_root,
    compact_label_dtype,
    fingerprint,
    load_checked,
    staged_folder,
)

__all__ = ["prepared_cases"]


def _read(folder: Path, fp: str) -> list[PreparedCase] | None:
    """The cases of a cache folder, or None when anything does not match (the caller rebuilds)."""
    try:
        meta = json.loads((folder / "index.json").read_text())
        if meta.get("format_version") != FORMAT_VERSION or meta.get("fingerprint") != fp:
            return None
        out = []
        for i, rec in enumerate(meta["cases"]):
            image = load_checked(folder / f"image_{i:04d}.npy", rec["image"])
            label = load_checked(folder / f"label_{i:04d}.npy", rec["label"]) if rec["label"] is not None else None
            if image is None or (rec["label"] is not None and label is None):
                return None
            if label is not None:
                label = label.astype(rec["label_dtype"])
            affine = np.asarray(rec["affine"], dtype=rec["affine_dtype"])
            out.append(PreparedCase(str(rec["id"]), rec["site"], image, label, affine))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return out


def _write(root: Path, fp: str, facts: dict[str, Any], cases: list[PreparedCase]) -> Path:
    """Write the cases' folder under ``root`` all or nothing (temporary folder + rename); returns its path."""
    with staged_folder(root, fp) as tmp:
        records = []
        for i, case in enumerate(cases):
            np.save(tmp / f"image_{i:04d}.npy", case.image, allow_pickle=False)
            rec = {"id": case.case_id, "site": case.site, "image": array_spec(case.image), "label": None,
                   "affine": np.asarray(case.affine).tolist(), "affine_dtype": str(np.asarray(case.affine).dtype)}
            if case.label is not None:
                small = case.label.astype(compact_label_dtype(case.label))
                np.save(tmp / f"label_{i:04d}.npy", small, allow_pickle=False)
                rec.update(label=array_spec(small), label_dtype=str(case.label.dtype))
            records.append(rec)
        meta = {"format_version": FORMAT_VERSION, "fingerprint": fp, "cases": records, "facts": facts}
        (tmp / "index.json").write_text(json.dumps(meta, indent=1, default=str) + "\n")
    return root / fp


def _cacheable(cases: list[PreparedCase]) -> bool:
    """Cases on their file's grid (no grid record to keep) with plain numpy arrays."""
    return all(c.grid is None and c.original_label is None and isinstance(c.image, np.ndarray) for c in cases)


def prepared_cases(data: DataConfig, index: DatasetIndex, case_ids: Sequence[str], channels: Sequence[int],
                   progress: str | None = None) -> tuple[list[PreparedCase], PreparedInfo]:
    """The prepared ``case_ids`` (e.g. validation cases): read from the cache, else prepared and written to it.

    ``data.prepared: off`` prepares them in memory and writes nothing; a folder that cannot be written is a
    one-line note on stderr (the cases are used from memory).

    Raises:
        ConfigError: ``data.prepared_dir`` lies inside the dataset folder.
    """
    def compute() -> list[PreparedCase]:
        return prepare_cases(index, case_ids, channels, data, progress=progress)

    if data.prepared == "off" or not case_ids:
        return compute(), PreparedInfo(None, "", False)
    root = checked_root(data, index)
    try:
        fp, facts = fingerprint(data, index, case_ids, channels, kind="cases")
    except OSError:
        return compute(), PreparedInfo(None, "", False)  # a missing file: the load reports it
    got = _read(root / fp, fp)
    if got is not None:
        return got, PreparedInfo(root / fp, fp, True)
    cases = compute()
    if not _cacheable(cases):
        return cases, PreparedInfo(None, fp, False)
    try:
        folder = _write(root, fp, facts, cases)
    except OSError as err:
        reason = err.strerror or str(err)
        print(f"note: data.prepared_dir: cannot write the prepared-case cache in {root} ({reason}); "
              "validating from memory (data.prepared: off skips the cache)", file=sys.stderr)
        return cases, PreparedInfo(None, fp, False)
    return cases, PreparedInfo(folder, fp, False)
