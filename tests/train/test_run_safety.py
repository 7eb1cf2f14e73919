"""A run that cannot go on changes nothing (issue 12): resume checks, early config checks, carved validation,
and errors that name the broken file."""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path

import pytest
import yaml

from medkd.cli import main
from medkd.config import parse_config
from medkd.data.loader import build_bundle
from medkd.data.splits import carve_validation
from medkd.errors import ConfigError, MedkdError
from medkd.run import RunFolder, build_network
from medkd.train import setup as setup_mod
from medkd.train.trainer import train
from medkd.weights import save_weights


def _snapshot(folder: Path) -> dict[str, tuple[str, int]]:
    """Every file under ``folder``: content hash and modification time."""
    return {str(p.relative_to(folder)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _tiny(root: Path, **overrides) -> dict:
    cfg = {"name": "tiny", "seed": 0,
           "data": {"root": str(root), "dim": 2, "size": [32, 32], "split": {"val": 0.2, "test": 0.2, "seed": 0}},
           "model": {"name": "unet_s1"},
           "train": {"epochs": 1, "batch_size": 4, "progress": False, "threads": 1}}
    for key, value in overrides.items():
        cfg[key] = {**cfg[key], **value} if isinstance(value, dict) and isinstance(cfg.get(key), dict) else value
    return cfg


@pytest.fixture(scope="module")
def finished(synth2d, tmp_path_factory):
    """A finished one-epoch run trained through the CLI (its config file and its folder)."""
    base = tmp_path_factory.mktemp("safety")
    config = base / "tiny.yaml"
    config.write_text(yaml.safe_dump(_tiny(synth2d)))
    run = base / "run"
    assert main(["train", str(config), "--out", str(run), "--no-evaluate"]) == 0
    return config, run


def test_resume_with_another_model_is_refused_and_changes_nothing(finished, capsys):
    """The reported case: --resume --set model.name=unet_s2 on a finished run crashed and rewrote config.yaml,
    after which evaluate failed ('weights do not fit')."""
    config, run = finished
    before = _snapshot(run)
    capsys.readouterr()
    assert main(["train", str(config), "--out", str(run), "--resume", "--set", "model.name=unet_s2"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("error: model.name: the run was trained with unet_s1; a resume cannot change it (got unet_s2); "
                   "train into a new --out folder instead")
    assert _snapshot(run) == before
    assert main(["evaluate", str(run)]) == 0  # the good run is still a good run


@pytest.mark.parametrize("change, key", [
    ({"model": {"name": "unet_s1", "kwargs": {"features": [8, 16, 32, 64]}}}, "model.kwargs.features"),
    ({"data": {"size": [40, 40]}}, "data.size"),
    ({"data": {"channels": ["none"]}}, "data.channels"),
    ({"data": {"split": {"val": 0.3, "test": 0.2, "seed": 0}}}, "data.split.val"),
    ({"train": {"optimizer": {"name": "sgd"}}}, "train.optimizer.name"),
    ({"seed": 3}, "seed"),
])
def test_resume_refuses_a_config_the_checkpoint_depends_on(finished, synth2d, change, key):
    _, run = finished
    before = _snapshot(run)
    data = _tiny(synth2d, train={"epochs": 5})  # more epochs alone would be a valid resume
    for section, value in change.items():
        data[section] = {**data[section], **value} if isinstance(value, dict) else value
    with pytest.raises(ConfigError, match=rf"^{key}: the run was trained .*; a resume cannot change it"):
        train(parse_config(data), run, resume=True, device="cpu")
    assert _snapshot(run) == before


def test_resuming_a_finished_run_says_so_and_changes_nothing(finished, synth2d, capsys):
    config, run = finished
    before = _snapshot(run)
    with pytest.raises(MedkdError, match=r"already finished \(1 of 1 epochs"):
        train(parse_config(_tiny(synth2d)), run, resume=True, device="cpu")
    capsys.readouterr()
    assert main(["train", str(config), "--out", str(run), "--resume"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "already finished" in err
    assert _snapshot(run) == before


def test_resume_with_more_epochs_continues_and_records_them(synth2d, tmp_path):
    run = tmp_path / "run"
    train(parse_config(_tiny(synth2d)), run, device="cpu")
    split_before = (run / "split.json").read_bytes()
    train(parse_config(_tiny(synth2d, name="renamed", train={"epochs": 2})), run, resume=True, device="cpu")
    assert [r["epoch"] for r in RunFolder(run).metrics() if r["kind"] == "epoch"] == [1, 2]
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["epochs"] == 2
    assert json.loads((run / "train_summary.json").read_text())["epochs"] == 2
    assert (run / "split.json").read_bytes() == split_before
    with pytest.raises(ConfigError, match="train.epochs: 1, but the run already trained 2 epochs"):
        (run / "train_summary.json").unlink()
        train(parse_config(_tiny(synth2d)), run, resume=True, device="cpu")


def test_corrupt_checkpoint_error_names_the_broken_file(synth2d, tmp_path):
    run = tmp_path / "run"
    train(parse_config(_tiny(synth2d, train={"epochs": 2})), run, device="cpu")
    (run / "train_summary.json").unlink()  # as if killed before the end
    broken = run / "checkpoints" / "e0002" / "optimizer.safetensors"
    broken.write_bytes(b"not a safetensors file")
    before = _snapshot(run)
    with pytest.raises(MedkdError) as info:
        train(parse_config(_tiny(synth2d, train={"epochs": 3})), run, resume=True, device="cpu")
    assert str(info.value).startswith(f"{broken}: checkpoint file unreadable")
    assert "last.json" not in str(info.value)
    assert _snapshot(run) == before


# -- checks before the data is read or the run folder written ------------------------------------------------------


@pytest.fixture
def no_data(monkeypatch):
    """Fail the test if the run reads its dataset."""
    def refuse(*args, **kwargs):
        raise AssertionError("the dataset was read before the config was checked")

    monkeypatch.setattr(setup_mod, "build_bundle", refuse)


def _kd(root: Path, teacher: dict, terms: list[dict]) -> dict:
    data = _tiny(root, name="kd")
    data["distill"] = {"teacher": teacher, "terms": terms}
    return data


@pytest.fixture(scope="module")
def teacher_checkpoint(synth2d, tmp_path_factory) -> Path:
    """Untrained unet_s1 weights for synth2d (1 channel), as a teacher model + checkpoint."""
    bundle = build_bundle(parse_config(_tiny(synth2d)))
    net = build_network(parse_config(_tiny(synth2d)).model, bundle.in_channels, bundle.num_classes, 2)
    path = tmp_path_factory.mktemp("teacher") / "teacher.safetensors"
    save_weights(path, net.state_dict())
    return path


@pytest.mark.parametrize("terms, message", [
    ([{"loss": "logits_kl", "temprature": 4.0}], r"distill.terms\[0\]: unknown option for loss 'logits_kl'.*"
                                                 r"did you mean 'temperature'"),
    ([{"loss": "logits_kl"}, {"loss": "kernel_matrx", "tap": "bottleneck"}],
     r"distill.terms\[1\]: unknown distillation loss 'kernel_matrx'"),
    ([{"weight": 1.0}], r"distill.terms\[0\]: expected a mapping with a 'loss' key"),
])
def test_bad_distillation_term_fails_before_data_and_writes_nothing(synth2d, tmp_path, teacher_checkpoint, no_data,
                                                                    terms, message):
    teacher = {"model": {"name": "unet_s1"}, "checkpoint": str(teacher_checkpoint)}
    with pytest.raises(ConfigError, match=message):
        train(parse_config(_kd(synth2d, teacher, terms)), tmp_path / "kd", device="cpu")
    assert not (tmp_path / "kd").exists()


def test_missing_teacher_fails_before_data_and_writes_nothing(synth2d, tmp_path, no_data):
    terms = [{"loss": "logits_kl"}]
    with pytest.raises(ConfigError, match=r"distill.teacher.run .*nowhere: folder not found"):
        train(parse_config(_kd(synth2d, {"run": str(tmp_path / "nowhere")}, terms)), tmp_path / "kd", device="cpu")
    empty = tmp_path / "empty_run"
    empty.mkdir()
    (empty / "config.yaml").write_text("name: x\n")
    (empty / "split.json").write_text("{}")
    with pytest.raises(ConfigError, match=r"no trained weights \(checkpoints/best.safetensors missing\)"):
        train(parse_config(_kd(synth2d, {"run": str(empty)}, terms)), tmp_path / "kd", device="cpu")
    teacher = {"model": {"name": "unet_s1"}, "checkpoint": str(tmp_path / "missing.safetensors")}
    with pytest.raises(ConfigError, match=r"distill.teacher.checkpoint .*missing.safetensors: file not found"):
        train(parse_config(_kd(synth2d, teacher, terms)), tmp_path / "kd", device="cpu")
    assert not (tmp_path / "kd").exists()


def test_bad_tap_fails_before_the_run_folder_is_written(synth2d, tmp_path, teacher_checkpoint, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("training samples were loaded before the taps were checked")

    monkeypatch.setattr(setup_mod, "build_train_source", refuse)
    teacher = {"model": {"name": "unet_s1"}, "checkpoint": str(teacher_checkpoint)}
    data = _kd(synth2d, teacher, [{"loss": "kernel_matrix", "tap": "bottlenek"}])
    with pytest.raises(ConfigError, match=r"feature tap 'bottlenek' names no module.*nearest valid names"):
        train(parse_config(data), tmp_path / "kd", device="cpu")
    assert not (tmp_path / "kd").exists()


# -- a split file without a 'val' list -------------------------------------------------------------------------------


def test_carve_validation_is_seeded_and_keeps_patients_together():
    ids = [f"patient{p:02d}_frame{f}" for p in range(10) for f in (1, 2)]
    train_ids, val = carve_validation(ids, 0.2, seed=0, group_pattern=r"patient\d+")
    assert len(val) == 4 and sorted(train_ids + val) == sorted(ids) and not set(train_ids) & set(val)
    patients = {v.split("_")[0] for v in val}
    assert len(patients) == 2 and all(f"{p}_frame1" in val and f"{p}_frame2" in val for p in patients)
    assert carve_validation(ids, 0.2, seed=0, group_pattern=r"patient\d+") == (train_ids, val)
    assert carve_validation(ids, 0.2, seed=1, group_pattern=r"patient\d+") != (train_ids, val)
    with pytest.raises(ConfigError, match="too few to carve one"):
        carve_validation(["patient01_frame1", "patient01_frame2"], 0.2, seed=0, group_pattern=r"patient\d+")


def test_split_file_without_val_gets_a_recorded_carved_validation(synth2d, tmp_path, capsys):
    ids = sorted(p.name.split(".")[0] for p in (synth2d / "labelsTr").iterdir())
    split_file = tmp_path / "split.json"
    split_file.write_text(json.dumps({"train": ids[:12], "test": ids[12:]}))
    data = _tiny(synth2d, data={"split": {"file": str(split_file), "val": 0.25, "seed": 0}})
    train(parse_config(data), tmp_path / "run", device="cpu")
    split = json.loads((tmp_path / "run" / "split.json").read_text())
    assert len(split["val"]) == 3 and sorted(split["train"] + split["val"]) == ids[:12]
    assert split["test"] == ids[12:]
    assert split["val_carved_from_train"] is True and split["val_carve"]["fraction"] == 0.25
    assert "val_dice" in [r for r in RunFolder(tmp_path / "run").metrics() if r["kind"] == "epoch"][0]
    out = capsys.readouterr().out
    assert "has no 'val' list; validating on 3 case(s) carved from its train list" in out
    # an explicit empty list is respected (no carving), and the run says it has no validation
    split_file.write_text(json.dumps({"train": ids[:12], "val": [], "test": ids[12:]}))
    train(parse_config(data), tmp_path / "run2", device="cpu")
    split2 = json.loads((tmp_path / "run2" / "split.json").read_text())
    assert split2["val"] == [] and "val_carved_from_train" not in split2
    assert "no validation cases" in capsys.readouterr().out


def test_split_file_too_small_to_carve_is_refused_before_writing(synth2d, tmp_path):
    ids = sorted(p.name.split(".")[0] for p in (synth2d / "labelsTr").iterdir())
    split_file = tmp_path / "split.json"
    split_file.write_text(json.dumps({"train": ids[:1], "test": ids[1:3]}))
    data = _tiny(synth2d, data={"split": {"file": str(split_file)}})
    with pytest.raises(ConfigError, match=r"split.json: no 'val' list, and its 1 training case group\(s\) are too few"):
        train(parse_config(data), tmp_path / "run", device="cpu")
    assert not (tmp_path / "run").exists()


def test_prepare_keeps_split_json_on_resume(synth2d, tmp_path):
    """A resumed run keeps its split.json byte for byte even if the dataset's extra facts changed."""

    cfg = parse_config(_tiny(synth2d))
    bundle = build_bundle(cfg)
    folder = RunFolder(tmp_path / "run")
    folder.prepare(cfg, bundle)
    saved = {name: (folder.path / name).read_bytes() for name in ("config.yaml", "split.json")}
    bundle2 = copy.copy(bundle)
    bundle2.meta = {**bundle.meta, "extra": 1}
    folder.prepare(cfg, bundle2, resume=True)
    assert {name: (folder.path / name).read_bytes() for name in saved} == saved
