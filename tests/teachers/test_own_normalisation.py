"""An nnU-Net teacher reads nnU-Net's own normalisation of its channels, whatever the student's preprocessing.

Expected values are worked out here by hand from the raw case (NumPy), then resized with the same resize the
pipeline uses, and compared with what the data path, the batches and the teacher cache give.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from medkd.config import DataConfig
from medkd.data.augment import apply_ops, draw_ops
from medkd.data.loader import build_bundle, build_train_source, build_unlabeled_source
from medkd.data.pipeline import TeacherCopy, load_case, prepare_arrays, resize_image
from medkd.errors import ConfigError
from medkd.teachers import TeacherInputs, load_teacher, teacher_input_normalization
from medkd.teachers.nnunet_norm import nnunet_normalization
from medkd.train.batches import assemble_batch
from medkd.train.setup import build_parts
from medkd.train.trainer import train

LABELS = {"background": 0, "organ": 1, "lesion": 2}
QUICK = {"epochs": 1, "batch_size": 4, "max_steps_per_epoch": 2, "progress": False, "grad_norm_every": None}
#: CT numbers inside the synthetic intensities (about 0 .. 1.3), so that the clipping bites.
CT = {"percentile_00_5": 0.2, "percentile_99_5": 0.9, "mean": 0.5, "std": 0.25}


def _zscore(x: np.ndarray) -> np.ndarray:
    return (x - x.mean()) / x.std()


def _ct(x: np.ndarray) -> np.ndarray:
    """nnU-Net's CTNormalization with the numbers of ``CT``, by hand."""
    return (np.clip(x, CT["percentile_00_5"], CT["percentile_99_5"]) - CT["mean"]) / CT["std"]


def _raw_slices(bundle, origin, channel: str) -> list[np.ndarray]:
    """The raw intensities of ``channel`` in each (case, slice), as read from the files: (1, X, Y) float64."""
    out = []
    for cid, z in origin:
        image, _, _ = load_case(bundle.index.case(cid), [bundle.index.channel_names.index(channel)],
                                bundle.index.labels, index=bundle.index)
        out.append(image[..., z].astype(np.float64))
    return out


def _expected(raws, fn, size) -> torch.Tensor:
    """``fn`` of every raw slice, resized to ``size`` as the pipeline resizes: (N, 1, *size)."""
    return torch.stack([resize_image(torch.from_numpy(fn(r).astype(np.float32)), size) for r in raws])


def _student(bundle, data: DataConfig, origin, size) -> torch.Tensor:
    """medkd's preprocessing of the student's channels (no teacher copy), resized."""
    out = []
    for cid, z in origin:
        case = bundle.index.case(cid)
        image, label, affine = load_case(case, bundle.channels, bundle.index.labels, index=bundle.index)
        prepared = prepare_arrays(cid, case.site, image, label, affine, data)
        out.append(resize_image(torch.from_numpy(prepared.image[..., z]), size))
    return torch.stack(out)


def test_schemes_equal_nnunets_by_hand():
    rng = np.random.default_rng(0)
    image = rng.normal(3.0, 2.0, (3, 6, 5)).astype(np.float32)
    image[:, :2] = 0.0  # background of every channel: outside nnU-Net's non-zero mask
    image[1, 4, 4] = 0.0  # zero in one channel only: inside the mask (another channel is non-zero there)
    # teacher channels (its order): A masked ZScore, B CT, C RescaleTo01; given order: C, unread, A
    norm = nnunet_normalization(["ZScoreNormalization", "CTNormalization", "RescaleTo01Normalization"],
                                [True, False, False], {"1": {"percentile_00_5": 1.0, "percentile_99_5": 4.0,
                                                             "mean": 2.0, "std": 0.5}},
                                ["A", "B", "C"], [2, 3, 0], 4, "distill.teacher.nnunet x")
    given = np.stack([image[2], image[0] * 7, image[0], image[1]])
    got = norm(given)
    inside = np.zeros((6, 5), bool)
    inside[2:] = True
    a = image[0].astype(np.float64)
    want_a = np.zeros_like(a)
    want_a[inside] = (a[inside] - a[inside].mean()) / a[inside].std()
    c = image[2] - image[2].min()
    assert np.allclose(got[2], want_a, atol=1e-5) and np.all(got[2][~inside] == 0)
    assert np.allclose(got[3], (np.clip(image[1], 1.0, 4.0) - 2.0) / 0.5, atol=1e-6)
    assert np.allclose(got[0], c / c.max(), atol=1e-6) and got[0].max() == pytest.approx(1.0)
    assert np.array_equal(got[1], given[1])  # a channel the teacher does not read is left as it is
    assert got.dtype == np.float32 and np.array_equal(given[1], image[0] * 7)  # input untouched
    rgb = nnunet_normalization(["RGBTo0_1Normalization", "NoNormalization"], [], {}, ["R", "X"], [0, 1], 2, "w")
    assert np.allclose(rgb(np.full((2, 2, 2), 51.0)), [[[0.2] * 2] * 2, [[51.0] * 2] * 2])


def test_unknown_schemes_and_missing_ct_numbers_are_one_line_errors():
    with pytest.raises(ConfigError, match="channel 'T2' uses the normalisation 'Magic', which medkd does not know"):
        nnunet_normalization(["Magic"], [False], {}, ["T2"], [0], 1, "distill.teacher.nnunet x")
    with pytest.raises(ConfigError, match="lacks percentile_00_5, percentile_99_5, mean, std for the "
                                          "CTNormalization channel 'CT'"):
        nnunet_normalization(["CTNormalization"], [False], {"0": {"mean": 1.0}}, ["CT"], [0], 1, "x")


def test_the_copy_is_cropped_like_the_students_image():
    rng = np.random.default_rng(1)
    raw = np.zeros((1, 10, 9, 4), np.float32)
    raw[0, 2:7, 3:8, 1:3] = rng.uniform(100.0, 300.0, (5, 5, 2))
    data = DataConfig(root=".", dim=3, size=[4, 4, 2], crop_foreground=True, normalize="percentile")
    norm = nnunet_normalization(["ZScoreNormalization"], [False], {}, ["T1"], [0], 1, "x")
    pc = prepare_arrays("c", None, raw, None, np.eye(4), data, TeacherCopy((0,), norm))
    box = raw[0, 2:7, 3:8, 1:3].astype(np.float64)
    assert pc.image.shape == (2, 5, 5, 2)
    assert np.allclose(pc.image[1], _zscore(box), atol=1e-5)  # nnU-Net's z-score of the cropped raw case
    assert pc.image[0].min() == pytest.approx(0.0) and pc.image[0].max() == pytest.approx(1.0)  # medkd's


def test_zscore_teacher_batches_while_the_student_clips_and_zscores_its_nonzero(synth2d, tmp_path, make,
                                                                                make_run_config):
    folder, _ = make.nnunet(tmp_path, ["T2"], LABELS)
    data = {"normalize": "zscore_nonzero", "clip_percentiles": [2.0, 98.0], "prepared_dir": str(tmp_path / "prep"),
            "augment": {"flip": True, "rot90": True, "intensity": 0.2}}
    distill = {"teacher": {"nnunet": str(folder)}, "terms": [{"loss": "logits_kl", "weight": 1.0}]}
    cfg = make_run_config(synth2d, name="own_norm", train=QUICK, data=data, distill=distill)
    parts = build_parts(cfg, tmp_path / "run", device="cpu")
    source, bundle = parts.data.source, parts.data.bundle
    assert parts.data.tea_pos == [1] and parts.data.stu_pos == [0] and source.images.shape[1] == 2
    idx = torch.tensor([0, 3, 5, 2])
    gen = torch.Generator().manual_seed(7)
    replay = torch.Generator().manual_seed(7)
    batch, cached = assemble_batch(parts, idx, source.images[idx], source.labels[idx], gen)
    ops = draw_ops(4, 2, cfg.data.augment, replay)
    scale = 1 + 0.2 * torch.randn((4, 1, 1, 1), generator=replay)
    shift = 0.2 * torch.randn((4, 1, 1, 1), generator=replay)
    origin = [source.origin[i] for i in idx.tolist()]
    teacher = _expected(_raw_slices(bundle, origin, "T2"), _zscore, (32, 32))
    student = _student(bundle, cfg.data, origin, (32, 32))
    assert cached is None and bool(ops.any())
    assert torch.allclose(batch["teacher_image"], apply_ops(teacher, ops), atol=1e-5)  # no intensity jitter
    assert torch.allclose(batch["image"], apply_ops(student, ops) * scale + shift, atol=1e-5)
    assert not torch.allclose(teacher, student, atol=0.1)  # the two preprocessings really differ


def test_ct_teacher_reads_its_plan_numbers_while_the_student_is_zscored(synth2d, tmp_path, make, make_run_config):
    folder, _ = make.nnunet(tmp_path, ["T2"], LABELS, schemes=["CTNormalization"])
    plans = json.loads((folder / "plans.json").read_text())
    plans["foreground_intensity_properties_per_channel"]["0"] = CT
    (folder / "plans.json").write_text(json.dumps(plans))
    distill = {"teacher": {"nnunet": str(folder)}, "terms": [{"loss": "logits_kl", "weight": 1.0}]}
    data = {"prepared": "off", "train_fraction": 0.5, "unlabeled_left_out": True}
    cfg = make_run_config(synth2d, name="ct", data=data, distill=distill)
    bundle = build_bundle(cfg)
    inputs = TeacherInputs(1, 3, 2, ["T2"], list(LABELS))
    bundle.teacher_normalization = teacher_input_normalization(cfg.distill.teacher, inputs)
    source = build_train_source(cfg, bundle)
    want = _expected(_raw_slices(bundle, source.origin, "T2"), _ct, (32, 32))
    assert torch.allclose(source.images[:, bundle.teacher_positions()], want, atol=1e-5)
    assert want.min() == pytest.approx(-1.2, abs=1e-5) and want.max() == pytest.approx(1.6, abs=1e-5)
    assert torch.allclose(source.images[:, bundle.positions(bundle.channels)],
                          _student(bundle, cfg.data, source.origin, (32, 32)), atol=1e-6)
    unlabeled = build_unlabeled_source(cfg, bundle)  # images without labels carry the copy too
    left_out = [(cid, 0) for cid in bundle.meta["unlabeled"]["left_out"]]
    assert len(left_out) >= 2 and unlabeled.images.shape[1] == 2
    assert torch.allclose(unlabeled.images[:, [1]], _expected(_raw_slices(bundle, left_out, "T2"), _ct, (32, 32)),
                          atol=1e-5)
    teacher = load_teacher(cfg.distill.teacher, 1, 3, 2, inputs)
    assert teacher.input_normalization == bundle.teacher_normalization and teacher.intensity is None


@pytest.mark.parametrize("cache", [False, True])
def test_distillation_runs_on_the_teachers_own_copy(cache, synth2d, tmp_path, make, make_run_config):
    folder, _ = make.nnunet(tmp_path, ["T2"], LABELS)
    data = {"normalize": "minmax", "prepared": "off", "augment": {"flip": True}}
    distill = {"teacher": {"nnunet": str(folder)}, "cache": cache,
               "terms": [{"loss": "logits_kl", "weight": 1.0},
                         {"loss": "feature_mse", "weight": 0.5, "tap": "bottleneck"}]}
    cfg = make_run_config(synth2d, name=f"own_{cache}", train=QUICK, data=data, distill=distill)
    train(cfg, tmp_path / "run", device="cpu")
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines() if x.strip()]
    kd = [r["kd/logits_kl@logits"] for r in lines if r.get("kind") == "step"]
    assert len(kd) == 2 and all(math.isfinite(v) and v > 0 for v in kd)
    if not cache:
        return
    parts = build_parts(cfg, tmp_path / "probe", device="cpu")  # reuses nothing: a new folder, a new cache
    source, tea_pos, teacher = parts.data.source, parts.data.tea_pos, parts.nets.teacher
    keys = torch.arange(3)
    with torch.no_grad():
        own = teacher(source.images[keys][:, tea_pos])
        medkd = teacher(source.images[keys][:, parts.data.stu_pos])  # the student's minmax view of T2
    logits = parts.cache.get(keys)["logits"]
    assert torch.allclose(logits, own, atol=2e-2) and not torch.allclose(logits, medkd, atol=0.1)


def test_data_prepare_builds_the_cache_a_run_with_an_nnunet_teacher_reuses(synth2d, tmp_path, make,
                                                                          make_run_config):
    from typer.testing import CliRunner

    from medkd.cli import app
    from medkd.config import save_config

    folder, _ = make.nnunet(tmp_path, ["T2"], LABELS)
    cache = tmp_path / "prep"
    data = {"normalize": "minmax", "prepared_dir": str(cache)}
    distill = {"teacher": {"nnunet": str(folder)}, "terms": [{"loss": "logits_kl", "weight": 1.0}]}
    cfg = make_run_config(synth2d, name="prep_nnunet", train=QUICK, data=data, distill=distill)
    config = tmp_path / "run.yaml"
    save_config(cfg, config)
    result = CliRunner().invoke(app, ["data", "prepare", str(config)])
    assert result.exit_code == 0 and "(written)" in result.output, result.output
    written = sorted(p for p in cache.iterdir() if not p.name.startswith("."))
    train(cfg, tmp_path / "run", device="cpu")
    after = sorted(p for p in cache.iterdir() if not p.name.startswith("."))
    assert len(written) == 2 and after == written  # the training slices and validation cases, both reused
