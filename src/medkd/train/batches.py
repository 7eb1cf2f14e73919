"""A training batch as the step reads it: images without labels appended, augmented where it lives, on the device.

The student's channels go to ``image``, the teacher's (when it reads other channels and runs live) to
``teacher_image``; cached teacher outputs are read by sample key and given the same augmentation. A teacher with
its own normalisation reads its own copy of its channels: flips and rotations hit it like the student's image,
the intensity jitter does not (it would show the teacher intensities it was never trained on).
"""

from __future__ import annotations

import torch

from medkd.config import CutMixConfig
from medkd.data.augment import apply_ops, augment_batch
from medkd.train.cutmix import cutmix_unlabelled
from medkd.train.setup import TrainingParts

__all__ = ["assemble_batch", "to_device"]


def assemble_batch(parts: TrainingParts, indices: torch.Tensor, images: torch.Tensor, labels: torch.Tensor,
                   gen: torch.Generator) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor] | None]:
    """The step's batch and cached teacher outputs (None without a cache) for the samples ``indices``.

    ``gen`` draws the images without labels and the augmentation; the labelled samples come first.
    """
    data, cfg, dev = parts.data, parts.cfg, parts.dev
    keys = data.source.cache_keys(indices)
    if data.unlabeled is not None:
        extra = torch.randint(len(data.unlabeled), (data.n_unlabeled,), generator=gen)
        images = torch.cat([images, data.unlabeled.images[extra]])
        labels = torch.cat([labels, data.unlabeled.labels[extra]])
        keys = torch.cat([keys, extra + data.source.num_distinct])
    batch = {"image": images[:, data.stu_pos], "label": labels}
    if data.tea_pos is not None and parts.cache is None:
        batch["teacher_image"] = images[:, data.tea_pos]
    # augmentation runs where the batch lives (on a GPU: no per-sample CPU copies)
    jitter = ("image",) if data.bundle.teacher_normalization is not None else ("image", "teacher_image")
    batch = augment_batch({k: to_device(v, dev, None) for k, v in batch.items()}, cfg.data.augment, gen,
                          intensity_keys=jitter)
    cached = None
    if parts.cache is not None:
        cached = {k: apply_ops(v.to(dev, non_blocking=True), batch["augment_ops"])
                  for k, v in parts.cache.get(keys).items()}
    batch = {k: v for k, v in batch.items() if k != "augment_ops"}
    cutmix = cfg.distill.cutmix if cfg.distill is not None else None
    if cutmix is not None:
        batch, cached = _cutmix(batch, cached, len(indices), cutmix, gen)
    batch = {k: to_device(v, dev, parts.memory_format) for k, v in batch.items()}
    return batch, cached


def _cutmix(batch: dict[str, torch.Tensor], cached: dict[str, torch.Tensor] | None, n_labelled: int,
            cfg: CutMixConfig, gen: torch.Generator
            ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor] | None]:
    """The batch and the cached teacher outputs with the images without labels mixed by the same boxes."""
    named = {**batch, **{f"cached/{k}": v for k, v in (cached or {}).items()}}
    mixed = cutmix_unlabelled(named, n_labelled, cfg, gen)
    batch = {k: v for k, v in mixed.items() if not k.startswith("cached/")}
    if cached is not None:
        cached = {k.removeprefix("cached/"): v for k, v in mixed.items() if k.startswith("cached/")}
    return batch, cached


def to_device(x: torch.Tensor, dev: torch.device, memory_format: torch.memory_format | None) -> torch.Tensor:
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
