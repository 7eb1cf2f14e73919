"""Absolute paths in a config before it is saved in (or compared with) a run folder."""

from __future__ import annotations

from pathlib import Path

from medkd.config import RunConfig

__all__ = ["resolve_paths"]


def resolve_paths(cfg: RunConfig, base: Path | None = None) -> RunConfig:
    """Copy of ``cfg`` with the dataset, split-file and teacher paths made absolute."""
    base = base or Path.cwd()

    def absolute(p: str | None) -> str | None:
        return None if p is None else str((base / p).resolve()) if not Path(p).is_absolute() else p

    cfg = cfg.model_copy(deep=True)
    root = Path(absolute(cfg.data.root))
    cfg.data.root = str(root)
    cfg.data.unlabeled = absolute(cfg.data.unlabeled)
    if cfg.data.split.file and not Path(cfg.data.split.file).is_absolute():
        in_root = root / cfg.data.split.file
        cfg.data.split.file = str(in_root if in_root.exists() else (base / cfg.data.split.file).resolve())
    if cfg.distill is not None:
        teacher = cfg.distill.teacher
        for key in ("run", "nnunet", "bundle", "torchscript", "onnx"):
            setattr(teacher, key, absolute(getattr(teacher, key)))
        if teacher.model is not None:  # an nnU-Net checkpoint is a file name inside its fold folder
            teacher.checkpoint = absolute(teacher.checkpoint)
    return cfg
