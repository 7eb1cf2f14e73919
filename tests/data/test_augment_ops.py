"""apply_ops (samples grouped by op) against a per-sample reference loop."""

from __future__ import annotations

import pytest
import torch

from medkd.config import AugmentConfig
from medkd.data.augment import apply_ops, augment_batch, draw_ops


def _reference(x: torch.Tensor, ops: torch.Tensor) -> torch.Tensor:
    """One sample at a time: flip the flagged spatial axes, then rot90 k times in the first two spatial axes."""
    spatial_dims = x.ndim - 2
    out = []
    for i in range(x.shape[0]):
        xi = x[i]
        axes = [d + 1 for d in range(spatial_dims) if int(ops[i, d])]
        if axes:
            xi = torch.flip(xi, axes)
        k = int(ops[i, spatial_dims])
        if k:
            xi = torch.rot90(xi, k, dims=(1, 2))
        out.append(xi)
    return torch.stack(out)


def _random_ops(batch: int, spatial_dims: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    flips = torch.randint(0, 2, (batch, spatial_dims), generator=g)
    rot = torch.randint(0, 4, (batch, 1), generator=g)
    return torch.cat([flips, rot], dim=1)


@pytest.mark.parametrize("spatial", [(6, 6), (5, 5, 3)], ids=["2d", "3d"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_ops_match_the_per_sample_loop(spatial, seed):
    x = torch.randn(24, 2, *spatial, generator=torch.Generator().manual_seed(100 + seed))
    ops = _random_ops(24, len(spatial), seed)
    assert len(torch.unique(ops, dim=0)) > 4  # several groups, some with more than one sample
    got = apply_ops(x, ops)
    assert got.shape == x.shape and got.dtype == x.dtype
    assert torch.equal(got, _reference(x, ops))
    assert torch.equal(x, torch.randn(24, 2, *spatial, generator=torch.Generator().manual_seed(100 + seed)))


@pytest.mark.parametrize("spatial", [(4, 4), (4, 4, 3)], ids=["2d", "3d"])
def test_every_single_op_matches_the_reference(spatial):
    """Each op on its own (flip of each axis, every rotation count), with distinct pixel values, so any axis
    mix-up shows."""
    dims = len(spatial)
    x = torch.arange(3 * 2 * int(torch.tensor(spatial).prod()), dtype=torch.float32).reshape(3, 2, *spatial)
    singles = []
    for d in range(dims):
        op = [0] * (dims + 1)
        op[d] = 1
        singles.append(op)
    for k in (1, 2, 3):
        singles.append([0] * dims + [k])
    for op in singles:
        ops = torch.tensor([op, [0] * (dims + 1), op])
        got = apply_ops(x, ops)
        assert torch.equal(got, _reference(x, ops)), op
        assert torch.equal(got[1], x[1])  # the untouched sample stays as it was
        assert not torch.equal(got[0], x[0]), op
    # explicit semantics: flag 0 flips the first spatial axis; k = 1 is torch.rot90 on the first two
    assert torch.equal(apply_ops(x, torch.tensor([[1] + [0] * dims] * 3)), torch.flip(x, [2]))
    assert torch.equal(apply_ops(x, torch.tensor([[0] * dims + [1]] * 3)), torch.rot90(x, 1, dims=(2, 3)))


def test_int64_labels_and_channel_counts():
    g = torch.Generator().manual_seed(3)
    labels = torch.randint(0, 3, (16, 1, 8, 8), generator=g)
    ops = _random_ops(16, 2, seed=4)
    got = apply_ops(labels, ops)
    assert got.dtype == torch.int64 and torch.equal(got, _reference(labels, ops))
    maps = torch.randn(16, 5, 8, 8, generator=g, dtype=torch.float64)
    assert torch.equal(apply_ops(maps, ops), _reference(maps, ops))


@pytest.mark.parametrize("spatial", [(6, 6), (4, 4, 2)], ids=["2d", "3d"])
def test_all_zero_ops_return_the_input_unchanged(spatial):
    x = torch.randn(5, 2, *spatial)
    before = x.clone()
    ops = torch.zeros(5, len(spatial) + 1, dtype=torch.int64)
    got = apply_ops(x, ops)
    assert torch.equal(got, before) and torch.equal(x, before)


def test_augment_batch_moves_image_and_label_together():
    g = torch.Generator().manual_seed(0)
    image = torch.randn(12, 1, 8, 8, generator=g)
    label = (image > 0).long()
    cfg = AugmentConfig(flip=True, rot90=True)
    out = augment_batch({"image": image, "teacher_image": image.clone(), "label": label}, cfg,
                        torch.Generator().manual_seed(5))
    ops = draw_ops(12, 2, cfg, torch.Generator().manual_seed(5))
    assert torch.equal(out["augment_ops"], ops)
    assert torch.equal(out["image"], _reference(image, ops))
    assert torch.equal(out["teacher_image"], out["image"])
    assert torch.equal(out["label"], (out["image"] > 0).long())
