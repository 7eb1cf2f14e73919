"""Setting up a training run: the parts the epoch loop needs, built in the order a seeded run depends on.

:func:`build_parts` reads like the run's diagram: check the config (before any data is read or anything is
written) -> load and check the data -> build the student, load the frozen teacher -> open the run folder ->
training samples and validation cases -> losses, with the distillation extras sized by one probe forward ->
teacher cache -> optimisers -> restore a resumed run -> wire the step (taps, DDP, ``torch.compile``).
The global random stream is consumed in this order, so a fixed seed gives the same run.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import torch._functorch.config as functorch_config
from tqdm.auto import tqdm

from medkd.config import RunConfig
from medkd.data.check import ensure_usable
from medkd.data.loader import (
    DataBundle,
    ImageSliceSource,
    PatchSource,
    SliceSource,
    build_bundle,
    build_train_source,
    build_unlabeled_source,
)
from medkd.data.pipeline import PreparedCase
from medkd.data.prepared import cache_root
from medkd.data.prepared_cases import prepared_cases
from medkd.distill.cache import TeacherCache, check_cacheable
from medkd.distill.objective import DistillObjective
from medkd.distill.segmentation import create_seg_loss
from medkd.errors import MedkdError
from medkd.models import FeatureTapper
from medkd.run import RunFolder, build_network
from medkd.teachers import TeacherInputs, load_teacher
from medkd.train.balance import TermBalancer
from medkd.train.checks import check_before_data, check_taps
from medkd.train.optim import Optimisers, build_optimisers
from medkd.train.resume import LoopState, read_resume_state, restore_training
from medkd.train.step import StepContext, StepSettings, compiled

__all__ = ["Networks", "TrainData", "TrainingParts", "build_parts", "load_teacher_network"]


@dataclass
class TrainData:
    """The run's data: its bundle, training samples, images without labels and whole validation cases.

    ``stu_pos`` / ``tea_pos``: the channels of a sample the student / the teacher reads (``tea_pos`` None without
    a teacher; the teacher's own copy of its channels when it has its own normalisation).
    """

    bundle: DataBundle
    source: SliceSource | PatchSource
    unlabeled: ImageSliceSource | None
    n_unlabeled: int
    val_cases: list[PreparedCase]
    stu_pos: list[int]
    tea_pos: list[int] | None


@dataclass
class Networks:
    """The student, the frozen teacher (None without distillation), the losses and the taps each network gives."""

    student: torch.nn.Module
    teacher: torch.nn.Module | None
    s_taps: list[str]
    t_taps: list[str]
    objective: DistillObjective | None = None


@dataclass
class TrainingParts:
    """Everything the epoch loop uses; ``ctx`` is what each step uses, ``progress`` where the loop stands."""

    cfg: RunConfig
    folder: RunFolder
    dev: torch.device
    rank: int
    world_size: int
    data: TrainData
    nets: Networks
    cache: TeacherCache | None
    memory_format: torch.memory_format | None
    opts: Optimisers
    ctx: StepContext
    progress: LoopState

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes the run folder."""
        return self.rank == 0


def build_parts(cfg: RunConfig, run_dir: Path, resume: bool = False, device: str | None = None,
                rank: int = 0, world_size: int = 1) -> TrainingParts:
    """Check, load and build everything a run of ``cfg`` into ``run_dir`` needs (see the module docstring).

    Raises:
        MedkdError: the folder already holds a run (and ``resume`` is off), or a check fails (ConfigError).
    """
    dev = _init_runtime(cfg, device)
    folder, is_main = RunFolder(run_dir), rank == 0
    # Everything a user can get wrong is checked before the data is loaded and before the folder is written.
    s_taps, t_taps = check_before_data(cfg, world_size)
    state = read_resume_state(cfg, folder) if resume else None
    if not resume and folder.has_started():
        raise MedkdError(f"{run_dir}: run folder already holds a run; use --resume or another --out")
    bundle = _load_bundle(cfg, folder, state is not None, is_main)
    student = build_network(cfg.model, bundle.in_channels, bundle.num_classes, cfg.data.dim).to(dev)
    teacher = load_teacher_network(cfg, bundle, dev)
    nets = Networks(student, teacher, *check_taps(student, teacher, s_taps, t_taps))
    _open_folder(cfg, folder, bundle, resume, state is not None, world_size, is_main)
    data = _load_training_data(cfg, bundle, is_main)
    seg_loss = create_seg_loss(cfg.train.seg_loss.name, bundle.num_classes)
    nets.objective = objective = _sized_objective(cfg, nets, data, dev)
    cache = _build_teacher_cache(cfg, folder, data, nets, dev, rank, world_size) \
        if objective is not None and cfg.distill.cache else None
    memory_format = _apply_memory_format(cfg, nets)
    descent = list(student.parameters()) + (list(objective.descent_parameters()) if objective else [])
    ascent = list(objective.ascent_parameters()) if objective else []
    opts = build_optimisers(cfg, descent, ascent, len(data.source), world_size)
    balancer = TermBalancer(cfg.distill.balance, objective.names) \
        if objective is not None and cfg.distill.balance is not None else None
    progress = restore_training(state, folder, student, objective, opts, balancer, is_main) \
        if state is not None else LoopState()
    ctx = _step_context(cfg, nets, seg_loss, cache is None, opts, balancer, dev, world_size)
    return TrainingParts(cfg, folder, dev, rank, world_size, data, nets, cache, memory_format, opts, ctx, progress)


def _init_runtime(cfg: RunConfig, device: str | None) -> torch.device:
    """The run's device (default CUDA when available), threads, seed and (on CPU) deterministic kernels."""
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    torch.manual_seed(cfg.seed)
    if dev.type == "cpu":
        torch.use_deterministic_algorithms(True, warn_only=True)
        # CPU kernels flagged by torch (e.g. max_unpool) are deterministic in practice on CPU
        warnings.filterwarnings("ignore", message=".*does not have a deterministic implementation.*")
    return dev


def _load_bundle(cfg: RunConfig, folder: RunFolder, resuming: bool, is_main: bool) -> DataBundle:
    """The run's data bundle, after the data check (and, when resuming, the check that the split is the same)."""
    bundle = build_bundle(cfg)
    left_out = bundle.meta.get("unlabeled", {}).get("left_out", [])  # their label files are never opened
    memo = cache_root(cfg.data) / ".checks" if cfg.data.prepared != "off" else None  # passed checks, by file stats
    ensure_usable(cfg.data.root, cfg.data.format, cfg.data.label_map, images_only=set(left_out),
                  progress=cfg.train.progress and is_main, memo=memo)
    if resuming:
        folder.check_resume_split(bundle)
    return bundle


def load_teacher_network(cfg: RunConfig, bundle: DataBundle, dev: torch.device) -> torch.nn.Module | None:
    """The frozen teacher of ``distill.teacher`` on ``dev``; None for a run without distillation.

    A teacher with its own normalisation (``input_normalization``, e.g. nnU-Net's) hands it to the data:
    ``bundle.teacher_normalization`` is set, so the training samples hold the teacher's own copy of its channels.
    """
    if cfg.distill is None:
        return None
    inputs = TeacherInputs.of_run(cfg, bundle)
    teacher = load_teacher(cfg.distill.teacher, inputs.in_channels, inputs.num_classes, inputs.dim, inputs,
                           size=cfg.data.size).to(dev)
    bundle.teacher_normalization = getattr(teacher, "input_normalization", None)
    return teacher


def _open_folder(cfg: RunConfig, folder: RunFolder, bundle: DataBundle, resume: bool, resuming: bool,
                 world_size: int, is_main: bool) -> None:
    """Write the run folder (rank 0), once every rank has checked it.

    ``resume``: asked to resume; ``resuming``: there is a complete epoch to resume from.
    """
    if world_size > 1:
        torch.distributed.barrier()  # every rank has checked the folder before rank 0 writes to it
    if not is_main:
        return
    if resume and not resuming and folder.has_started():
        folder.reset_logs()  # nothing complete yet: start over in the same folder
    folder.prepare(cfg, bundle, is_main, resume=resuming)
    _announce_validation(cfg, bundle)


def _announce_validation(cfg: RunConfig, bundle: DataBundle) -> None:
    """One line when the validation part was carved from a split file's train list, or when there is none."""
    carve = bundle.meta.get("val_carve")
    if bundle.meta.get("val_carved_from_train") and carve:
        tqdm.write(f"note: {cfg.name}: {cfg.data.split.file} has no 'val' list; validating on "
                   f"{len(bundle.split['val'])} case(s) carved from its train list (data.split.val "
                   f"{carve['fraction']} of the case groups, seed {carve['seed']}; recorded in split.json)")
    elif not bundle.split["val"]:
        tqdm.write(f"note: {cfg.name}: no validation cases, so the last epoch's weights are kept as 'best'")


def _load_training_data(cfg: RunConfig, bundle: DataBundle, is_main: bool) -> TrainData:
    """Training samples, images without labels (``data.unlabeled``) and the whole validation cases."""
    source = build_train_source(cfg, bundle)
    unlabeled = build_unlabeled_source(cfg, bundle)
    n_unlabeled = max(1, round(cfg.data.unlabeled_ratio * cfg.train.batch_size)) if unlabeled is not None else 0
    progress = "loading validation cases" if cfg.train.progress and is_main else None
    val_cases = prepared_cases(cfg.data, bundle.index, bundle.split["val"], bundle.channels, progress)[0] \
        if bundle.split["val"] else []
    tea_pos = bundle.teacher_positions() if bundle.teacher_channels else None
    return TrainData(bundle, source, unlabeled, n_unlabeled, val_cases, bundle.positions(bundle.channels), tea_pos)


def _sized_objective(cfg: RunConfig, nets: Networks, data: TrainData, dev: torch.device) -> DistillObjective | None:
    """The distillation objective of ``distill.terms``, its adapters sized by one probe forward of both networks
    (before the optimiser exists); None without distillation."""
    if cfg.distill is None:
        return None
    objective = DistillObjective.from_config(cfg.distill.terms).to(dev)
    gen = torch.Generator().manual_seed(cfg.seed)
    probe_images, _ = data.source.samples(torch.arange(min(2, len(data.source))), gen)
    student, teacher = nets.student, nets.teacher
    with torch.no_grad(), FeatureTapper(student, nets.s_taps) as ts, FeatureTapper(teacher, nets.t_taps) as tt:
        student.eval()
        student(probe_images[:, data.stu_pos].to(dev))
        teacher(probe_images[:, data.tea_pos].to(dev))
        objective.setup(dict(ts.features), dict(tt.features))
    return objective.to(dev)


def _build_teacher_cache(cfg: RunConfig, folder: RunFolder, data: TrainData, nets: Networks, dev: torch.device,
                         rank: int, world_size: int) -> TeacherCache:
    """The teacher's taps over every distinct training input (``distill.cache``), built by rank 0, held on ``dev``.

    Unlabelled images follow the labelled ones: their keys are offset by ``source.num_distinct``.
    """
    check_cacheable(cfg.data.augment, data.source.deterministic)
    inputs, _ = data.source.samples(torch.arange(data.source.num_distinct), torch.Generator().manual_seed(0))
    if data.unlabeled is not None:
        inputs = torch.cat([inputs, data.unlabeled.images])
    cache_dir = Path(cfg.distill.cache_dir) if cfg.distill.cache_dir else folder.path / "teacher_cache"
    if world_size > 1 and rank != 0:
        torch.distributed.barrier()  # rank 0 builds the cache, the others then read it
    cache = TeacherCache.build(cache_dir, nets.teacher, inputs[:, data.tea_pos], nets.t_taps, cfg.evaluate.batch_size,
                               dev, log=tqdm.write if rank == 0 else (lambda _: None))
    cache.hold(dev)
    if world_size > 1 and rank == 0:
        torch.distributed.barrier()
    return cache


def _apply_memory_format(cfg: RunConfig, nets: Networks) -> torch.memory_format | None:
    """Channels-last networks for 2D runs with ``train.channels_last`` (the format batches then take too)."""
    if not (cfg.train.channels_last and cfg.data.dim == 2):
        return None
    nets.student.to(memory_format=torch.channels_last)
    if nets.teacher is not None:
        nets.teacher.to(memory_format=torch.channels_last)
    return torch.channels_last


def _step_context(cfg: RunConfig, nets: Networks, seg_loss: torch.nn.Module, live_teacher: bool, opts: Optimisers,
                  balancer: TermBalancer | None, dev: torch.device, world_size: int) -> StepContext:
    """Wire the step: taps, DDP, ``torch.compile``.

    The taps keep their hooks for the whole run (the networks die with it), registered before ``torch.compile``,
    which traces them. ``live_teacher``: the teacher runs every step (no cache).
    """
    student, objective = nets.student, nets.objective
    scaler = torch.amp.GradScaler(dev.type) if cfg.train.amp == "fp16" and dev.type == "cuda" else None
    ddp_student = student
    if world_size > 1:
        ddp_student = torch.nn.parallel.DistributedDataParallel(student, find_unused_parameters=True)
    s_tapper = FeatureTapper(student, nets.s_taps) if nets.s_taps else None
    t_tapper = FeatureTapper(nets.teacher, nets.t_taps) \
        if nets.teacher is not None and objective is not None and live_teacher else None
    if cfg.train.compile != "off" and objective is not None and hasattr(functorch_config, "donated_buffer"):
        # the per-term gradient norms (grad_norm_every, balance) differentiate one graph several times
        # (retain_graph), which compiled backwards that donate their buffers refuse
        functorch_config.donated_buffer = False
    return StepContext(
        settings=StepSettings.from_config(cfg), model=compiled(ddp_student, cfg.train.compile), student=student,
        teacher=compiled(nets.teacher, cfg.train.compile) if t_tapper is not None else None,
        objective=objective, seg_loss=seg_loss, s_tapper=s_tapper, t_tapper=t_tapper, optimizer=opts.optimizer,
        ascent_opt=opts.ascent_opt, dev=dev, world_size=world_size, scaler=scaler, balancer=balancer)
