"""Segmentation losses through the one registry pattern: register_seg_loss / create_seg_loss / list_seg_losses."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from medkd.distill.segmentation import (
    SEG_LOSS_REGISTRY,
    SEG_LOSSES,
    DiceSegLoss,
    FocalDiceLoss,
    SegmentationLoss,
    create_seg_loss,
    list_seg_losses,
    register_seg_loss,
)
from medkd.errors import ConfigError


def test_built_in_losses_names_descriptions_and_options():
    assert list_seg_losses() == ["dice", "dice_bce", "dice_ce", "focal_dice"]
    assert list_seg_losses("dice_*") == ["dice_bce", "dice_ce"]
    assert SEG_LOSSES["focal_dice"] == "paper A: 0.5 focal (gamma 2) + 0.5 Dice"
    assert SEG_LOSS_REGISTRY.options("focal_dice") == {"include_background": True, "gamma": 2.0}
    assert SEG_LOSS_REGISTRY.options("dice") == {"include_background": True}
    loss = create_seg_loss("focal_dice", 3, gamma=1.0)
    assert isinstance(loss, FocalDiceLoss) and loss.name == "focal_dice" and loss.focal.gamma == 1.0
    assert "name='focal_dice', num_classes=3" in repr(loss)


def test_errors_name_the_loss_and_nearest_option():
    with pytest.raises(ConfigError, match=r"^unknown segmentation loss 'dice_cee'; did you mean 'dice_ce'"):
        create_seg_loss("dice_cee", 2)
    with pytest.raises(ConfigError, match=r"^unknown option for segmentation loss 'focal_dice': 'gama'; did you mean "
                                          r"'gamma'"):
        create_seg_loss("focal_dice", 2, gama=2.0)
    with pytest.raises(ConfigError, match=r"^unknown option for segmentation loss 'dice': 'gamma'; valid: "
                                          r"include_background$"):
        create_seg_loss("dice", 2, gamma=2.0)
    with pytest.raises(ConfigError, match="num_classes must be >= 1, got 0"):
        create_seg_loss("dice", 0)


def test_a_registered_loss_is_created_listed_and_masked_like_the_built_ins():
    @register_seg_loss("test_half_dice", "half of the Dice")
    class HalfDice(DiceSegLoss):
        dice_weight = 0.5

        def _loss(self, logits: Tensor, target: Tensor, label: Tensor) -> Tensor:
            return 0.5 * self.dice(logits, target)

    try:
        assert "test_half_dice" in list_seg_losses() and SEG_LOSSES["test_half_dice"] == "half of the Dice"
        logits = torch.randn(2, 3, 6, 6, generator=torch.Generator().manual_seed(0))
        label = torch.randint(0, 3, (2, 1, 6, 6), generator=torch.Generator().manual_seed(1))
        mask = torch.ones(2, 1, 6, 6)
        half, full = create_seg_loss("test_half_dice", 3), create_seg_loss("dice", 3)
        assert isinstance(half, SegmentationLoss)
        assert half(logits, label).item() == pytest.approx(0.5 * full(logits, label).item(), rel=1e-6)
        assert half(logits, label, mask=mask).item() == pytest.approx(0.5 * full(logits, label, mask=mask).item(),
                                                                      rel=1e-6)
    finally:
        SEG_LOSS_REGISTRY.unregister("test_half_dice")
    assert "test_half_dice" not in SEG_LOSSES


@pytest.mark.parametrize("name", ["dice_ce", "dice_bce", "focal_dice"])
def test_masked_loss_adds_the_pixel_term_on_kept_pixels_only(name: str):
    """Changing logits where the mask is 0 leaves the masked loss unchanged; where it is 1 it changes it."""
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(1, 3, 4, 4, generator=g)
    label = torch.randint(0, 3, (1, 1, 4, 4), generator=g)
    mask = torch.zeros(1, 1, 4, 4)
    mask[..., :2, :] = 1
    loss = create_seg_loss(name, 3)
    base = loss(logits, label, mask=mask).item()
    outside, inside = logits.clone(), logits.clone()
    outside[:, 0, 3, :] += 5.0  # one channel: softmax changes
    inside[:, 0, 0, :] += 5.0
    assert loss(outside, label, mask=mask).item() == pytest.approx(base, abs=1e-6)
    assert abs(loss(inside, label, mask=mask).item() - base) > 1e-3
