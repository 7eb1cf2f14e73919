"""Teachers medkd trained itself: a finished run folder (``{run: RUN}``) or a zoo model with safetensors weights
(``{model: {name: ...}, checkpoint: FILE}``)."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from medkd.config import TeacherConfig
from medkd.errors import ConfigError
from medkd.models import create_model
from medkd.run import RunFolder
from medkd.weights import load_model_weights

__all__ = ["check_run_source", "load_model_teacher", "load_run_teacher"]


def check_run_source(tcfg: TeacherConfig) -> None:
    """Check that the teacher's run folder (config, split, best weights) or checkpoint file exists (no reading)."""
    if tcfg.run is not None:
        run = RunFolder(Path(tcfg.run))
        if not run.path.is_dir():
            raise ConfigError(f"distill.teacher.run {run.path}: folder not found")
        if not run.config_path.is_file():
            raise ConfigError(f"distill.teacher.run {run.path}: not a run folder (no {run.config_path.name})")
        if not run.split_path.is_file():
            raise ConfigError(f"distill.teacher.run {run.path}: {run.split_path.name} missing; "
                              "the teacher run never started")
        if not run.best_weights.is_file():
            raise ConfigError(f"distill.teacher.run {run.path}: no trained weights "
                              f"({run.best_weights.relative_to(run.path)} missing); train the teacher first")
    elif tcfg.checkpoint is not None and not Path(tcfg.checkpoint).is_file():
        raise ConfigError(f"distill.teacher.checkpoint {tcfg.checkpoint}: file not found")


def load_run_teacher(tcfg: TeacherConfig, in_channels: int, num_classes: int, dim: int) -> nn.Module:
    """The best weights of a finished medkd run, checked against the run's channels, classes and dimension."""
    run = RunFolder(Path(tcfg.run))
    teacher, teacher_cfg = run.load_model()
    split = run.split()
    if run.in_channels != in_channels:
        raise ConfigError(f"distill.teacher.run {tcfg.run}: teacher reads {split['channels']} "
                          f"(neighbours {split.get('neighbours', 0)}) but data.teacher_channels / "
                          f"data.neighbours give {in_channels} input channel(s)")
    if len(split["classes"]) != num_classes:
        raise ConfigError(f"distill.teacher.run {tcfg.run}: teacher predicts {len(split['classes'])} classes, "
                          f"the dataset has {num_classes}")
    if teacher_cfg.data.dim != dim:
        raise ConfigError(f"distill.teacher.run {tcfg.run}: teacher is {teacher_cfg.data.dim}D, student {dim}D")
    return teacher


def load_model_teacher(tcfg: TeacherConfig, in_channels: int, num_classes: int, dim: int) -> nn.Module:
    """A zoo (or ``monai.*``) network with the safetensors weights of ``distill.teacher.checkpoint``."""
    assert tcfg.model is not None and tcfg.checkpoint is not None
    teacher = create_model(tcfg.model.name, in_channels=in_channels, num_classes=num_classes, spatial_dims=dim,
                           **tcfg.model.kwargs)
    load_model_weights(teacher, Path(tcfg.checkpoint))
    return teacher
