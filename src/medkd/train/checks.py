"""The checks of a run that need no data: its distillation terms, segmentation loss and teacher source, and
(once the networks exist) that every tap the terms read names a module."""

from __future__ import annotations

from typing import Any

import torch

from medkd.config import RunConfig
from medkd.distill.losses import create_loss
from medkd.distill.objective import DistillObjective
from medkd.distill.segmentation import SEG_LOSSES
from medkd.errors import ConfigError, unknown_name_error
from medkd.models import FeatureTapper, tap_specs
from medkd.teachers import check_teacher_source, check_teacher_taps

__all__ = ["check_before_data", "check_distill_terms", "check_taps"]


def check_distill_terms(terms: list[dict[str, Any]], without_labels: bool = False) -> tuple[list[str], list[str]]:
    """Check every ``distill.terms`` entry against the loss registry, without building any network.

    ``without_labels``: the run distils on images without labels, so no term may read the ground truth.

    Returns:
        The student and teacher tap names the terms need (``logits`` included), sorted.

    Raises:
        ConfigError: naming ``distill.terms[i]``: no ``loss`` key, an unknown loss or option, a bad option value
            or weight, or a term that needs labels when ``without_labels``.
    """
    student, teacher = {"logits"}, {"logits"}
    with torch.random.fork_rng(devices=[]):  # building the losses must not move the run's random stream
        for i, spec in enumerate(terms):
            where = f"distill.terms[{i}]"
            if not isinstance(spec, dict) or "loss" not in spec:
                raise ConfigError(f"{where}: expected a mapping with a 'loss' key, got {spec!r}")
            options = {k: v for k, v in spec.items() if k not in ("loss", "weight", "name")}
            try:
                loss = create_loss(str(spec["loss"]), **options)
            except ConfigError as exc:
                raise ConfigError(f"{where}: {exc}") from None
            except (TypeError, ValueError) as exc:
                raise ConfigError(f"{where} ({spec['loss']}): {str(exc).splitlines()[0]}") from None
            if without_labels and loss.needs_label:
                raise ConfigError(f"data.unlabeled: {where} ({spec['loss']}) reads the ground truth, which images "
                                  "without labels do not have; drop it or distill on labelled images only")
            student.update(loss.student_taps)
            teacher.update(loss.teacher_taps)
        DistillObjective.from_config(terms)  # weights and names
    return sorted(student), sorted(teacher)


def check_before_data(cfg: RunConfig, world_size: int = 1) -> tuple[list[str], list[str]]:
    """The checks of a run that need neither its data nor its networks (see :func:`medkd.train.trainer.train`).

    Returns:
        The student and teacher tap names the distillation terms need (empty without distillation).
    """
    if cfg.train.seg_loss.name not in SEG_LOSSES:
        exc = unknown_name_error("segmentation loss", cfg.train.seg_loss.name, SEG_LOSSES)
        raise ConfigError(f"train.seg_loss.name: {exc}")
    if cfg.distill is None:
        return [], []
    check_teacher_source(cfg.distill.teacher)
    uses_unlabeled = cfg.data.unlabeled is not None or cfg.data.unlabeled_left_out
    s_taps, t_taps = check_distill_terms(cfg.distill.terms, without_labels=uses_unlabeled)
    check_teacher_taps(cfg.distill.teacher, cfg.distill.terms)
    if cfg.distill.balance is not None and world_size > 1:
        raise ConfigError("distill.balance: not available with more than one process yet (the per-term gradient "
                          "norms are measured outside DDP); drop it or train in one process")
    return s_taps, t_taps


def check_taps(student: torch.nn.Module, teacher: torch.nn.Module | None, s_taps: list[str], t_taps: list[str]
                ) -> tuple[list[str], list[str]]:
    """The taps the run holds on each network, checked to name modules (a TapError names a bad one).

    Multi-task students also give their ``reconstruction`` output.
    """
    s_taps = list(s_taps)
    with torch.random.fork_rng(devices=[]):  # a MONAI network's taps are found by a probe forward
        if "reconstruction" in tap_specs(student):
            s_taps = sorted(set(s_taps) | {"logits", "reconstruction"})
        for net, taps, side in ((student, s_taps, "student"), (teacher, t_taps, "teacher")):
            if net is None or not taps:
                continue
            try:
                FeatureTapper(net, taps).remove()
            except ConfigError as exc:
                raise type(exc)(f"distill.terms ({side}): {exc}") from None
    return s_taps, (t_taps if teacher is not None else [])
