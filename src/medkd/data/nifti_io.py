"""Small, safe NIfTI helpers on top of nibabel.

``write_nifti`` writes atomically (a temporary file in the target folder, then ``os.replace``), so a crash
never leaves a half-written file under the final name. ``read_nifti`` turns every way a file can be broken
(missing, not NIfTI, truncated gzip stream) into a one-line :class:`~medkd.errors.DataError` naming the file.

Example:
    >>> import numpy as np
    >>> write_nifti("case.nii.gz", np.zeros((4, 4, 1)), spacing=(1.5, 1.5, 3.0))  # doctest: +SKIP
    >>> array, affine = read_nifti("case.nii.gz")  # doctest: +SKIP
"""

from __future__ import annotations

import gzip
import os
import tempfile
import zlib
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.filebasedimages import ImageFileError

from medkd.errors import DataError
from medkd.io import file_mode

__all__ = ["NIFTI_SUFFIXES", "make_affine", "read_nifti", "spacing_from_affine", "write_nifti"]

NIFTI_SUFFIXES = (".nii.gz", ".nii")


def _suffix(path: Path) -> str:
    name = path.name.lower()
    for suffix in NIFTI_SUFFIXES:
        if name.endswith(suffix):
            return suffix
    raise DataError(f"{path}: not a NIfTI file name (expected one of {', '.join(NIFTI_SUFFIXES)})")


def spacing_from_affine(affine: np.ndarray) -> list[float]:
    """Voxel size per array axis (the first three) from a 4x4 voxel-to-world affine."""
    return [float(v) for v in np.linalg.norm(np.asarray(affine)[:3, :3], axis=0)]


def make_affine(spacing: Sequence[float] = (1.0, 1.0, 1.0), shape: Sequence[int] | None = None) -> np.ndarray:
    """Build a diagonal voxel-to-world affine.

    Args:
        spacing: voxel size per axis in mm (1 to 3 values; missing axes get 1.0).
        shape: if given, the origin is placed so that the volume is centred on (0, 0, 0).

    Returns:
        A float64 (4, 4) affine.
    """
    sp = [float(s) for s in spacing][:3]
    sp += [1.0] * (3 - len(sp))
    affine = np.diag(sp + [1.0])
    if shape is not None:
        dims = list(shape)[:3] + [1] * (3 - len(list(shape)[:3]))
        affine[:3, 3] = [-(n - 1) / 2.0 * s for n, s in zip(dims, sp)]
    return affine


def write_nifti(
    path: str | os.PathLike,
    array: np.ndarray,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    affine: np.ndarray | None = None,
    dtype: np.dtype | type | str | None = None,
) -> Path:
    """Write ``array`` as a NIfTI-1 file, atomically.

    Args:
        path: target file; must end in ``.nii.gz`` or ``.nii``. Its folder must exist.
        array: the voxel data. A 2D image should be given as (H, W, 1) (nnU-Net's convention).
        spacing: voxel size in mm, used when ``affine`` is None.
        affine: a (4, 4) voxel-to-world matrix; overrides ``spacing``.
        dtype: on-disk data type. Default: ``uint8`` for integer / bool arrays (labels; values must fit),
            ``float32`` otherwise (images).

    Returns:
        The written path.
    """
    path = Path(path)
    suffix = _suffix(path)
    data = np.asarray(array)
    if dtype is None:
        dtype = np.uint8 if (data.dtype == bool or np.issubdtype(data.dtype, np.integer)) else np.float32
    dtype = np.dtype(dtype)
    if np.issubdtype(dtype, np.integer) and data.size:
        info = np.iinfo(dtype)
        lo, hi = data.min(), data.max()
        if lo < info.min or hi > info.max:
            raise DataError(f"{path}: values {lo}..{hi} do not fit the on-disk type {dtype.name}")
    data = data.astype(dtype, copy=False)
    if affine is None:
        affine = make_affine(spacing)
    img = nib.Nifti1Image(data, np.asarray(affine, dtype=np.float64))
    img.header.set_data_dtype(dtype)
    img.header.set_xyzt_units("mm")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{suffix}", dir=path.parent)
    os.close(fd)
    try:
        nib.save(img, tmp)
        os.chmod(tmp, file_mode(path))  # as open() would: the umask decides, not mkstemp's 0600
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_nifti(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read a NIfTI file fully into memory.

    Args:
        path: a ``.nii`` or ``.nii.gz`` file.

    Returns:
        ``(array, affine)``: the voxel data in its on-disk type (scaled to float if the header asks for
        scaling) and the (4, 4) affine.

    Raises:
        DataError: the file is missing, is not NIfTI, or is truncated / corrupt.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        img = nib.load(str(path))
        array = np.asanyarray(img.dataobj)
        affine = np.asarray(img.affine, dtype=np.float64)
    except (ImageFileError, EOFError, OSError, gzip.BadGzipFile, zlib.error, ValueError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"{path}: unreadable or truncated NIfTI file ({reason})") from exc
    return np.asarray(array), affine
