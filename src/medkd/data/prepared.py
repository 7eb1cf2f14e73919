"""The prepared-sample cache: a run's 2D training slices, written once and memory-mapped by later runs.

Like nnU-Net's preprocessed folder, but keyed by content: the resized training slices of a 2D run
(:func:`medkd.data.pipeline.slice_samples` of the prepared training cases) are stored as ``images.npy``
(float32, (N, C, H, W)), ``labels.npy`` (the smallest integer type that holds the class indices, (N, 1, H, W))
and ``index.json`` (format version, fingerprint, what it was made from, the (case id, slice) of every sample)
in a folder named by a sha256 fingerprint of everything that decides those arrays:

* the format version of this cache and the numpy / torch / MONAI versions (resizing is theirs);
* the dataset's resolved root and format, its classes, label mapping and meta (e.g. simulated sites);
* the chosen case ids in order, with each case's site and every file it reads (path, size, ``mtime_ns``);
* the loaded channel indices, and the teacher's own copy of its channels when it has one (its positions and
  normalisation, :class:`~medkd.data.pipeline.TeacherCopy`; absent from the facts otherwise);
* every :class:`~medkd.config.DataConfig` field except those that only choose cases or act after the samples
  (split, train_fraction, augment, unlabeled*, the cache's own keys).

A folder is written as a hidden temporary folder and renamed into place, so a killed writer leaves no half cache;
a folder whose index or arrays do not match (truncated, edited, another version) is rebuilt, never trusted.
The cache only saves time: arrays read back are bit-identical to the ones computed. It lives in
``data.prepared_dir`` (default ``$MEDKD_CACHE/prepared``, else ``~/.cache/medkd/prepared``), never in a dataset
folder; ``data.prepared: off`` turns it off. 3D runs (random patches of whole volumes) are not cached; whole
validation cases are, by :mod:`medkd.data.prepared_cases`. Arrays are read back memory-mapped (:func:`map_npy`).

Example:
    >>> images, labels, origin, info = prepared_slices(cfg.data, index, ["case_000"], [0])
    >>> info.folder, info.reused
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import monai
import numpy as np
import torch

from medkd.config import DataConfig
from medkd.data.formats import DatasetIndex
from medkd.data.pipeline import TeacherCopy, prepare_cases, slice_samples
from medkd.errors import ConfigError, MedkdError

__all__ = ["FORMAT_VERSION", "PreparedInfo", "array_spec", "cache_root", "checked_root", "compact_label_dtype",
           "fingerprint", "folder_size", "load_checked", "map_npy", "prepared_slices", "publish", "staged_folder"]

FORMAT_VERSION = 1
#: DataConfig fields that never change the prepared samples of given cases (they choose cases or act later).
IGNORED_FIELDS = frozenset({"root", "split", "train_fraction", "augment", "unlabeled", "unlabeled_left_out",
                            "unlabeled_ratio", "prepared", "prepared_dir"})


@dataclass
class PreparedInfo:
    """Where a run's prepared samples are and whether they were read back (``reused``) or just written."""

    folder: Path | None
    fingerprint: str
    reused: bool


def cache_root(data: DataConfig) -> Path:
    """The folder that holds the fingerprinted cache folders (``data.prepared_dir`` or the default)."""
    if data.prepared_dir:
        return Path(data.prepared_dir).expanduser()
    env = os.environ.get("MEDKD_CACHE")
    base = Path(env).expanduser() if env else Path.home() / ".cache" / "medkd"
    return base / "prepared"


def checked_root(data: DataConfig, index: DatasetIndex) -> Path:
    """The resolved cache root of a run.

    Raises:
        ConfigError: ``data.prepared_dir`` lies inside the dataset folder.
    """
    root = cache_root(data).resolve()
    dataset = Path(index.root).resolve()
    if root == dataset or dataset in root.parents:
        raise ConfigError(f"data.prepared_dir: {root} is inside the dataset folder {dataset}; "
                          "medkd never writes there")
    return root


def _file_facts(path: Path) -> list[Any]:
    st = os.stat(path)
    return [str(Path(path).resolve()), st.st_size, st.st_mtime_ns]


def fingerprint(data: DataConfig, index: DatasetIndex, case_ids: Sequence[str], channels: Sequence[int],
                teacher: TeacherCopy | None = None, kind: str = "slices2d") -> tuple[str, dict[str, Any]]:
    """The sha256 fingerprint of the 2D training samples of ``case_ids`` and the facts behind it.

    ``teacher``: the teacher's own copy of its channels (its facts are added only when there is one, so the
    fingerprint of samples without it stays what it was). ``kind``: what is cached (``slices2d``, or
    ``cases`` for whole prepared cases, :mod:`medkd.data.prepared_cases`).

    Raises:
        OSError: a case file cannot be stat'ed (the load that follows reports it properly).
    """
    cases = []
    for cid in case_ids:
        case = index.case(cid)
        files = list(case.image_files) + ([case.label_file] if case.label_file is not None else [])
        cases.append({"id": cid, "site": case.site, "channel_axis": case.channel_axis,
                      "files": [_file_facts(f) for f in files]})
    facts = {
        "format_version": FORMAT_VERSION,
        "kind": kind,
        "versions": {"numpy": np.__version__, "torch": torch.__version__, "monai": monai.__version__},
        "root": str(Path(index.root).resolve()),
        "dataset": {"format": index.format, "labels": index.labels, "label_map": {str(k): v for k, v in
                    index.label_map.items()}, "merge_above": index.merge_above, "meta": index.meta},
        "channels": [int(c) for c in channels],
        "data": {k: v for k, v in data.model_dump(mode="json").items() if k not in IGNORED_FIELDS},
        "cases": cases,
    }
    if teacher is not None:
        facts["teacher_copy"] = teacher.describe()
    blob = json.dumps(facts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest(), facts


def folder_size(folder: Path) -> int:
    """Bytes held by the files of a cache folder."""
    return sum(f.stat().st_size for f in Path(folder).iterdir() if f.is_file())


def _sha256(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).data).hexdigest()


def array_spec(array: np.ndarray) -> dict[str, Any]:
    """What ``index.json`` records of a cached array: shape, dtype and sha256 (checked by :func:`load_checked`)."""
    return {"shape": list(array.shape), "dtype": str(array.dtype), "sha256": _sha256(array)}


def load_checked(path: Path, spec: dict[str, Any]) -> np.ndarray | None:
    """A cached array memory-mapped (:func:`map_npy`), or None when its shape, dtype or content differ from
    ``spec`` (:func:`array_spec`)."""
    arr = map_npy(path)
    if list(arr.shape) != spec["shape"] or str(arr.dtype) != spec["dtype"]:
        return None
    return arr if _sha256(arr) == spec["sha256"] else None


def compact_label_dtype(labels: np.ndarray | torch.Tensor) -> np.dtype:
    """The smallest integer type that holds every class index of ``labels`` (the cache stores labels in it)."""
    size = labels.numel() if isinstance(labels, torch.Tensor) else labels.size
    lo, hi = (int(labels.min()), int(labels.max())) if size else (0, 0)
    for dt in (np.uint8, np.int8, np.int16, np.int32):
        info = np.iinfo(dt)
        if info.min <= lo and hi <= info.max:
            return np.dtype(dt)
    return np.dtype(np.int64)


def _read(folder: Path, fp: str) -> tuple[torch.Tensor, torch.Tensor, list[tuple[str, int]]] | None:
    """The arrays of a cache folder, or None when anything does not match (the caller rebuilds)."""
    try:
        meta = json.loads((folder / "index.json").read_text())
        if meta.get("format_version") != FORMAT_VERSION or meta.get("fingerprint") != fp:
            return None
        arrays = {}
        for name in ("images", "labels"):
            arr = load_checked(folder / f"{name}.npy", meta[name])
            if arr is None:
                return None
            arrays[name] = arr
        origin = [(str(c), int(z)) for c, z in meta["origin"]]
        if len(origin) != arrays["images"].shape[0] or arrays["labels"].shape[0] != len(origin):
            return None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return torch.from_numpy(arrays["images"]), torch.from_numpy(arrays["labels"]), origin


def map_npy(path: Path) -> np.ndarray:
    """A ``.npy`` file memory-mapped copy-on-write, as a plain ndarray.

    Pages are read on first touch (the sha256 check reads them all once); a cache folder is only ever replaced
    by a rename, never rewritten in place, so the mapping stays valid while a run holds it.
    """
    return np.asarray(np.load(path, mmap_mode="c", allow_pickle=False))


def _write(root: Path, fp: str, facts: dict[str, Any], images: torch.Tensor, labels: torch.Tensor,
           origin: list[tuple[str, int]]) -> Path:
    """Write a cache folder under ``root`` all or nothing (temporary folder + rename); returns its path."""
    with staged_folder(root, fp) as tmp:
        img = images.numpy().astype(np.float32, copy=False)
        lab = labels.numpy().astype(compact_label_dtype(labels))
        np.save(tmp / "images.npy", img, allow_pickle=False)
        np.save(tmp / "labels.npy", lab, allow_pickle=False)
        meta = {"format_version": FORMAT_VERSION, "fingerprint": fp, "images": array_spec(img),
                "labels": array_spec(lab),
                "origin": [[c, int(z)] for c, z in origin], "facts": facts}
        (tmp / "index.json").write_text(json.dumps(meta, indent=1, default=str) + "\n")
    return root / fp


@contextlib.contextmanager
def staged_folder(root: Path, name: str) -> Iterator[Path]:
    """A temporary folder under ``root`` to write a cache folder into; published as ``root/name`` (by
    :func:`publish`) when the block ends normally, removed when it raises: all or nothing."""
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name[:16]}.", suffix=".tmp", dir=root))
    try:
        yield tmp
        publish(tmp, root / name)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def publish(tmp: Path, final: Path) -> None:
    """Rename a fully written temporary folder into place, replacing a stale or corrupt ``final``."""
    os.chmod(tmp, 0o755)
    if final.exists():  # a stale or corrupt folder: move it aside first, then remove it
        stale = Path(tempfile.mkdtemp(prefix=f".{final.name[:16]}.", suffix=".stale", dir=final.parent))
        os.replace(final, stale / "old")
        shutil.rmtree(stale, ignore_errors=True)
    try:
        os.rename(tmp, final)
    except OSError:
        if not final.is_dir():  # else another process just wrote the same samples
            raise
        shutil.rmtree(tmp, ignore_errors=True)


def prepared_slices(data: DataConfig, index: DatasetIndex, case_ids: Sequence[str], channels: Sequence[int],
                    progress: str | None = None, must_write: bool = False, teacher: TeacherCopy | None = None,
                    compact_labels: bool = False
                    ) -> tuple[torch.Tensor, torch.Tensor, list[tuple[str, int]], PreparedInfo]:
    """The 2D training samples of ``case_ids``: read from the cache, else prepared and written to it.

    Args:
        data: the run's data config (``data.prepared: off`` prepares in memory and writes nothing).
        index: the run's dataset.
        case_ids: the training cases, in order.
        channels: dataset channel indices held, in order.
        progress: a progress-bar label for preparing the cases (None: silent).
        must_write: a cache folder that cannot be written is an error (``medkd data prepare``); otherwise a
            one-line note on stderr and the samples are used from memory (the cache only saves time).
        teacher: the teacher's own copy of its channels, held after ``channels`` (None: none).
        compact_labels: labels read back keep the cache's small integer type (same values; the caller converts
            each batch) instead of int64, which saves converting every label at start-up.

    Returns:
        ``(images, labels, origin, info)`` exactly as :func:`medkd.data.pipeline.slice_samples` gives them.

    Raises:
        ConfigError: ``data.prepared_dir`` lies inside the dataset folder.
        MedkdError: ``must_write`` and the cache folder cannot be written (the message names it).
    """
    def compute() -> tuple[torch.Tensor, torch.Tensor, list[tuple[str, int]]]:
        cases = prepare_cases(index, case_ids, channels, data, progress=progress, teacher=teacher)
        return slice_samples(cases, tuple(data.size), data.foreground_slices_only)

    if data.prepared == "off":
        return (*compute(), PreparedInfo(None, "", False))
    root = checked_root(data, index)
    try:
        fp, facts = fingerprint(data, index, case_ids, channels, teacher)
    except OSError:
        return (*compute(), PreparedInfo(None, "", False))  # a missing file: the load reports it
    got = _read(root / fp, fp)
    if got is not None:
        images, labels, origin = got
        labels = labels if compact_labels else labels.long()
        return images, labels, origin, PreparedInfo(root / fp, fp, True)
    images, labels, origin = compute()
    try:
        folder = _write(root, fp, facts, images, labels, origin)
    except OSError as err:
        reason = err.strerror or (os.strerror(err.errno) if err.errno else str(err))
        line = f"data.prepared_dir: cannot write the prepared-sample cache in {root} ({reason})"
        if must_write:
            raise MedkdError(f"{line}; set another data.prepared_dir") from err
        print(f"note: {line}; training from memory (data.prepared: off skips the cache)", file=sys.stderr)
        return images, labels, origin, PreparedInfo(None, fp, False)
    return images, labels, origin, PreparedInfo(folder, fp, False)
