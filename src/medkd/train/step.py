"""One optimisation step, the same for ``medkd train`` and ``medkd bench train``.

The step's loss is ``seg_weight * L_seg`` (+ ``recon_weight * MSE(recon, x)`` for multi-task networks) + the
weighted distillation terms (+ the pseudo-label term on images without labels). Distillation terms may be
re-scaled by a :class:`~medkd.train.balance.TermBalancer`; adaptive affinity weights are trained by ascent.

Example:
    >>> ctx = StepContext(StepSettings(), model, model, None, None, seg_loss, None, None, optimizer, None, dev)
    >>> logs = train_step(ctx, {"image": x, "label": y}, n_labelled=len(x))
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from medkd.config import PseudoLabelConfig, RunConfig
from medkd.distill.objective import DistillObjective
from medkd.distill.segmentation import pseudo_label_loss
from medkd.models import FeatureTapper, normalize_output
from medkd.train.balance import TermBalancer, gradient_norms

__all__ = ["StepContext", "StepSettings", "autocast", "compiled", "train_step"]


@dataclass(frozen=True)
class StepSettings:
    """The numbers of a run's config that a step reads."""

    seg_weight: float = 1.0
    recon_weight: float = 0.2
    amp: str = "none"  # "none", "bf16" or "fp16"
    grad_clip: float | None = None
    pseudo_label: PseudoLabelConfig | None = None

    @classmethod
    def from_config(cls, cfg: RunConfig) -> StepSettings:
        """The settings of ``cfg`` (``train.seg_loss``, ``train.amp``, ``train.grad_clip``, pseudo-labels)."""
        return cls(seg_weight=cfg.train.seg_loss.weight, recon_weight=cfg.train.seg_loss.recon_weight,
                   amp=cfg.train.amp, grad_clip=cfg.train.grad_clip,
                   pseudo_label=cfg.distill.pseudo_label if cfg.distill is not None else None)


@dataclass
class StepContext:
    """What every step of a run uses: networks (and their compiled / DDP wrappers), losses, optimisers.

    ``model`` is what the forward calls (``student`` itself, or its DDP / compiled wrapper); ``teacher`` is the
    live teacher's forward (None when its outputs come from a cache). A tapper collects a network's taps.
    """

    settings: StepSettings
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


def train_step(ctx: StepContext, batch: dict[str, torch.Tensor], n_labelled: int,
               cached: dict[str, torch.Tensor] | None = None, measure: bool = False) -> dict[str, float]:
    """One optimisation step; returns the logged values (``loss``, ``seg``, ``kd/<term>``, ...).

    The first ``n_labelled`` samples of ``batch`` carry labels; the rest are images without labels, which only
    the distillation terms (and the pseudo-label term) see. ``cached`` replaces the teacher's forward.
    ``measure``: log every loss part's gradient norm on the student (and re-balance the terms).
    """
    ctx.optimizer.zero_grad(set_to_none=True)
    if ctx.ascent_opt is not None:
        ctx.ascent_opt.zero_grad(set_to_none=True)
    logs: dict[str, float] = {}
    with autocast(ctx.settings.amp, ctx.dev):
        parts = _loss_parts(ctx, batch, n_labelled, cached, logs)
    if measure:
        _measure_and_balance(ctx, parts, logs)
    loss = _combine(ctx, parts)
    (ctx.scaler.scale(loss) if ctx.scaler is not None else loss).backward()
    _optimiser_steps(ctx)
    logs["loss"] = float(loss.detach())
    return logs


def _loss_parts(ctx: StepContext, batch: dict[str, torch.Tensor], n_labelled: int,
                cached: dict[str, torch.Tensor] | None, logs: dict[str, float]) -> dict[str, torch.Tensor]:
    """The weighted parts of the step's loss (segmentation, reconstruction, distillation), by name."""
    settings = ctx.settings
    s_feats = _student_features(ctx, batch["image"])
    logits = s_feats["logits"]
    seg = ctx.seg_loss(logits[:n_labelled].float(), batch["label"][:n_labelled])
    parts = {"seg": settings.seg_weight * seg}
    logs["seg"] = float(seg.detach())
    if "reconstruction" in s_feats:
        recon = torch.nn.functional.mse_loss(s_feats["reconstruction"].float(), batch["image"].float())
        parts["recon"] = settings.recon_weight * recon
        logs["recon_mse"] = float(recon.detach())
    if ctx.objective is not None and (cached is not None or ctx.t_tapper is not None):
        t_feats = cached if cached is not None else _teacher_features(ctx, batch["teacher_image"])
        parts.update(_distill_parts(ctx, s_feats, t_feats, n_labelled, batch, logs))
    return parts


def _student_features(ctx: StepContext, image: torch.Tensor) -> dict[str, torch.Tensor]:
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
    pl_cfg = ctx.settings.pseudo_label
    n_total = s_feats["logits"].shape[0]
    if pl_cfg is not None and n_total > n_labelled:
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
    """Average the extras' gradients across processes, clip, and step both optimisers (through the scaler)."""
    if ctx.world_size > 1 and ctx.objective is not None:
        _average_gradients(list(ctx.objective.parameters()), ctx.world_size)  # extras live outside DDP
    if ctx.settings.grad_clip:
        if ctx.scaler is not None:
            ctx.scaler.unscale_(ctx.optimizer)
        torch.nn.utils.clip_grad_norm_(ctx.student.parameters(), ctx.settings.grad_clip)
    for opt in (ctx.optimizer, ctx.ascent_opt):
        if opt is not None:
            ctx.scaler.step(opt) if ctx.scaler is not None else opt.step()
    if ctx.scaler is not None:
        ctx.scaler.update()


def _average_gradients(params: list[torch.nn.Parameter], world_size: int) -> None:
    for p in params:
        if p.grad is not None:
            torch.distributed.all_reduce(p.grad)
            p.grad /= world_size


def autocast(amp: str, device: torch.device) -> torch.autocast:
    """The autocast context of ``train.amp`` (``none``: disabled; ``bf16`` / ``fp16``: that dtype)."""
    if amp == "none":
        return torch.autocast(device.type, enabled=False)
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


def compiled(module: torch.nn.Module, mode: str) -> Callable[[torch.Tensor], Any]:
    """``module`` itself for ``mode == "off"``, else ``torch.compile(module)`` with that inductor mode
    (``"aot_eager"``: the aot_eager backend, which traces without generating code)."""
    if mode == "off":
        return module
    if mode == "aot_eager":
        return torch.compile(module, backend="aot_eager")
    return torch.compile(module, mode=mode)
