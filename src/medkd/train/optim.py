"""Optimisers and learning-rate schedulers from ``train.optimizer`` / ``train.scheduler``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from medkd.config import RunConfig
from medkd.errors import ConfigError

__all__ = ["Optimisers", "build_optimisers", "fusable", "make_optimizer", "make_scheduler", "step_scheduler"]


@dataclass
class Optimisers:
    """A run's optimisers (descent; ascent for adaptive weights), its scheduler and its steps per epoch."""

    optimizer: torch.optim.Optimizer
    ascent_opt: torch.optim.Optimizer | None
    scheduler: Any
    per_epoch: int


def build_optimisers(cfg: RunConfig, descent: list[torch.nn.Parameter], ascent: list[torch.nn.Parameter],
                     n_samples: int, world_size: int = 1) -> Optimisers:
    """Optimisers over ``descent`` / ``ascent`` and a scheduler over the run's ``epochs x per_epoch`` steps.

    Raises:
        ConfigError: ``train.batch_size`` leaves no step in an epoch.
    """
    optimizer = make_optimizer(cfg, descent)
    ascent_opt = make_optimizer(cfg, ascent, maximize=True) if ascent else None
    per_epoch = n_samples // (cfg.train.batch_size * world_size)
    if cfg.train.max_steps_per_epoch:
        per_epoch = min(per_epoch, cfg.train.max_steps_per_epoch)
    if per_epoch < 1:
        raise ConfigError(f"train.batch_size {cfg.train.batch_size}: larger than the {n_samples} training samples")
    scheduler = make_scheduler(cfg, optimizer, per_epoch * cfg.train.epochs)
    return Optimisers(optimizer, ascent_opt, scheduler, per_epoch)


def make_optimizer(cfg: RunConfig, params: list[torch.nn.Parameter], maximize: bool = False) -> torch.optim.Optimizer:
    """The optimiser of ``train.optimizer`` over ``params`` (``maximize``: gradient ascent)."""
    o = cfg.train.optimizer
    fused = {"fused": True} if o.fused and fusable(params) else {}
    if o.name == "adam":
        return torch.optim.Adam(params, lr=o.lr, weight_decay=o.weight_decay, maximize=maximize, **fused)
    if o.name == "adamw":
        return torch.optim.AdamW(params, lr=o.lr, weight_decay=o.weight_decay, maximize=maximize, **fused)
    if o.name == "sgd":
        return torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay, maximize=maximize,
                               **fused)
    return torch.optim.RMSprop(params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay, maximize=maximize)


def fusable(params: list[torch.nn.Parameter]) -> bool:
    """Whether PyTorch's fused update takes ``params``: floating point, all on one CPU or CUDA device."""
    devices = {p.device for p in params}
    return len(devices) == 1 and next(iter(devices)).type in ("cpu", "cuda") and all(
        p.is_floating_point() for p in params)


def make_scheduler(cfg: RunConfig, opt: torch.optim.Optimizer, total_steps: int) -> Any:
    """The scheduler of ``train.scheduler`` (None for ``none``); per-step except ``plateau`` (per validation)."""
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


def step_scheduler(scheduler: Any, val_dice: float | None = None) -> None:
    """Advance ``scheduler``: after a step (``val_dice`` None) or after a validation (plateau schedulers only)."""
    if scheduler is None:
        return
    plateau = isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)
    if plateau and val_dice is not None:
        scheduler.step(val_dice)
    elif not plateau and val_dice is None:
        scheduler.step()
