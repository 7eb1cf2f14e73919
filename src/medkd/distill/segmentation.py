"""Supervised segmentation losses of the three studies, built on MONAI.

All take ``(logits (B, C, *spatial), label (B, 1, *spatial) integer)``. With ONE output channel the task is binary:
sigmoid activation and the label used as a 0/1 target. With ``C >= 2``: softmax and a one-hot label.

- ``"dice_ce"``: MONAI ``DiceCELoss`` (Dice + cross-entropy; BCE-with-logits for one channel).
- ``"focal_dice"``: paper A, ``0.5 * FocalLoss(gamma=2) + 0.5 * DiceLoss`` (MONAI).
- ``"dice"``: thesis B's student loss, MONAI ``DiceLoss``.
- ``"dice_bce"``: paper C's ``L_GT`` and the multi-task teacher's loss, ``(1 - Dice) + BCE``; the BCE is taken on the
  softmax probabilities against the one-hot label (mean over all elements), or with logits for one channel.

Example:
    >>> import torch
    >>> from medkd.distill.segmentation import create_seg_loss
    >>> loss = create_seg_loss("focal_dice", num_classes=3)
    >>> loss(torch.randn(2, 3, 8, 8), torch.randint(0, 3, (2, 1, 8, 8))).shape
    torch.Size([])
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss, DiceLoss, FocalLoss, MaskedDiceLoss
from torch import Tensor, nn

from medkd.errors import ConfigError, unknown_name_error

__all__ = ["SEG_LOSSES", "SegmentationLoss", "create_seg_loss", "pseudo_label_loss"]

SEG_LOSSES: dict[str, str] = {
    "dice_ce": "MONAI DiceCELoss: Dice + cross-entropy",
    "focal_dice": "paper A: 0.5 focal (gamma 2) + 0.5 Dice",
    "dice": "thesis B: Dice",
    "dice_bce": "paper C / multi-task teacher: (1 - Dice) + BCE",
}
_OPTIONS: dict[str, tuple[str, ...]] = {
    "dice_ce": ("include_background",),
    "focal_dice": ("include_background", "gamma"),
    "dice": ("include_background",),
    "dice_bce": ("include_background",),
}


class SegmentationLoss(nn.Module):
    """One named segmentation loss (see the module docstring); build it with :func:`create_seg_loss`.

    Args:
        name: one of :data:`SEG_LOSSES`.
        num_classes: output channels of the network (1 = binary with a sigmoid).
        include_background: keep channel 0 in the Dice (MONAI default True; ignored for one channel).
        gamma: focal exponent (``focal_dice`` only).
    """

    def __init__(self, name: str, num_classes: int, include_background: bool = True, gamma: float = 2.0) -> None:
        super().__init__()
        self.name, self.num_classes = name, int(num_classes)
        binary = self.num_classes == 1
        act = {"sigmoid": True} if binary else {"softmax": True, "to_onehot_y": True}
        bg = {} if binary else {"include_background": include_background}
        self.dice = DiceLoss(**act, **bg)
        # the masked Dice gets a one-hot target: MONAI multiplies the INTEGER label by the mask before its own
        # one-hot, which would turn every masked-out pixel into background ground truth (counted in the Dice)
        self.masked_dice = MaskedDiceLoss(**{k: v for k, v in act.items() if k != "to_onehot_y"}, **bg)
        self.dice_ce = DiceCELoss(**act, **bg) if name == "dice_ce" else None
        if name == "focal_dice":
            focal_act = {} if binary else {"use_softmax": True, "to_onehot_y": True}
            self.focal = FocalLoss(gamma=gamma, **focal_act)
            self.focal_per_pixel = FocalLoss(gamma=gamma, reduction="none", **focal_act)

    def forward(self, logits: Tensor, label: Tensor, mask: Tensor | None = None) -> Tensor:
        """Loss of ``logits`` (B, C, *spatial) against ``label`` (B, 1, *spatial) or (B, *spatial) integers.

        ``mask`` (B, 1, *spatial), 0 / 1: only pixels where it is 1 count (MONAI ``MaskedDiceLoss`` for the Dice
        part; the pixel-wise parts are averaged over the kept pixels). It serves the pseudo-label term on images
        without labels (METHODS.md, "Distillation on images without labels").
        """
        if logits.shape[1] != self.num_classes:
            raise ConfigError(
                f"segmentation loss {self.name!r}: logits have {logits.shape[1]} channels, "
                f"expected num_classes={self.num_classes}"
            )
        if label.dim() == logits.dim() - 1:
            label = label.unsqueeze(1)
        if label.shape[0] != logits.shape[0] or label.shape[1] != 1 or label.shape[2:] != logits.shape[2:]:
            raise ConfigError(
                f"segmentation loss {self.name!r}: label shape {tuple(label.shape)} does not match logits "
                f"{tuple(logits.shape)} (expected (B, 1, *spatial))"
            )
        logits = logits.float()
        target = (label > 0).float() if self.num_classes == 1 else label.long()
        if mask is not None:
            return self._masked(logits, target, mask.float())
        if self.name == "dice_ce":
            return self.dice_ce(logits, target if self.num_classes == 1 else label)
        if self.name == "dice":
            return self.dice(logits, target)
        if self.name == "focal_dice":
            return 0.5 * self.focal(logits, target) + 0.5 * self.dice(logits, target)
        # dice_bce
        if self.num_classes == 1:
            bce = F.binary_cross_entropy_with_logits(logits, target)
        else:
            onehot = F.one_hot(target[:, 0], self.num_classes).movedim(-1, 1).float()
            log_p = F.log_softmax(logits, dim=1)
            log_1mp = torch.log(-torch.expm1(log_p.clamp_max(-1e-7)))
            bce = -(onehot * log_p.clamp_min(-100.0) + (1.0 - onehot) * log_1mp.clamp_min(-100.0)).mean()
        return self.dice(logits, target) + bce

    def _masked(self, logits: Tensor, target: Tensor, mask: Tensor) -> Tensor:
        """The same loss counted only where ``mask`` is 1 (a mask with no 1 gives a zero that keeps the graph)."""
        kept = mask.sum()
        if float(kept) == 0:
            return logits.sum() * 0.0
        dice_target = target if self.num_classes == 1 else \
            F.one_hot(target[:, 0], self.num_classes).movedim(-1, 1).float()
        dice = self.masked_dice(logits, dice_target, mask=mask)

        def masked_mean(per_pixel: Tensor) -> Tensor:
            return (per_pixel * mask).sum() / (kept * per_pixel.shape[1])

        if self.name == "dice":
            return dice
        if self.name == "focal_dice":
            return 0.5 * masked_mean(self.focal_per_pixel(logits, target)) + 0.5 * dice
        if self.num_classes == 1:
            pixel = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
            return dice + masked_mean(pixel)
        if self.name == "dice_ce":
            ce = F.cross_entropy(logits, target[:, 0], reduction="none")[:, None]
            return dice + masked_mean(ce)
        onehot = F.one_hot(target[:, 0], self.num_classes).movedim(-1, 1).float()
        log_p = F.log_softmax(logits, dim=1)
        log_1mp = torch.log(-torch.expm1(log_p.clamp_max(-1e-7)))
        bce = -(onehot * log_p.clamp_min(-100.0) + (1.0 - onehot) * log_1mp.clamp_min(-100.0))
        return dice + masked_mean(bce)

    def extra_repr(self) -> str:
        return f"name={self.name!r}, num_classes={self.num_classes}"


def pseudo_label_loss(seg_loss: SegmentationLoss, student_logits: Tensor, teacher_logits: Tensor,
                      threshold: float) -> tuple[Tensor, Tensor]:
    """The run's segmentation loss against the teacher's ``argmax``, where the teacher is confident.

    METHODS.md, "Distillation on images without labels": pixels whose teacher top probability (softmax; for one
    channel ``max(sigmoid, 1 - sigmoid)``) is below ``threshold`` do not count.

    Returns:
        The loss and the kept-pixel mask (B, 1, *spatial), as float.
    """
    teacher_logits = teacher_logits.detach().float()
    if teacher_logits.shape[1] == 1:
        prob = torch.sigmoid(teacher_logits)
        confidence, labels = torch.maximum(prob, 1 - prob), (prob > 0.5).long()
    else:
        confidence, labels = torch.softmax(teacher_logits, dim=1).max(dim=1, keepdim=True)
    mask = (confidence >= threshold).float()
    return seg_loss(student_logits, labels, mask=mask), mask


def create_seg_loss(name: str, num_classes: int, **kwargs: Any) -> SegmentationLoss:
    """Build a segmentation loss by name; an unknown name or option raises ``ConfigError``.

    Args:
        name: ``"dice_ce"``, ``"focal_dice"``, ``"dice"`` or ``"dice_bce"``.
        num_classes: network output channels (1 means binary / sigmoid).
        kwargs: ``include_background`` (all), ``gamma`` (``focal_dice``).

    Returns:
        A module ``loss(logits, label) -> scalar``.
    """
    if name not in SEG_LOSSES:
        raise unknown_name_error("segmentation loss", name, SEG_LOSSES)
    if int(num_classes) < 1:
        raise ConfigError(f"segmentation loss {name!r}: num_classes must be >= 1, got {num_classes}")
    for key in kwargs:
        if key not in _OPTIONS[name]:
            raise unknown_name_error(f"option for segmentation loss {name!r}:", key, _OPTIONS[name])
    return SegmentationLoss(name, num_classes, **kwargs)
