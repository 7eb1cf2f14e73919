"""Distillation on images without labels (data.unlabeled / data.unlabeled_left_out), the pseudo-label term,
gradient-norm logging and automatic term balancing, end to end with the trainer on tiny synthetic data."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch

import medkd.data.check as check_mod
import medkd.data.loader as loader_mod
import medkd.data.pipeline as pipeline_mod
import medkd.train.trainer as trainer_mod
from medkd.config import parse_config
from medkd.data.synthetic import generate_dataset
from medkd.errors import ConfigError
from medkd.evaluate.runner import evaluate_run
from medkd.run import RunFolder
from medkd.train.trainer import train

KL = {"loss": "logits_kl", "weight": 1.0, "temperature": 2.0}
KD = "kd/logits_kl@logits"  # the term's name in the logs


@pytest.fixture(scope="module")
def teacher_run(synth2d, tmp_path_factory, make_run_config):
    run = tmp_path_factory.mktemp("unlabeled") / "teacher"
    cfg = make_run_config(synth2d, name="teacher",
                          train={"epochs": 1, "batch_size": 4, "progress": False, "threads": 1})
    train(cfg, run, device="cpu")
    return run


@pytest.fixture(scope="module")
def extra_source(tmp_path_factory) -> Path:
    """A second small labelled synthetic dataset (other seed) to copy image folders from."""
    root = tmp_path_factory.mktemp("extra") / "src"
    generate_dataset(root, dim=2, cases=3, sites=1, modalities=1, seed=7, size=(40, 40))
    return root


def _image_folder(source: Path, out: Path, with_labels: bool) -> Path:
    """``out``: the source's images and a dataset.json with channel_names and labels; labelsTr only on request."""
    (out / "imagesTr").mkdir(parents=True)
    for f in sorted((source / "imagesTr").glob("*.nii.gz")):
        shutil.copy(f, out / "imagesTr" / f.name)
    meta = json.loads((source / "dataset.json").read_text())
    (out / "dataset.json").write_text(json.dumps({"channel_names": meta["channel_names"], "labels": meta["labels"],
                                                  "file_ending": ".nii.gz"}))
    if with_labels:
        shutil.copytree(source / "labelsTr", out / "labelsTr")
    return out


def _kd_dict(make_config, root, teacher, data=None, distill=None, train=None) -> dict:
    cfg = make_config(root, name="kd",
                      train={"epochs": 1, "batch_size": 2, "progress": False, "threads": 1, **(train or {})})
    cfg["data"].update(data or {})
    cfg["distill"] = {"teacher": {"run": str(teacher)}, "terms": [dict(KL)], **(distill or {})}
    return cfg


def _steps(run: Path) -> list[dict]:
    return [r for r in RunFolder(run).metrics() if r["kind"] == "step"]


def _record_reads(monkeypatch) -> list[Path]:
    """Every path the data pipeline (and the data check) reads, in order."""
    opened: list[Path] = []
    for module in (pipeline_mod, check_mod):
        real = module.read_image

        def spy(path, _real=real):
            opened.append(Path(path).resolve())
            return _real(path)

        monkeypatch.setattr(module, "read_image", spy)
    return opened


# ------------------------------------------------------------------------------------------------------------
# data.unlabeled: an extra image folder


def test_unlabeled_folder_without_any_label_files_trains(synth2d, teacher_run, extra_source, tmp_path,
                                                         make_config):
    folder = _image_folder(extra_source, tmp_path / "images_only", with_labels=False)
    assert not (folder / "labelsTr").exists()
    cfg = parse_config(_kd_dict(make_config, synth2d, teacher_run, data={"unlabeled": str(folder)},
                                distill={"pseudo_label": {"weight": 1.0, "threshold": 0.5}}))
    train(cfg, tmp_path / "run", device="cpu")
    record = json.loads((tmp_path / "run" / "split.json").read_text())["unlabeled"]
    assert record["folder_cases"] == ["synth_000", "synth_001", "synth_002"]


def test_unlabeled_folder_trains_evaluates_and_never_opens_its_labels(synth2d, teacher_run, extra_source, tmp_path,
                                                                     make_config, monkeypatch):
    # the folder has label files, which must stay closed
    folder = _image_folder(extra_source, tmp_path / "extra", with_labels=True)
    cfg = parse_config(_kd_dict(make_config, synth2d, teacher_run,
                                data={"unlabeled": str(folder), "unlabeled_ratio": 0.5},
                                distill={"pseudo_label": {"weight": 1.0, "threshold": 0.5}}))
    opened = _record_reads(monkeypatch)
    result = train(cfg, tmp_path / "run", device="cpu")
    monkeypatch.undo()
    split = json.loads((tmp_path / "run" / "split.json").read_text())
    assert split["unlabeled"]["folder"] == str(folder)
    assert split["unlabeled"]["folder_cases"] == ["synth_000", "synth_001", "synth_002"]
    assert split["unlabeled"]["ratio"] == 0.5
    assert "left_out" not in split["unlabeled"]
    extra_images = {f.resolve() for f in (folder / "imagesTr").iterdir()}
    extra_labels = {f.resolve() for f in (folder / "labelsTr").iterdir()}
    assert extra_images <= set(opened)  # the extra images were read ...
    assert not extra_labels & set(opened)  # ... their labels never
    steps = _steps(tmp_path / "run")
    assert steps and all("pseudo_label" in s and 0.0 <= s["pseudo_label_kept"] <= 1.0 for s in steps)
    assert all(math.isfinite(s["loss"]) for s in steps)
    assert math.isfinite(result.final_loss)
    summary = evaluate_run(tmp_path / "run", "test", "cpu", progress=False)
    assert summary["n_cases"] == len(split["test"]) > 0
    assert 0.0 <= summary["foreground_mean"]["dice"]["mean"] <= 1.0


# ------------------------------------------------------------------------------------------------------------
# data.unlabeled_left_out


def test_left_out_training_cases_are_distilled_without_their_labels(synth2d, teacher_run, tmp_path, make_config,
                                                                    monkeypatch):
    cfg = parse_config(_kd_dict(make_config, synth2d, teacher_run,
                                data={"train_fraction": 0.5, "unlabeled_left_out": True},
                                distill={"pseudo_label": {"weight": 1.0, "threshold": 0.5}}))
    opened = _record_reads(monkeypatch)
    real_load_case = pipeline_mod.load_case
    training_reads: list[Path] = []

    def load_case(case, *args, **kwargs):
        start = len(opened)
        out = real_load_case(case, *args, **kwargs)
        training_reads.extend(opened[start:])
        return out

    monkeypatch.setattr(pipeline_mod, "load_case", load_case)
    monkeypatch.setattr(loader_mod, "load_case", load_case)
    train(cfg, tmp_path / "run", device="cpu")
    monkeypatch.undo()

    split = json.loads((tmp_path / "run" / "split.json").read_text())
    pool, chosen = split["train_pool"], split["train"]
    left_out = split["unlabeled"]["left_out"]
    assert left_out == [c for c in pool if c not in set(chosen)]
    assert left_out and chosen and not set(left_out) & set(chosen)
    assert set(left_out) | set(chosen) == set(pool)
    assert split["unlabeled"]["ratio"] == 1.0 and "folder" not in split["unlabeled"]
    labels = {c: (synth2d / "labelsTr" / f"{c}.nii.gz").resolve() for c in pool}
    images = {c: (synth2d / "imagesTr" / f"{c}_0000.nii.gz").resolve() for c in pool}
    assert all(images[c] in training_reads for c in left_out)  # the left-out images are read for distillation
    assert all(labels[c] in training_reads for c in chosen)  # labelled training cases: labels read
    assert not {labels[c] for c in left_out} & set(training_reads)  # left-out cases: their labels never are
    assert not {labels[c] for c in left_out} & set(opened)  # not even by the data check before training
    others = split["val"] + split["test"] + chosen
    assert all((synth2d / "labelsTr" / f"{c}.nii.gz").resolve() in opened for c in others)  # it reads all others
    steps = _steps(tmp_path / "run")
    assert steps and all(math.isfinite(s["pseudo_label"]) for s in steps)


def test_step_records_carry_pseudo_label_and_grad_norms_on_measured_steps(synth2d, teacher_run, tmp_path,
                                                                           make_config):
    cfg = parse_config(_kd_dict(make_config, synth2d, teacher_run,
                                data={"train_fraction": 0.5, "unlabeled_left_out": True},
                                distill={"pseudo_label": {"weight": 0.5, "threshold": 0.4}},
                                train={"epochs": 2, "grad_norm_every": 2}))
    train(cfg, tmp_path / "run", device="cpu")
    steps = _steps(tmp_path / "run")
    assert len(steps) >= 4
    for rec in steps:
        assert math.isfinite(rec["pseudo_label"]) and 0.0 <= rec["pseudo_label_kept"] <= 1.0
        gn = {k for k in rec if k.startswith("gn/")}
        # "step" in a record counts steps done, so the step measured at count s (s % 2 == 0) logs step s + 1
        if (rec["step"] - 1) % 2 == 0:
            assert gn == {"gn/seg", f"gn/{KD}", "gn/pseudo_label"}, rec["step"]
            assert all(math.isfinite(rec[k]) and rec[k] >= 0 for k in gn)
            assert rec["gn/seg"] > 0 and rec[f"gn/{KD}"] > 0
        else:
            assert not gn, rec["step"]
    assert any(rec["pseudo_label_kept"] < 1.0 for rec in steps)  # threshold 0.4: some pixels unsure
    # the threshold matters: at 0 every pixel is kept
    lenient = parse_config(_kd_dict(make_config, synth2d, teacher_run,
                                    data={"train_fraction": 0.5, "unlabeled_left_out": True},
                                    distill={"pseudo_label": {"weight": 0.5, "threshold": 0.0}}))
    train(lenient, tmp_path / "lenient", device="cpu")
    assert all(s["pseudo_label_kept"] == 1.0 for s in _steps(tmp_path / "lenient"))


def test_pseudo_labels_alone_train_without_any_distillation_term(synth2d, teacher_run, tmp_path, make_config):
    """``distill.terms: []`` with ``pseudo_label``: the teacher only labels the unlabelled images (self-training)."""
    cfg = parse_config(_kd_dict(make_config, synth2d, teacher_run,
                                data={"train_fraction": 0.5, "unlabeled_left_out": True},
                                distill={"terms": [], "pseudo_label": {"weight": 1.0, "threshold": 0.0}},
                                train={"epochs": 2, "grad_norm_every": 1}))
    train(cfg, tmp_path / "run", device="cpu")
    steps = _steps(tmp_path / "run")
    # threshold 0: every pixel of the barely trained teacher counts, so the term is never empty
    assert steps and all(s["pseudo_label_kept"] == 1.0 and s["pseudo_label"] > 0 for s in steps)
    assert not any(k.startswith(("kd/", "gn/kd/")) for s in steps for k in s)  # no distillation term at all
    assert all({k for k in s if k.startswith("gn/")} == {"gn/seg", "gn/pseudo_label"} for s in steps)


def test_no_grad_norms_without_distillation_or_when_switched_off(synth2d, teacher_run, tmp_path, make_config,
                                                               make_run_config):
    train(make_run_config(synth2d, train={"epochs": 1, "batch_size": 4, "progress": False, "threads": 1,
                                          "grad_norm_every": 1}), tmp_path / "plain", device="cpu")
    assert not any(k.startswith("gn/") for s in _steps(tmp_path / "plain") for k in s)
    cfg = parse_config(_kd_dict(make_config, synth2d, teacher_run, train={"grad_norm_every": None}))
    train(cfg, tmp_path / "off", device="cpu")
    steps = _steps(tmp_path / "off")
    assert steps and not any(k.startswith("gn/") for s in steps for k in s)
    assert not any(k.startswith("pseudo_label") for s in steps for k in s)  # no unlabelled images: no term


# ------------------------------------------------------------------------------------------------------------
# config errors


def _error(data: dict) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_config_errors_name_the_key(synth2d, make_config, tmp_path):
    teacher = {"run": str(tmp_path / "teacher")}
    no_distill = make_config(synth2d)
    no_distill["data"].update(unlabeled_left_out=True, train_fraction=0.5)
    assert "data.unlabeled_left_out" in _error(no_distill)

    whole_pool = make_config(synth2d)
    whole_pool["data"].update(unlabeled_left_out=True)
    whole_pool["distill"] = {"teacher": teacher, "terms": [dict(KL)]}
    message = _error(whole_pool)
    assert "data.unlabeled_left_out" in message and "train_fraction" in message

    no_images = make_config(synth2d)
    no_images["distill"] = {"teacher": teacher, "terms": [dict(KL)], "pseudo_label": {"weight": 1.0}}
    assert "distill.pseudo_label" in _error(no_images)

    folder_no_distill = make_config(synth2d)
    folder_no_distill["data"]["unlabeled"] = str(tmp_path)
    assert "data.unlabeled" in _error(folder_no_distill)

    no_images_to_mix = make_config(synth2d)
    no_images_to_mix["distill"] = {"teacher": teacher, "terms": [dict(KL)], "cutmix": {"prob": 0.5}}
    assert "distill.cutmix" in _error(no_images_to_mix)

    # the valid combinations parse
    ok = make_config(synth2d)
    ok["data"].update(unlabeled_left_out=True, train_fraction=0.5)
    ok["distill"] = {"teacher": teacher, "terms": [dict(KL)], "pseudo_label": {"weight": 1.0, "threshold": 0.8}}
    assert parse_config(ok).distill.pseudo_label.threshold == 0.8


# ------------------------------------------------------------------------------------------------------------
# teacher cache on the pseudo-label path


def test_cached_and_live_teacher_agree_on_unlabelled_images(synth2d, teacher_run, tmp_path, make_config):
    runs = {}
    for cache in (False, True):
        data = _kd_dict(make_config, synth2d, teacher_run,
                        # no flips: with them the cache gives aug(teacher(x)), not teacher(aug(x)) (documented)
                        data={"train_fraction": 0.5, "unlabeled_left_out": True,
                              "augment": {"flip": False, "rot90": False}},
                        distill={"cache": cache, "pseudo_label": {"weight": 1.0, "threshold": 0.5}})
        name = "cached" if cache else "live"
        train(parse_config(data), tmp_path / name, device="cpu")
        runs[name] = _steps(tmp_path / name)
    assert (tmp_path / "cached" / "teacher_cache" / "index.json").is_file()
    assert len(runs["live"]) == len(runs["cached"]) > 0
    for live, cached in zip(runs["live"], runs["cached"]):
        assert cached[KD] == pytest.approx(live[KD], rel=5e-3, abs=1e-4)
        assert cached["pseudo_label"] == pytest.approx(live["pseudo_label"], rel=5e-3, abs=2e-3)
        assert cached["pseudo_label_kept"] == pytest.approx(live["pseudo_label_kept"], abs=0.01)


def test_cutmix_mixes_the_images_without_labels_only(synth2d, teacher_run, tmp_path, make_config, monkeypatch):
    """Same seed with and without distill.cutmix: the first step's labelled images are identical, its images
    without labels and the cached teacher logits are not; both runs train to the end."""
    firsts: dict[str, tuple] = {}
    real_step = trainer_mod.train_step

    def spy(ctx, batch, n_labelled, cached=None, measure=False):
        firsts.setdefault(name, (batch["image"].clone(), n_labelled, cached["logits"].clone()))
        return real_step(ctx, batch, n_labelled, cached, measure)

    monkeypatch.setattr(trainer_mod, "train_step", spy)
    for mix in (None, {"prob": 1.0, "area": 0.5}):
        distill = {"cache": True, "pseudo_label": {"weight": 1.0, "threshold": 0.5}, **({"cutmix": mix} if mix else {})}
        data = _kd_dict(make_config, synth2d, teacher_run, data={"train_fraction": 0.5, "unlabeled_left_out": True},
                        distill=distill, train={"batch_size": 4})
        name = "cutmix" if mix else "plain"
        assert math.isfinite(train(parse_config(data), tmp_path / name, device="cpu").final_loss)
    (plain, n_lab, plain_t), (mixed, n_lab2, mixed_t) = firsts["plain"], firsts["cutmix"]
    assert n_lab == n_lab2 == 4 and plain.shape == mixed.shape and plain.shape[0] > n_lab
    assert torch.equal(mixed[:n_lab], plain[:n_lab]) and torch.equal(mixed_t[:n_lab], plain_t[:n_lab])
    for i in range(n_lab, plain.shape[0]):
        assert not torch.equal(mixed[i], plain[i]) and not torch.equal(mixed_t[i], plain_t[i])


# ------------------------------------------------------------------------------------------------------------
# distill.balance


def test_balance_caps_a_huge_term(synth2d, teacher_run, tmp_path, make_config):
    data = _kd_dict(make_config, synth2d, teacher_run,
                    distill={"terms": [{**KL, "weight": 1000.0}],
                             "balance": {"mode": "cap", "target": 0.5, "every": 1, "momentum": 0.5}},
                    train={"epochs": 2, "batch_size": 4, "grad_norm_every": None})
    result = train(parse_config(data), tmp_path / "run", device="cpu")
    assert math.isfinite(result.final_loss)
    steps = _steps(tmp_path / "run")
    assert len(steps) >= 3 and all("gn/seg" in s for s in steps)  # every: 1 measures every step
    first = steps[0]
    # first measurement: the weighted term's norm is far above 0.5 x seg, so its scale brings it to exactly that
    assert first[f"gn/{KD}"] == pytest.approx(0.5 * first["gn/seg"], rel=1e-4)
    for rec in steps[1:]:
        assert math.isfinite(rec["loss"])
        assert rec[f"gn/{KD}"] <= 0.5 * rec["gn/seg"] * 1.5
    # unbalanced, the same term is orders of magnitude above the segmentation gradient
    data["distill"].pop("balance")
    data["train"].update(epochs=1, max_steps_per_epoch=1, grad_norm_every=1)
    train(parse_config(data), tmp_path / "unbalanced", device="cpu")
    raw = _steps(tmp_path / "unbalanced")[0]
    assert raw[f"gn/{KD}"] > 20 * raw["gn/seg"]


def test_a_term_that_reads_the_ground_truth_is_refused_with_images_without_labels(synth2d, teacher_run, tmp_path,
                                                                                  make_config):
    cfg = parse_config(_kd_dict(make_config, synth2d, teacher_run,
                                data={"train_fraction": 0.5, "unlabeled_left_out": True}))
    cfg.distill.terms.append({"loss": "region_affinity", "weight": 0.1, "tap": "decoder"})
    with pytest.raises(ConfigError, match=r"data\.unlabeled: distill\.terms\[1\] \(region_affinity\) reads the "
                                          r"ground truth"):
        train(cfg, tmp_path / "run", device="cpu")
    assert not (tmp_path / "run").exists()  # found before any data was read or anything written
