"""Batch augmentation with exactly invertible spatial ops (flips, 90-degree rotations).

The same random op is applied to every spatial tensor of a sample (student image, teacher image,
label, cached teacher maps), so teacher outputs can be cached and transformed instead of recomputed.
Randomness comes from an explicit ``torch.Generator``: a seeded run draws the same ops on every
machine and after a resume.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from medkd.config import AugmentConfig

__all__ = ["apply_ops", "augment_batch", "draw_ops"]


def draw_ops(batch_size: int, spatial_dims: int, cfg: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """Draw per-sample ops: columns = flip flag per spatial axis, then a rotation count (0..3)."""
    ops = torch.zeros(batch_size, spatial_dims + 1, dtype=torch.int64)
    if cfg.flip:
        ops[:, :spatial_dims] = torch.randint(0, 2, (batch_size, spatial_dims), generator=generator)
    if cfg.rot90:
        ops[:, spatial_dims] = torch.randint(0, 4, (batch_size,), generator=generator)
    return ops


def apply_ops(x: torch.Tensor, ops: torch.Tensor) -> torch.Tensor:
    """Apply per-sample flips / rotations (in the first two spatial axes) to ``x`` of shape (B, C, *spatial).

    Samples that share an op are transformed together (at most 4 x 4 distinct ops in 2D), so the cost does not
    grow with a per-sample loop; the result equals transforming each sample on its own.
    """
    spatial_dims = x.ndim - 2
    if not bool(ops.any()):
        return x
    out = torch.empty_like(x)
    unique, group = torch.unique(ops, dim=0, return_inverse=True)
    group = group.to(x.device)
    for g, op in enumerate(unique.tolist()):
        idx = torch.nonzero(group == g).flatten()
        xg = x.index_select(0, idx)
        flip_axes = [d + 2 for d in range(spatial_dims) if op[d]]
        if flip_axes:
            xg = torch.flip(xg, flip_axes)
        if op[spatial_dims]:
            xg = torch.rot90(xg, op[spatial_dims], dims=(2, 3))
        out.index_copy_(0, idx, xg)
    return out


def augment_batch(batch: Mapping[str, torch.Tensor], cfg: AugmentConfig, generator: torch.Generator,
                  spatial_keys: tuple[str, ...] = ("image", "teacher_image", "label"),
                  intensity_keys: tuple[str, ...] = ("image", "teacher_image")) -> dict[str, torch.Tensor]:
    """Return a copy of ``batch`` with the same random ops applied to every key in ``spatial_keys``.

    Rotations need square spatial axes; the intensity jitter (``cfg.intensity``) touches the images of
    ``intensity_keys`` only (e.g. not a teacher's own normalised copy). The random draws do not depend on the keys.
    """
    out = dict(batch)
    ref = batch["image"]
    spatial_dims = ref.ndim - 2
    ops = draw_ops(ref.shape[0], spatial_dims, cfg, generator)
    if cfg.rot90 and ref.shape[2] != ref.shape[3]:
        ops[:, spatial_dims] = 0
    for key in spatial_keys:
        if key in out:
            out[key] = apply_ops(out[key], ops)
    if cfg.intensity > 0:
        b = ref.shape[0]
        shape = (b,) + (1,) * (ref.ndim - 1)
        scale = (1 + cfg.intensity * torch.randn(shape, generator=generator)).to(ref.device)
        shift = (cfg.intensity * torch.randn(shape, generator=generator)).to(ref.device)
        for key in intensity_keys:
            if key in out:
                out[key] = out[key] * scale + shift
    out["augment_ops"] = ops
    return out
