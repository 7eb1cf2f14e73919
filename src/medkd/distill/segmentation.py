"""Supervised segmentation losses of the three studies, built on MONAI.

All take ``(logits (B, C, *spatial), label (B, 1, *spatial) integer)``. With ONE output channel the task is binary:
sigmoid activation and the label used as a 0/1 target. With ``C >= 2``: softmax and a one-hot label.

- ``"dice_ce"``: MONAI ``DiceCELoss`` (Dice + cross-entropy; BCE-with-logits for one channel).
- ``"focal_dice"``: paper A, ``0.5 * FocalLoss(gamma=2) + 0.5 * DiceLoss`` (MONAI).
- ``"dice"``: thesis B's student loss, MONAI ``DiceLoss``.
- ``"dice_bce"``: paper C's ``L_GT`` and the multi-task teacher's loss, ``(1 - Dice) + BCE``; the BCE is taken on the
  softmax probabilities against the one-hot label (mean over all elements), or with logits for one channel.

Each is a :class:`SegmentationLoss` subclass registered with :func:`register_seg_loss`; build one with
:func:`create_seg_loss`, list them with :func:`list_seg_losses`.

Example:
    >>> import torch
    >>> from medkd.distill.segmentation import create_seg_loss
    >>> loss = create_seg_loss("focal_dice", num_classes=3)
    >>> loss(torch.randn(2, 3, 8, 8), torch.randint(0, 3, (2, 1, 8, 8))).shape
    torch.Size([])
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss, DiceLoss, FocalLoss, MaskedDiceLoss
from torch import Tensor, nn

from medkd.errors import ConfigError
from medkd.registry import Registry

__all__ = [
    "SEG_LOSSES",
    "SEG_LOSS_REGISTRY",
    "DiceBCELoss",
    "DiceCESegLoss",
    "DiceSegLoss",
    "FocalDiceLoss",
    "SegmentationLoss",
    "create_seg_loss",
    "list_seg_losses",
    "pseudo_label_loss",
    "register_seg_loss",
]

#: Registered segmentation losses: name -> :class:`SegmentationLoss` subclass (metadata: ``description``).
SEG_LOSS_REGISTRY: Registry[type[SegmentationLoss]] = Registry("segmentation loss", skip_options=("num_classes",))
#: Name -> one-line description of every registered segmentation loss (a live view of the registry).
SEG_LOSSES = SEG_LOSS_REGISTRY.meta_view("description")


def register_seg_loss(name: str, description: str) -> Callable[[type[SegmentationLoss]], type[SegmentationLoss]]:
    """Class decorator registering a :class:`SegmentationLoss` subclass under ``name``."""

    def deco(cls: type[SegmentationLoss]) -> type[SegmentationLoss]:
        cls.name = name
        return SEG_LOSS_REGISTRY.add(name, cls, description=description)

    return deco


def list_seg_losses(pattern: str = "*") -> list[str]:
    """Registered segmentation-loss names matching a shell-style ``pattern`` (sorted)."""
    return SEG_LOSS_REGISTRY.names(pattern)


def _bce_on_softmax(logits: Tensor, target: Tensor, num_classes: int) -> Tensor:
    """Element-wise BCE of the softmax probabilities against the one-hot ``target`` (B, 1, *spatial)."""
    onehot = F.one_hot(target[:, 0], num_classes).movedim(-1, 1).float()
    log_p = F.log_softmax(logits, dim=1)
    log_1mp = torch.log(-torch.expm1(log_p.clamp_max(-1e-7)))
    return -(onehot * log_p.clamp_min(-100.0) + (1.0 - onehot) * log_1mp.clamp_min(-100.0))


class SegmentationLoss(nn.Module):
    """Base of the segmentation losses (see the module docstring); build one with :func:`create_seg_loss`.

    With a ``mask`` the loss is ``pixel_weight * mean over kept pixels of _pixel_term + dice_weight * masked Dice``
    (the pixel part left out when ``_pixel_term`` gives None).
    Subclasses implement ``_loss`` (no mask) and ``_pixel_term`` (None: Dice only).

    Args:
        num_classes: output channels of the network (1 = binary with a sigmoid).
        include_background: keep channel 0 in the Dice (MONAI default True; ignored for one channel).
    """

    name: str = ""
    pixel_weight: float = 1.0
    dice_weight: float = 1.0

    def __init__(self, num_classes: int, *, include_background: bool = True) -> None:
        super().__init__()
        self.num_classes = int(num_classes)
        binary = self.num_classes == 1
        act = {"sigmoid": True} if binary else {"softmax": True, "to_onehot_y": True}
        bg = {} if binary else {"include_background": include_background}
        self.dice = DiceLoss(**act, **bg)
        # the masked Dice gets a one-hot target: MONAI multiplies the INTEGER label by the mask before its own
        # one-hot, which would turn every masked-out pixel into background ground truth (counted in the Dice)
        self.masked_dice = MaskedDiceLoss(**{k: v for k, v in act.items() if k != "to_onehot_y"}, **bg)

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
        return self._loss(logits, target, label)

    def _loss(self, logits: Tensor, target: Tensor, label: Tensor) -> Tensor:
        """The loss without a mask (``target``: 0/1 float for one channel, else long; ``label`` as given)."""
        raise NotImplementedError

    def _pixel_term(self, logits: Tensor, target: Tensor) -> Tensor | None:
        """Per-pixel (B, C', *spatial) non-Dice part for the masked loss; None when the loss is Dice only."""
        return None

    def _masked(self, logits: Tensor, target: Tensor, mask: Tensor) -> Tensor:
        """The same loss counted only where ``mask`` is 1 (a mask with no 1 gives a zero that keeps the graph)."""
        kept = mask.sum()
        if float(kept) == 0:
            return logits.sum() * 0.0
        dice_target = target if self.num_classes == 1 else \
            F.one_hot(target[:, 0], self.num_classes).movedim(-1, 1).float()
        dice = self.masked_dice(logits, dice_target, mask=mask)
        pixel = self._pixel_term(logits, target)
        if pixel is None:
            return self.dice_weight * dice
        masked_mean = (pixel * mask).sum() / (kept * pixel.shape[1])
        return self.pixel_weight * masked_mean + self.dice_weight * dice

    def extra_repr(self) -> str:
        return f"name={self.name!r}, num_classes={self.num_classes}"


@register_seg_loss("dice_ce", "MONAI DiceCELoss: Dice + cross-entropy")
class DiceCESegLoss(SegmentationLoss):
    """MONAI ``DiceCELoss`` (Dice + cross-entropy; BCE-with-logits for one channel)."""

    def __init__(self, num_classes: int, *, include_background: bool = True) -> None:
        super().__init__(num_classes, include_background=include_background)
        binary = self.num_classes == 1
        act = {"sigmoid": True} if binary else {"softmax": True, "to_onehot_y": True}
        self.dice_ce = DiceCELoss(**act, **({} if binary else {"include_background": include_background}))

    def _loss(self, logits: Tensor, target: Tensor, label: Tensor) -> Tensor:
        return self.dice_ce(logits, target if self.num_classes == 1 else label)

    def _pixel_term(self, logits: Tensor, target: Tensor) -> Tensor:
        if self.num_classes == 1:
            return F.binary_cross_entropy_with_logits(logits, target, reduction="none")
        return F.cross_entropy(logits, target[:, 0], reduction="none")[:, None]


@register_seg_loss("focal_dice", "paper A: 0.5 focal (gamma 2) + 0.5 Dice")
class FocalDiceLoss(SegmentationLoss):
    """Paper A: ``0.5 * FocalLoss(gamma) + 0.5 * DiceLoss`` (MONAI).

    Args:
        gamma: focal exponent.
    """

    pixel_weight = 0.5
    dice_weight = 0.5

    def __init__(self, num_classes: int, *, include_background: bool = True, gamma: float = 2.0) -> None:
        super().__init__(num_classes, include_background=include_background)
        focal_act = {} if self.num_classes == 1 else {"use_softmax": True, "to_onehot_y": True}
        self.focal = FocalLoss(gamma=gamma, **focal_act)
        self.focal_per_pixel = FocalLoss(gamma=gamma, reduction="none", **focal_act)

    def _loss(self, logits: Tensor, target: Tensor, label: Tensor) -> Tensor:
        return 0.5 * self.focal(logits, target) + 0.5 * self.dice(logits, target)

    def _pixel_term(self, logits: Tensor, target: Tensor) -> Tensor:
        return self.focal_per_pixel(logits, target)


@register_seg_loss("dice", "thesis B: Dice")
class DiceSegLoss(SegmentationLoss):
    """Thesis B's student loss: MONAI ``DiceLoss``."""

    def _loss(self, logits: Tensor, target: Tensor, label: Tensor) -> Tensor:
        return self.dice(logits, target)


@register_seg_loss("dice_bce", "paper C / multi-task teacher: (1 - Dice) + BCE")
class DiceBCELoss(SegmentationLoss):
    """Paper C's ``L_GT``: ``(1 - Dice) + BCE`` on the softmax probabilities (with logits for one channel)."""

    def _loss(self, logits: Tensor, target: Tensor, label: Tensor) -> Tensor:
        if self.num_classes == 1:
            bce = F.binary_cross_entropy_with_logits(logits, target)
        else:
            bce = _bce_on_softmax(logits, target, self.num_classes).mean()
        return self.dice(logits, target) + bce

    def _pixel_term(self, logits: Tensor, target: Tensor) -> Tensor:
        if self.num_classes == 1:
            return F.binary_cross_entropy_with_logits(logits, target, reduction="none")
        return _bce_on_softmax(logits, target, self.num_classes)


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
        name: a registered name (:func:`list_seg_losses`): ``"dice_ce"``, ``"focal_dice"``, ``"dice"``,
            ``"dice_bce"``.
        num_classes: network output channels (1 means binary / sigmoid).
        kwargs: ``include_background`` (all), ``gamma`` (``focal_dice``).

    Returns:
        A module ``loss(logits, label) -> scalar``.
    """
    cls = SEG_LOSS_REGISTRY.lookup(name)
    if int(num_classes) < 1:
        raise ConfigError(f"segmentation loss {name!r}: num_classes must be >= 1, got {num_classes}")
    SEG_LOSS_REGISTRY.check_options(name, kwargs)
    return cls(num_classes, **kwargs)
