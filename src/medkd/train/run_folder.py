"""The run folder contract and the networks a run builds.

A run folder holds ``config.yaml`` (resolved), ``split.json`` (the exact cases used), ``checkpoints/``,
``metrics.jsonl`` (one JSON line per step and per epoch), ``evaluation/`` and ``train_summary.json``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from medkd.config import ModelConfig, RunConfig, TeacherConfig, load_config, save_config
from medkd.errors import ConfigError, MedkdError
from medkd.io import atomic_write_json
from medkd.train.checkpoint import load_model_weights

__all__ = ["RunFolder", "build_network", "load_run_model", "load_teacher", "resolve_paths"]


class RunFolder:
    """Paths and small I/O helpers of one run folder."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.checkpoints = self.path / "checkpoints"
        self.metrics = self.path / "metrics.jsonl"

    def has_started(self) -> bool:
        return self.metrics.exists() or (self.checkpoints / "last.json").exists()

    def reset_logs(self) -> None:
        self.metrics.unlink(missing_ok=True)

    def prepare(self, cfg: RunConfig, bundle: Any, is_main: bool = True) -> None:
        """Create the folder and record the resolved config and split (rank 0 only)."""
        if not is_main:
            return
        self.path.mkdir(parents=True, exist_ok=True)
        save_config(cfg, self.path / "config.yaml")
        atomic_write_json(self.path / "split.json", {
            "dataset": str(bundle.index.root), "format": bundle.index.format,
            "channels": [bundle.index.channel_names[i] for i in bundle.channels],
            "teacher_channels": None if bundle.teacher_channels is None
            else [bundle.index.channel_names[i] for i in bundle.teacher_channels],
            "classes": bundle.class_names, **bundle.split,
            "sites": {cid: bundle.index.case(cid).site for part in bundle.split.values() for cid in part},
            **bundle.record(),
        })

    def log(self, record: dict[str, Any]) -> None:
        with self.metrics.open("a") as fh:
            fh.write(json.dumps(record) + "\n")

    def truncate_metrics(self, epoch: int) -> None:
        """Drop log lines written after the checkpoint of ``epoch`` (a resumed run rewrites them)."""
        if not self.metrics.exists():
            return
        keep = [line for line in self.metrics.read_text().splitlines()
                if line.strip() and json.loads(line).get("epoch", 0) <= epoch]
        self.metrics.write_text("".join(line + "\n" for line in keep))


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
        cfg.distill.teacher.run = absolute(cfg.distill.teacher.run)
        cfg.distill.teacher.checkpoint = absolute(cfg.distill.teacher.checkpoint)
    return cfg


def build_network(model_cfg: ModelConfig, in_channels: int, num_classes: int, dim: int) -> torch.nn.Module:
    """Create a zoo (or ``monai.*``) network for a run."""
    from medkd.models import create_model

    return create_model(model_cfg.name, in_channels=in_channels, num_classes=num_classes, spatial_dims=dim,
                        **model_cfg.kwargs)


def load_run_model(run_dir: Path, which: str = "best") -> tuple[torch.nn.Module, RunConfig]:
    """The trained network of a run folder (``best`` or ``last`` weights) and its config."""
    run_dir = Path(run_dir)
    cfg_path = run_dir / "config.yaml"
    if not cfg_path.is_file():
        raise MedkdError(f"{run_dir}: not a run folder (no config.yaml)")
    cfg = load_config(cfg_path)
    split = json.loads((run_dir / "split.json").read_text()) if (run_dir / "split.json").is_file() else None
    if split is None:
        raise MedkdError(f"{run_dir}: split.json missing; the run never started")
    in_channels = split.get("in_channels", len(split["channels"]))
    model = build_network(cfg.model, in_channels, len(split["classes"]), cfg.data.dim)
    if which == "best":
        weights = run_dir / "checkpoints" / "best.safetensors"
    else:
        pointer = run_dir / "checkpoints" / "last.json"
        if not pointer.is_file():
            raise MedkdError(f"{run_dir}: no finished epoch yet (checkpoints/last.json missing)")
        weights = run_dir / "checkpoints" / json.loads(pointer.read_text())["dir"] / "model.safetensors"
    if not weights.is_file():
        raise MedkdError(f"{weights}: checkpoint not found; has the run finished an epoch?")
    load_model_weights(model, weights)
    model.eval()
    return model, cfg


def load_teacher(tcfg: TeacherConfig, in_channels: int, num_classes: int, dim: int) -> torch.nn.Module:
    """Load the frozen teacher: eval mode, no gradients."""
    if tcfg.run is not None:
        teacher, teacher_cfg = load_run_model(Path(tcfg.run))
        split = json.loads((Path(tcfg.run) / "split.json").read_text())
        if split.get("in_channels", len(split["channels"])) != in_channels:
            raise ConfigError(f"distill.teacher.run {tcfg.run}: teacher reads {split['channels']} "
                              f"(neighbours {split.get('neighbours', 0)}) but data.teacher_channels / "
                              f"data.neighbours give {in_channels} input channel(s)")
        if len(split["classes"]) != num_classes:
            raise ConfigError(f"distill.teacher.run {tcfg.run}: teacher predicts {len(split['classes'])} classes, "
                              f"the dataset has {num_classes}")
        if teacher_cfg.data.dim != dim:
            raise ConfigError(f"distill.teacher.run {tcfg.run}: teacher is {teacher_cfg.data.dim}D, student {dim}D")
    else:
        assert tcfg.model is not None and tcfg.checkpoint is not None
        teacher = build_network(tcfg.model, in_channels, num_classes, dim)
        load_model_weights(teacher, Path(tcfg.checkpoint))
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher
