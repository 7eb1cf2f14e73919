"""Training and evaluation data for a run: dataset -> split -> prepared cases -> batches.

The dataset of a run is opened with :func:`open_dataset` (format reader, ``data.label_map``,
``data.simulate_sites``), so training, validation and evaluation see the same cases, classes and sites.
2D runs train on slices of every training volume, resized to ``data.size``; 3D runs train on random
patches of ``data.size`` (half of them centred on foreground), optionally after resizing each volume to
``data.volume_size``. All samples are held in memory as tensors (the datasets this toolkit targets fit
easily), and batch order and patch positions come from an explicit seeded generator so that a run,
and a resumed run, draw the same batches.

With ``data.neighbours = k`` (2.5D) every held channel becomes ``2k + 1`` channels: the network reads
:attr:`DataBundle.in_channels` inputs and :meth:`DataBundle.positions` returns the expanded positions.

A teacher with its own normalisation (:attr:`DataBundle.teacher_normalization`, e.g. nnU-Net's) reads its own
copy of its channels, held after the loaded ones (:class:`~medkd.data.pipeline.TeacherCopy`): each sample then
holds the loaded channels with medkd's preprocessing, followed by the teacher's channels its way, cut, resized
and augmented together. :meth:`DataBundle.teacher_positions` says where the teacher's inputs are.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from tqdm.auto import tqdm

from medkd.config import DataConfig, RunConfig
from medkd.data.formats import DatasetIndex, read_dataset, with_label_map
from medkd.data.pipeline import (
    CaseNormalization,
    PreparedCase,
    TeacherCopy,
    load_case,
    prepare_arrays,
    prepare_cases,
    resize_image,
    resize_label,
    slice_samples,
)
from medkd.data.prepared import prepared_slices
from medkd.data.preprocess import model_in_channels, neighbour_positions
from medkd.data.protocols import simulate_sites
from medkd.data.splits import make_split, subsample_cases
from medkd.errors import ConfigError

__all__ = [
    "DataBundle",
    "ImageSliceSource",
    "PatchSource",
    "SliceSource",
    "build_bundle",
    "build_train_source",
    "build_unlabeled_source",
    "iter_batches",
    "iter_indexed_batches",
    "open_dataset",
]


def open_dataset(data: DataConfig, root: str | None = None) -> DatasetIndex:
    """Read a run's dataset the way every stage of the run must see it.

    Reads ``root`` (default ``data.root``) in ``data.format``, then applies ``data.label_map`` and
    ``data.simulate_sites`` (grouped by ``data.split.group_pattern``).

    Args:
        data: the run's data config.
        root: the dataset folder, e.g. the absolute path recorded in a run's ``split.json``.
    """
    index = read_dataset(root or data.root, data.format)
    index = with_label_map(index, data.label_map)
    if data.simulate_sites is not None:
        sim = data.simulate_sites
        index = simulate_sites(index, sim.k, sim.seed, data.split.group_pattern, in_plane=sim.in_plane)
    return index


def _protocol(data: DataConfig) -> dict[str, Any]:
    s = data.split
    if s.file:
        return {"kind": "file", "file": s.file}
    if s.folds:
        return {"kind": "kfold", "folds": s.folds, "fold": s.fold, "fold_seed": s.fold_seed, "val": s.val,
                "seed": s.seed, "group_pattern": s.group_pattern}
    if s.test_sites:
        return {"kind": "leave_site_out", "test_sites": list(s.test_sites), "val": s.val, "seed": s.seed,
                "group_pattern": s.group_pattern}
    return {"kind": "random", "val": s.val, "test": s.test, "seed": s.seed, "group_pattern": s.group_pattern}


@dataclass
class DataBundle:
    """The dataset of a run and how the run reads it.

    Attributes:
        index: the dataset index.
        split: case ids per part (``train`` already reduced by ``data.train_fraction``).
        channels: dataset channel indices the run's model reads.
        teacher_channels: dataset channel indices the teacher reads (distillation only).
        class_names: names of classes 0..K-1 (background first).
        neighbours: 2.5D neighbour slices per side (``data.neighbours``).
        meta: facts for ``split.json`` (protocol, training pool before ``train_fraction``); see :meth:`record`.
        teacher_normalization: the teacher's own per-case normalisation of its channels (None: it reads medkd's
            preprocessing, and samples hold no copy for it).
    """

    index: DatasetIndex
    split: dict[str, list[str]]
    channels: list[int]
    teacher_channels: list[int] | None = None
    class_names: list[str] = field(default_factory=list)
    neighbours: int = 0
    meta: dict[str, Any] = field(default_factory=dict)
    teacher_normalization: CaseNormalization | None = None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def in_channels(self) -> int:
        """Input channels of the run's network: ``len(channels) * (2 * neighbours + 1)``."""
        return model_in_channels(len(self.channels), self.neighbours)

    @property
    def teacher_in_channels(self) -> int | None:
        """Input channels of the teacher (None without distillation)."""
        if self.teacher_channels is None:
            return None
        return model_in_channels(len(self.teacher_channels), self.neighbours)

    def record(self) -> dict[str, Any]:
        """JSON-ready facts a run folder records next to the split (``split.json``).

        Holds ``in_channels`` / ``teacher_in_channels`` / ``neighbours``, the ``protocol``, the training pool
        and fraction behind the ``train`` list, and the dataset's meta (e.g. ``simulated_sites`` with every
        site's parameters, ``label_map``).
        """
        return {"in_channels": self.in_channels, "teacher_in_channels": self.teacher_in_channels,
                "neighbours": self.neighbours, **self.meta, "dataset_meta": dict(self.index.meta)}

    @property
    def loaded_channels(self) -> list[int]:
        """Union of student and teacher channels, in the order they are held in memory."""
        out = list(self.channels)
        for c in self.teacher_channels or []:
            if c not in out:
                out.append(c)
        return out

    def positions(self, which: list[int]) -> list[int]:
        """Positions of dataset channels ``which`` inside the held image channels.

        Without neighbours these index :attr:`loaded_channels`; with ``neighbours = k`` each held channel
        occupies ``2k + 1`` consecutive positions and all of them are returned.
        """
        loaded = self.loaded_channels
        return neighbour_positions([loaded.index(c) for c in which], self.neighbours)

    @property
    def teacher_copy(self) -> TeacherCopy | None:
        """The teacher's own copy of its channels (None without :attr:`teacher_normalization`)."""
        if self.teacher_normalization is None or self.teacher_channels is None:
            return None
        loaded = self.loaded_channels
        return TeacherCopy(tuple(loaded.index(c) for c in self.teacher_channels), self.teacher_normalization)

    def teacher_positions(self) -> list[int] | None:
        """Positions of the teacher's inputs inside the held sample channels (None without distillation).

        Its own copy, held after the loaded channels, when it has one; else its channels among the loaded ones.
        """
        if self.teacher_channels is None:
            return None
        if self.teacher_normalization is None:
            return self.positions(self.teacher_channels)
        start = len(self.loaded_channels)
        return neighbour_positions(list(range(start, start + len(self.teacher_channels))), self.neighbours)


def build_bundle(cfg: RunConfig) -> DataBundle:
    """Read the dataset and fix the split and channels of a run."""
    index = open_dataset(cfg.data)
    if cfg.data.labels:
        missing = [k for k in cfg.data.labels if k not in index.labels]
        if missing:
            raise ConfigError(f"data.labels: {missing[0]!r} is not a label of {index.root} ({list(index.labels)})")
    split_facts: dict[str, Any] = {}
    split = make_split(index, cfg.data.split, split_facts)
    if cfg.data.max_cases:
        split = {k: v[: cfg.data.max_cases] for k, v in split.items()}
    pool = list(split["train"])
    split["train"] = subsample_cases(pool, cfg.data.train_fraction, cfg.seed, cfg.data.split.group_pattern)
    channels = index.channel_indices(cfg.data.channels)
    teacher_channels = None
    if cfg.distill is not None:
        teacher_channels = index.channel_indices(cfg.data.teacher_channels or cfg.data.channels)
    class_names = [name for name, _ in sorted(index.labels.items(), key=lambda kv: kv[1])]
    meta: dict[str, Any] = {"protocol": _protocol(cfg.data), "train_fraction": cfg.data.train_fraction,
                            **split_facts}
    if cfg.data.train_fraction < 1.0:
        meta["train_pool"] = pool
    unlabeled = _unlabeled_record(cfg.data, pool, split["train"])
    if unlabeled:
        meta["unlabeled"] = unlabeled
    return DataBundle(index, split, channels, teacher_channels, class_names, cfg.data.neighbours, meta)


def _unlabeled_record(data: DataConfig, pool: list[str], train: list[str]) -> dict[str, Any]:
    """Which images a run distills on without labels (recorded in ``split.json`` under ``unlabeled``)."""
    record: dict[str, Any] = {}
    if data.unlabeled_left_out:
        chosen = set(train)
        record["left_out"] = [cid for cid in pool if cid not in chosen]
    if data.unlabeled is not None:
        extra = read_dataset(data.unlabeled, "auto")
        record["folder"] = str(extra.root)
        record["folder_cases"] = sorted(c.case_id for c in extra.cases)
    if record:
        record["ratio"] = data.unlabeled_ratio
    return record


class SliceSource:
    """2D training samples: every slice of the training volumes, resized to a fixed size."""

    spatial_dims = 2

    def __init__(self, cases: list[PreparedCase], size: tuple[int, int], foreground_only: bool = False):
        self.images, self.labels, self.origin = slice_samples(cases, size, foreground_only)

    @classmethod
    def from_arrays(cls, images: torch.Tensor, labels: torch.Tensor, origin: list[tuple[str, int]]) -> SliceSource:
        """A source of given samples (e.g. read back from :mod:`medkd.data.prepared`)."""
        source = cls.__new__(cls)
        source.images, source.labels, source.origin = images, labels, origin
        return source

    def __len__(self) -> int:
        return self.images.shape[0]

    def samples(self, indices: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[indices], self.labels[indices].long()

    @property
    def deterministic(self) -> bool:
        """Sample ``i`` is always the same tensor (before augmentation)."""
        return True

    def cache_keys(self, indices: torch.Tensor) -> torch.Tensor:
        """Which distinct input each sample index shows (for the teacher-output cache)."""
        return indices

    @property
    def num_distinct(self) -> int:
        return len(self)


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

    @property
    def deterministic(self) -> bool:
        """True when every patch is its whole (resized / padded) volume, so samples never vary."""
        return all(tuple(v.shape[1:]) == self.patch for v in self.volumes)

    def cache_keys(self, indices: torch.Tensor) -> torch.Tensor:
        return indices % len(self.volumes)

    @property
    def num_distinct(self) -> int:
        return len(self.volumes)

    def samples(self, indices: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        imgs, labs = [], []
        for i in indices.tolist():
            v = i % len(self.volumes)
            x, y, z = self._corner(v, generator)
            px, py, pz = self.patch
            imgs.append(self.volumes[v][:, x:x + px, y:y + py, z:z + pz])
            labs.append(self.labels[v][:, x:x + px, y:y + py, z:z + pz])
        return torch.stack(imgs), torch.stack(labs)


class ImageSliceSource(SliceSource):
    """2D slices of volumes read WITHOUT their labels (distillation on images without labels).

    Label files are never opened; :meth:`samples` returns labels filled with -1 ("no label").
    """

    def __init__(self, images: list[torch.Tensor], size: tuple[int, int]):
        slices = []
        for vol in images:
            depth = vol.shape[-1] if vol.ndim == 4 else 1
            for z in range(depth):
                slices.append(resize_image(vol[..., z] if vol.ndim == 4 else vol, size))
        if not slices:
            raise ConfigError("data.unlabeled: no images without labels to distill on")
        self.images = torch.stack(slices).float()
        self.labels = torch.full((self.images.shape[0], 1, *self.images.shape[2:]), -1, dtype=torch.long)


def build_unlabeled_source(cfg: RunConfig, bundle: DataBundle) -> ImageSliceSource | None:
    """The run's images without labels (left-out training cases, ``data.unlabeled`` folder), or None.

    Images pass the run's preprocessing with the channels of :attr:`DataBundle.loaded_channels` (looked up by
    name in the extra folder), plus the teacher's own copy when it has one; labels are never read.
    """
    record = bundle.meta.get("unlabeled")
    if not record:
        return None
    names = [bundle.index.channel_names[i] for i in bundle.loaded_channels]
    jobs = [(bundle.index, cid, bundle.loaded_channels) for cid in record.get("left_out", [])]
    if "folder" in record:
        extra = read_dataset(record["folder"], "auto")
        jobs += [(extra, cid, extra.channel_indices(names)) for cid in record["folder_cases"]]
    bar = tqdm(jobs, desc="loading images without labels", disable=None if cfg.train.progress else True,
               leave=False, dynamic_ncols=True)
    copy = bundle.teacher_copy
    volumes = [_image_only(index, cid, channels, cfg.data, copy) for index, cid, channels in bar]
    return ImageSliceSource(volumes, tuple(cfg.data.size))


def _image_only(index: DatasetIndex, case_id: str, channels: list[int], data: DataConfig,
                teacher: TeacherCopy | None = None) -> torch.Tensor:
    """One case's preprocessed image (C, *spatial); its label file, if any, is never opened."""
    case = dataclasses.replace(index.case(case_id), label_file=None)
    image, _, affine = load_case(case, channels, index=index)
    return torch.from_numpy(prepare_arrays(case_id, case.site, image, None, affine, data, teacher).image)


def build_train_source(cfg: RunConfig, bundle: DataBundle) -> SliceSource | PatchSource:
    """Prepare the training cases of a run as a sample source.

    2D runs read their slices from the prepared-sample cache (:mod:`medkd.data.prepared`, ``data.prepared``)
    when it holds them, and write it otherwise; 3D runs (random patches) always prepare their volumes here.
    Samples hold the teacher's own copy of its channels after the loaded ones when it has one.
    """
    progress = "loading training cases" if cfg.train.progress else None
    copy = bundle.teacher_copy
    if cfg.data.dim == 2:
        images, labels, origin, _ = prepared_slices(cfg.data, bundle.index, bundle.split["train"],
                                                    bundle.loaded_channels, progress=progress, teacher=copy,
                                                    compact_labels=True)
        return SliceSource.from_arrays(images, labels, origin)
    cases = prepare_cases(bundle.index, bundle.split["train"], bundle.loaded_channels, cfg.data, progress=progress,
                          teacher=copy)
    vol = tuple(cfg.data.volume_size) if cfg.data.volume_size else None
    return PatchSource(cases, tuple(cfg.data.size), vol, cfg.data.patches_per_case)


def iter_batches(source: SliceSource | PatchSource, batch_size: int, generator: torch.Generator,
                 rank: int = 0, world_size: int = 1, max_batches: int | None = None
                 ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield (images, labels) batches in a seeded random order; incomplete last batches are dropped.

    With ``world_size > 1`` each rank takes its own interleaved share of every global batch of
    ``batch_size * world_size`` samples, so the union over ranks equals the single-process batch.
    """
    for _, images, labels in iter_indexed_batches(source, batch_size, generator, rank, world_size, max_batches):
        yield images, labels


def iter_indexed_batches(source: SliceSource | PatchSource, batch_size: int, generator: torch.Generator,
                         rank: int = 0, world_size: int = 1, max_batches: int | None = None
                         ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """As :func:`iter_batches`, also yielding the sample indices of each batch first."""
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
        images, labels = source.samples(idx, generator)
        yield idx, images, labels
