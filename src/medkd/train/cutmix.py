"""CutMix of the images without labels in a training batch, with the teacher's outputs mixed alike.

``distill.cutmix`` (:class:`~medkd.config.CutMixConfig`, medkd's addition after French et al., BMVC 2020): each
image without labels gets, with probability ``prob``, a box of another image without labels pasted in (the box
covers ``area`` of the image; its aspect ratio is drawn between 1:2 and 2:1). Every spatial tensor of the batch
(student and teacher images, the placeholder labels) and every cached teacher output is mixed with the same box,
resized by nearest neighbour to that tensor's grid. For a live teacher the mixed teacher image is exact; for
cached outputs mixing the teacher's outputs stands in for the teacher's output on the mixed image (exact away
from the box's edges, as in French et al.'s mixed mean-teacher targets). Labelled samples are never touched.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from medkd.config import CutMixConfig

__all__ = ["box_masks", "cutmix_unlabelled", "mix_like"]

#: Aspect ratios are drawn log-uniformly in [1 / MAX_ASPECT, MAX_ASPECT].
MAX_ASPECT = 2.0


def box_masks(n: int, spatial: Sequence[int], area: float, generator: torch.Generator) -> torch.Tensor:
    """``n`` boolean box masks of shape ``(n, *spatial)``, each box covering about ``area`` of the grid."""
    dims = len(spatial)
    log_aspect = (torch.rand(n, dims, generator=generator) * 2 - 1) * math.log(MAX_ASPECT) / 2
    log_aspect -= log_aspect.mean(dim=1, keepdim=True)  # the fractions' product stays ``area``
    fractions = (area ** (1 / dims) * log_aspect.exp()).clamp(max=1.0)
    masks = torch.zeros(n, *spatial, dtype=torch.bool)
    starts = torch.rand(n, dims, generator=generator)
    for i in range(n):
        box = []
        for d, size in enumerate(spatial):
            side = max(1, round(float(fractions[i, d]) * size))
            start = int(float(starts[i, d]) * (size - side + 1))
            box.append(slice(start, start + side))
        masks[(i, *box)] = True
    return masks


def mix_like(x: torch.Tensor, partner: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """``partner`` where ``masks`` (``(n, *grid)``, resized by nearest neighbour to ``x``'s trailing grid) is
    true, else ``x``; ``x`` and ``partner`` are ``(n, ..., *grid)``."""
    dims = masks.ndim - 1
    grid = tuple(x.shape[-dims:])
    m = masks
    if tuple(m.shape[1:]) != grid:
        m = torch.nn.functional.interpolate(m[:, None].float(), size=grid, mode="nearest")[:, 0].bool()
    m = m.to(x.device).view(m.shape[0], *([1] * (x.ndim - 1 - dims)), *grid)
    return torch.where(m, partner, x)


def cutmix_unlabelled(tensors: dict[str, torch.Tensor], start: int, cfg: CutMixConfig,
                      generator: torch.Generator) -> dict[str, torch.Tensor]:
    """``tensors`` (each ``(batch, ..., *grid)``; ``"image"`` gives the grid) with samples ``start:`` mixed.

    Each of those samples pairs with another one of them (a random cycle, so never with itself); the pairing and
    the boxes are drawn once and used for every tensor.
    """
    image = tensors["image"]
    n = image.shape[0] - start
    if n < 2:
        return dict(tensors)
    order = torch.randperm(n, generator=generator)
    partner = torch.empty(n, dtype=torch.int64)
    partner[order] = order.roll(-1)
    applied = torch.rand(n, generator=generator) < cfg.prob
    masks = box_masks(n, tuple(image.shape[2:]), cfg.area, generator) & applied.view(n, *([1] * (image.ndim - 2)))
    out = {}
    for key, x in tensors.items():
        rest = x[start:]
        out[key] = torch.cat([x[:start], mix_like(rest, rest[partner.to(x.device)], masks)])
    return out
