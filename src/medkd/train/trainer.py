"""One training loop for teachers, students alone, and students distilled from a frozen teacher.

The loss of a step is ``seg_loss.weight * L_seg`` (+ ``recon_weight * MSE(recon, x)`` for multi-task
networks) + the weighted distillation terms of ``distill.terms``. The teacher is frozen (eval mode,
``requires_grad=False``, never in the optimiser). Distillation extras (adapters, projection heads) are
trained with the student by descent; adaptive affinity weights by ascent (a second optimiser with
``maximize=True``). Seeded and deterministic on CPU; a killed run resumes from its last complete epoch
and ends with the same weights as an uninterrupted one. Feature taps hold their hooks for the whole run, so
``train.compile`` can hand the student and the live teacher to ``torch.compile`` with their taps.
"""

from __future__ import annotations

import json
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from tqdm.auto import tqdm

from medkd.config import RunConfig
from medkd.data.augment import apply_ops, augment_batch
from medkd.data.check import ensure_usable
from medkd.data.loader import build_bundle, build_train_source, build_unlabeled_source, iter_indexed_batches
from medkd.data.pipeline import prepare_cases
from medkd.data.prepared import cache_root
from medkd.errors import ConfigError, MedkdError
from medkd.io import atomic_write_json
from medkd.train.balance import TermBalancer, gradient_norms
from medkd.train.checkpoint import load_checkpoint, save_best, save_checkpoint
from medkd.train.run_folder import (
    RunFolder,
    build_network,
    check_resume_config,
    check_teacher_source,
    load_teacher,
)
from medkd.train.validation import validate

if TYPE_CHECKING:
    from medkd.distill.objective import DistillObjective
    from medkd.models import FeatureTapper

__all__ = ["TrainResult", "check_before_data", "check_distill_terms", "train"]


@dataclass
class TrainResult:
    run_dir: Path
    epochs: int
    best_epoch: int | None
    best_val_dice: float | None
    final_loss: float


def _make_optimizer(cfg: RunConfig, params: list[torch.nn.Parameter], maximize: bool = False) -> torch.optim.Optimizer:
    o = cfg.train.optimizer
    if o.name == "adam":
        return torch.optim.Adam(params, lr=o.lr, weight_decay=o.weight_decay, maximize=maximize)
    if o.name == "adamw":
        return torch.optim.AdamW(params, lr=o.lr, weight_decay=o.weight_decay, maximize=maximize)
    if o.name == "sgd":
        return torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay, maximize=maximize)
    return torch.optim.RMSprop(params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay, maximize=maximize)


def _make_scheduler(cfg: RunConfig, opt: torch.optim.Optimizer, total_steps: int) -> Any:
    s = cfg.train.scheduler
    if s.name == "none":
        return None
    if s.name == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, total_steps), eta_min=s.min_lr)
    if s.name == "poly":
        return torch.optim.lr_scheduler.PolynomialLR(opt, total_iters=max(1, total_steps), power=0.9)
    if s.name == "cyclic":
        return torch.optim.lr_scheduler.CyclicLR(opt, base_lr=s.min_lr, max_lr=cfg.train.optimizer.lr,
                                                 step_size_up=s.step_size, cycle_momentum=False)
    return torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="max", factor=s.factor, patience=s.patience)


def _autocast(cfg: RunConfig, device: torch.device):
    if cfg.train.amp == "none":
        return torch.autocast(device.type, enabled=False)
    dtype = torch.bfloat16 if cfg.train.amp == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


def train(cfg: RunConfig, run_dir: Path, resume: bool = False, device: str | None = None,
          rank: int = 0, world_size: int = 1) -> TrainResult:
    """Train the network of ``cfg`` into ``run_dir`` (see the module docstring).

    Args:
        cfg: validated run config.
        run_dir: the run folder (created; must be empty or a resumable run of the same config).
        resume: continue from ``checkpoints/last.json``.
        device: torch device string; default CUDA when available, else CPU.
        rank: process rank under torchrun (0 alone).
        world_size: number of processes.
    """
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    folder = RunFolder(run_dir)
    is_main = rank == 0
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    torch.manual_seed(cfg.seed)
    if dev.type == "cpu":
        torch.use_deterministic_algorithms(True, warn_only=True)
        # CPU kernels flagged by torch (e.g. max_unpool) are deterministic in practice on CPU
        warnings.filterwarnings("ignore", message=".*does not have a deterministic implementation.*")

    # Everything a user can get wrong is checked before the data is loaded and before the folder is written.
    s_taps, t_taps = check_before_data(cfg, world_size)
    state = _resume_state(cfg, folder) if resume else None
    if not resume and folder.has_started():
        raise MedkdError(f"{run_dir}: run folder already holds a run; use --resume or another --out")

    bundle = build_bundle(cfg)
    left_out = bundle.meta.get("unlabeled", {}).get("left_out", [])  # their label files are never opened
    memo = cache_root(cfg.data) / ".checks" if cfg.data.prepared != "off" else None  # passed checks, by file stats
    ensure_usable(cfg.data.root, cfg.data.format, cfg.data.label_map, images_only=set(left_out),
                  progress=cfg.train.progress and is_main, memo=memo)
    if state is not None:
        folder.check_resume_split(bundle)

    student = build_network(cfg.model, bundle.in_channels, bundle.num_classes, cfg.data.dim).to(dev)
    teacher = None
    if cfg.distill is not None:
        teacher = load_teacher(cfg.distill.teacher, bundle.teacher_in_channels or 0, bundle.num_classes,
                               cfg.data.dim).to(dev)
    s_taps, t_taps = _check_taps(student, teacher, s_taps, t_taps)

    if world_size > 1:
        torch.distributed.barrier()  # every rank has checked the folder before rank 0 writes to it
    if is_main:
        if resume and state is None and folder.has_started():
            folder.reset_logs()  # nothing complete yet: start over in the same folder
        folder.prepare(cfg, bundle, is_main, resume=state is not None)
        _announce_validation(cfg, bundle)

    source = build_train_source(cfg, bundle)
    unlabeled = build_unlabeled_source(cfg, bundle)
    n_unlabeled = max(1, round(cfg.data.unlabeled_ratio * cfg.train.batch_size)) if unlabeled is not None else 0
    val_cases = prepare_cases(bundle.index, bundle.split["val"], bundle.channels, cfg.data,
                              progress="loading validation cases" if cfg.train.progress and is_main else None) \
        if bundle.split["val"] else []
    stu_pos = bundle.positions(bundle.channels)
    tea_pos = bundle.positions(bundle.teacher_channels) if bundle.teacher_channels else None

    from medkd.distill.segmentation import create_seg_loss
    from medkd.models import FeatureTapper

    seg_loss = create_seg_loss(cfg.train.seg_loss.name, bundle.num_classes)
    objective = None
    if cfg.distill is not None:
        from medkd.distill.objective import DistillObjective

        objective = DistillObjective.from_config(cfg.distill.terms).to(dev)

    gen = torch.Generator().manual_seed(cfg.seed)
    # one dummy forward sizes the distillation adapters before the optimiser exists
    probe_images, _ = source.samples(torch.arange(min(2, len(source))), gen)
    if objective is not None:
        with torch.no_grad(), FeatureTapper(student, s_taps) as ts, FeatureTapper(teacher, t_taps) as tt:
            student.eval()
            student(probe_images[:, stu_pos].to(dev))
            teacher(probe_images[:, tea_pos].to(dev))
            objective.setup(dict(ts.features), dict(tt.features))
        objective.to(dev)

    cache = None
    if objective is not None and cfg.distill.cache:
        from medkd.distill.cache import TeacherCache, check_cacheable

        check_cacheable(cfg.data.augment, source.deterministic)
        keys = torch.arange(source.num_distinct)
        inputs, _ = source.samples(keys, torch.Generator().manual_seed(0))
        if unlabeled is not None:  # unlabelled images follow the labelled ones: keys offset by num_distinct
            inputs = torch.cat([inputs, unlabeled.images])
        cache_dir = Path(cfg.distill.cache_dir) if cfg.distill.cache_dir else folder.path / "teacher_cache"
        if world_size > 1 and not is_main:
            torch.distributed.barrier()  # rank 0 builds the cache, the others then read it
        cache = TeacherCache.build(cache_dir, teacher, inputs[:, tea_pos], t_taps, cfg.evaluate.batch_size, dev,
                                   log=tqdm.write if is_main else (lambda _: None))
        cache.hold(dev)
        if world_size > 1 and is_main:
            torch.distributed.barrier()

    memory_format = torch.channels_last if cfg.train.channels_last and cfg.data.dim == 2 else None
    if memory_format is not None:
        student.to(memory_format=memory_format)
        if teacher is not None:
            teacher.to(memory_format=memory_format)

    descent = list(student.parameters()) + (list(objective.descent_parameters()) if objective else [])
    ascent = list(objective.ascent_parameters()) if objective else []
    optimizer = _make_optimizer(cfg, descent)
    ascent_opt = _make_optimizer(cfg, ascent, maximize=True) if ascent else None
    per_epoch = len(source) // (cfg.train.batch_size * world_size)
    if cfg.train.max_steps_per_epoch:
        per_epoch = min(per_epoch, cfg.train.max_steps_per_epoch)
    if per_epoch < 1:
        raise ConfigError(f"train.batch_size {cfg.train.batch_size}: larger than the {len(source)} training samples")
    scheduler = _make_scheduler(cfg, optimizer, per_epoch * cfg.train.epochs)

    start_epoch, step, best = 0, 0, {"epoch": None, "val_dice": -math.inf}
    if state is not None:
        model_state, extras_state, tstate = state
        try:
            student.load_state_dict(model_state)
            if objective is not None:
                objective.load_state_dict(extras_state)
        except RuntimeError as exc:  # a config check missed a change: still one line, nothing written
            detail = str(exc).strip().splitlines()[-1].strip()
            raise MedkdError(f"{folder.checkpoints}: the checkpoint does not fit this config ({detail}); "
                             "train into a new --out folder") from None
        optimizer.load_state_dict(tstate["optimizer"])
        if ascent_opt is not None:
            ascent_opt.load_state_dict(tstate["ascent_optimizer"])
        if scheduler is not None and tstate.get("scheduler") is not None:
            scheduler.load_state_dict(tstate["scheduler"])
        torch.set_rng_state(tstate["torch_rng"])
        start_epoch, step, best = tstate["epoch"], tstate["step"], tstate["best"]
        if is_main:
            folder.truncate_metrics(start_epoch)
            # more epochs for a finished run: its summary is no longer true until the run ends again
            (folder.path / "train_summary.json").unlink(missing_ok=True)

    balancer = TermBalancer(cfg.distill.balance, objective.names) \
        if objective is not None and cfg.distill.balance is not None else None
    if state is not None and balancer is not None and tstate.get("balance") is not None:
        balancer.load_state_dict(tstate["balance"])
    scaler = torch.amp.GradScaler(dev.type) if cfg.train.amp == "fp16" and dev.type == "cuda" else None
    ddp_student = student
    if world_size > 1:
        ddp_student = torch.nn.parallel.DistributedDataParallel(student, find_unused_parameters=True)

    final_loss = float("nan")
    t_start = time.time()
    # The taps keep their hooks for the whole run (the networks die with it), registered before torch.compile,
    # which traces them.
    s_tapper = FeatureTapper(student, s_taps) if s_taps else None
    t_tapper = FeatureTapper(teacher, t_taps) if teacher is not None and objective is not None and cache is None \
        else None
    if cfg.train.compile != "off" and objective is not None:
        # the per-term gradient norms (grad_norm_every, balance) differentiate one graph several times
        # (retain_graph), which compiled backwards that donate their buffers refuse
        import torch._functorch.config as functorch_config

        if hasattr(functorch_config, "donated_buffer"):
            functorch_config.donated_buffer = False
    ctx = StepContext(
        cfg=cfg, model=_compiled(ddp_student, cfg.train.compile), student=student,
        teacher=_compiled(teacher, cfg.train.compile) if t_tapper is not None else None,
        objective=objective, seg_loss=seg_loss, s_tapper=s_tapper, t_tapper=t_tapper, optimizer=optimizer,
        ascent_opt=ascent_opt, dev=dev, world_size=world_size, scaler=scaler, balancer=balancer)
    for epoch in range(start_epoch, cfg.train.epochs):
        student.train()
        if objective is not None:
            objective.train()
        epoch_gen = torch.Generator().manual_seed(cfg.seed * 100003 + epoch)
        bar = tqdm(total=per_epoch, desc=f"{cfg.name} epoch {epoch + 1}/{cfg.train.epochs}", leave=False,
                   disable=not (cfg.train.progress and is_main), dynamic_ncols=True)
        totals: dict[str, float] = {}
        counts: dict[str, int] = {}
        batches = iter_indexed_batches(source, cfg.train.batch_size, epoch_gen, rank, world_size, per_epoch)
        for indices, images, labels in batches:
            keys = source.cache_keys(indices)
            if unlabeled is not None:
                extra = torch.randint(len(unlabeled), (n_unlabeled,), generator=epoch_gen)
                images = torch.cat([images, unlabeled.images[extra]])
                labels = torch.cat([labels, unlabeled.labels[extra]])
                keys = torch.cat([keys, extra + source.num_distinct])
            batch = {"image": images[:, stu_pos], "label": labels}
            if tea_pos is not None and cache is None:
                batch["teacher_image"] = images[:, tea_pos]
            # augmentation runs where the batch lives (on a GPU: no per-sample CPU copies)
            batch = augment_batch({k: _to_device(v, dev, None) for k, v in batch.items()}, cfg.data.augment,
                                  epoch_gen)
            cached = None
            if cache is not None:
                cached = {k: apply_ops(v.to(dev, non_blocking=True), batch["augment_ops"])
                          for k, v in cache.get(keys).items()}
            batch = {k: _to_device(v, dev, memory_format) for k, v in batch.items() if k != "augment_ops"}
            measure = bool(objective is not None and world_size == 1 and (
                (cfg.train.grad_norm_every and step % cfg.train.grad_norm_every == 0)
                or (balancer is not None and balancer.due(step))))
            logs = _step(ctx, batch, len(indices), cached, measure)
            if scheduler is not None and not isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                scheduler.step()
            step += 1
            logs["lr"] = optimizer.param_groups[0]["lr"]
            for k, v in logs.items():
                totals[k] = totals.get(k, 0.0) + v
                counts[k] = counts.get(k, 0) + 1
            if is_main:
                folder.log({"kind": "step", "epoch": epoch + 1, "step": step, **logs})
            bar.set_postfix(loss=f"{logs['loss']:.4f}")
            bar.update(1)
        bar.close()
        means = {k: v / counts[k] for k, v in totals.items()}
        final_loss = means.get("loss", float("nan"))
        if not math.isfinite(final_loss):
            raise MedkdError(f"{cfg.name}: training loss became {final_loss} in epoch {epoch + 1}; "
                             "lower train.optimizer.lr or check the data")
        record: dict[str, Any] = {"kind": "epoch", "epoch": epoch + 1, "step": step,
                                  **{f"train_{k}": v for k, v in means.items()},
                                  "elapsed_s": round(time.time() - t_start, 2)}
        do_val = val_cases and ((epoch + 1) % cfg.train.val_every == 0 or epoch + 1 == cfg.train.epochs)
        if do_val:
            val = validate(student, val_cases, cfg, bundle.num_classes, dev)
            record["val_dice"] = val
            if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                scheduler.step(val)
            if best["epoch"] is None or (math.isfinite(val) and val > best["val_dice"]):
                best = {"epoch": epoch + 1, "val_dice": val}
                if is_main:
                    save_best(folder.checkpoints, student.state_dict(), best)
        elif not val_cases and is_main:
            best = {"epoch": epoch + 1, "val_dice": None}
            save_best(folder.checkpoints, student.state_dict(), best)
        if is_main:
            folder.log(record)
            trainer_state = {
                "epoch": epoch + 1, "step": step, "best": best,
                "optimizer": optimizer.state_dict(),
                "ascent_optimizer": ascent_opt.state_dict() if ascent_opt else None,
                "scheduler": scheduler.state_dict() if scheduler is not None else None,
                "balance": balancer.state_dict() if balancer is not None else None,
                "torch_rng": torch.get_rng_state(),
            }
            save_checkpoint(folder.checkpoints, epoch + 1, student.state_dict(),
                            objective.state_dict() if objective is not None else {}, trainer_state)
            if cfg.train.progress:
                val_txt = f" val Dice {record['val_dice']:.4f}" if "val_dice" in record else ""
                tqdm.write(f"{cfg.name} epoch {epoch + 1}/{cfg.train.epochs}: loss {final_loss:.4f}{val_txt}")
    if is_main:  # the whole validation history, resumed runs included, is in metrics.jsonl
        collapse = validation_collapse(best.get("val_dice"), _read_val_history(folder))
        if collapse:
            tqdm.write(f"warning: {cfg.name}: {collapse}")
        atomic_write_json(folder.path / "train_summary.json", {
            "epochs": cfg.train.epochs, "steps": step, "best": best, "final_train_loss": final_loss,
            "train_seconds": round(time.time() - t_start, 2), "device": str(dev), "world_size": world_size,
            "val_collapse": collapse,
        })
    best_val = best.get("val_dice")
    return TrainResult(folder.path, cfg.train.epochs, best.get("epoch"),
                       None if best_val is None or not math.isfinite(best_val) else float(best_val), final_loss)


def check_distill_terms(terms: list[dict[str, Any]], without_labels: bool = False) -> tuple[list[str], list[str]]:
    """Check every ``distill.terms`` entry against the loss registry, without building any network.

    ``without_labels``: the run distils on images without labels, so no term may read the ground truth.

    Returns:
        The student and teacher tap names the terms need (``logits`` included), sorted.

    Raises:
        ConfigError: naming ``distill.terms[i]``: no ``loss`` key, an unknown loss or option, a bad option value
            or weight, or a term that needs labels when ``without_labels``.
    """
    from medkd.distill.losses import create_loss
    from medkd.distill.objective import DistillObjective

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
    """The checks of a run that need neither its data nor its networks (see :func:`train`).

    Returns:
        The student and teacher tap names the distillation terms need (empty without distillation).
    """
    from medkd.distill.segmentation import SEG_LOSSES
    from medkd.errors import unknown_name_error

    if cfg.train.seg_loss.name not in SEG_LOSSES:
        exc = unknown_name_error("segmentation loss", cfg.train.seg_loss.name, SEG_LOSSES)
        raise ConfigError(f"train.seg_loss.name: {exc}")
    if cfg.distill is None:
        return [], []
    check_teacher_source(cfg.distill.teacher)
    uses_unlabeled = cfg.data.unlabeled is not None or cfg.data.unlabeled_left_out
    s_taps, t_taps = check_distill_terms(cfg.distill.terms, without_labels=uses_unlabeled)
    if cfg.distill.balance is not None and world_size > 1:
        raise ConfigError("distill.balance: not available with more than one process yet (the per-term gradient "
                          "norms are measured outside DDP); drop it or train in one process")
    return s_taps, t_taps


def _check_taps(student: torch.nn.Module, teacher: torch.nn.Module | None, s_taps: list[str], t_taps: list[str]
                ) -> tuple[list[str], list[str]]:
    """The taps the run holds on each network, checked to name modules (a TapError names a bad one).

    Multi-task students also give their ``reconstruction`` output.
    """
    from medkd.models import FeatureTapper, tap_specs

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


def _resume_state(cfg: RunConfig, folder: RunFolder) -> tuple[Any, Any, dict[str, Any]] | None:
    """The checkpoint a resume continues from (None: nothing complete yet), after checking it may continue.

    Raises:
        ConfigError: the config differs from the run's ``config.yaml`` where the checkpoint depends on it, or
            ``train.epochs`` is below the epochs already trained.
        MedkdError: the run already finished all its epochs; or the checkpoint is unreadable.
    """
    pointer = folder.checkpoints / "last.json"
    if not pointer.is_file():
        return None
    check_resume_config(folder.path, cfg)
    try:
        done = int(json.loads(pointer.read_text())["epoch"])
    except (OSError, ValueError, KeyError, TypeError):
        done = None  # load_checkpoint names the broken file
    if done is not None:
        if (folder.path / "train_summary.json").is_file() and done >= cfg.train.epochs:
            raise MedkdError(f"{folder.path}: the run has already finished ({done} of {cfg.train.epochs} epochs, "
                             "train_summary.json); nothing to resume: evaluate it, or raise train.epochs to train "
                             "it longer")
        if done > cfg.train.epochs:
            raise ConfigError(f"train.epochs: {cfg.train.epochs}, but the run already trained {done} epochs; a "
                              "resume cannot end before that")
    return load_checkpoint(folder.checkpoints)


def _announce_validation(cfg: RunConfig, bundle: Any) -> None:
    """One line when the validation part was carved from a split file's train list, or when there is none."""
    carve = bundle.meta.get("val_carve")
    if bundle.meta.get("val_carved_from_train") and carve:
        tqdm.write(f"note: {cfg.name}: {cfg.data.split.file} has no 'val' list; validating on "
                   f"{len(bundle.split['val'])} case(s) carved from its train list (data.split.val "
                   f"{carve['fraction']} of the case groups, seed {carve['seed']}; recorded in split.json)")
    elif not bundle.split["val"]:
        tqdm.write(f"note: {cfg.name}: no validation cases, so the last epoch's weights are kept as 'best'")


#: A run is flagged when its last validations fall this far (Dice points / 100) below its best one.
COLLAPSE_DROP = 0.05


def validation_collapse(best: float | None, history: list[float], window: int = 3) -> str | None:
    """A one-line warning when validation Dice collapsed after the best epoch, else None.

    "Collapsed": the best validation came before the last ``window`` ones, and their mean is more than
    :data:`COLLAPSE_DROP` below it; the best checkpoint then predates the collapse and the run deserves a look.
    """
    finite = [v for v in history if math.isfinite(v)]
    if best is None or not math.isfinite(best) or len(finite) < window + 1:
        return None
    if max(finite[-window:]) >= best:
        return None  # the best is among the last validations: still improving
    tail = sum(finite[-window:]) / window
    if best - tail > COLLAPSE_DROP:
        return (f"validation Dice collapsed: best {best:.4f}, mean of the last {window} validations {tail:.4f}; "
                "the best checkpoint predates the collapse")
    return None


def _read_val_history(folder: RunFolder) -> list[float]:
    return [r["val_dice"] for r in read_metrics(folder.path) if r.get("kind") == "epoch" and "val_dice" in r]


@dataclass
class StepContext:
    """What every step of a run uses: networks (and their compiled / DDP wrappers), losses, optimisers."""

    cfg: RunConfig
    model: Callable[[torch.Tensor], Any]
    student: torch.nn.Module
    teacher: Callable[[torch.Tensor], Any] | None
    objective: DistillObjective | None
    seg_loss: torch.nn.Module
    s_tapper: FeatureTapper | None
    t_tapper: FeatureTapper | None
    optimizer: torch.optim.Optimizer
    ascent_opt: torch.optim.Optimizer | None
    dev: torch.device
    world_size: int = 1
    scaler: torch.amp.GradScaler | None = None
    balancer: TermBalancer | None = None


def _step(ctx: StepContext, batch: dict[str, torch.Tensor], n_labelled: int,
          cached: dict[str, torch.Tensor] | None = None, measure: bool = False) -> dict[str, float]:
    """One optimisation step.

    The first ``n_labelled`` samples of ``batch`` carry labels; the rest are images without labels, which only
    the distillation terms (and the pseudo-label term) see. ``cached`` replaces the teacher's forward.
    ``measure``: log every loss part's gradient norm on the student (and re-balance the terms).
    """
    cfg, dev = ctx.cfg, ctx.dev
    ctx.optimizer.zero_grad(set_to_none=True)
    if ctx.ascent_opt is not None:
        ctx.ascent_opt.zero_grad(set_to_none=True)
    logs: dict[str, float] = {}
    with _autocast(cfg, dev):
        s_feats = _student_features(ctx, batch["image"])
        logits = s_feats["logits"]
        seg = ctx.seg_loss(logits[:n_labelled].float(), batch["label"][:n_labelled])
        parts = {"seg": cfg.train.seg_loss.weight * seg}
        logs["seg"] = float(seg.detach())
        if "reconstruction" in s_feats:
            recon = torch.nn.functional.mse_loss(s_feats["reconstruction"].float(), batch["image"].float())
            parts["recon"] = cfg.train.seg_loss.recon_weight * recon
            logs["recon_mse"] = float(recon.detach())
        if ctx.objective is not None and (cached is not None or ctx.t_tapper is not None):
            t_feats = cached if cached is not None else _teacher_features(ctx, batch["teacher_image"])
            parts.update(_distill_parts(ctx, s_feats, t_feats, n_labelled, batch, logs))
    if measure:
        _measure_and_balance(ctx, parts, logs)
    loss = _combine(ctx, parts)
    (ctx.scaler.scale(loss) if ctx.scaler is not None else loss).backward()
    _optimiser_steps(ctx)
    logs["loss"] = float(loss.detach())
    return logs


def _student_features(ctx: StepContext, image: torch.Tensor) -> dict[str, torch.Tensor]:
    from medkd.models import normalize_output

    if ctx.s_tapper is None:
        return {"logits": normalize_output(ctx.model(image))}
    ctx.model(image)
    feats = ctx.s_tapper.features
    ctx.s_tapper.clear()
    return feats


def _teacher_features(ctx: StepContext, image: torch.Tensor) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        ctx.teacher(image)
    feats = {k: v.detach() for k, v in ctx.t_tapper.features.items()}
    ctx.t_tapper.clear()
    return feats


def _distill_parts(ctx: StepContext, s_feats: dict[str, torch.Tensor], t_feats: dict[str, torch.Tensor],
                   n_labelled: int, batch: dict[str, torch.Tensor], logs: dict[str, float]
                   ) -> dict[str, torch.Tensor]:
    """Each weighted distillation term (labelled + unlabelled images) and the pseudo-label term (unlabelled)."""
    values = ctx.objective.term_values(s_feats, t_feats, batch)
    parts: dict[str, torch.Tensor] = {}
    for name, weight in ctx.objective.term_weights().items():
        parts[f"kd/{name}"] = weight * values[name]
        logs[f"kd/{name}"] = float(values[name].detach())
    pl_cfg = ctx.cfg.distill.pseudo_label
    n_total = s_feats["logits"].shape[0]
    if pl_cfg is not None and n_total > n_labelled:
        from medkd.distill.segmentation import pseudo_label_loss

        pl, mask = pseudo_label_loss(ctx.seg_loss, s_feats["logits"][n_labelled:].float(),
                                     t_feats["logits"][n_labelled:], pl_cfg.threshold)
        parts["pseudo_label"] = pl_cfg.weight * pl
        logs["pseudo_label"] = float(pl.detach())
        logs["pseudo_label_kept"] = float(mask.mean())
    return parts


def _measure_and_balance(ctx: StepContext, parts: dict[str, torch.Tensor], logs: dict[str, float]) -> None:
    """Log each part's gradient norm on the student (``gn/<part>``, as it enters the loss) and re-balance."""
    norms = gradient_norms(parts, list(ctx.student.parameters()))
    if ctx.balancer is not None:
        terms = {k[3:]: v for k, v in norms.items() if k.startswith("kd/")}
        ctx.balancer.update(norms["seg"], terms)
    for name, value in norms.items():
        scale = ctx.balancer.scales.get(name[3:], 1.0) if ctx.balancer is not None and name.startswith("kd/") \
            else 1.0
        logs[f"gn/{name}"] = value * scale


def _combine(ctx: StepContext, parts: dict[str, torch.Tensor]) -> torch.Tensor:
    """The step's loss: the parts summed, distillation terms times their balance scales."""
    total = None
    for name, value in parts.items():
        if ctx.balancer is not None and name.startswith("kd/"):
            value = ctx.balancer.scales[name[3:]] * value
        total = value if total is None else total + value
    return total


def _optimiser_steps(ctx: StepContext) -> None:
    if ctx.world_size > 1 and ctx.objective is not None:
        _average_gradients(list(ctx.objective.parameters()), ctx.world_size)  # extras live outside DDP
    if ctx.cfg.train.grad_clip:
        if ctx.scaler is not None:
            ctx.scaler.unscale_(ctx.optimizer)
        torch.nn.utils.clip_grad_norm_(ctx.student.parameters(), ctx.cfg.train.grad_clip)
    for opt in (ctx.optimizer, ctx.ascent_opt):
        if opt is not None:
            ctx.scaler.step(opt) if ctx.scaler is not None else opt.step()
    if ctx.scaler is not None:
        ctx.scaler.update()


def _compiled(module: torch.nn.Module, mode: str) -> Callable[[torch.Tensor], Any]:
    """``module`` itself for ``mode == "off"``, else ``torch.compile(module)`` with that inductor mode
    (``"aot_eager"``: the aot_eager backend, which traces without generating code)."""
    if mode == "off":
        return module
    if mode == "aot_eager":
        return torch.compile(module, backend="aot_eager")
    return torch.compile(module, mode=mode)


def _to_device(x: torch.Tensor, dev: torch.device, memory_format: torch.memory_format | None) -> torch.Tensor:
    """Pinned, non-blocking copy to a GPU (plain on CPU); images in ``memory_format`` when given.

    Tensor subclasses (MONAI's ``MetaTensor`` from its transforms) become plain tensors: the networks need no
    metadata, and a subclass's ``__torch_function__`` would run on every operation (and in torch.compile's trace).
    """
    if type(x) is not torch.Tensor:
        x = x.as_subclass(torch.Tensor)
    on_target = x.device.type == dev.type and (dev.index is None or x.device.index == dev.index)
    if not on_target:
        if dev.type == "cuda":
            x = x.pin_memory()
        x = x.to(dev, non_blocking=True)
    if memory_format is not None and x.ndim == 4 and x.is_floating_point():
        x = x.contiguous(memory_format=memory_format)
    return x


def _average_gradients(params: list[torch.nn.Parameter], world_size: int) -> None:
    for p in params:
        if p.grad is not None:
            torch.distributed.all_reduce(p.grad)
            p.grad /= world_size


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """All records of a run's ``metrics.jsonl``."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
