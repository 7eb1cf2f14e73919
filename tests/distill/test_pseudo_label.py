"""Pseudo-label term and the ``mask=`` argument of the segmentation losses (METHODS.md, "Distillation on images
without labels")."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from monai.losses import MaskedDiceLoss

from medkd.distill.segmentation import SEG_LOSSES, create_seg_loss, pseudo_label_loss

NAMES = sorted(SEG_LOSSES)
CASES = [(name, channels) for name in NAMES for channels in (1, 3)]


def _inputs(channels: int, seed: int = 0, shape=(2, 8, 8)):
    g = torch.Generator().manual_seed(seed)
    b, h, w = shape
    logits = torch.randn(b, channels, h, w, generator=g) * 2
    label = torch.randint(0, max(channels, 2), (b, 1, h, w), generator=g)
    return logits, label


def _random_mask(shape, seed: int = 1, p: float = 0.5) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    b, _, h, w = shape
    mask = (torch.rand(b, 1, h, w, generator=g) < p).float()
    mask[:, :, 0, 0] = 1.0  # every sample keeps at least one pixel
    return mask


# ------------------------------------------------------------------------------------------------------------
# pseudo_label_loss: mask and labels


def test_mask_is_softmax_confidence_at_threshold():
    # one sample, 3 classes, 2 x 3 pixels with known teacher probabilities
    t = torch.tensor([[[5.0, 1.0, 0.0], [0.0, 0.0, -2.0]],
                      [[0.0, 0.0, 0.0], [3.0, 0.0, -2.0]],
                      [[0.0, 0.0, 0.0], [0.0, 0.0, 4.0]]])[None]
    prob = torch.softmax(t, dim=1)
    top = prob.max(dim=1, keepdim=True).values
    # hand check of the fixture: confident, unsure, uniform / confident, uniform, confident
    assert top[0, 0, 0, 0] > 0.98 and 0.5 < top[0, 0, 0, 1] < 0.6 and top[0, 0, 0, 2] == pytest.approx(1 / 3)
    seg = create_seg_loss("dice_ce", 3)
    student = torch.randn(1, 3, 2, 3)
    _, mask = pseudo_label_loss(seg, student, t, threshold=0.9)
    expected = torch.tensor([[[[1.0, 0.0, 0.0], [1.0, 0.0, 1.0]]]])
    assert mask.dtype == torch.float32 and mask.shape == (1, 1, 2, 3)
    assert torch.equal(mask, expected)
    assert torch.equal(mask, (top >= 0.9).float())
    # the threshold is inclusive: a threshold equal to a pixel's confidence keeps that pixel
    _, mask = pseudo_label_loss(seg, student, t, threshold=float(top[0, 0, 0, 1]))
    assert mask[0, 0, 0, 1] == 1.0 and mask[0, 0, 0, 2] == 0.0
    # threshold 0 keeps everything, 1 keeps nothing here
    assert pseudo_label_loss(seg, student, t, 0.0)[1].sum() == 6
    assert pseudo_label_loss(seg, student, t, 1.0)[1].sum() == 0


def test_mask_of_one_channel_teacher_uses_both_sides_of_the_sigmoid():
    t = torch.tensor([[-3.0, 0.5], [2.5, 0.0]])[None, None]  # sigmoid: 0.047, 0.62 / 0.92, 0.5
    p = torch.sigmoid(t)
    seg = create_seg_loss("dice_bce", 1)
    _, mask = pseudo_label_loss(seg, torch.randn(1, 1, 2, 2), t, threshold=0.9)
    assert torch.equal(mask, torch.tensor([[[[1.0, 0.0], [1.0, 0.0]]]]))
    assert torch.equal(mask, (torch.maximum(p, 1 - p) >= 0.9).float())


@pytest.mark.parametrize("name", NAMES)
def test_pseudo_labels_are_the_teacher_argmax(name):
    student, _ = _inputs(3, seed=3)
    teacher, _ = _inputs(3, seed=4)
    seg = create_seg_loss(name, 3)
    loss, mask = pseudo_label_loss(seg, student, teacher, threshold=0.6)
    assert 0 < mask.sum() < mask.numel()
    argmax = teacher.argmax(dim=1, keepdim=True)
    assert loss == pytest.approx(float(seg(student, argmax, mask=mask)), rel=1e-6)
    other = (argmax + 1) % 3
    assert float(seg(student, other, mask=mask)) != pytest.approx(float(loss), rel=1e-3)
    # threshold 0: every pixel counts, so the term is the plain loss against argmax(teacher)
    full, mask0 = pseudo_label_loss(seg, student, teacher, threshold=0.0)
    assert mask0.min() == 1
    assert full == pytest.approx(float(seg(student, argmax)), rel=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_binary_pseudo_labels_are_sigmoid_above_half(name):
    student, _ = _inputs(1, seed=5)
    teacher, _ = _inputs(1, seed=6)
    seg = create_seg_loss(name, 1)
    loss, _ = pseudo_label_loss(seg, student, teacher, threshold=0.0)
    assert loss == pytest.approx(float(seg(student, (teacher > 0).long())), rel=1e-5)
    assert float(seg(student, (teacher <= 0).long())) != pytest.approx(float(loss), rel=1e-3)


def test_teacher_gets_no_gradient():
    student, _ = _inputs(3, seed=7)
    teacher, _ = _inputs(3, seed=8)
    student.requires_grad_(True)
    teacher.requires_grad_(True)
    loss, _ = pseudo_label_loss(create_seg_loss("dice_ce", 3), student, teacher, threshold=0.5)
    loss.backward()
    assert teacher.grad is None
    assert student.grad is not None and student.grad.abs().sum() > 0


# ------------------------------------------------------------------------------------------------------------
# SegmentationLoss(mask=...)


@pytest.mark.parametrize("name,channels", CASES)
def test_all_ones_mask_gives_the_unmasked_loss(name, channels):
    logits, label = _inputs(channels)
    seg = create_seg_loss(name, channels)
    plain = seg(logits, label)
    masked = seg(logits, label, mask=torch.ones(2, 1, 8, 8))
    assert float(masked) == pytest.approx(float(plain), rel=1e-5, abs=1e-7)


@pytest.mark.parametrize("name,channels", CASES)
def test_masked_loss_equals_the_loss_on_the_kept_region(name, channels):
    """A mask that keeps the left half of every sample gives the loss of the left half alone: masked-out pixels
    count neither as prediction nor as ground truth (a MaskedDiceLoss fed the integer label would count them as
    background in the Dice)."""
    logits, label = _inputs(channels, seed=9, shape=(2, 8, 12))
    mask = torch.zeros(2, 1, 8, 12)
    mask[..., :5] = 1.0
    seg = create_seg_loss(name, channels)
    masked = seg(logits, label, mask=mask)
    crop = seg(logits[..., :5].contiguous(), label[..., :5].contiguous())
    assert float(masked) == pytest.approx(float(crop), rel=1e-5, abs=1e-7)


@pytest.mark.parametrize("name,channels", CASES)
def test_masked_out_pixels_neither_change_the_loss_nor_get_gradient(name, channels):
    logits, label = _inputs(channels, seed=2)
    mask = _random_mask(logits.shape)
    seg = create_seg_loss(name, channels)
    x = logits.clone().requires_grad_(True)
    loss = seg(x, label, mask=mask)
    loss.backward()
    dropped = (mask == 0).expand_as(logits)
    kept = ~dropped
    assert dropped.any()
    assert torch.all(x.grad[dropped] == 0)
    assert x.grad[kept].abs().sum() > 0
    changed = logits.clone()
    changed[dropped] = torch.randn(int(dropped.sum())) * 10
    other_label = label.clone()
    other_label[mask == 0] = (label[mask == 0] + 1) % max(channels, 2)
    assert float(seg(changed, other_label, mask=mask)) == pytest.approx(float(loss.detach()), rel=1e-5, abs=1e-7)
    # ... while the kept pixels do matter
    moved = logits.clone()
    moved[kept] += 3.0 * torch.randn(int(kept.sum()))
    assert float(seg(moved, label, mask=mask)) != pytest.approx(float(loss.detach()), rel=1e-4)


@pytest.mark.parametrize("name,channels", CASES)
def test_all_zero_mask_gives_a_zero_that_keeps_the_graph(name, channels):
    logits, label = _inputs(channels)
    x = logits.clone().requires_grad_(True)
    loss = create_seg_loss(name, channels)(x, label, mask=torch.zeros(2, 1, 8, 8))
    assert loss.dim() == 0 and float(loss.detach()) == 0.0
    assert loss.requires_grad
    loss.backward()
    assert x.grad is not None and torch.all(x.grad == 0)


@pytest.mark.parametrize("channels", [1, 3])
def test_masked_dice_ce_is_masked_dice_plus_ce_over_kept_pixels(channels):
    logits, label = _inputs(channels, seed=11)
    mask = _random_mask(logits.shape, seed=12, p=0.4)
    kept = mask[:, 0].bool()
    total = create_seg_loss("dice_ce", channels)(logits, label, mask=mask)
    if channels == 1:
        target = (label > 0).float()
        dice = MaskedDiceLoss(sigmoid=True)(logits, target, mask=mask)
        p = torch.sigmoid(logits[:, 0])[kept].double()
        y = target[:, 0][kept].double()
        manual = -(y * torch.log(p) + (1 - y) * torch.log(1 - p)).mean()
    else:
        onehot = F.one_hot(label[:, 0], channels).movedim(-1, 1).float()
        dice = MaskedDiceLoss(softmax=True)(logits, onehot, mask=mask)
        log_p = torch.log_softmax(logits.double(), dim=1)
        picked = log_p.gather(1, label).squeeze(1)  # log p of the true class, (B, H, W)
        manual = -picked[kept].mean()
    assert float(total - dice) == pytest.approx(float(manual), rel=1e-5)
    # the CE is averaged over kept pixels only, not over all of them
    assert float(total - dice) != pytest.approx(float(manual) * float(mask.mean()), rel=1e-2)
