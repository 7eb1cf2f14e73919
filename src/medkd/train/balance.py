"""Loss balance you can see: per-term gradient norms on the student, and optional automatic term scaling.

A distillation term whose gradient dwarfs the segmentation loss's takes the student wherever the teacher's
softened maps lead (thesis B's 0.2 x PMD at T = 4 had 12.7x the gradient of its 0.4 x Dice at initialisation);
one whose gradient is a thousandth of it does nothing. Both go unnoticed in the loss curve, because the terms'
values have unrelated scales. What matters is each term's gradient on the student's parameters.

:func:`gradient_norms` measures it: the L2 norm over all student parameters of ``d part / d theta`` for every part
of the step's loss (the weighted segmentation loss, each weighted distillation term, the pseudo-label term), with
the graph kept for the step's own backward pass. :class:`TermBalancer` (``distill.balance``) turns the measured
norms into per-term scales: ``r_k = target * |g_seg| / |g_k|`` with ``g_k`` the gradient of ``w_k L_k``;
``mode: cap`` uses ``min(1, r_k)`` (a term may never exceed ``target`` x the segmentation gradient, and is never
amplified), ``mode: match`` uses ``r_k`` (every term at ``target`` x the segmentation gradient). Scales are
smoothed with an exponential moving average (``momentum``), re-measured every ``every`` steps, and saved with the
trainer state so a resumed run continues with the same scales.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from medkd.config import BalanceConfig

__all__ = ["TermBalancer", "gradient_norms"]

_EPS = 1e-12


def gradient_norms(parts: Mapping[str, Tensor], params: Sequence[torch.nn.Parameter]) -> dict[str, float]:
    """L2 norm of each part's gradient with respect to ``params`` (0 where a part does not reach them).

    The autograd graph is retained, so the caller can still run ``backward`` on the sum of the parts.
    """
    params = [p for p in params if p.requires_grad]
    norms: dict[str, float] = {}
    for name, value in parts.items():
        if not value.requires_grad:
            norms[name] = 0.0
            continue
        grads = torch.autograd.grad(value, params, retain_graph=True, allow_unused=True)
        squares = [g.detach().float().pow(2).sum() for g in grads if g is not None]
        norms[name] = float(torch.stack(squares).sum().sqrt()) if squares else 0.0
    return norms


class TermBalancer:
    """Per-term scales that keep each distillation term's gradient at (or under) ``target`` x the segmentation's.

    Args:
        cfg: ``distill.balance``.
        names: the distillation terms' names (:attr:`DistillObjective.names`).
    """

    def __init__(self, cfg: BalanceConfig, names: Sequence[str]) -> None:
        self.cfg = cfg
        self.scales: dict[str, float] = {name: 1.0 for name in names}
        self._measured = False

    def due(self, step: int) -> bool:
        """Whether step ``step`` (0-based, before it runs) re-measures the norms."""
        return step % self.cfg.every == 0

    def update(self, seg_norm: float, term_norms: Mapping[str, float]) -> None:
        """New scales from the segmentation gradient norm and each UNSCALED weighted term's norm."""
        for name, norm in term_norms.items():
            if norm <= _EPS or not math.isfinite(norm) or not math.isfinite(seg_norm):
                continue  # a term without gradient keeps its scale
            ratio = self.cfg.target * seg_norm / norm
            new = min(1.0, ratio) if self.cfg.mode == "cap" else ratio
            old = self.scales[name]
            self.scales[name] = new if not self._measured else self.cfg.momentum * old + (1 - self.cfg.momentum) * new
        self._measured = True

    def state_dict(self) -> dict[str, object]:
        return {"scales": dict(self.scales), "measured": self._measured}

    def load_state_dict(self, state: Mapping[str, object]) -> None:
        self.scales.update(dict(state["scales"]))  # type: ignore[arg-type]
        self._measured = bool(state["measured"])
