"""Validation during training: mean foreground Dice per whole validation volume, and the collapse flag."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from medkd.config import RunConfig
from medkd.data.pipeline import PreparedCase
from medkd.inference import predict_volume, predicted_classes

__all__ = ["COLLAPSE_DROP", "dice_per_class", "validate", "validation_collapse"]

#: A run is flagged when its last validations fall this far (Dice points / 100) below its best one.
COLLAPSE_DROP = 0.05


def dice_per_class(pred: np.ndarray, ref: np.ndarray, num_classes: int) -> list[float]:
    """Dice of each foreground class (NaN where both prediction and reference are empty)."""
    out = []
    for c in range(1, num_classes):
        p, r = pred == c, ref == c
        denom = p.sum() + r.sum()
        out.append(float("nan") if denom == 0 else float(2 * (p & r).sum() / denom))
    return out


def validate(model: torch.nn.Module, cases: Sequence[PreparedCase], cfg: RunConfig, num_classes: int,
             device: torch.device) -> float:
    """Mean over cases of the mean foreground Dice (classes absent from both maps are skipped)."""
    was_training = model.training
    model.eval()
    scores = []
    for pc in cases:
        probs = predict_volume(model, pc.image, cfg.data.dim, cfg.data.size,
                               cfg.data.volume_size, cfg.evaluate.batch_size, cfg.evaluate.sw_overlap, device)
        pred = predicted_classes(probs)
        per_class = [d for d in dice_per_class(pred, pc.label, num_classes) if not np.isnan(d)]
        if per_class:
            scores.append(float(np.mean(per_class)))
    model.train(was_training)
    return float(np.mean(scores)) if scores else float("nan")


def validation_collapse(best: float | None, history: list[float], window: int = 3) -> str | None:
    """A one-line warning when validation Dice collapsed after the best epoch, else None.

    "Collapsed": the best validation came before the last ``window`` ones, and their mean is more than
    :data:`COLLAPSE_DROP` below it; the best checkpoint then predates the collapse and the run deserves a look.
    """
    finite = [v for v in history if math.isfinite(v)]
    if best is None or not math.isfinite(best) or len(finite) < window + 1:
        return None
    if max(finite[-window:]) >= best:
        return None  # the best is among the last validations: still improving
    tail = sum(finite[-window:]) / window
    if best - tail > COLLAPSE_DROP:
        return (f"validation Dice collapsed: best {best:.4f}, mean of the last {window} validations {tail:.4f}; "
                "the best checkpoint predates the collapse")
    return None
