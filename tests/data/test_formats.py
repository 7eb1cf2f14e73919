"""Dataset formats: small fixtures written in every supported layout, read back value for value."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medkd.data.formats import FORMAT_READERS, detect_format, read_dataset, with_label_map
from medkd.data.nifti_io import write_nifti
from medkd.data.pipeline import load_case
from medkd.errors import ConfigError, DataError

SHARED_DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"


def _vol(seed: int, shape=(6, 5, 4)) -> np.ndarray:
    return np.random.default_rng(seed).normal(100, 20, size=shape).astype(np.float32)


def _lab(shape=(6, 5, 4), values=(0, 1, 2)) -> np.ndarray:
    lab = np.zeros(shape, dtype=np.uint8)
    for i, v in enumerate(values[1:], start=1):
        lab[i, :, :] = v
    return lab


def write_nnunet(root: Path, n_cases: int = 3, channels=("FLAIR", "T1c")) -> Path:
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    (root / "dataset.json").write_text(json.dumps({
        "channel_names": {str(i): c for i, c in enumerate(channels)},
        "labels": {"background": 0, "a": 1, "b": 2}, "numTraining": n_cases, "file_ending": ".nii.gz"}))
    for i in range(n_cases):
        for c in range(len(channels)):
            write_nifti(root / "imagesTr" / f"case{i:02d}_{c:04d}.nii.gz", _vol(10 * i + c))
        write_nifti(root / "labelsTr" / f"case{i:02d}.nii.gz", _lab())
    return root


def write_msd(root: Path, n_cases: int = 3, modalities=("T1", "T2", "FLAIR")) -> Path:
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    training = []
    for i in range(n_cases):
        img = np.stack([_vol(10 * i + c) for c in range(len(modalities))], axis=-1)  # (X, Y, Z, C)
        write_nifti(root / "imagesTr" / f"BRATS_{i:03d}.nii.gz", img)
        write_nifti(root / "labelsTr" / f"BRATS_{i:03d}.nii.gz", _lab())
        training.append({"image": f"./imagesTr/BRATS_{i:03d}.nii.gz", "label": f"./labelsTr/BRATS_{i:03d}.nii.gz"})
    (root / "dataset.json").write_text(json.dumps({
        "modality": {str(i): m for i, m in enumerate(modalities)},
        "labels": {"0": "background", "1": "edema", "2": "tumour"}, "training": training}))
    return root


def write_site_folders(root: Path) -> Path:
    """Three sites; BMC writes ``_Segmentation``, HK uses ``.nii`` and a lower-case segmentation suffix."""
    layout = {"BMC": ("Case{:02d}.nii.gz", "Case{:02d}_Segmentation.nii.gz"),
              "RUNMC": ("Case{:02d}.nii.gz", "Case{:02d}_segmentation.nii.gz"),
              "HK": ("case{:02d}.nii", "CASE{:02d}_SEGMENTATION.nii.gz")}
    for s, (site, (img_name, seg_name)) in enumerate(layout.items()):
        (root / site).mkdir(parents=True)
        for i in range(2):
            write_nifti(root / site / img_name.format(i), _vol(100 * s + i))
            write_nifti(root / site / seg_name.format(i), _lab(values=(0, 1, 2)))  # zones 1 and 2
    return root


def write_png_pairs(root: Path, n: int = 3, rgb: bool = False, mask_max: int = 255) -> Path:
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        shape = (12, 10, 3) if rgb else (12, 10)
        img = rng.integers(0, 256, size=shape, dtype=np.uint8)
        mask = np.zeros((12, 10), dtype=np.uint8)
        mask[3:7, 2:6] = mask_max
        Image.fromarray(img).save(root / "images" / f"img{i}.png")
        Image.fromarray(mask).save(root / "masks" / f"img{i}.png")
    return root


def test_registered_formats_and_detection(tmp_path):
    assert {"nnunet", "msd", "site_folders", "png_pairs"} <= set(FORMAT_READERS)
    assert detect_format(write_nnunet(tmp_path / "a")) == "nnunet"
    assert detect_format(write_msd(tmp_path / "b")) == "msd"
    assert detect_format(write_site_folders(tmp_path / "c")) == "site_folders"
    assert detect_format(write_png_pairs(tmp_path / "d")) == "png_pairs"
    (tmp_path / "e").mkdir()
    with pytest.raises(DataError, match="not a recognised dataset folder"):
        detect_format(tmp_path / "e")
    with pytest.raises(ConfigError, match="did you mean 'site_folders'"):
        read_dataset(tmp_path / "c", format="site_folder")


def test_nnunet_two_channels_read_by_name(tmp_path):
    root = write_nnunet(tmp_path / "ds")
    index = read_dataset(root)
    assert index.format == "nnunet"
    assert [c.case_id for c in index.cases] == ["case00", "case01", "case02"]
    assert index.channel_names == ["FLAIR", "T1c"]
    assert index.channel_indices(["t1c"]) == [1]
    assert index.labels == {"background": 0, "a": 1, "b": 2}
    image, label, affine = load_case(index.case("case01"), [1, 0], index=index)
    np.testing.assert_array_equal(image[0], _vol(11))
    np.testing.assert_array_equal(image[1], _vol(10))
    np.testing.assert_array_equal(label, _lab())
    assert affine.shape == (4, 4)


def test_msd_4d_multimodal_channels_from_last_axis(tmp_path):
    root = write_msd(tmp_path / "Task01")
    index = read_dataset(root)
    assert index.format == "msd"
    assert index.channel_names == ["T1", "T2", "FLAIR"]
    assert index.labels == {"background": 0, "edema": 1, "tumour": 2}
    case = index.case("BRATS_002")
    assert case.channel_axis == -1
    image, label, _ = load_case(case, index.channel_indices(["flair", "T1"]), index=index)
    assert image.shape == (2, 6, 5, 4)
    np.testing.assert_array_equal(image[0], _vol(22))
    np.testing.assert_array_equal(image[1], _vol(20))
    np.testing.assert_array_equal(label, _lab())


def test_site_folders_case_insensitive_names_sites_and_merged_zones(tmp_path):
    root = write_site_folders(tmp_path / "prostate")
    index = read_dataset(root)
    assert index.format == "site_folders"
    assert index.sites == ["BMC", "HK", "RUNMC"]
    assert sorted(c.case_id for c in index.cases) == [
        "BMC_Case00", "BMC_Case01", "HK_case00", "HK_case01", "RUNMC_Case00", "RUNMC_Case01"]
    assert index.channel_names == ["T2"]
    assert index.labels == {"background": 0, "prostate": 1}
    case = index.case("BMC_Case01")
    assert case.site == "BMC" and case.label_file.name == "Case01_Segmentation.nii.gz"
    image, label, _ = load_case(case, [0], index=index)
    np.testing.assert_array_equal(image[0], _vol(1))
    # zones 1 and 2 merge into the whole gland (paper A's protocol)
    np.testing.assert_array_equal(label, (_lab() > 0).astype(np.int64))


def test_site_folders_dataset_json_keeps_declared_labels(tmp_path):
    root = write_site_folders(tmp_path / "prostate")
    (root / "dataset.json").write_text(json.dumps({"channel_names": {"0": "T2w"},
                                                   "labels": {"background": 0, "PZ": 1, "TZ": 2}}))
    index = read_dataset(root)
    assert index.format == "site_folders" and index.channel_names == ["T2w"]
    assert index.merge_above is None
    _, label, _ = load_case(index.case("RUNMC_Case00"), [0], index=index)
    np.testing.assert_array_equal(label, _lab())
    merged = with_label_map(index, {2: 1})
    assert merged.labels == {"background": 0, "PZ": 1}
    _, label, _ = load_case(merged.case("RUNMC_Case00"), [0], index=merged)
    np.testing.assert_array_equal(label, (_lab() > 0).astype(np.int64))
    with pytest.raises(ConfigError, match="7 is not a label"):
        with_label_map(index, {2: 7})


def test_png_pairs_binary_masks_and_gray_images(tmp_path):
    root = write_png_pairs(tmp_path / "png")
    index = read_dataset(root)
    assert index.format == "png_pairs"
    assert index.channel_names == ["gray"] and index.labels == {"background": 0, "foreground": 1}
    image, label, affine = load_case(index.case("img1"), [0], index=index)
    expected = np.asarray(Image.open(root / "images" / "img1.png"))
    assert image.shape == (1, 12, 10, 1)
    np.testing.assert_array_equal(image[0, ..., 0], expected)
    assert label.shape == (12, 10, 1) and label.sum() == 16 and set(np.unique(label)) == {0, 1}
    np.testing.assert_array_equal(affine, np.eye(4))


def test_png_pairs_rgb_with_dataset_json_and_case_insensitive_ids(tmp_path):
    root = write_png_pairs(tmp_path / "png", rgb=True, mask_max=2)
    (root / "masks" / "img2.png").rename(root / "masks" / "IMG2.PNG")
    (root / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "polyp": 1, "tool": 2}}))
    index = read_dataset(root)
    assert index.channel_names == ["R", "G", "B"]
    assert index.case("img2").label_file.name == "IMG2.PNG"
    image, label, _ = load_case(index.case("img2"), [2, 0], index=index)
    rgb = np.asarray(Image.open(root / "images" / "img2.png"))
    np.testing.assert_array_equal(image[0, ..., 0], rgb[..., 2])
    np.testing.assert_array_equal(image[1, ..., 0], rgb[..., 0])
    assert set(np.unique(label)) == {0, 2}  # class index 2 = value 2


def test_strict_read_names_the_missing_file_and_lenient_read_lists_it(tmp_path):
    root = write_nnunet(tmp_path / "ds")
    (root / "labelsTr" / "case01.nii.gz").unlink()
    with pytest.raises(DataError, match=r"labelsTr/case01\.nii\.gz: label file missing"):
        read_dataset(root)
    index = read_dataset(root, strict=False)
    assert [c.case_id for c in index.cases] == ["case00", "case02"]
    assert len(index.issues) == 1 and "case01.nii.gz" in index.issues[0]


def test_undeclared_label_value_is_a_data_error(tmp_path):
    root = write_nnunet(tmp_path / "ds", n_cases=1)
    write_nifti(root / "labelsTr" / "case00.nii.gz", _lab(values=(0, 1, 5)))
    index = read_dataset(root)
    with pytest.raises(DataError, match=r"case00\.nii\.gz: label value 5 is not declared in dataset.json"):
        load_case(index.cases[0], [0], index=index)


needs_data = pytest.mark.skipif(not SHARED_DATA.is_dir(), reason=f"real datasets not found at {SHARED_DATA}")


@needs_data
@pytest.mark.realdata
@pytest.mark.parametrize("folder, fmt, n, channels, labels", [
    ("acdc", "nnunet", 200, ["cine-MRI"], [0, 1, 2, 3]),
    ("hippocampus/Task04_Hippocampus", "msd", 260, ["MRI"], [0, 1, 2]),
    ("brats2015-sample", "nnunet", 6, ["FLAIR", "T1c"], [0, 1, 2, 3, 4]),
])
def test_real_dataset_indexes(folder, fmt, n, channels, labels):
    index = read_dataset(SHARED_DATA / folder)
    assert index.format == fmt and len(index.cases) == n
    assert index.channel_names == channels
    assert sorted(index.labels.values()) == labels
    assert not index.issues
    if folder.startswith("brats"):
        assert index.channel_indices(["T1c"]) == [1]
        assert index.channel_indices(["flair", "t1c"]) == [0, 1]
