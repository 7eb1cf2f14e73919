"""Teachers: load the frozen teacher of ``distill.teacher`` from whichever source it names.

Sources (exactly one per config, :class:`medkd.config.TeacherConfig`):

* ``run`` / ``model`` + ``checkpoint``: trained by medkd (:mod:`medkd.teachers.medkd_run`);
* ``nnunet``: a trained nnU-Net v2 model folder (:mod:`medkd.teachers.nnunet`);
* ``bundle``: a MONAI bundle (:mod:`medkd.teachers.bundle`);
* ``torchscript`` / ``onnx``: an exported network, ``logits`` only (:mod:`medkd.teachers.opaque`).

Foreign teachers are wrapped in :class:`~medkd.teachers.adapter.TeacherAdapter`, which matches their channels and
classes to the dataset by name (:mod:`medkd.teachers.mapping`). A teacher trained on its own per-case
normalisation (nnU-Net) declares it as ``input_normalization`` (:func:`teacher_input_normalization` reads it without
loading weights); the data path then gives the teacher its own copy of its channels, normalised that way.

Example:
    >>> check_teacher_source(cfg.distill.teacher)                 # before any data is read
    >>> check_teacher_taps(cfg.distill.teacher, cfg.distill.terms)
    >>> teacher = load_teacher(cfg.distill.teacher, 1, 2, 2, inputs=TeacherInputs(1, 2, 2, ["T2"], ["bg", "fg"]))
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from medkd.config import TeacherConfig
from medkd.distill.losses import create_loss
from medkd.errors import ConfigError
from medkd.teachers.base import TeacherInputs, freeze
from medkd.teachers.bundle import check_bundle_source, load_bundle_teacher
from medkd.teachers.medkd_run import check_run_source, load_model_teacher, load_run_teacher
from medkd.teachers.nnunet import check_nnunet_source, load_nnunet_teacher, nnunet_input_normalization
from medkd.teachers.opaque import load_opaque_teacher

__all__ = ["OPAQUE_SOURCES", "TeacherInputs", "check_teacher_source", "check_teacher_taps", "load_teacher",
           "teacher_input_normalization"]

#: Sources whose only tap is ``logits``.
OPAQUE_SOURCES: tuple[str, ...] = ("torchscript", "onnx")


def check_teacher_source(tcfg: TeacherConfig) -> None:
    """Check that the teacher's files exist (and the optional packages it needs), reading no weights.

    Raises:
        ConfigError: one line naming the ``distill.teacher`` key and the missing file or package.
    """
    source = tcfg.source
    if source in ("run", "model"):
        check_run_source(tcfg)
    elif source == "nnunet":
        check_nnunet_source(tcfg)
    elif source == "bundle":
        check_bundle_source(tcfg)
    elif not Path(getattr(tcfg, source)).is_file():
        raise ConfigError(f"distill.teacher.{source} {getattr(tcfg, source)}: file not found")


def check_teacher_taps(tcfg: TeacherConfig, terms: Sequence[dict[str, Any]]) -> None:
    """Refuse a distillation term that needs a feature of an opaque (TorchScript / ONNX) teacher.

    Call after the terms passed :func:`medkd.train.trainer.check_distill_terms` (each builds).

    Raises:
        ConfigError: ``distill.terms[i] (loss): needs the teacher's 'bottleneck' tap; a torchscript teacher has
            only logits``.
    """
    if tcfg.source not in OPAQUE_SOURCES:
        return
    with torch.random.fork_rng(devices=[]):  # building the losses must not move the run's random stream
        for i, spec in enumerate(terms):
            options = {k: v for k, v in spec.items() if k not in ("loss", "weight", "name")}
            extra = sorted(set(create_loss(str(spec["loss"]), **options).teacher_taps) - {"logits"})
            if extra:
                raise ConfigError(f"distill.terms[{i}] ({spec['loss']}): needs the teacher's {extra[0]!r} tap; a "
                                  f"{tcfg.source} teacher has only 'logits' (use a logits loss, e.g. logits_kl or cwd)")


def load_teacher(tcfg: TeacherConfig, in_channels: int, num_classes: int, dim: int,
                 inputs: TeacherInputs | None = None, size: Sequence[int] | None = None) -> nn.Module:
    """Load the frozen teacher (eval mode, no gradients) of ``tcfg``.

    Args:
        tcfg: ``distill.teacher``.
        in_channels: input channels the pipeline gives the teacher.
        num_classes: classes of the dataset.
        dim: 2 or 3.
        inputs: names of the given channels and classes and ``data.neighbours`` (matched against a foreign
            teacher's); default: counts only (channels and classes taken by position).
        size: the run's sample size (``data.size``), for an opaque teacher's probe forward.

    Raises:
        ConfigError: one line naming the ``distill.teacher`` key and what does not fit.
    """
    source = tcfg.source
    if source in ("run", "model"):
        loader = load_run_teacher if source == "run" else load_model_teacher
        return freeze(loader(tcfg, in_channels, num_classes, dim))
    inputs = inputs or TeacherInputs(in_channels, num_classes, dim)
    if source == "nnunet":
        return freeze(load_nnunet_teacher(tcfg, inputs))
    if source == "bundle":
        return freeze(load_bundle_teacher(tcfg, inputs))
    return freeze(load_opaque_teacher(tcfg, inputs, list(size) if size is not None else None))


def teacher_input_normalization(tcfg: TeacherConfig, inputs: TeacherInputs) -> Any | None:
    """The per-case normalisation the data path must give the teacher of ``tcfg``, read without its weights.

    Returns:
        nnU-Net's normalisation of the plan (:class:`medkd.teachers.nnunet_norm.NnUNetNormalization`) for an
        ``nnunet`` teacher; None for the others, which read medkd's preprocessing.
    """
    return nnunet_input_normalization(tcfg, inputs) if tcfg.source == "nnunet" else None
