"""Training and evaluation data for a run: dataset -> split -> prepared cases -> batches.

2D runs train on slices of every training volume, resized to ``data.size``; 3D runs train on random
patches of ``data.size`` (half of them centred on foreground), optionally after resizing each volume to
``data.volume_size``. All samples are held in memory as tensors (the datasets this toolkit targets fit
easily), and batch order and patch positions come from an explicit seeded generator so that a run,
and a resumed run, draw the same batches.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

from medkd.config import RunConfig
from medkd.data.formats import DatasetIndex, read_dataset
from medkd.data.pipeline import PreparedCase, prepare_cases, resize_image, resize_label, slice_samples
from medkd.data.splits import make_split, subsample_cases
from medkd.errors import ConfigError

__all__ = ["DataBundle", "PatchSource", "SliceSource", "build_bundle", "build_train_source", "iter_batches"]


@dataclass
class DataBundle:
    """The dataset of a run and how the run reads it.

    Attributes:
        index: the dataset index.
        split: case ids per part (``train`` already reduced by ``data.train_fraction``).
        channels: dataset channel indices the run's model reads.
        teacher_channels: dataset channel indices the teacher reads (distillation only).
        class_names: names of classes 0..K-1 (background first).
    """

    index: DatasetIndex
    split: dict[str, list[str]]
    channels: list[int]
    teacher_channels: list[int] | None = None
    class_names: list[str] = field(default_factory=list)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def loaded_channels(self) -> list[int]:
        """Union of student and teacher channels, in the order they are held in memory."""
        out = list(self.channels)
        for c in self.teacher_channels or []:
            if c not in out:
                out.append(c)
        return out

    def positions(self, which: list[int]) -> list[int]:
        """Positions of dataset channels ``which`` inside :attr:`loaded_channels`."""
        loaded = self.loaded_channels
        return [loaded.index(c) for c in which]


def build_bundle(cfg: RunConfig) -> DataBundle:
    """Read the dataset and fix the split and channels of a run."""
    index = read_dataset(cfg.data.root, cfg.data.format)
    if cfg.data.labels:
        missing = [k for k in cfg.data.labels if k not in index.labels]
        if missing:
            raise ConfigError(f"data.labels: {missing[0]!r} is not a label of {index.root} ({list(index.labels)})")
    split = make_split(index, cfg.data.split)
    if cfg.data.max_cases:
        split = {k: v[: cfg.data.max_cases] for k, v in split.items()}
    split["train"] = subsample_cases(split["train"], cfg.data.train_fraction, cfg.seed, cfg.data.split.group_pattern)
    channels = index.channel_indices(cfg.data.channels)
    teacher_channels = None
    if cfg.distill is not None:
        teacher_channels = index.channel_indices(cfg.data.teacher_channels or cfg.data.channels)
    class_names = [name for name, _ in sorted(index.labels.items(), key=lambda kv: kv[1])]
    return DataBundle(index, split, channels, teacher_channels, class_names)


class SliceSource:
    """2D training samples: every slice of the training volumes, resized to a fixed size."""

    spatial_dims = 2

    def __init__(self, cases: list[PreparedCase], size: tuple[int, int], foreground_only: bool = False):
        self.images, self.labels, self.origin = slice_samples(cases, size, foreground_only)

    def __len__(self) -> int:
        return self.images.shape[0]

    def samples(self, indices: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[indices], self.labels[indices]


class PatchSource:
    """3D training samples: random patches (half centred on foreground) of the training volumes."""

    spatial_dims = 3

    def __init__(self, cases: list[PreparedCase], patch: tuple[int, int, int],
                 volume_size: tuple[int, int, int] | None = None, patches_per_case: int = 4):
        self.patch = tuple(patch)
        self.patches_per_case = patches_per_case
        self.volumes: list[torch.Tensor] = []
        self.labels: list[torch.Tensor] = []
        for pc in cases:
            img = torch.from_numpy(pc.image)
            lab = torch.from_numpy(pc.label)[None]
            if volume_size is not None:
                img, lab = resize_image(img, volume_size), resize_label(lab, volume_size)
            pad = [max(0, p - s) for p, s in zip(self.patch, img.shape[1:])]
            if any(pad):
                widths = [w for p in reversed(pad) for w in (p // 2, p - p // 2)]
                img = torch.nn.functional.pad(img, widths)
                lab = torch.nn.functional.pad(lab, widths)
            self.volumes.append(img.float())
            self.labels.append(lab.long())

    def __len__(self) -> int:
        return len(self.volumes) * self.patches_per_case

    def _corner(self, vol_index: int, generator: torch.Generator) -> list[int]:
        shape = self.volumes[vol_index].shape[1:]
        lab = self.labels[vol_index][0]
        use_fg = bool(torch.rand((), generator=generator) < 0.5)
        if use_fg and bool((lab > 0).any()):
            fg = torch.nonzero(lab > 0)
            centre = fg[int(torch.randint(0, fg.shape[0], (), generator=generator))].tolist()
            return [int(min(max(c - p // 2, 0), s - p)) for c, p, s in zip(centre, self.patch, shape)]
        return [int(torch.randint(0, s - p + 1, (), generator=generator)) for p, s in zip(self.patch, shape)]

    def samples(self, indices: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        imgs, labs = [], []
        for i in indices.tolist():
            v = i % len(self.volumes)
            x, y, z = self._corner(v, generator)
            px, py, pz = self.patch
            imgs.append(self.volumes[v][:, x:x + px, y:y + py, z:z + pz])
            labs.append(self.labels[v][:, x:x + px, y:y + py, z:z + pz])
        return torch.stack(imgs), torch.stack(labs)


def build_train_source(cfg: RunConfig, bundle: DataBundle) -> SliceSource | PatchSource:
    """Prepare the training cases of a run as a sample source."""
    cases = prepare_cases(bundle.index, bundle.split["train"], bundle.loaded_channels, cfg.data.normalize)
    if cfg.data.dim == 2:
        return SliceSource(cases, tuple(cfg.data.size), cfg.data.foreground_slices_only)
    vol = tuple(cfg.data.volume_size) if cfg.data.volume_size else None
    return PatchSource(cases, tuple(cfg.data.size), vol, cfg.data.patches_per_case)


def iter_batches(source: SliceSource | PatchSource, batch_size: int, generator: torch.Generator,
                 rank: int = 0, world_size: int = 1, max_batches: int | None = None
                 ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield (images, labels) batches in a seeded random order; incomplete last batches are dropped.

    With ``world_size > 1`` each rank takes its own interleaved share of every global batch of
    ``batch_size * world_size`` samples, so the union over ranks equals the single-process batch.
    """
    n = len(source)
    global_batch = batch_size * world_size
    if n < global_batch:
        raise ConfigError(f"train.batch_size {batch_size} x {world_size} process(es) exceeds the {n} training samples")
    order = torch.randperm(n, generator=generator)
    n_batches = n // global_batch
    if max_batches is not None:
        n_batches = min(n_batches, max_batches)
    for b in range(n_batches):
        idx = order[b * global_batch:(b + 1) * global_batch][rank::world_size]
        yield source.samples(idx, generator)
