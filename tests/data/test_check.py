"""``medkd data check``: good datasets pass with the right facts; each broken one fails with one clear line,
exit status 2, no traceback, and the input left byte-for-byte unchanged."""

from __future__ import annotations

import gzip
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medkd.cli import main
from medkd.data.check import check_dataset, ensure_usable
from medkd.data.nifti_io import make_affine, write_nifti
from medkd.errors import DataError

SHARED_DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
SHAPE = (8, 7, 5)


def _img(seed: int, shape=SHAPE) -> np.ndarray:
    return np.random.default_rng(seed).uniform(1, 2, size=shape).astype(np.float32)


def _lab(values=(0, 1, 2), shape=SHAPE) -> np.ndarray:
    lab = np.zeros(shape, dtype=np.uint8)
    for i, v in enumerate(values[1:], start=1):
        lab[2 * i: 2 * i + 2] = v
    return lab


def nnunet(root: Path, n: int = 3, channels: int = 1) -> Path:
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    (root / "dataset.json").write_text(json.dumps({
        "channel_names": {str(c): f"ch{c}" for c in range(channels)},
        "labels": {"background": 0, "a": 1, "b": 2}, "file_ending": ".nii.gz"}))
    for i in range(n):
        for c in range(channels):
            write_nifti(root / "imagesTr" / f"c{i}_{c:04d}.nii.gz", _img(i * 10 + c))
        write_nifti(root / "labelsTr" / f"c{i}.nii.gz", _lab((0, 1) if i == 0 else (0, 1, 2)))
    return root


def msd(root: Path, n: int = 3, channels: int = 2) -> Path:
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    training = []
    for i in range(n):
        write_nifti(root / "imagesTr" / f"m{i}.nii.gz", np.stack([_img(i * 10 + c) for c in range(channels)], -1))
        write_nifti(root / "labelsTr" / f"m{i}.nii.gz", _lab())
        training.append({"image": f"./imagesTr/m{i}.nii.gz", "label": f"./labelsTr/m{i}.nii.gz"})
    (root / "dataset.json").write_text(json.dumps({
        "modality": {str(c): f"mod{c}" for c in range(channels)},
        "labels": {"0": "background", "1": "a", "2": "b"}, "training": training}))
    return root


def sites(root: Path) -> Path:
    for site, suffix in (("BMC", "_Segmentation"), ("UCL", "_segmentation")):
        (root / site).mkdir(parents=True)
        for i in range(2):
            write_nifti(root / site / f"Case{i:02d}.nii.gz", _img(i))
            write_nifti(root / site / f"Case{i:02d}{suffix}.nii.gz", _lab((0, 1, 2)))
    return root


def pngs(root: Path, n: int = 2) -> Path:
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(n):
        Image.fromarray(np.full((9, 6), 40 + i, dtype=np.uint8)).save(root / "images" / f"p{i}.png")
        mask = np.zeros((9, 6), dtype=np.uint8)
        mask[2:5, 1:4] = 255
        Image.fromarray(mask).save(root / "masks" / f"p{i}.png")
    return root


def _hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------- good datasets


@pytest.mark.parametrize("make, fmt, n, channels", [
    (nnunet, "nnunet", 3, ["ch0"]), (msd, "msd", 3, ["mod0", "mod1"]),
    (sites, "site_folders", 4, ["T2"]), (pngs, "png_pairs", 2, ["gray"]),
])
def test_good_dataset_passes_with_exit_zero(tmp_path, capsys, make, fmt, n, channels):
    root = make(tmp_path / "ds")
    before = _hashes(root)
    assert main(["data", "check", str(root)]) == 0
    out = capsys.readouterr().out
    assert f"({fmt})" in out and f"cases:    {n}\n" in out
    assert f"channels: {len(channels)} ({', '.join(channels)})" in out
    assert "result:   usable" in out
    assert _hashes(root) == before


def test_report_facts(tmp_path):
    root = nnunet(tmp_path / "ds", n=3)
    write_nifti(root / "imagesTr" / "c2_0000.nii.gz", _img(5, shape=(10, 7, 6)), spacing=(0.5, 0.5, 2.0))
    write_nifti(root / "labelsTr" / "c2.nii.gz", _lab(shape=(10, 7, 6)), spacing=(0.5, 0.5, 2.0))
    report = check_dataset(root)
    assert report.ok and report.n_cases == report.n_checked == 3
    assert report.labels == {"background": 0, "a": 1, "b": 2}
    assert report.label_values == [0, 1, 2]
    assert report.shape_min == (8, 7, 5) and report.shape_max == (10, 7, 6)
    assert report.spacing_min == (0.5, 0.5, 1.0) and report.spacing_max == (1.0, 1.0, 2.0)
    assert report.absent == {"a": 0, "b": 1}  # case c0 has no class b
    assert "b absent from 1 of 3 cases" in report.summary()
    assert check_dataset(root, max_cases=2).n_checked == 2


def test_sites_are_counted(tmp_path):
    report = check_dataset(sites(tmp_path / "ds"))
    assert report.sites == {"BMC": 2, "UCL": 2}
    assert report.label_values == [0, 1, 2] and report.labels == {"background": 0, "prostate": 1}


# ---------------------------------------------------------------- broken datasets


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def b_missing_label(root):
    nnunet(root)
    (root / "labelsTr" / "c1.nii.gz").unlink()
    return "labelsTr/c1.nii.gz", "label file missing"


def b_missing_channel(root):
    nnunet(root, channels=2)
    (root / "imagesTr" / "c2_0001.nii.gz").unlink()
    return "imagesTr/c2_0001.nii.gz", "channel file missing"


def b_missing_msd_image(root):
    msd(root)
    (root / "imagesTr" / "m1.nii.gz").unlink()
    return "imagesTr/m1.nii.gz", "image file missing"


def b_truncated(root):
    nnunet(root)
    _truncate(root / "imagesTr" / "c1_0000.nii.gz")
    return "imagesTr/c1_0000.nii.gz", "unreadable or truncated"


def b_corrupt(root):
    nnunet(root)
    (root / "labelsTr" / "c2.nii.gz").write_bytes(gzip.compress(b"this is not a nifti header" * 20))
    return "labelsTr/c2.nii.gz", "unreadable"


def b_shape_mismatch(root):
    nnunet(root)
    write_nifti(root / "labelsTr" / "c1.nii.gz", _lab(shape=(8, 7, 4)))
    return "labelsTr/c1.nii.gz", "differs from image shape"


def b_affine_mismatch(root):
    nnunet(root)
    write_nifti(root / "labelsTr" / "c0.nii.gz", _lab((0, 1)), affine=make_affine((1.0, 1.0, 3.0)))
    return "labelsTr/c0.nii.gz", "affine differs"


def b_channel_count_msd(root):
    msd(root)
    write_nifti(root / "imagesTr" / "m2.nii.gz", np.stack([_img(c) for c in range(3)], -1))
    return "imagesTr/m2.nii.gz", "3 channel(s) on the last axis"


def b_channel_count_extra_file(root):
    nnunet(root)
    write_nifti(root / "imagesTr" / "c1_0001.nii.gz", _img(9))
    return "imagesTr/c1_0001.nii.gz", "not declared in dataset.json"


def b_channel_count_4d(root):
    nnunet(root)
    write_nifti(root / "imagesTr" / "c0_0000.nii.gz", np.stack([_img(0), _img(1)], -1))
    return "imagesTr/c0_0000.nii.gz", "channel count differs"


def b_undeclared_label(root):
    nnunet(root)
    write_nifti(root / "labelsTr" / "c2.nii.gz", _lab((0, 1, 7)))
    return "labelsTr/c2.nii.gz", "[7] not declared in dataset.json"


def b_fractional_label(root):
    nnunet(root)
    lab = _lab().astype(np.float32)
    lab[0, 0, 0] = 0.5
    write_nifti(root / "labelsTr" / "c1.nii.gz", lab)
    return "labelsTr/c1.nii.gz", "not integers"


def b_nan(root):
    nnunet(root)
    img = _img(1)
    img[1, 2, 3] = np.nan
    write_nifti(root / "imagesTr" / "c1_0000.nii.gz", img)
    return "imagesTr/c1_0000.nii.gz", "1 NaN/Inf voxel(s)"


def b_inf(root):
    msd(root)
    img = np.stack([_img(0), _img(1)], -1)
    img[0, 0, 0, 1] = np.inf
    img[1, 0, 0, 0] = -np.inf
    write_nifti(root / "imagesTr" / "m0.nii.gz", img)
    return "imagesTr/m0.nii.gz", "2 NaN/Inf voxel(s)"


def b_empty_nnunet(root):
    nnunet(root, n=0)
    return "imagesTr", "no images"


def b_empty_msd(root):
    msd(root, n=0)
    return "dataset.json", "'training' list is empty"


def b_duplicate_msd(root):
    msd(root)
    data = json.loads((root / "dataset.json").read_text())
    data["training"].append(dict(data["training"][1]))
    (root / "dataset.json").write_text(json.dumps(data))
    return "imagesTr/m1.nii.gz", "duplicate case id 'm1'"


def b_duplicate_sites(root):
    sites(root)
    write_nifti(root / "UCL" / "case01.nii", _img(3))
    return "UCL/case01.nii", "duplicate case id"


def b_missing_segmentation(root):
    sites(root)
    (root / "BMC" / "Case01_Segmentation.nii.gz").unlink()
    return "BMC/Case01.nii.gz", "segmentation file missing"


def b_truncated_png(root):
    pngs(root)
    _truncate(root / "images" / "p1.png")
    return "images/p1.png", "unreadable or truncated PNG"


def b_missing_mask(root):
    pngs(root)
    (root / "masks" / "p0.png").unlink()
    return "images/p0.png", "mask missing"


def b_bad_dataset_json(root):
    nnunet(root)
    (root / "dataset.json").write_text("{not json")
    return "dataset.json", "not valid JSON"


BROKEN = [b_missing_label, b_missing_channel, b_missing_msd_image, b_truncated, b_corrupt, b_shape_mismatch,
          b_affine_mismatch, b_channel_count_msd, b_channel_count_extra_file, b_channel_count_4d,
          b_undeclared_label, b_fractional_label, b_nan, b_inf, b_empty_nnunet, b_empty_msd, b_duplicate_msd,
          b_duplicate_sites, b_missing_segmentation, b_truncated_png, b_missing_mask, b_bad_dataset_json]


@pytest.mark.parametrize("make", BROKEN, ids=[f.__name__[2:] for f in BROKEN])
def test_broken_dataset_fails_with_one_clear_line(tmp_path, capsys, make):
    root = tmp_path / "ds"
    where, what = make(root)
    before = _hashes(root)
    assert main(["data", "check", str(root)]) == 2
    captured = capsys.readouterr()
    assert "Traceback" not in captured.out + captured.err
    problems = [line for line in captured.err.splitlines() if line.startswith("problem: ")]
    assert len(problems) == 1, captured.err
    line = problems[0]
    assert str(root / where) in line and what in line, line
    assert captured.err.splitlines()[-1].startswith(f"error: {root}: 1 problem(s)")
    assert "NOT usable: 1 problem(s)" in captured.out
    assert _hashes(root) == before


def test_every_problem_is_listed_not_only_the_first(tmp_path):
    root = nnunet(tmp_path / "ds", n=4)
    _truncate(root / "imagesTr" / "c0_0000.nii.gz")
    write_nifti(root / "labelsTr" / "c2.nii.gz", _lab((0, 9)))
    (root / "labelsTr" / "c3.nii.gz").unlink()
    problems = check_dataset(root).problems
    assert len(problems) == 3
    assert any("c0_0000.nii.gz" in p for p in problems)
    assert any("c2.nii.gz" in p and "[9]" in p for p in problems)
    assert any("c3.nii.gz: label file missing" in p for p in problems)


def test_ensure_usable_raises_first_problem_with_count(tmp_path):
    root = nnunet(tmp_path / "ds", n=3)
    assert ensure_usable(root).ok
    (root / "labelsTr" / "c0.nii.gz").unlink()
    (root / "labelsTr" / "c1.nii.gz").unlink()
    with pytest.raises(DataError, match=r"c0\.nii\.gz: label file missing.*\(\+1 more problem\(s\); run 'medkd data "
                                        r"check"):
        ensure_usable(root)


def test_unknown_format_is_a_one_line_error(tmp_path, capsys):
    root = nnunet(tmp_path / "ds")
    assert main(["data", "check", str(root), "--format", "nnunet2"]) == 2
    err = capsys.readouterr().err
    assert "unknown dataset format 'nnunet2'" in err and "Traceback" not in err


# ---------------------------------------------------------------- real data


needs_data = pytest.mark.skipif(not SHARED_DATA.is_dir(), reason=f"real datasets not found at {SHARED_DATA}")


@needs_data
@pytest.mark.realdata
@pytest.mark.parametrize("folder, n, channels, labels", [
    ("acdc", 200, "1 (cine-MRI)", "0 background, 1 RV, 2 MYO, 3 LV"),
    ("hippocampus/Task04_Hippocampus", 260, "1 (MRI)", "0 background, 1 Anterior, 2 Posterior"),
    ("brats2015-sample", 6, "2 (FLAIR, T1c)", "0 background, 1 necrosis, 2 edema, 3 non-enhancing, 4 enhancing"),
])
def test_real_datasets_check_clean(capsys, folder, n, channels, labels):
    """Full checks (every case) take about 3.6 s (ACDC), 0.8 s (Hippocampus) and 2.2 s (BraTS)."""
    root = SHARED_DATA / folder
    assert main(["data", "check", str(root)]) == 0
    out = capsys.readouterr().out
    assert f"cases:    {n}\n" in out
    assert f"channels: {channels}\n" in out
    assert f"labels:   {labels}\n" in out
    values = ", ".join(str(v) for v in range(labels.count(",") + 1))
    assert f"values:   {values} (in label files)" in out
    assert "result:   usable" in out


def _count_reads(monkeypatch) -> list:
    import medkd.data.check as check_mod

    reads: list = []
    real = check_mod.read_image
    monkeypatch.setattr(check_mod, "read_image", lambda path: (reads.append(path), real(path))[1])
    return reads


def test_ensure_usable_remembers_a_passed_dataset_until_a_file_changes(tmp_path, monkeypatch):
    import os

    root = nnunet(tmp_path / "ds", n=3)
    memo = tmp_path / "memo"
    reads = _count_reads(monkeypatch)
    assert ensure_usable(root, memo=memo).ok and reads
    reads.clear()
    again = ensure_usable(root, memo=memo)
    assert again.from_memo and again.ok and reads == []  # nothing read the second time
    assert not ensure_usable(root, memo=memo, images_only={"c0"}).from_memo  # other options, other key
    label = root / "labelsTr" / "c1.nii.gz"
    st = label.stat()
    os.utime(label, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    reads.clear()
    assert not ensure_usable(root, memo=memo).from_memo and reads  # a touched file: read everything again
    assert not ensure_usable(root).from_memo  # no memo folder: always read


def test_ensure_usable_never_remembers_a_failed_check(tmp_path):
    root = nnunet(tmp_path / "ds", n=3)
    write_nifti(root / "labelsTr" / "c2.nii.gz", np.full((8, 8, 3), 9, np.uint8))
    memo = tmp_path / "memo"
    for _ in range(2):
        with pytest.raises(DataError, match=r"c2\.nii\.gz"):
            ensure_usable(root, memo=memo)
    assert not memo.exists() or not any(memo.iterdir())
