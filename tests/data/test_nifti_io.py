from __future__ import annotations

import gzip

import nibabel as nib
import numpy as np
import pytest

from medkd.data import nifti_io
from medkd.data.nifti_io import make_affine, read_nifti, write_nifti
from medkd.errors import DataError


def test_round_trip_image_and_label(tmp_path):
    rng = np.random.default_rng(0)
    image = rng.normal(size=(12, 10, 1))
    label = rng.integers(0, 3, size=(12, 10, 1))
    img_path = write_nifti(tmp_path / "img.nii.gz", image, spacing=(1.5, 2.0, 3.0))
    lab_path = write_nifti(tmp_path / "lab.nii.gz", label, spacing=(1.5, 2.0, 3.0))

    arr, affine = read_nifti(img_path)
    assert arr.dtype == np.float32 and arr.shape == (12, 10, 1)
    np.testing.assert_allclose(arr, image.astype(np.float32))
    np.testing.assert_allclose(np.diag(affine), [1.5, 2.0, 3.0, 1.0])
    assert nib.load(str(img_path)).header.get_zooms() == (1.5, 2.0, 3.0)

    lab, _ = read_nifti(lab_path)
    assert lab.dtype == np.uint8
    np.testing.assert_array_equal(lab, label)


def test_explicit_affine_and_uncompressed(tmp_path):
    affine = make_affine((2.0, 2.0, 2.0), shape=(5, 5, 5))
    np.testing.assert_allclose(affine[:3, 3], [-4.0, -4.0, -4.0])
    path = write_nifti(tmp_path / "a.nii", np.ones((5, 5, 5), np.float64), affine=affine)
    arr, aff = read_nifti(path)
    assert arr.dtype == np.float32
    np.testing.assert_allclose(aff, affine)


def test_label_out_of_range_and_bad_suffix(tmp_path):
    with pytest.raises(DataError, match="do not fit"):
        write_nifti(tmp_path / "lab.nii.gz", np.array([[[300]]]))
    with pytest.raises(DataError, match="not a NIfTI file name"):
        write_nifti(tmp_path / "lab.png", np.zeros((2, 2, 1)))
    assert list(tmp_path.iterdir()) == []


def test_write_is_atomic(tmp_path, monkeypatch):
    target = tmp_path / "img.nii.gz"
    write_nifti(target, np.full((4, 4, 1), 7.0))
    assert [p.name for p in tmp_path.iterdir()] == ["img.nii.gz"]  # no temporary file left behind

    real_save = nib.save

    def crashing_save(img, filename):
        real_save(img, filename)
        with open(filename, "r+b") as fh:  # leave a half-written file, then die
            fh.truncate(20)
        raise KeyboardInterrupt

    monkeypatch.setattr(nifti_io.nib, "save", crashing_save)
    with pytest.raises(KeyboardInterrupt):
        write_nifti(target, np.zeros((4, 4, 1)))
    with pytest.raises(KeyboardInterrupt):
        write_nifti(tmp_path / "new.nii.gz", np.zeros((4, 4, 1)))
    monkeypatch.undo()
    # the old file is intact, the new one never appeared, and no temporary file is left
    assert [p.name for p in tmp_path.iterdir()] == ["img.nii.gz"]
    np.testing.assert_array_equal(read_nifti(target)[0], np.full((4, 4, 1), 7.0, np.float32))


def test_missing_file(tmp_path):
    with pytest.raises(DataError) as err:
        read_nifti(tmp_path / "nope.nii.gz")
    assert "nope.nii.gz" in str(err.value) and "not found" in str(err.value)


@pytest.mark.parametrize("keep", [0.9, 0.5, 0.05])
def test_truncated_gzip(tmp_path, keep):
    path = write_nifti(tmp_path / "img.nii.gz", np.random.default_rng(1).normal(size=(40, 40, 8)))
    data = path.read_bytes()
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(DataError) as err:
        read_nifti(broken)
    message = str(err.value)
    assert "broken.nii.gz" in message and "\n" not in message


def test_not_a_nifti(tmp_path):
    path = tmp_path / "junk.nii.gz"
    path.write_bytes(gzip.compress(b"hello, this is not a NIfTI header" * 20))
    with pytest.raises(DataError, match="junk.nii.gz"):
        read_nifti(path)
    plain = tmp_path / "junk.nii"
    plain.write_bytes(b"\x00" * 10)
    with pytest.raises(DataError, match="junk.nii"):
        read_nifti(plain)


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_written_nifti_respects_the_umask(tmp_path, umask):
    import os

    import numpy as np

    from medkd.data.nifti_io import write_nifti

    old = os.umask(umask)
    try:
        path = write_nifti(tmp_path / "a.nii.gz", np.zeros((4, 4, 1), np.float32))
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask
