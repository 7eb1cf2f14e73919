"""The training loop: one function over the epochs, each a run of the shared step, a validation and a checkpoint.

:func:`train` reads like the run's diagram: :func:`~medkd.train.setup.build_parts` (checks, data, networks, taps,
cache, optimisers, resume) -> per epoch :func:`_train_epoch` (batches through
:func:`~medkd.train.step.train_step`, the step ``medkd bench train`` times too) -> :func:`_validate_epoch` ->
:func:`_save_epoch` -> :func:`_finish` (``train_summary.json``).

The loss of a step is ``seg_loss.weight * L_seg`` (+ ``recon_weight * MSE(recon, x)`` for multi-task
networks) + the weighted distillation terms of ``distill.terms``. The teacher is frozen (eval mode,
``requires_grad=False``, never in the optimiser). Distillation extras (adapters, projection heads) are
trained with the student by descent; adaptive affinity weights by ascent (a second optimiser with
``maximize=True``). Seeded and deterministic on CPU; a killed run resumes from its last complete epoch
and ends with the same weights as an uninterrupted one. Feature taps hold their hooks for the whole run, so
``train.compile`` can hand the student and the live teacher to ``torch.compile`` with their taps.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from medkd.config import RunConfig
from medkd.data.loader import iter_indexed_batches
from medkd.errors import MedkdError
from medkd.run import RunFolder
from medkd.train.batches import assemble_batch
from medkd.train.checkpoint import save_best, save_checkpoint
from medkd.train.optim import step_scheduler
from medkd.train.setup import TrainingParts, build_parts
from medkd.train.step import train_step
from medkd.train.validation import validate, validation_collapse

__all__ = ["TrainResult", "train"]


@dataclass
class TrainResult:
    """What a finished run reports: its folder, epochs, best validation (None without one) and last mean loss."""

    run_dir: Path
    epochs: int
    best_epoch: int | None
    best_val_dice: float | None
    final_loss: float


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
    parts = build_parts(cfg, run_dir, resume, device, rank, world_size)
    parts.progress.t_start = time.time()
    for epoch in range(parts.progress.epoch, cfg.train.epochs):
        means = _train_epoch(parts, epoch)
        record = _validate_epoch(parts, epoch, means)
        _save_epoch(parts, epoch, record)
    return _finish(parts)


def _train_epoch(parts: TrainingParts, epoch: int) -> dict[str, float]:
    """One epoch of steps (a ``step`` record each); the mean of every logged value.

    Raises:
        MedkdError: the epoch's mean loss is not finite.
    """
    cfg, progress, source = parts.cfg, parts.progress, parts.data.source
    parts.nets.student.train()
    if parts.nets.objective is not None:
        parts.nets.objective.train()
    epoch_gen = torch.Generator().manual_seed(cfg.seed * 100003 + epoch)
    bar = tqdm(total=parts.opts.per_epoch, desc=f"{cfg.name} epoch {epoch + 1}/{cfg.train.epochs}", leave=False,
               disable=not (cfg.train.progress and parts.is_main), dynamic_ncols=True)
    totals: dict[str, float] = {}
    counts: dict[str, int] = {}
    batches = iter_indexed_batches(source, cfg.train.batch_size, epoch_gen, parts.rank, parts.world_size,
                                   parts.opts.per_epoch)
    for indices, images, labels in batches:
        batch, cached = assemble_batch(parts, indices, images, labels, epoch_gen)
        logs = train_step(parts.ctx, batch, len(indices), cached, _measure_due(parts))
        step_scheduler(parts.opts.scheduler)
        progress.step += 1
        logs["lr"] = parts.opts.optimizer.param_groups[0]["lr"]
        for k, v in logs.items():
            totals[k] = totals.get(k, 0.0) + v
            counts[k] = counts.get(k, 0) + 1
        if parts.is_main:
            parts.folder.log({"kind": "step", "epoch": epoch + 1, "step": progress.step, **logs})
        bar.set_postfix(loss=f"{logs['loss']:.4f}")
        bar.update(1)
    bar.close()
    means = {k: v / counts[k] for k, v in totals.items()}
    progress.final_loss = means.get("loss", float("nan"))
    if not math.isfinite(progress.final_loss):
        raise MedkdError(f"{cfg.name}: training loss became {progress.final_loss} in epoch {epoch + 1}; "
                         "lower train.optimizer.lr or check the data")
    return means


def _measure_due(parts: TrainingParts) -> bool:
    """Whether this step measures the loss parts' gradient norms (``train.grad_norm_every``, ``distill.balance``)."""
    ctx, step = parts.ctx, parts.progress.step
    every = parts.cfg.train.grad_norm_every
    return bool(ctx.objective is not None and parts.world_size == 1 and (
        (every and step % every == 0) or (ctx.balancer is not None and ctx.balancer.due(step))))


def _validate_epoch(parts: TrainingParts, epoch: int, means: dict[str, float]) -> dict[str, Any]:
    """The epoch's record; validates when due and keeps the best weights (the last ones without validation)."""
    cfg, progress, student = parts.cfg, parts.progress, parts.nets.student
    record: dict[str, Any] = {"kind": "epoch", "epoch": epoch + 1, "step": progress.step,
                              **{f"train_{k}": v for k, v in means.items()},
                              "elapsed_s": round(time.time() - progress.t_start, 2)}
    val_cases = parts.data.val_cases
    if val_cases and ((epoch + 1) % cfg.train.val_every == 0 or epoch + 1 == cfg.train.epochs):
        val = validate(student, val_cases, cfg, parts.data.bundle.num_classes, parts.dev)
        record["val_dice"] = val
        step_scheduler(parts.opts.scheduler, val)
        best = progress.best
        if best["epoch"] is None or (math.isfinite(val) and val > best["val_dice"]):
            progress.best = {"epoch": epoch + 1, "val_dice": val}
            if parts.is_main:
                save_best(parts.folder.checkpoints, student.state_dict(), progress.best)
    elif not val_cases and parts.is_main:
        progress.best = {"epoch": epoch + 1, "val_dice": None}
        save_best(parts.folder.checkpoints, student.state_dict(), progress.best)
    return record


def _save_epoch(parts: TrainingParts, epoch: int, record: dict[str, Any]) -> None:
    """Rank 0: log the epoch's record, write its checkpoint (weights, extras, trainer state) and print a line."""
    if not parts.is_main:
        return
    cfg, progress, opts, ctx = parts.cfg, parts.progress, parts.opts, parts.ctx
    parts.folder.log(record)
    trainer_state = {
        "epoch": epoch + 1, "step": progress.step, "best": progress.best,
        "optimizer": opts.optimizer.state_dict(),
        "ascent_optimizer": opts.ascent_opt.state_dict() if opts.ascent_opt else None,
        "scheduler": opts.scheduler.state_dict() if opts.scheduler is not None else None,
        "balance": ctx.balancer.state_dict() if ctx.balancer is not None else None,
        "torch_rng": torch.get_rng_state(),
    }
    objective = parts.nets.objective
    save_checkpoint(parts.folder.checkpoints, epoch + 1, parts.nets.student.state_dict(),
                    objective.state_dict() if objective is not None else {}, trainer_state)
    if cfg.train.progress:
        val_txt = f" val Dice {record['val_dice']:.4f}" if "val_dice" in record else ""
        tqdm.write(f"{cfg.name} epoch {epoch + 1}/{cfg.train.epochs}: loss {progress.final_loss:.4f}{val_txt}")


def _finish(parts: TrainingParts) -> TrainResult:
    """Rank 0 writes ``train_summary.json`` (and warns of a validation collapse); the run's result."""
    cfg, progress = parts.cfg, parts.progress
    best = progress.best
    if parts.is_main:  # the whole validation history, resumed runs included, is in metrics.jsonl
        collapse = validation_collapse(best.get("val_dice"), _read_val_history(parts.folder))
        if collapse:
            tqdm.write(f"warning: {cfg.name}: {collapse}")
        parts.folder.write_summary({
            "epochs": cfg.train.epochs, "steps": progress.step, "best": best,
            "final_train_loss": progress.final_loss, "train_seconds": round(time.time() - progress.t_start, 2),
            "device": str(parts.dev), "world_size": parts.world_size, "val_collapse": collapse,
        })
    best_val = best.get("val_dice")
    return TrainResult(parts.folder.path, cfg.train.epochs, best.get("epoch"),
                       None if best_val is None or not math.isfinite(best_val) else float(best_val),
                       progress.final_loss)


def _read_val_history(folder: RunFolder) -> list[float]:
    return [r["val_dice"] for r in folder.epoch_metrics() if "val_dice" in r]


