"""Preprocessing: MONAI grid steps and their exact inversion, percentile clipping, 2.5D channels, regions."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from medkd.config import DataConfig
from medkd.data.formats import read_dataset
from medkd.data.nifti_io import write_nifti
from medkd.data.pipeline import normalise, prepare_arrays, prepare_cases, slice_samples
from medkd.data.preprocess import (
    add_neighbour_slices,
    changes_grid,
    clip_percentiles,
    model_in_channels,
    neighbour_positions,
    region_targets,
)

SHAPE = (20, 16, 10)


def _case() -> tuple[np.ndarray, np.ndarray]:
    """A (1, 20, 16, 10) image, zero outside a box, with a two-class label inside the box."""
    rng = np.random.default_rng(0)
    image = np.zeros((1, *SHAPE), dtype=np.float32)
    image[0, 4:15, 3:12, 2:8] = rng.uniform(1, 3, size=(11, 9, 6))
    label = np.zeros(SHAPE, dtype=np.int64)
    label[6:12, 5:10, 3:7] = 1
    label[8:10, 6:8, 4:6] = 2
    return image, label


def _onehot(label: np.ndarray, k: int = 3) -> torch.Tensor:
    return torch.nn.functional.one_hot(torch.from_numpy(label), k).movedim(-1, 0).float()


LPS = np.array([[-1.0, 0, 0, 5], [0, -2.0, 0, 7], [0, 0, 3.0, 1], [0, 0, 0, 1]])


def _cfg(**kw) -> DataConfig:
    return DataConfig(root="unused", **kw)


def test_default_config_keeps_the_grid_and_equals_plain_normalisation():
    image, label = _case()
    cfg = _cfg(normalize="zscore_nonzero")
    assert not changes_grid(cfg)
    pc = prepare_arrays("c", None, image, label, np.eye(4), cfg)
    assert pc.grid is None and pc.original_label is None
    np.testing.assert_array_equal(pc.image, normalise(image, "zscore_nonzero"))
    np.testing.assert_array_equal(pc.reference, label)
    probs = torch.rand(3, *SHAPE)
    assert torch.equal(pc.restore(probs), probs)


def test_orientation_to_ras_flips_axes_and_restores_exactly():
    image, label = _case()
    pc = prepare_arrays("c", None, image, label, LPS, _cfg(orientation="RAS", normalize="none"))
    # x and y run towards L and P in the file: RAS flips both, z stays
    np.testing.assert_array_equal(pc.image, image[:, ::-1, ::-1, :])
    np.testing.assert_array_equal(pc.label, label[::-1, ::-1, :])
    np.testing.assert_array_equal(pc.reference, label)
    back = pc.restore(_onehot(pc.label))
    assert back.shape == (3, *SHAPE)
    np.testing.assert_array_equal(back.argmax(0).numpy(), label)


def test_axis_permutation_is_undone():
    image, label = _case()
    affine = np.array([[0, 0, 1.0, 0], [1.0, 0, 0, 0], [0, 1.0, 0, 0], [0, 0, 0, 1]])  # file axes = (A, S, R)
    pc = prepare_arrays("c", None, image, label, affine, _cfg(orientation="RAS", normalize="none"))
    np.testing.assert_array_equal(pc.image[0], np.transpose(image[0], (2, 0, 1)))
    np.testing.assert_array_equal(pc.restore(_onehot(pc.label)).argmax(0).numpy(), label)


def test_resampling_to_spacing_and_back():
    image, label = _case()
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    pc = prepare_arrays("c", None, image, label, affine, _cfg(spacing=[2.0, 2.0, 0], normalize="none"))
    assert pc.image.shape == (1, 10, 8, 10)  # in-plane halved, z kept (spacing <= 0)
    assert pc.label.shape == (10, 8, 10) and set(np.unique(pc.label)) <= {0, 1, 2}
    back = pc.restore(_onehot(pc.label))
    assert back.shape == (3, *SHAPE)
    torch.testing.assert_close(back.sum(0), torch.ones(SHAPE))
    agreement = (back.argmax(0).numpy() == label).mean()
    assert agreement > 0.97


def test_foreground_crop_with_margin_and_background_outside():
    image, label = _case()
    pc = prepare_arrays("c", None, image, label, np.eye(4), _cfg(crop_foreground=True, crop_margin=1,
                                                                normalize="none"))
    assert pc.image.shape == (1, 13, 11, 8)  # box 4:15, 3:12, 2:8 plus one voxel each side
    np.testing.assert_array_equal(pc.image, image[:, 3:16, 2:13, 1:9])
    np.testing.assert_array_equal(pc.label, label[3:16, 2:13, 1:9])
    # a prediction of "class 1 everywhere" on the crop is class 1 inside the box, background outside
    probs = torch.zeros(3, 13, 11, 8)
    probs[1] = 1
    back = pc.restore(probs)
    assert back.shape == (3, *SHAPE)
    inside = np.zeros(SHAPE, dtype=bool)
    inside[3:16, 2:13, 1:9] = True
    np.testing.assert_array_equal(back.argmax(0).numpy(), inside.astype(np.int64))
    torch.testing.assert_close(back.sum(0), torch.ones(SHAPE))


def test_center_crop_keeps_non_positive_axes():
    image, label = _case()
    pc = prepare_arrays("c", None, image, label, np.eye(4), _cfg(center_crop=[10, 8, -1], normalize="none"))
    assert pc.image.shape == (1, 10, 8, 10)
    np.testing.assert_array_equal(pc.image, image[:, 5:15, 4:12, :])
    np.testing.assert_array_equal(pc.restore(_onehot(pc.label)).argmax(0).numpy()[5:15, 4:12], label[5:15, 4:12])


def test_all_grid_steps_together_restore_the_label():
    image, label = _case()
    cfg = _cfg(orientation="RAS", crop_foreground=True, center_crop=[8, 8, 0], normalize="zscore_nonzero")
    pc = prepare_arrays("c", None, image, label, LPS, cfg)
    assert pc.image.shape[1:] == (8, 8, 6)
    back = pc.restore(_onehot(pc.label)).argmax(0).numpy()
    kept = back > 0
    # every foreground voxel kept by the crops comes back at its original place with its class
    np.testing.assert_array_equal(back[kept], label[kept])
    assert kept.sum() == (pc.label > 0).sum()


def test_clip_percentiles_matches_numpy():
    image = np.random.default_rng(1).normal(size=(2, 9, 8, 7)).astype(np.float32)
    out = clip_percentiles(image, 5.0, 95.0)
    for c in range(2):
        lo, hi = np.percentile(image[c], [5, 95])
        np.testing.assert_allclose(out[c], np.clip(image[c], lo, hi), rtol=1e-5, atol=1e-6)


def test_neighbour_slices_golden():
    vol = np.zeros((2, 1, 1, 4), dtype=np.float32)
    vol[0, 0, 0] = [0, 1, 2, 3]
    vol[1, 0, 0] = [10, 11, 12, 13]
    out = add_neighbour_slices(vol, 1)
    assert out.shape == (6, 1, 1, 4)
    np.testing.assert_array_equal(out[:, 0, 0, 0], [0, 0, 1, 10, 10, 11])  # edge slice repeated
    np.testing.assert_array_equal(out[:, 0, 0, 2], [1, 2, 3, 11, 12, 13])
    np.testing.assert_array_equal(out[:, 0, 0, 3], [2, 3, 3, 12, 13, 13])
    assert add_neighbour_slices(vol, 0) is vol
    assert model_in_channels(2, 1) == 6 and model_in_channels(1, 2) == 5 and model_in_channels(3) == 3
    assert neighbour_positions([1], 1) == [3, 4, 5]
    assert neighbour_positions([0, 2], 0) == [0, 2]


def test_neighbours_reach_the_2d_samples():
    image, label = _case()
    pc = prepare_arrays("c", None, image, label, np.eye(4), _cfg(neighbours=1, normalize="none"))
    assert pc.image.shape == (3, *SHAPE)
    images, labels, origin = slice_samples([pc], (20, 16))
    assert images.shape == (10, 3, 20, 16) and labels.shape == (10, 1, 20, 16)
    z = 5
    np.testing.assert_array_equal(images[z].numpy(), image[0][..., [4, 5, 6]].transpose(2, 0, 1))
    assert origin[z] == ("c", 5)


def test_region_targets_brats():
    values = np.array([0, 1, 2, 3, 4])
    out = region_targets(values, {"WT": [1, 2, 3, 4], "TC": [1, 3, 4], "ET": [4]})
    np.testing.assert_array_equal(out, [[0, 1, 1, 1, 1], [0, 1, 0, 1, 1], [0, 0, 0, 0, 1]])
    assert out.dtype == np.uint8


def test_prepare_cases_with_data_config_on_a_dataset(tmp_path: Path):
    root = tmp_path / "ds"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    (root / "dataset.json").write_text(json.dumps({"channel_names": {"0": "T1"}, "file_ending": ".nii.gz",
                                                   "labels": {"background": 0, "a": 1, "b": 2}}))
    image, label = _case()
    write_nifti(root / "imagesTr" / "x_0000.nii.gz", image[0], affine=LPS)
    write_nifti(root / "labelsTr" / "x.nii.gz", label.astype(np.uint8), affine=LPS)
    index = read_dataset(root)
    cfg = _cfg(orientation="RAS", clip_percentiles=[1, 99], normalize="minmax", neighbours=1)
    pc = prepare_cases(index, ["x"], [0], cfg)[0]
    assert pc.image.shape == (3, *SHAPE)
    assert pc.image.min() == pytest.approx(0.0) and pc.image.max() == pytest.approx(1.0)
    np.testing.assert_array_equal(pc.affine, LPS)  # the file's affine, for writing predictions back
    np.testing.assert_array_equal(pc.reference, label)
    np.testing.assert_array_equal(pc.restore(_onehot(pc.label)).argmax(0).numpy(), label)
    legacy = prepare_cases(index, ["x"], [0], "zscore")[0]  # a bare normalisation name: file grid only
    assert legacy.grid is None and legacy.image.shape == (1, *SHAPE)
