"""Compact dataset copies: medkd.data.compact.write_compact_copy and ``medkd data compact``."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

import medkd.data.compact as compact_mod
from medkd.cli import main
from medkd.data.compact import write_compact_copy
from medkd.data.formats import read_dataset
from medkd.data.nifti_io import make_affine, read_nifti, write_nifti
from medkd.errors import MedkdError


def _hashes(root: Path) -> dict[str, str]:
    return {str(f.relative_to(root)): hashlib.sha256(f.read_bytes()).hexdigest()
            for f in sorted(root.rglob("*")) if f.is_file()}


@pytest.fixture(scope="module")
def synth_small(tmp_path_factory) -> Path:
    """4 synthetic 2D cases (40 x 40), 2 sites, with a splits.json next to sites.json."""
    from medkd.data.synthetic import generate_dataset

    root = tmp_path_factory.mktemp("compact") / "synth"
    generate_dataset(root, dim=2, cases=4, sites=2, modalities=1, seed=2, size=(40, 40))
    (root / "splits.json").write_text(json.dumps([{"train": ["synth_000", "synth_001"], "val": ["synth_002"]}]))
    return root


@pytest.fixture(scope="module")
def blocks3d(tmp_path_factory) -> Path:
    """Two 3D cases (20 x 16 x 3 voxels, 2 channels) with non-contiguous label values {0, 2, 5}: a big block of
    5 in every slice, a small patch of 2."""
    root = tmp_path_factory.mktemp("compact") / "blocks"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    rng = np.random.default_rng(0)
    affine = make_affine((1.5, 2.0, 4.0))
    for i in range(2):
        label = np.zeros((20, 16, 3), dtype=np.uint8)
        label[4:16, 3:13, :] = 5  # big block, centre (10, 8)
        label[0:2, 0:2, 1] = 2
        for c in range(2):
            image = rng.normal(100.0 * (c + 1), 20.0, size=(20, 16, 3)).astype(np.float32) + 50.0 * (label > 0)
            write_nifti(root / "imagesTr" / f"case{i}_{c:04d}.nii.gz", image, affine=affine)
        write_nifti(root / "labelsTr" / f"case{i}.nii.gz", label, affine=affine)
    (root / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "T1", "1": "T2"}, "labels": {"background": 0, "organ": 2, "tumour": 5},
        "numTraining": 2, "file_ending": ".nii.gz"}))
    return root


def test_compact_copy_of_a_2d_dataset(synth_small, tmp_path):
    before = _hashes(synth_small)
    out = tmp_path / "small"
    index = write_compact_copy(synth_small, out, (32, 32), "uint8")
    src = read_dataset(synth_small)
    assert [c.case_id for c in index.cases] == [c.case_id for c in src.cases]
    assert index.channel_names == src.channel_names and index.labels == src.labels
    assert index.format == "nnunet" and index.root == out.resolve()
    for case in index.cases:
        image, _ = read_nifti(case.image_files[0])
        label, _ = read_nifti(case.label_file)
        assert image.shape == (32, 32, 1) and label.shape == (32, 32, 1)
        assert image.dtype == np.uint8 and image.min() == 0 and image.max() == 255
        assert set(np.unique(label)) <= set(src.labels.values())
        assert (label > 0).any()  # the organ survives the resize
    assert (out / "splits.json").read_bytes() == (synth_small / "splits.json").read_bytes()
    assert (out / "sites.json").read_bytes() == (synth_small / "sites.json").read_bytes()
    assert [c.site for c in index.cases] == [c.site for c in src.cases]
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["numTraining"] == len(src.cases)
    assert not (tmp_path / "small.tmp").exists()
    assert _hashes(synth_small) == before  # the source is untouched


def test_compact_copy_of_a_3d_dataset_keeps_slices_and_label_values(blocks3d, tmp_path):
    before = _hashes(blocks3d)
    index = write_compact_copy(blocks3d, tmp_path / "c", (8, 8), "uint8")
    assert [c.case_id for c in index.cases] == ["case0", "case1"]
    assert index.channel_names == ["T1", "T2"]
    assert index.labels == {"background": 0, "organ": 2, "tumour": 5}
    for case in index.cases:
        for f in case.image_files:
            image, affine = read_nifti(f)
            assert image.shape == (8, 8, 3) and image.dtype == np.uint8
            assert image.min() == 0 and image.max() == 255  # min-max scaled per volume and channel
            # the in-plane voxel size grows so the physical extent stays the same; slices are untouched
            assert np.allclose(np.abs(np.diag(affine)[:3]), [1.5 * 20 / 8, 2.0 * 16 / 8, 4.0])
        label, _ = read_nifti(case.label_file)
        assert label.shape == (8, 8, 3)
        values = set(np.unique(label).tolist())
        assert values <= {0, 2, 5} and 5 in values  # declared values, not class indices 0..2
        # nearest neighbour: the big block's class at its centre, background far from it, in every slice
        assert (label[3:5, 3:5, :] == 5).all()
        assert (label[7, 7, :] == 0).all()
    assert _hashes(blocks3d) == before


def test_float32_copy_at_the_same_size_is_the_source(blocks3d, tmp_path):
    index = write_compact_copy(blocks3d, tmp_path / "same", (20, 16), "float32")
    for case in index.cases:
        for f in case.image_files:
            got, _ = read_nifti(f)
            ref, _ = read_nifti(blocks3d / "imagesTr" / f.name)
            assert got.dtype == np.float32 and np.array_equal(got, ref)
        got, _ = read_nifti(case.label_file)
        ref, _ = read_nifti(blocks3d / "labelsTr" / case.label_file.name)
        assert np.array_equal(got, ref)


def test_refusals_leave_nothing_behind(synth_small, tmp_path):
    before = _hashes(synth_small)
    existing = tmp_path / "exists"
    existing.mkdir()
    with pytest.raises(MedkdError, match="already exists"):
        write_compact_copy(synth_small, existing, (32, 32))
    assert list(existing.iterdir()) == []
    with pytest.raises(MedkdError, match="inside the source"):
        write_compact_copy(synth_small, synth_small / "copy", (32, 32))
    with pytest.raises(MedkdError, match="dtype"):
        write_compact_copy(synth_small, tmp_path / "d", (32, 32), "float16")  # NIfTI has no float16
    with pytest.raises(MedkdError, match="size"):
        write_compact_copy(synth_small, tmp_path / "s", (32,))
    assert not (synth_small / "copy").exists() and not (synth_small / "copy.tmp").exists()
    assert not (tmp_path / "d").exists() and not (tmp_path / "d.tmp").exists()
    assert _hashes(synth_small) == before


def test_a_failure_while_writing_removes_the_partial_copy(synth_small, tmp_path, monkeypatch):
    real = compact_mod.write_nifti
    calls = {"n": 0}

    def failing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError("disk full")
        return real(*args, **kwargs)

    monkeypatch.setattr(compact_mod, "write_nifti", failing)
    with pytest.raises(OSError, match="disk full"):
        write_compact_copy(synth_small, tmp_path / "out", (32, 32))
    assert calls["n"] == 3
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.tmp").exists()
    assert list(tmp_path.iterdir()) == []


def test_cli_compact(synth_small, tmp_path, capsys):
    before = _hashes(synth_small)
    out = tmp_path / "cli"
    assert main(["data", "compact", str(synth_small), str(out), "--size", "32x32"]) == 0
    printed = capsys.readouterr().out
    assert "4 cases at 32x32 (uint8)" in printed
    index = read_dataset(out)
    assert len(index.cases) == 4
    assert read_nifti(index.cases[0].image_files[0])[0].shape == (32, 32, 1)
    # user errors: exit 2, one line, no traceback, no temporary folder
    for argv, expected in ((["data", "compact", str(synth_small), str(out), "--size", "32x32"], "already exists"),
                           (["data", "compact", str(synth_small), str(synth_small / "x"), "--size", "32x32"],
                            "inside the source"),
                           (["data", "compact", str(synth_small), str(tmp_path / "y"), "--size", "32"], "size"),
                           (["data", "compact", str(synth_small), str(tmp_path / "z"), "--dtype", "float16"],
                            "float16")):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and expected in err and "\n" not in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cli"]
    assert not (synth_small / "x").exists() and not (synth_small / "x.tmp").exists()
    assert _hashes(synth_small) == before
