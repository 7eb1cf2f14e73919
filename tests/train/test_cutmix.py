"""CutMix of the images without labels (distill.cutmix): boxes, pairing, and teacher outputs mixed alike."""

from __future__ import annotations

import pytest
import torch

from medkd.config import CutMixConfig
from medkd.train.cutmix import box_masks, cutmix_unlabelled, mix_like


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("spatial", [(32, 32), (48, 24), (8, 16, 16)])
def test_each_mask_is_one_box_of_about_the_asked_area(spatial):
    masks = box_masks(64, spatial, 0.5, _gen())
    assert masks.shape == (64, *spatial) and masks.dtype == torch.bool
    areas = masks.flatten(1).float().mean(1)
    assert torch.all((areas > 0.35) & (areas < 0.65)), areas
    for m in masks:  # a box: the mask equals the product of its projections on the axes
        idx = m.nonzero()
        lo, hi = idx.min(0).values, idx.max(0).values
        assert int(m.sum()) == int(torch.prod(hi - lo + 1))
    aspect = [(m.any(1).sum() / m.any(0).sum()).item() for m in box_masks(200, (64, 64), 0.5, _gen(1))]
    assert min(aspect) < 0.85 and max(aspect) > 1.15 and 0.45 < min(aspect) and max(aspect) < 2.2


def test_labelled_samples_are_untouched_and_teacher_outputs_mixed_like_the_image():
    n_lab, n_unl = 3, 6
    image = torch.randn(n_lab + n_unl, 1, 16, 16)
    tensors = {"image": image, "label": torch.randint(0, 4, (n_lab + n_unl, 16, 16)),
               "teacher_image": image.clone(), "cached/logits": image.repeat(1, 4, 1, 1),
               "cached/bottleneck": torch.nn.functional.avg_pool2d(image, 4)}
    out = cutmix_unlabelled(tensors, n_lab, CutMixConfig(prob=1.0, area=0.5), _gen())
    for key, x in out.items():
        assert torch.equal(x[:n_lab], tensors[key][:n_lab]), key
        assert x.shape == tensors[key].shape and x.dtype == tensors[key].dtype
    assert torch.equal(out["teacher_image"], out["image"])  # a live teacher sees exactly the student's image
    assert torch.equal(out["cached/logits"], out["image"].repeat(1, 4, 1, 1))  # same box at full resolution
    changed = (out["image"][n_lab:] != image[n_lab:]).flatten(1).float().mean(1)
    assert torch.all((changed > 0.3) & (changed < 0.7))  # every image without labels got a box of another one
    # each mixed pixel comes from one other image without labels (never the sample itself)
    for i in range(n_unl):
        diff = out["image"][n_lab + i] != image[n_lab + i]
        sources = [j for j in range(n_unl) if j != i and torch.equal(out["image"][n_lab + i][diff],
                                                                     image[n_lab + j][diff])]
        assert len(sources) == 1


def test_low_resolution_outputs_use_the_box_resized_by_nearest_neighbour():
    x = torch.zeros(4, 2, 8, 8)
    partner = torch.ones(4, 2, 8, 8)
    masks = torch.zeros(4, 32, 32, dtype=torch.bool)
    masks[:, 0:16, 8:24] = True
    mixed = mix_like(x, partner, masks)
    expected = torch.zeros(8, 8)
    expected[0:4, 2:6] = 1
    assert torch.equal(mixed[0, 1], expected) and torch.equal(mixed[3, 0], expected)


def test_no_box_without_probability_or_partners():
    tensors = {"image": torch.randn(5, 1, 8, 8)}
    assert torch.equal(cutmix_unlabelled(tensors, 4, CutMixConfig(prob=1.0), _gen())["image"], tensors["image"])
    many = torch.randn(40, 1, 8, 8)
    few = cutmix_unlabelled({"image": many}, 0, CutMixConfig(prob=0.25), _gen())
    assert 3 <= sum(not torch.equal(a, b) for a, b in zip(few["image"], many)) <= 20  # about a quarter mixed
