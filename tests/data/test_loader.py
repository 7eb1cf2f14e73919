"""Run data: open_dataset (label map, simulated sites), DataBundle channels / record, train sources, batches."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from medkd.config import parse_config
from medkd.data.loader import (
    PatchSource,
    SliceSource,
    build_bundle,
    build_train_source,
    iter_batches,
    open_dataset,
)
from medkd.data.nifti_io import write_nifti
from medkd.errors import ConfigError


def _dataset(root: Path, n: int = 8, channels: int = 2, depth: int = 4) -> Path:
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    (root / "dataset.json").write_text(json.dumps({
        "channel_names": {str(c): name for c, name in enumerate(["FLAIR", "T1c", "T2"][:channels])},
        "labels": {"background": 0, "core": 1, "rim": 2}, "file_ending": ".nii.gz"}))
    rng = np.random.default_rng(0)
    for i in range(n):
        for c in range(channels):
            write_nifti(root / "imagesTr" / f"p{i:02d}_{c:04d}.nii.gz",
                        rng.uniform(1, 5, size=(16, 12, depth)).astype(np.float32))
        lab = np.zeros((16, 12, depth), dtype=np.uint8)
        lab[4:12, 3:9] = 2
        lab[6:10, 5:7] = 1
        write_nifti(root / "labelsTr" / f"p{i:02d}.nii.gz", lab)
    return root


@pytest.fixture(scope="module")
def ds(tmp_path_factory) -> Path:
    return _dataset(tmp_path_factory.mktemp("loader") / "ds")


def _cfg(root: Path, data: dict | None = None, **top):
    return parse_config({"data": {"root": str(root), "dim": 2, "size": [16, 12],
                                  "split": {"val": 0.25, "test": 0.25, "seed": 0}, **(data or {})},
                         "model": {"name": "unet_s1"}, **top})


def test_open_dataset_applies_label_map_and_simulated_sites(ds):
    cfg = _cfg(ds, {"label_map": {2: 1}, "simulate_sites": {"k": 2, "seed": 3}})
    index = open_dataset(cfg.data)
    assert index.labels == {"background": 0, "core": 1}
    assert index.sites == ["site1", "site2"]
    assert index.meta["label_map"] == {"2": 1}
    assert index.meta["simulated_sites"]["cases_per_site"] == {"site1": 4, "site2": 4}


def test_bundle_records_fraction_protocol_and_simulated_site_parameters(ds):
    cfg = _cfg(ds, {"train_fraction": 0.5, "simulate_sites": {"k": 2, "seed": 3}, "channels": ["T1c"]})
    bundle = build_bundle(cfg)
    record = bundle.record()
    assert set(bundle.split["train"]) <= set(record["train_pool"])
    assert len(bundle.split["train"]) == round(0.5 * len(record["train_pool"]))
    assert record["train_fraction"] == 0.5
    assert record["protocol"] == {"kind": "random", "val": 0.25, "test": 0.25, "seed": 0, "group_pattern": None}
    sims = record["dataset_meta"]["simulated_sites"]
    assert [p["name"] for p in sims["profiles"]] == ["site1", "site2"]
    assert record["in_channels"] == 1 and record["teacher_in_channels"] is None
    json.dumps(record)  # JSON-ready for split.json
    assert all(bundle.index.case(c).site in ("site1", "site2") for c in bundle.split["test"])


def test_bundle_channels_with_neighbours_and_teacher(ds):
    cfg = _cfg(ds, {"channels": ["T1c"], "teacher_channels": ["FLAIR", "T1c"], "neighbours": 1},
               distill={"teacher": {"run": "unused"}})
    bundle = build_bundle(cfg)
    assert bundle.channels == [1] and bundle.teacher_channels == [0, 1]
    assert bundle.loaded_channels == [1, 0]
    assert bundle.in_channels == 3 and bundle.teacher_in_channels == 6
    assert bundle.positions(bundle.channels) == [0, 1, 2]
    assert bundle.positions(bundle.teacher_channels) == [3, 4, 5, 0, 1, 2]
    source = build_train_source(cfg, bundle)
    assert isinstance(source, SliceSource)
    assert source.images.shape[1:] == (6, 16, 12)
    student = source.images[:, bundle.positions(bundle.channels)]
    teacher = source.images[:, bundle.positions(bundle.teacher_channels)]
    assert student.shape[1] == 3 and teacher.shape[1] == 6
    # the student's slices are the teacher's T1c slices (teacher order: FLAIR z-1, z, z+1, T1c z-1, z, z+1)
    assert torch.equal(student, teacher[:, 3:])
    assert not torch.equal(student, teacher[:, :3])


def test_fold_protocol_is_recorded(ds):
    bundle = build_bundle(_cfg(ds, {"split": {"folds": 4, "fold": 1, "val": 0.0}}))
    assert bundle.record()["protocol"]["kind"] == "kfold"
    assert len(bundle.split["test"]) == 2 and bundle.split["val"] == []


def test_train_source_uses_preprocessing(ds):
    cfg = _cfg(ds, {"center_crop": [8, 8, 0], "size": [8, 8], "normalize": "none"})
    bundle = build_bundle(cfg)
    source = build_train_source(cfg, bundle)
    assert source.images.shape[1:] == (2, 8, 8)
    assert int(source.labels.max()) == 2 and (source.labels == 1).sum() > 0


def test_patch_source_and_seeded_batches(ds):
    cfg = parse_config({"data": {"root": str(ds), "dim": 3, "size": [8, 8, 4],
                                 "split": {"val": 0.0, "test": 0.25}}, "model": {"name": "unet3d_small"}})
    bundle = build_bundle(cfg)
    source = build_train_source(cfg, bundle)
    assert isinstance(source, PatchSource) and len(source) == 6 * 4
    a = list(iter_batches(source, 4, torch.Generator().manual_seed(0), max_batches=3))
    b = list(iter_batches(source, 4, torch.Generator().manual_seed(0), max_batches=3))
    assert len(a) == 3 and a[0][0].shape == (4, 2, 8, 8, 4) and a[0][1].shape == (4, 1, 8, 8, 4)
    for (xa, ya), (xb, yb) in zip(a, b):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    with pytest.raises(ConfigError, match="exceeds the 24 training samples"):
        next(iter_batches(source, 25, torch.Generator()))


def test_neighbours_need_2d():
    with pytest.raises(ConfigError, match="neighbours"):
        parse_config({"data": {"root": "x", "dim": 3, "size": [8, 8, 8], "neighbours": 1}, "model": {"name": "m"}})
