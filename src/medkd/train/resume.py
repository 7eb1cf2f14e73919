"""Resuming a run: the checkpoint it continues from, and the state that checkpoint restores.

A killed run resumes from its last complete epoch and ends with the same weights as an uninterrupted one: the
student, the distillation extras, both optimisers, the scheduler, the term balancer and torch's random state are
restored, and ``metrics.jsonl`` is cut back to that epoch.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import torch

from medkd.config import RunConfig
from medkd.distill.objective import DistillObjective
from medkd.errors import ConfigError, MedkdError
from medkd.run import RunFolder, check_resume_config
from medkd.train.balance import TermBalancer
from medkd.train.checkpoint import load_checkpoint
from medkd.train.optim import Optimisers

__all__ = ["LoopState", "ResumeState", "read_resume_state", "restore_training"]

#: (student weights, distillation extras' weights, trainer state) of a checkpoint
ResumeState = tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, Any]]


@dataclass
class LoopState:
    """Where the epoch loop stands: epochs done, optimisation steps done, the best validation so far."""

    epoch: int = 0
    step: int = 0
    best: dict[str, Any] = field(default_factory=lambda: {"epoch": None, "val_dice": -math.inf})
    final_loss: float = math.nan
    t_start: float = 0.0


def read_resume_state(cfg: RunConfig, folder: RunFolder) -> ResumeState | None:
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
        if folder.has_summary() and done >= cfg.train.epochs:
            raise MedkdError(f"{folder.path}: the run has already finished ({done} of {cfg.train.epochs} epochs, "
                             "train_summary.json); nothing to resume: evaluate it, or raise train.epochs to train "
                             "it longer")
        if done > cfg.train.epochs:
            raise ConfigError(f"train.epochs: {cfg.train.epochs}, but the run already trained {done} epochs; a "
                              "resume cannot end before that")
    return load_checkpoint(folder.checkpoints)


def restore_training(state: ResumeState, folder: RunFolder, student: torch.nn.Module,
                     objective: DistillObjective | None, opts: Optimisers, balancer: TermBalancer | None,
                     is_main: bool) -> LoopState:
    """Load ``state`` into the run's parts; the loop state it continues from.

    Raises:
        MedkdError: the checkpoint's weights do not fit the networks (one line, nothing written).
    """
    model_state, extras_state, tstate = state
    try:
        student.load_state_dict(model_state)
        if objective is not None:
            objective.load_state_dict(extras_state)
    except RuntimeError as exc:  # a config check missed a change: still one line, nothing written
        detail = str(exc).strip().splitlines()[-1].strip()
        raise MedkdError(f"{folder.checkpoints}: the checkpoint does not fit this config ({detail}); "
                         "train into a new --out folder") from None
    opts.optimizer.load_state_dict(tstate["optimizer"])
    if opts.ascent_opt is not None:
        opts.ascent_opt.load_state_dict(tstate["ascent_optimizer"])
    if opts.scheduler is not None and tstate.get("scheduler") is not None:
        opts.scheduler.load_state_dict(tstate["scheduler"])
    if balancer is not None and tstate.get("balance") is not None:
        balancer.load_state_dict(tstate["balance"])
    torch.set_rng_state(tstate["torch_rng"])
    if is_main:
        folder.truncate_metrics(tstate["epoch"])
        # more epochs for a finished run: its summary is no longer true until the run ends again
        folder.remove_summary()
    return LoopState(epoch=tstate["epoch"], step=tstate["step"], best=tstate["best"])
