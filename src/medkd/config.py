"""Run configuration: pydantic models of the YAML a user writes.

A config is data, never code. Unknown keys are errors that name the key and suggest the nearest
valid one; ``--set key.sub=value`` overrides are applied before validation. The resolved config is
saved as ``config.yaml`` in every run folder so the run can be evaluated, resumed or reproduced.

Example:
    >>> cfg = load_config("experiments/demo/teacher.yaml", overrides=["train.epochs=2"])
    >>> cfg.model.name
    'unetplusplus'
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from medkd.errors import ConfigError, nearest_names

__all__ = [
    "AugmentConfig",
    "DataConfig",
    "DistillConfig",
    "EvaluateConfig",
    "ModelConfig",
    "OptimizerConfig",
    "RunConfig",
    "SchedulerConfig",
    "SegLossConfig",
    "SplitConfig",
    "TeacherConfig",
    "TrainConfig",
    "apply_overrides",
    "load_config",
    "parse_config",
    "save_config",
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class SplitConfig(_Strict):
    """How cases are split into train / val / test.

    Either an explicit ``file`` (JSON with ``train`` / ``val`` / ``test`` lists of case ids, relative to
    the dataset root unless absolute) or a seeded random split by ``val`` and ``test`` fractions.
    ``group_by`` keeps cases sharing an id prefix (e.g. ``patient001``) in the same part.
    """

    file: str | None = None
    val: float = Field(0.15, ge=0.0, lt=1.0)
    test: float = Field(0.2, ge=0.0, lt=1.0)
    seed: int = 0
    group_pattern: str | None = None
    test_sites: list[str] | None = None


class AugmentConfig(_Strict):
    """Random augmentation applied to training batches (exactly invertible ops only)."""

    flip: bool = True
    rot90: bool = False
    intensity: float = Field(0.0, ge=0.0, description="std of a random per-sample intensity scale/shift")


class DataConfig(_Strict):
    """Where the data is and how it becomes training batches."""

    root: str
    format: str = "auto"
    channels: list[str] | None = None
    teacher_channels: list[str] | None = None
    labels: dict[str, int] | None = None
    dim: Literal[2, 3] = 2
    size: list[int] = Field(default_factory=lambda: [128, 128])
    normalize: Literal["zscore", "zscore_nonzero", "minmax", "percentile", "none"] = "zscore"
    foreground_slices_only: bool = False
    volume_size: list[int] | None = Field(None, description="3D: resize every volume to this shape first")
    patches_per_case: int = Field(4, ge=1, description="3D: random patches per training case and epoch")
    split: SplitConfig = Field(default_factory=SplitConfig)
    train_fraction: float = Field(1.0, gt=0.0, le=1.0)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    max_cases: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _check_size(self) -> DataConfig:
        if len(self.size) != self.dim:
            raise ValueError(f"data.size has {len(self.size)} values but data.dim is {self.dim}")
        return self


class ModelConfig(_Strict):
    """A network from the model zoo (``medkd models``) or ``monai.<Net>``."""

    name: str
    kwargs: dict[str, Any] = Field(default_factory=dict)


class OptimizerConfig(_Strict):
    name: Literal["adam", "adamw", "sgd", "rmsprop"] = "adam"
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    momentum: float = Field(0.9, ge=0)


class SchedulerConfig(_Strict):
    name: Literal["none", "cosine", "poly", "cyclic", "plateau"] = "none"
    min_lr: float = Field(1e-6, ge=0)
    step_size: int = Field(2000, ge=1, description="half-cycle length in steps for 'cyclic'")
    patience: int = Field(50, ge=1, description="epochs without improvement for 'plateau'")
    factor: float = Field(0.2, gt=0, lt=1)


class SegLossConfig(_Strict):
    name: str = "dice_ce"
    weight: float = Field(1.0, ge=0)
    recon_weight: float = Field(0.2, ge=0, description="weight of MSE(reconstruction, input) for multi-task models")


class TrainConfig(_Strict):
    epochs: int = Field(10, ge=1)
    batch_size: int = Field(16, ge=1)
    max_steps_per_epoch: int | None = Field(None, ge=1)
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    scheduler: SchedulerConfig = Field(default_factory=SchedulerConfig)
    seg_loss: SegLossConfig = Field(default_factory=SegLossConfig)
    amp: Literal["none", "bf16", "fp16"] = "none"
    val_every: int = Field(1, ge=1)
    grad_clip: float | None = Field(None, gt=0)
    threads: int | None = Field(None, ge=1)
    progress: bool = True


class TeacherConfig(_Strict):
    """The frozen teacher: a finished run folder, or a model name plus a safetensors checkpoint."""

    run: str | None = None
    model: ModelConfig | None = None
    checkpoint: str | None = None

    @model_validator(mode="after")
    def _one_source(self) -> TeacherConfig:
        if (self.run is None) == (self.model is None):
            raise ValueError("distill.teacher needs exactly one of 'run' or 'model' (+ 'checkpoint')")
        if self.model is not None and self.checkpoint is None:
            raise ValueError("distill.teacher.model needs distill.teacher.checkpoint")
        return self


class DistillConfig(_Strict):
    """Distillation terms added to the segmentation loss (see ``medkd losses``)."""

    teacher: TeacherConfig
    terms: list[dict[str, Any]] = Field(default_factory=list)


class EvaluateConfig(_Strict):
    """How ``medkd evaluate`` scores a run; ``regions`` are extra label-value groups (e.g. BraTS WT/TC/ET)."""

    split: Literal["train", "val", "test"] = "test"
    regions: dict[str, list[int]] | None = None
    classes: bool = Field(True, description="report each declared foreground class")
    batch_size: int = Field(16, ge=1)
    sw_overlap: float = Field(0.25, ge=0, lt=1)


class RunConfig(_Strict):
    """A whole run: data, network, training, optional distillation, evaluation."""

    name: str = "run"
    seed: int = 0
    data: DataConfig
    model: ModelConfig
    train: TrainConfig = Field(default_factory=TrainConfig)
    distill: DistillConfig | None = None
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)


def _model_fields(model: type[BaseModel]) -> dict[str, Any]:
    return dict(model.model_fields)


def _submodel(annotation: Any) -> type[BaseModel] | None:
    """Return the pydantic model inside an annotation like ``X | None``, if any."""
    candidates = [annotation, *getattr(annotation, "__args__", ())]
    for cand in candidates:
        if isinstance(cand, type) and issubclass(cand, BaseModel):
            return cand
    return None


def _check_unknown_keys(data: Any, model: type[BaseModel], prefix: str = "") -> None:
    """Raise ConfigError for the first unknown key, suggesting the nearest valid one."""
    if not isinstance(data, dict):
        return
    fields = _model_fields(model)
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if key not in fields:
            close = nearest_names(str(key), fields)
            hint = f"; did you mean '{prefix}{close[0]}'?" if close else f"; valid keys: {', '.join(fields)}"
            raise ConfigError(f"unknown config key '{dotted}'{hint}")
        sub = _submodel(fields[key].annotation)
        if sub is not None:
            _check_unknown_keys(value, sub, prefix=f"{dotted}.")


def _parse_scalar(text: str) -> Any:
    return yaml.safe_load(text) if text != "" else ""


def apply_overrides(data: dict[str, Any], overrides: list[str] | None) -> dict[str, Any]:
    """Apply ``key.sub=value`` overrides (values parsed as YAML) to a config dict, returning a copy."""
    data = copy.deepcopy(data)
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key=value, e.g. train.epochs=5")
        key, value = item.split("=", 1)
        parts = key.strip().split(".")
        node = data
        for part in parts[:-1]:
            nxt = node.get(part)
            if nxt is None:
                nxt = node[part] = {}
            if not isinstance(nxt, dict):
                raise ConfigError(f"--set {key}: '{part}' is not a section")
            node = nxt
        node[parts[-1]] = _parse_scalar(value)
    return data


def _format_validation_error(err: ValidationError, source: str) -> str:
    first = err.errors()[0]
    loc = ".".join(str(p) for p in first["loc"]) or "<root>"
    msg = first["msg"]
    if first["type"] == "missing":
        msg = "required key is missing"
    return f"{source}: config key '{loc}': {msg}"


def parse_config(data: dict[str, Any], source: str = "config") -> RunConfig:
    """Validate a config dict into a :class:`RunConfig` (one-line ConfigError on failure)."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level")
    try:
        _check_unknown_keys(data, RunConfig)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    try:
        return RunConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_validation_error(err, source)) from None


def load_config(path: str | Path, overrides: list[str] | None = None) -> RunConfig:
    """Read, override and validate a YAML run config.

    Relative ``data.root`` and teacher paths stay relative to the current directory, as the user typed
    them; they are resolved to absolute paths when saved in a run folder.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise ConfigError(f"{path}: not valid YAML{where}") from None
    return parse_config(apply_overrides(data, overrides), source=str(path))


def save_config(cfg: RunConfig, path: str | Path) -> None:
    """Write the resolved config as YAML (atomically)."""
    from medkd.io import atomic_write_text

    text = yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
    atomic_write_text(Path(path), text)
