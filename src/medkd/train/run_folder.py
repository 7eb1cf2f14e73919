"""The run folder contract and the networks a run builds.

A run folder holds ``config.yaml`` (resolved), ``split.json`` (the exact cases used), ``checkpoints/``,
``metrics.jsonl`` (one JSON line per step and per epoch), ``evaluation/`` and ``train_summary.json``.

A resume never rewrites what the checkpoints depend on: :func:`check_resume_config` compares the new config with
the run's ``config.yaml`` (only :data:`RESUME_FREE_KEYS` may differ) and :meth:`RunFolder.check_resume_split`
the new split with ``split.json``, both before anything is written.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import yaml

from medkd.config import ModelConfig, RunConfig, TeacherConfig, load_config, save_config
from medkd.errors import ConfigError, DataError, MedkdError
from medkd.io import atomic_write_json
from medkd.train.checkpoint import load_model_weights

__all__ = [
    "RESUME_FREE_KEYS",
    "RunFolder",
    "build_network",
    "check_resume_config",
    "check_teacher_source",
    "load_run_model",
    "load_teacher",
    "resolve_paths",
]

#: Config keys a resume may change (how long, how often, how verbose, how fast); every other key must equal the
#: run's ``config.yaml``, since the checkpoints, the split or the run's meaning depend on it.
RESUME_FREE_KEYS: tuple[str, ...] = (
    "name", "train.epochs", "train.progress", "train.threads", "train.val_every", "train.grad_norm_every",
    "train.compile", "evaluate", "data.prepared", "data.prepared_dir",
)

#: ``split.json`` entries a resumed run must find unchanged (the cases, channels and classes it trained on).
SPLIT_KEYS: tuple[str, ...] = ("train", "val", "test", "channels", "teacher_channels", "classes", "in_channels",
                               "teacher_in_channels")


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

    def split_record(self, bundle: Any) -> dict[str, Any]:
        """What ``split.json`` records for ``bundle`` (plain JSON types)."""
        return json.loads(json.dumps({
            "dataset": str(bundle.index.root), "format": bundle.index.format,
            "channels": [bundle.index.channel_names[i] for i in bundle.channels],
            "teacher_channels": None if bundle.teacher_channels is None
            else [bundle.index.channel_names[i] for i in bundle.teacher_channels],
            "classes": bundle.class_names, **bundle.split,
            "sites": {cid: bundle.index.case(cid).site for part in bundle.split.values() for cid in part},
            **bundle.record(),
        }))

    def check_resume_split(self, bundle: Any) -> None:
        """Raise DataError if the dataset now gives other cases, channels or classes than ``split.json`` records."""
        path = self.path / "split.json"
        if not path.is_file():
            return
        try:
            saved = json.loads(path.read_text())
        except json.JSONDecodeError:
            raise DataError(f"{path}: not valid JSON; the run cannot resume") from None
        new = self.split_record(bundle)
        for key in SPLIT_KEYS:
            if key in saved and saved[key] != new.get(key):
                raise DataError(f"{path}: '{key}' differs from what {bundle.index.root} gives now (the dataset "
                                "changed?); a resume cannot change the run's cases, channels or classes")

    def prepare(self, cfg: RunConfig, bundle: Any, is_main: bool = True, resume: bool = False) -> None:
        """Create the folder and record the resolved config and split (rank 0 only).

        On ``resume`` (a checkpoint exists and :func:`check_resume_config` / :meth:`check_resume_split` passed)
        ``split.json`` is kept as it is, and ``config.yaml`` is rewritten only when a :data:`RESUME_FREE_KEYS`
        key changed (e.g. more ``train.epochs``).
        """
        if not is_main:
            return
        self.path.mkdir(parents=True, exist_ok=True)
        cfg_path, split_path = self.path / "config.yaml", self.path / "split.json"
        if not resume or not cfg_path.is_file() or cfg_path.read_text() != config_text(cfg):
            save_config(cfg, cfg_path)
        if not resume or not split_path.is_file():
            atomic_write_json(split_path, self.split_record(bundle))

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


def config_text(cfg: RunConfig) -> str:
    """The YAML text :func:`medkd.config.save_config` writes for ``cfg``."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


_UNSET = object()


def _differences(old: Any, new: Any, key: str = "") -> list[tuple[str, Any, Any]]:
    """Dotted keys (leaves or dict entries) where two plain-data configs differ, in the old config's key order."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for k in [*old, *(k for k in new if k not in old)]:
            out += _differences(old.get(k, _UNSET), new.get(k, _UNSET), f"{key}.{k}" if key else str(k))
        return out
    return [] if old == new else [(key, old, new)]


def _shown(value: Any) -> str:
    if value is _UNSET:
        return "no value"
    return value if isinstance(value, str) else json.dumps(value)


def check_resume_config(run_dir: Path, cfg: RunConfig) -> RunConfig | None:
    """Refuse a resume whose config differs from the run's ``config.yaml`` outside :data:`RESUME_FREE_KEYS`.

    Paths are compared after :func:`resolve_paths`. Nothing is written.

    Returns:
        The run's saved config, or None when the folder has no ``config.yaml``.

    Raises:
        ConfigError: one line naming the first key that differs, e.g.
            ``model.name: the run was trained with unet_s1; a resume cannot change it (got unet_s2)``.
    """
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        return None
    saved = load_config(path)

    def plain(c: RunConfig) -> Any:
        return yaml.safe_load(config_text(resolve_paths(c)))

    for key, old, new in _differences(plain(saved), plain(cfg)):
        if any(key == free or key.startswith(free + ".") for free in RESUME_FREE_KEYS):
            continue
        trained = "without it" if old is _UNSET else f"with {_shown(old)}"
        raise ConfigError(f"{key}: the run was trained {trained}; a resume cannot change it (got {_shown(new)}); "
                          f"train into a new --out folder instead")
    return saved


def check_teacher_source(tcfg: TeacherConfig) -> None:
    """Check that the teacher's run folder (config, split, best weights) or checkpoint file exists (no reading)."""
    if tcfg.run is not None:
        run = Path(tcfg.run)
        if not run.is_dir():
            raise ConfigError(f"distill.teacher.run {run}: folder not found")
        if not (run / "config.yaml").is_file():
            raise ConfigError(f"distill.teacher.run {run}: not a run folder (no config.yaml)")
        if not (run / "split.json").is_file():
            raise ConfigError(f"distill.teacher.run {run}: split.json missing; the teacher run never started")
        if not (run / "checkpoints" / "best.safetensors").is_file():
            raise ConfigError(f"distill.teacher.run {run}: no trained weights (checkpoints/best.safetensors "
                              "missing); train the teacher first")
    elif tcfg.checkpoint is not None and not Path(tcfg.checkpoint).is_file():
        raise ConfigError(f"distill.teacher.checkpoint {tcfg.checkpoint}: file not found")


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


def training_progress(run_dir: str | Path, planned_epochs: int | None = None) -> dict[str, Any]:
    """How far a run folder's training got (recorded by evaluations and exports; one rule for both).

    Args:
        run_dir: a run folder.
        planned_epochs: ``train.epochs`` of its config (read from ``config.yaml`` when not given).

    Returns:
        ``{"epoch": epoch of best.safetensors (the weights exported), "last_epoch": completed epochs
        (checkpoints/last.json), "epochs": planned epochs, "finished": bool}``; epochs the files do not state are
        None. A run is finished when ``train_summary.json`` exists and ``last_epoch`` reached ``epochs``.
    """
    run_dir = Path(run_dir)
    if planned_epochs is None:
        planned_epochs = load_config(run_dir / "config.yaml").train.epochs

    def epoch_in(path: Path) -> int | None:
        try:
            value = json.loads(path.read_text()).get("epoch")
        except (OSError, ValueError, AttributeError):
            return None
        return value if isinstance(value, int) else None

    last = epoch_in(run_dir / "checkpoints" / "last.json")
    finished = (run_dir / "train_summary.json").is_file() and (last is None or last >= planned_epochs)
    return {"epoch": epoch_in(run_dir / "checkpoints" / "best.json"), "last_epoch": last,
            "epochs": int(planned_epochs), "finished": bool(finished)}
