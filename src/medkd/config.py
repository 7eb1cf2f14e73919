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
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from medkd.errors import ConfigError, nearest_names
from medkd.io import atomic_write_text

__all__ = [
    "AugmentConfig",
    "BalanceConfig",
    "CutMixConfig",
    "DataConfig",
    "DistillConfig",
    "EvaluateConfig",
    "ModelConfig",
    "OptimizerConfig",
    "PseudoLabelConfig",
    "RunConfig",
    "SchedulerConfig",
    "SegLossConfig",
    "SimulateSitesConfig",
    "SplitConfig",
    "TEACHER_SOURCES",
    "TeacherConfig",
    "TrainConfig",
    "apply_overrides",
    "deep_merge",
    "load_config",
    "parse_config",
    "save_config",
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=(), use_attribute_docstrings=True)


class SplitConfig(_Strict):
    """How cases are split into train / val / test (see :mod:`medkd.data.protocols`).

    In order of precedence:

    * ``file``: an explicit JSON with ``train`` / ``val`` / ``test`` lists of case ids (relative to the
      dataset root unless absolute), e.g. ACDC's ``splits.json``; a file without a ``val`` list gets ``val`` of
      its training case groups carved out for validation (seeded by ``seed``, grouped by ``group_pattern``,
      recorded in the run's ``split.json``); ``val: 0`` or an explicit ``"val": []`` trains without validation;
    * ``folds`` / ``fold``: seeded k-fold cross-validation over case groups (nnU-Net's convention: KFold with
      shuffling, seed ``fold_seed`` = 12345, over sorted ids); fold ``fold`` is the test part and ``val`` of the
      remaining groups is held out for validation;
    * ``test_sites``: leave-site(s)-out: those sites are the test part, ``val`` of the other groups validate;
    * otherwise a seeded random split by ``val`` and ``test`` fractions.

    ``group_pattern`` (a regular expression, e.g. ``patient\\d+``) keeps cases sharing a match in the same part.
    """

    file: str | None = None
    """JSON with train / val / test lists of case ids (relative to the dataset root unless absolute)"""
    val: float = Field(0.15, ge=0.0, lt=1.0)
    """fraction of case groups held out for validation (carved from train when a split file has no val list)"""
    test: float = Field(0.2, ge=0.0, lt=1.0)
    """fraction of case groups held out for testing (random split only)"""
    seed: int = 0
    """seed of the random split, the validation part and the carve"""
    group_pattern: str | None = None
    """regular expression; cases sharing a match (e.g. patient\\d+) stay in the same part"""
    test_sites: list[str] | None = None
    """leave-site-out: these sites are the test part"""
    folds: int | None = Field(None, ge=2, description="k of k-fold cross-validation")
    fold: int = Field(0, ge=0, description="which fold is the test part (0..folds-1)")
    fold_seed: int = Field(12345, description="shuffle seed of the k-fold split (nnU-Net uses 12345)")

    @model_validator(mode="after")
    def _check_protocol(self) -> SplitConfig:
        if self.folds is not None and self.fold >= self.folds:
            raise ValueError(f"data.split.fold {self.fold} must be below data.split.folds {self.folds}")
        if self.folds is not None and self.test_sites:
            raise ValueError("data.split: use either folds (k-fold) or test_sites (leave-site-out), not both")
        return self


class SimulateSitesConfig(_Strict):
    """Simulated acquisition sites from one real dataset (reported as *simulated*, never as real sites).

    Case groups are dealt to ``k`` sites in a seeded, balanced way; each site has a fixed
    :class:`~medkd.data.sites.SiteProfile` (contrast curve, bias field, resolution, blur, noise) applied to its
    cases' images when they are loaded, deterministically per case.
    """

    k: int = Field(4, ge=2, description="number of simulated sites")
    seed: int = Field(0, description="seed of the site profiles and of the case assignment")
    in_plane: bool = Field(True, description="resolution and blur on the first two axes only, so the slices of a "
                                             "stack are never mixed (cine MR, 2D studies); false for isotropic 3D")


class AugmentConfig(_Strict):
    """Random augmentation applied to training batches (exactly invertible ops only)."""

    flip: bool = True
    """random flips along every spatial axis"""
    rot90: bool = False
    """random 90-degree rotations in the first two axes (square images)"""
    intensity: float = Field(0.0, ge=0.0, description="std of a random per-sample intensity scale/shift")


class DataConfig(_Strict):
    """Where the data is and how it becomes training batches.

    Preprocessing runs in this order (defaults leave the grid untouched): orientation -> resampling to
    ``spacing`` -> ``crop_foreground`` -> ``center_crop`` -> ``clip_percentiles`` -> ``normalize`` ->
    2.5D ``neighbours``; then 2D slicing and resizing to ``size`` (2D) or patches of ``size`` (3D, after the
    optional ``volume_size`` resize). Evaluation maps predictions back to each case's original grid
    (see :mod:`medkd.data.preprocess`).
    """

    root: str
    """dataset folder (nnU-Net v2 raw, MSD, site folders, PNG pairs)"""
    format: str = "auto"
    """nnunet, msd, site_folders, png_pairs, or auto (detected)"""
    channels: list[str] | None = None
    """the student's channels by name (default: all)"""
    teacher_channels: list[str] | None = None
    """the teacher's channels by name (default: the student's)"""
    labels: dict[str, int] | None = None
    """classes to predict, name -> label value (default: all in dataset.json)"""
    dim: Literal[2, 3] = 2
    """2: slices of every volume; 3: patches or whole volumes"""
    size: list[int] = Field(default_factory=lambda: [128, 128])
    """2D slice size or 3D patch size the networks see"""
    normalize: Literal["zscore", "zscore_nonzero", "minmax", "percentile", "none"] = "zscore"
    """per-case intensity normalisation"""
    foreground_slices_only: bool = False
    """2D: train only on slices with foreground"""
    volume_size: list[int] | None = Field(None, description="3D: resize every volume to this shape first")
    patches_per_case: int = Field(4, ge=1, description="3D: random patches per training case and epoch")
    split: SplitConfig = Field(default_factory=SplitConfig)
    train_fraction: float = Field(1.0, gt=0.0, le=1.0)
    """share of the training case groups the run trains on (seeded per run seed, grouped)"""
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    max_cases: int | None = Field(None, ge=1)
    """use only the first N cases of every part (quick checks)"""
    orientation: str | None = Field(None, description="reorient every case to these axis codes, e.g. RAS")
    spacing: list[float] | None = Field(None, description="resample to this voxel size (mm); <= 0 keeps an axis")
    crop_foreground: bool = Field(False, description="crop to the box of non-zero voxels (any channel)")
    crop_margin: int = Field(0, ge=0, description="voxels kept around the foreground box")
    center_crop: list[int] | None = Field(None, description="central crop to this shape; <= 0 keeps an axis")
    clip_percentiles: list[float] | None = Field(None, description="clip each channel to these percentiles first")
    neighbours: int = Field(0, ge=0, description="2.5D: k slices either side as extra channels (2k+1 per channel)")
    label_map: dict[int, int] | None = Field(None, description="raw label value -> value, e.g. {2: 1}")
    simulate_sites: SimulateSitesConfig | None = None
    unlabeled: str | None = Field(None, description="extra image folder for distillation (any layout medkd reads; "
                                                    "label files are never opened)")
    unlabeled_left_out: bool = Field(False, description="distill on the training cases that train_fraction leaves "
                                                        "out, as images without labels")
    unlabeled_ratio: float = Field(1.0, gt=0.0, le=8.0,
                                   description="unlabelled images per labelled image in every batch")
    prepared: Literal["auto", "off"] = "auto"
    """2D: keep the prepared training slices in a fingerprinted cache and reuse them, and skip the data check of
    a dataset that passed it with every file unchanged (off: prepare and check every run)"""
    prepared_dir: str | None = None
    """folder of the prepared-sample cache (default: $MEDKD_CACHE/prepared, else ~/.cache/medkd/prepared)"""

    @field_validator("prepared", mode="before")
    @classmethod
    def _yaml_off(cls, value: Any) -> Any:
        # YAML 1.1 reads a bare off / on as a boolean
        return {False: "off", True: "auto"}.get(value, value) if isinstance(value, bool) else value

    @model_validator(mode="after")
    def _check_size(self) -> DataConfig:
        if len(self.size) != self.dim:
            raise ValueError(f"data.size has {len(self.size)} values but data.dim is {self.dim}")
        if self.neighbours and self.dim != 2:
            raise ValueError("data.neighbours (2.5D slices as channels) needs data.dim 2")
        if self.orientation is not None:
            codes = self.orientation.upper()
            axes = [{"L": 0, "R": 0, "A": 1, "P": 1, "S": 2, "I": 2}.get(c) for c in codes]
            if len(codes) != 3 or None in axes or sorted(axes) != [0, 1, 2]:
                raise ValueError(f"data.orientation {self.orientation!r}: expected 3 axis codes such as RAS or LPS")
        if self.spacing is not None and not 1 <= len(self.spacing) <= 3:
            raise ValueError(f"data.spacing needs 1 to 3 values, got {len(self.spacing)}")
        if self.center_crop is not None and len(self.center_crop) != 3:
            raise ValueError(f"data.center_crop needs 3 values (x, y, z; <= 0 keeps an axis), got {self.center_crop}")
        if self.clip_percentiles is not None:
            lo_hi = self.clip_percentiles
            if len(lo_hi) != 2 or not 0 <= lo_hi[0] < lo_hi[1] <= 100:
                raise ValueError(f"data.clip_percentiles needs [low, high] with 0 <= low < high <= 100, got {lo_hi}")
        return self


class ModelConfig(_Strict):
    """A network from the model zoo (``medkd models``) or ``monai.<Net>``."""

    name: str
    """a network of the zoo (medkd models) or monai.<Net>"""
    kwargs: dict[str, Any] = Field(default_factory=dict)
    """keyword arguments of the network"""


class OptimizerConfig(_Strict):
    """The optimiser of the network (and of the distillation extras)."""

    name: Literal["adam", "adamw", "sgd", "rmsprop"] = "adam"
    """optimiser"""
    lr: float = Field(1e-3, gt=0)
    """learning rate"""
    weight_decay: float = Field(0.0, ge=0)
    """weight decay"""
    momentum: float = Field(0.9, ge=0)
    """momentum (sgd, rmsprop)"""
    fused: bool = True
    """adam, adamw, sgd: one fused kernel per update (PyTorch ``fused=True``; on 2 CPU cores ENet's Adam step takes
    1.4 ms instead of 11.9 ms); false: PyTorch's default implementation"""


class SchedulerConfig(_Strict):
    """The learning-rate schedule."""

    name: Literal["none", "cosine", "poly", "cyclic", "plateau"] = "none"
    """learning-rate schedule (cosine and poly run over all steps)"""
    min_lr: float = Field(1e-6, ge=0)
    """lowest learning rate (cosine, cyclic)"""
    step_size: int = Field(2000, ge=1, description="half-cycle length in steps for 'cyclic'")
    patience: int = Field(50, ge=1, description="epochs without improvement for 'plateau'")
    factor: float = Field(0.2, gt=0, lt=1)
    """learning-rate factor on a plateau"""


class SegLossConfig(_Strict):
    """The supervised segmentation loss and its weight."""

    name: str = "dice_ce"
    """segmentation loss: dice_ce, focal_dice, dice, dice_bce (labelled images only)"""
    weight: float = Field(1.0, ge=0)
    """weight of the segmentation loss in the step's loss"""
    recon_weight: float = Field(0.2, ge=0, description="weight of MSE(reconstruction, input) for multi-task models")


class TrainConfig(_Strict):
    """How the network is trained: schedule, optimiser, loss, precision, validation."""

    epochs: int = Field(10, ge=1)
    """passes over the training samples"""
    batch_size: int = Field(16, ge=1)
    """labelled samples per step (per process)"""
    max_steps_per_epoch: int | None = Field(None, ge=1)
    """cap on the steps of an epoch"""
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    scheduler: SchedulerConfig = Field(default_factory=SchedulerConfig)
    seg_loss: SegLossConfig = Field(default_factory=SegLossConfig)
    amp: Literal["none", "bf16", "fp16"] = "none"
    """mixed precision (autocast): bf16 on GPUs and CPUs (a CPU with AMX runs bf16 convolutions on it), fp16 on
    GPUs"""
    channels_last: bool = Field(False, description="2D: NHWC memory format for the networks and batches (GPU)")
    compile: Literal["off", "default", "reduce-overhead", "max-autotune", "aot_eager"] = Field(
        "off", description="torch.compile the student and the live teacher: a mode of the inductor backend, or "
                           "aot_eager (tracing only, no code generation: for checking a model compiles)")
    val_every: int = Field(1, ge=1)
    """validate every N epochs (and after the last)"""
    grad_norm_every: int | None = Field(
        50, ge=1, description="every N steps, log the gradient norm of the segmentation loss and of each "
                              "distillation term on the student's parameters (distillation runs; null: never)")
    grad_clip: float | None = Field(None, gt=0)
    """clip the student's gradient norm to this value"""
    threads: int | None = Field(None, ge=1)
    """torch CPU threads"""
    progress: bool = True
    """show progress bars"""


class TeacherConfig(_Strict):
    """The frozen teacher: exactly one source (see README, "Distilling a model you already have").

    * ``run``: a finished medkd run folder;
    * ``model`` + ``checkpoint``: a zoo network and its safetensors weights;
    * ``nnunet``: a trained nnU-Net v2 model folder (``<trainer>__<plans>__<configuration>``), with ``fold`` and
      ``checkpoint`` (a file name inside ``fold_N``, default ``checkpoint_final.pth``); needs
      ``pip install medkd[nnunet]``;
    * ``bundle``: a MONAI bundle folder (``configs/inference.json``, ``models/model.pt``);
    * ``torchscript`` / ``onnx``: an exported network whose only tap is ``logits``.

    The teacher's input channels and classes are matched to the dataset's by name where the teacher declares
    names (nnU-Net ``dataset.json``, bundle ``metadata.json``); ``data.teacher_channels`` lists the dataset
    channels it reads and ``teacher_label_map`` maps its classes explicitly.
    """

    run: str | None = None
    """a finished medkd run folder"""
    model: ModelConfig | None = None
    checkpoint: str | None = None
    """safetensors weights of distill.teacher.model; with nnunet: the file in fold_N (default checkpoint_final.pth)"""
    nnunet: str | None = None
    """a trained nnU-Net v2 model folder, nnUNet_results/DatasetXXX_Name/<trainer>__<plans>__<configuration>"""
    fold: int | Literal["all"] | None = None
    """nnunet: the fold whose checkpoint is loaded (fold_N; default 0), or all"""
    configuration: str | None = None
    """nnunet: the plans configuration (default: the folder name's last part, e.g. 2d)"""
    bundle: str | None = None
    """a MONAI bundle folder (configs/inference.json, models/model.pt)"""
    torchscript: str | None = None
    """a TorchScript file (only tap: logits)"""
    onnx: str | None = None
    """an ONNX file run with onnxruntime (only tap: logits)"""
    teacher_label_map: dict[str, str] | None = None
    """teacher class (name, or output index) -> dataset class name (default: by name, else by position)"""

    @property
    def source(self) -> str:
        """The key of the teacher's source: run, model, nnunet, bundle, torchscript or onnx."""
        return next(k for k in TEACHER_SOURCES if getattr(self, k) is not None)

    @model_validator(mode="after")
    def _one_source(self) -> TeacherConfig:
        given = [k for k in TEACHER_SOURCES if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("distill.teacher needs exactly one of 'run' or 'model' (+ 'checkpoint') for a medkd "
                             "teacher, or of 'nnunet', 'bundle', 'torchscript', 'onnx' for one from elsewhere"
                             + (f" (got {', '.join(given)})" if given else ""))
        if self.model is not None and self.checkpoint is None:
            raise ValueError("distill.teacher.model needs distill.teacher.checkpoint")
        if self.checkpoint is not None and given[0] not in ("model", "nnunet"):
            raise ValueError(f"distill.teacher.checkpoint: only with model or nnunet, not {given[0]}")
        if (self.fold is not None or self.configuration is not None) and given[0] != "nnunet":
            raise ValueError("distill.teacher.fold / configuration: only with distill.teacher.nnunet")
        return self


#: The keys of :class:`TeacherConfig` that name a teacher's source (exactly one is given).
TEACHER_SOURCES: tuple[str, ...] = ("run", "model", "nnunet", "bundle", "torchscript", "onnx")


class PseudoLabelConfig(_Strict):
    """Pseudo-label term on images without labels (METHODS.md, "Distillation on images without labels"): the run's
    segmentation loss against ``argmax(t)``, counted only where the teacher's top probability >= ``threshold``."""

    weight: float = Field(1.0, ge=0)
    """weight of the pseudo-label term"""
    threshold: float = Field(0.9, ge=0.0, le=1.0)
    """teacher top-probability a pixel needs to count"""


class BalanceConfig(_Strict):
    """Automatic loss balancing (medkd's addition): every ``every`` steps each distillation term's gradient norm on
    the student's parameters is compared with the segmentation loss's; the term is scaled so that its norm is at
    most (``cap``) or exactly (``match``) ``target`` x the segmentation norm (scales smoothed by ``momentum``)."""

    target: float = Field(0.5, gt=0)
    """a term's gradient norm, as a multiple of the segmentation loss's"""
    mode: Literal["cap", "match"] = "cap"
    """cap: at most target; match: exactly target"""
    every: int = Field(10, ge=1)
    """re-measure the norms every N steps"""
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    """smoothing of the scales between measurements"""


class CutMixConfig(_Strict):
    """CutMix on images without labels (medkd's addition, after French et al., BMVC 2020, "Semi-supervised semantic
    segmentation needs strong, varied perturbations"): a box of another image without labels is pasted into an
    image, and the teacher's outputs, cached or live, are mixed with the same box, so the student matches the
    teacher on images it has never seen whole. Labelled images are never mixed."""

    prob: float = Field(0.5, gt=0.0, le=1.0)
    """chance that an image without labels gets a box pasted in"""
    area: float = Field(0.5, gt=0.0, lt=1.0)
    """the box's share of the image (its aspect ratio is drawn between 1:2 and 2:1)"""


class DistillConfig(_Strict):
    """Distillation terms added to the segmentation loss (see ``medkd losses``)."""

    teacher: TeacherConfig
    terms: list[dict[str, Any]] = Field(default_factory=list)
    """distillation terms: {loss, weight, tap, options...} (medkd losses lists them)"""
    pseudo_label: PseudoLabelConfig | None = None
    balance: BalanceConfig | None = None
    cutmix: CutMixConfig | None = None
    cache: bool = Field(False, description="compute the teacher's outputs once (float16, on disk) and reuse them")
    cache_dir: str | None = Field(None, description="cache folder (default: RUN/teacher_cache)")


class EvaluateConfig(_Strict):
    """How ``medkd evaluate`` scores a run; ``regions`` are extra label-value groups (e.g. BraTS WT/TC/ET).

    ``hd95`` picks the 95th-percentile Hausdorff distance: ``monai`` (default) is the larger of the two directed
    95th percentiles (``monai.metrics.compute_hausdorff_distance``); ``pooled`` is the 95th percentile of both
    directions' surface distances taken together (medpy's ``hd95``), which is never larger.
    """

    split: Literal["train", "val", "test"] = "test"
    """which part medkd evaluate scores by default"""
    hd95: Literal["monai", "pooled"] = Field(
        "monai", description="monai: max of the directed 95th percentiles; pooled: 95th percentile of the union of "
                             "both directions' surface distances (medpy)")
    regions: dict[str, list[int]] | None = None
    """extra label-value groups scored as one, e.g. BraTS WT: [1, 2, 3, 4]"""
    classes: bool = Field(True, description="report each declared foreground class")
    batch_size: int = Field(16, ge=1)
    """slices / windows per inference batch"""
    sw_overlap: float = Field(0.25, ge=0, lt=1)
    """3D sliding-window overlap"""


class RunConfig(_Strict):
    """A whole run: data, network, training, optional distillation, evaluation."""

    name: str = "run"
    """run name (default run folder runs/<name>)"""
    seed: int = 0
    """seed of everything random in the run"""
    data: DataConfig
    model: ModelConfig
    train: TrainConfig = Field(default_factory=TrainConfig)
    distill: DistillConfig | None = None
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)

    @model_validator(mode="after")
    def _check_unlabeled(self) -> RunConfig:
        uses_unlabeled = self.data.unlabeled is not None or self.data.unlabeled_left_out
        if uses_unlabeled and self.distill is None:
            raise ValueError("data.unlabeled / data.unlabeled_left_out need a distill: section (a teacher)")
        if uses_unlabeled and self.data.dim != 2:
            raise ValueError("data.unlabeled / data.unlabeled_left_out: 2D runs only (data.dim 2)")
        if self.data.unlabeled_left_out and self.data.train_fraction >= 1.0:
            raise ValueError("data.unlabeled_left_out: data.train_fraction is 1, so no training case is left out")
        if self.distill is not None and self.distill.pseudo_label is not None and not uses_unlabeled:
            raise ValueError("distill.pseudo_label needs images without labels (data.unlabeled or "
                             "data.unlabeled_left_out)")
        if self.distill is not None and self.distill.cutmix is not None and not uses_unlabeled:
            raise ValueError("distill.cutmix mixes images without labels: set data.unlabeled or "
                             "data.unlabeled_left_out")
        return self


def _model_fields(model: type[BaseModel]) -> dict[str, Any]:
    return dict(model.model_fields)


def _submodel(annotation: Any) -> type[BaseModel] | None:
    """Return the pydantic model inside an annotation like ``X | None``, if any."""
    candidates = [annotation, *getattr(annotation, "__args__", ())]
    for cand in candidates:
        if isinstance(cand, type) and issubclass(cand, BaseModel):
            return cand
    return None


class _UnknownKey(ConfigError):
    """An unknown config key (``key`` is its dotted name, for naming the ``--set`` item that brought it)."""

    def __init__(self, message: str, key: str):
        super().__init__(message)
        self.key = key


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
            raise _UnknownKey(f"unknown config key '{dotted}'{hint}", dotted)
        sub = _submodel(fields[key].annotation)
        if sub is not None:
            _check_unknown_keys(value, sub, prefix=f"{dotted}.")


def _parse_scalar(text: str, item: str) -> Any:
    if text == "":
        return ""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        raise ConfigError(f"--set {item}: the value is not valid YAML (quote it, e.g. key='[a, b]')") from None


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``base`` with ``over`` merged in (mappings merged key by key, anything else replaced)."""
    out = copy.deepcopy(base)
    for key, value in (over or {}).items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def apply_overrides(data: dict[str, Any], overrides: list[str] | None) -> dict[str, Any]:
    """Apply ``key.sub=value`` overrides (values parsed as YAML) to a config dict, returning a copy."""
    data = copy.deepcopy(data)
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key=value, e.g. train.epochs=5")
        key, value = item.split("=", 1)
        if not key.strip():
            raise ConfigError(f"--set {item!r}: expected key=value, e.g. train.epochs=5")
        parts = key.strip().split(".")
        node = data
        for part in parts[:-1]:
            nxt = node.get(part)
            if nxt is None:
                nxt = node[part] = {}
            if not isinstance(nxt, dict):
                raise ConfigError(f"--set {key}: '{part}' is not a section")
            node = nxt
        node[parts[-1]] = _parse_scalar(value, item)
    return data


def _source_of(key: str, source: str, overrides: list[str] | None) -> str:
    """What to blame for a problem at dotted config ``key``: the ``--set`` item that set it, else ``source``.

    An override of ``key`` itself or of a section holding it is blamed alone; an override inside the section
    ``key`` names (a check across that section's keys) is named with the file.
    """
    inside = []
    for item in reversed(overrides or []):
        set_key = item.split("=", 1)[0].strip()
        if key == set_key or key.startswith(set_key + "."):
            return f"--set {item}"
        if key and set_key.startswith(key + "."):
            inside.append(item)
    if inside:
        return f"{source} with " + ", ".join(f"--set {item}" for item in reversed(inside))
    return source


def _format_validation_error(err: ValidationError, source: str, overrides: list[str] | None = None) -> str:
    first = err.errors()[0]
    loc = ".".join(str(p) for p in first["loc"])
    msg = first["msg"]
    if first["type"] == "missing":
        msg = "required key is missing"
    return f"{_source_of(loc, source, overrides)}: config key '{loc or '<root>'}': {msg}"


def parse_config(data: dict[str, Any], source: str = "config", overrides: list[str] | None = None) -> RunConfig:
    """Validate a config dict into a :class:`RunConfig` (one-line ConfigError on failure).

    Args:
        data: the config as plain data.
        source: what the data came from (a file name), named in errors.
        overrides: the ``--set key=value`` items already applied to ``data``; an error at a key one of them
            set names that item instead of ``source``.
    """
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level")
    try:
        _check_unknown_keys(data, RunConfig)
    except _UnknownKey as exc:
        raise ConfigError(f"{_source_of(exc.key, source, overrides)}: {exc}") from None
    try:
        return RunConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_validation_error(err, source, overrides)) from None


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
    return parse_config(apply_overrides(data, overrides), source=str(path), overrides=overrides)


def save_config(cfg: RunConfig, path: str | Path) -> None:
    """Write the resolved config as YAML (atomically)."""
    text = yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
    atomic_write_text(Path(path), text)
