"""medkd.distill: distillation losses (pure functions and modules), the objective, segmentation losses.

- :mod:`medkd.distill.functional`: one pure function per formula of METHODS.md "Distillation losses".
- :mod:`medkd.distill.losses`: modules owning the trainable extras, and the registry (:func:`create_loss`).
- :mod:`medkd.distill.objective`: :class:`DistillObjective` and the studies' presets :data:`STUDY_OBJECTIVES`.
- :mod:`medkd.distill.segmentation`: :func:`create_seg_loss`.
"""

from __future__ import annotations

from medkd.distill import functional
from medkd.distill.losses import DistillLoss, create_loss, list_losses, loss_info, register_loss
from medkd.distill.objective import STUDY_OBJECTIVES, DistillObjective, study_objective
from medkd.distill.segmentation import SEG_LOSSES, create_seg_loss

__all__ = [
    "SEG_LOSSES",
    "STUDY_OBJECTIVES",
    "DistillLoss",
    "DistillObjective",
    "create_loss",
    "create_seg_loss",
    "functional",
    "list_losses",
    "loss_info",
    "register_loss",
    "study_objective",
]
