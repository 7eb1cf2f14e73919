"""Validation during training: mean foreground Dice per whole validation volume."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from medkd.config import RunConfig
from medkd.data.pipeline import PreparedCase
from medkd.inference import predict_volume

__all__ = ["dice_per_class", "validate"]


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
        pred = probs.argmax(0).numpy()
        per_class = [d for d in dice_per_class(pred, pc.label, num_classes) if not np.isnan(d)]
        if per_class:
            scores.append(float(np.mean(per_class)))
    model.train(was_training)
    return float(np.mean(scores)) if scores else float("nan")
