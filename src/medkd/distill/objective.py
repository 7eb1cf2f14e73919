"""The distillation objective: a weighted sum of distillation terms, plus the three studies' presets.

A term spec is a plain dict (one entry of a YAML list)::

    {"loss": "kernel_matrix", "weight": 0.9, "tap": "bottleneck"}   # any other key is an option of the loss
    {"loss": "contrastive", "weight": 0.2, "tap": "bottleneck", "name": "con_B"}  # optional explicit term name

The segmentation loss and its weight are NOT part of the objective: they belong to the trainer (see
:data:`STUDY_OBJECTIVES`, whose ``seg_loss`` / ``seg_weight`` keys are for it).

Example:
    >>> import torch
    >>> from medkd.distill.objective import DistillObjective
    >>> obj = DistillObjective.from_config([{"loss": "logits_kl", "weight": 0.2, "temperature": 4.0}])
    >>> s, t = {"logits": torch.randn(2, 3, 8, 8)}, {"logits": torch.randn(2, 3, 8, 8)}
    >>> obj.setup(s, t)
    >>> total, parts = obj(s, t, {})
    >>> sorted(parts)
    ['logits_kl@logits']
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from medkd.distill.losses import DistillLoss, create_loss
from medkd.errors import ConfigError, unknown_name_error

__all__ = ["DistillObjective", "STUDY_OBJECTIVES", "study_objective"]

#: Full objectives of the three seed studies (METHODS.md, "Combined objectives"). ``seg_loss`` / ``seg_weight``
#: configure the trainer's segmentation loss (:func:`medkd.distill.segmentation.create_seg_loss`); ``terms`` build
#: a :class:`DistillObjective`.
STUDY_OBJECTIVES: dict[str, dict[str, Any]] = {
    # Paper A: L = L_seg + 0.2 L_LM + 0.9 L_KM + 0.9 L_AA; L_seg = 0.5 focal (gamma 2) + 0.5 Dice.
    # reverse=False is Hinton's KL(p_t || p_s); set reverse=True for the order paper A's eq. 7 writes.
    "paper_a": {
        "seg_loss": "focal_dice",
        "seg_weight": 1.0,
        "terms": [
            {"loss": "logits_kl", "weight": 0.2, "tap": "logits", "temperature": 1.0, "reverse": False},
            {"loss": "kernel_matrix", "weight": 0.9, "tap": "bottleneck"},
            {"loss": "adaptive_affinity", "weight": 0.9, "tap": "logits", "dilations": [1, 2, 3], "margin": 3.0},
        ],
    },
    # Thesis B: L = 0.4 L_seg + 0.1 L_con(E) + 0.2 L_con(B) + 0.1 L_con(D) + 0.2 L_PMD (T = 4); L_seg = Dice.
    "thesis_b": {
        "seg_loss": "dice",
        "seg_weight": 0.4,
        "terms": [
            {"loss": "contrastive", "weight": 0.1, "tap": "encoder", "dim": 128, "temperature": 0.4},
            {"loss": "contrastive", "weight": 0.2, "tap": "bottleneck", "dim": 128, "temperature": 0.4},
            {"loss": "contrastive", "weight": 0.1, "tap": "decoder", "dim": 128, "temperature": 0.4},
            {"loss": "logits_kl", "weight": 0.2, "tap": "logits", "temperature": 4.0},
        ],
    },
    # Paper C (KD-Net): L = alpha L_KD + (1 - alpha) L_GT + beta L_KL, alpha 0.75, T 5, beta 10;
    # L_GT = (1 - Dice) + BCE is the trainer's seg loss with weight 1 - alpha.
    "kdnet": {
        "seg_loss": "dice_bce",
        "seg_weight": 0.25,
        "terms": [
            {"loss": "kdnet_soft_label", "weight": 0.75, "tap": "logits", "temperature": 5.0},
            {"loss": "bottleneck_kl", "weight": 10.0, "tap": "bottleneck"},
        ],
    },
}


def study_objective(name: str) -> dict[str, Any]:
    """A deep copy of one entry of :data:`STUDY_OBJECTIVES` (unknown name -> ``ConfigError``)."""
    if name not in STUDY_OBJECTIVES:
        raise unknown_name_error("study objective", name, STUDY_OBJECTIVES)
    return copy.deepcopy(STUDY_OBJECTIVES[name])


def _term_name(loss: DistillLoss, spec_name: str) -> str:
    taps = loss.student_taps if loss.student_taps == loss.teacher_taps else loss.student_taps + loss.teacher_taps
    return f"{spec_name}@{'+'.join(taps)}"


class DistillObjective(nn.Module):
    """Weighted sum of distillation terms; owns every term's trainable extras.

    ``state_dict()`` holds all extras (adapters, projection heads, affinity weights): call :meth:`setup` before
    ``load_state_dict``. The trainer saves it in checkpoints but never exports it with the student.

    Args:
        terms: term specs (see the module docstring); each needs ``"loss"``; ``"weight"`` defaults to 1;
            ``"name"`` overrides the reported term name (default ``"<loss>@<taps>"``, made unique with ``#2``...).
    """

    def __init__(self, terms: Sequence[Mapping[str, Any]]) -> None:
        super().__init__()
        if isinstance(terms, Mapping) or not isinstance(terms, Sequence):
            raise ConfigError("distillation terms must be a list of {loss: ..., weight: ...} mappings")
        self.losses = nn.ModuleList()
        self.weights: list[float] = []
        self.names: list[str] = []
        for i, spec in enumerate(terms):
            if not isinstance(spec, Mapping) or "loss" not in spec:
                raise ConfigError(f"distillation term {i}: expected a mapping with a 'loss' key, got {spec!r}")
            kw = dict(spec)
            loss_name = str(kw.pop("loss"))
            weight = kw.pop("weight", 1.0)
            name = kw.pop("name", None)
            if isinstance(weight, bool) or not isinstance(weight, (int, float)) or weight < 0:
                raise ConfigError(f"distillation term {i} ({loss_name}): weight must be a number >= 0, got {weight!r}")
            loss = create_loss(loss_name, **kw)
            name = str(name) if name is not None else _term_name(loss, loss_name)
            base, n = name, 2
            while name in self.names:
                name, n = f"{base}#{n}", n + 1
            self.losses.append(loss)
            self.weights.append(float(weight))
            self.names.append(name)

    @classmethod
    def from_config(cls, terms: Sequence[Mapping[str, Any]]) -> DistillObjective:
        """Build from a list of term specs (e.g. the ``terms`` of a :data:`STUDY_OBJECTIVES` entry)."""
        return cls(terms)

    def __len__(self) -> int:
        return len(self.losses)

    @staticmethod
    def _union(taps: Sequence[tuple[str, ...]]) -> tuple[str, ...]:
        out: list[str] = []
        for group in taps:
            out.extend(t for t in group if t not in out)
        return tuple(out)

    def student_taps(self) -> tuple[str, ...]:
        """Union of the student taps of all terms (first-seen order)."""
        return self._union([loss.student_taps for loss in self.losses])

    def teacher_taps(self) -> tuple[str, ...]:
        """Union of the teacher taps of all terms (first-seen order)."""
        return self._union([loss.teacher_taps for loss in self.losses])

    @property
    def needs_label(self) -> bool:
        """Whether any term reads ``batch["label"]``."""
        return any(loss.needs_label for loss in self.losses)

    def setup(self, student_feats: Mapping[str, Tensor], teacher_feats: Mapping[str, Tensor]) -> None:
        """Build every term's extras from one example of tapped tensors (before the optimiser is built)."""
        for loss in self.losses:
            loss.setup(student_feats, teacher_feats)

    def forward(self, student_feats: Mapping[str, Tensor], teacher_feats: Mapping[str, Tensor],
                batch: Mapping[str, Any] | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        """Weighted sum of the terms and each term's unweighted value (detached, for logging) by term name."""
        values = self.term_values(student_feats, teacher_feats, batch)
        total: Tensor | None = None
        for name, weight in zip(self.names, self.weights):
            total = weight * values[name] if total is None else total + weight * values[name]
        if total is None:
            ref = next(iter(student_feats.values()), None)
            total = torch.zeros((), device=ref.device if ref is not None else None)
        return total, {name: value.detach() for name, value in values.items()}

    def term_values(self, student_feats: Mapping[str, Tensor], teacher_feats: Mapping[str, Tensor],
                    batch: Mapping[str, Any] | None = None) -> dict[str, Tensor]:
        """Each term's unweighted value by term name, with its graph (for per-term gradients)."""
        return {name: loss(student_feats, teacher_feats, batch) for name, loss in zip(self.names, self.losses)}

    def term_weights(self) -> dict[str, float]:
        """Each term's configured weight by term name."""
        return dict(zip(self.names, self.weights))

    def ascent_parameters(self) -> list[nn.Parameter]:
        """Parameters the trainer maximises the objective over (adaptive affinity weights)."""
        return [p for loss in self.losses for p in loss.ascent_parameters()]

    def descent_parameters(self) -> list[nn.Parameter]:
        """Trainable extras optimised with the student by descent (adapters, projection heads)."""
        return [p for loss in self.losses for p in loss.descent_parameters()]

    def extra_repr(self) -> str:
        return ", ".join(f"{n}*{w:g}" for n, w in zip(self.names, self.weights))
