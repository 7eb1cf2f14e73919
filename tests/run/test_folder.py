"""RunFolder: what the writer records, every reader gives back, and one-line errors naming the file."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from medkd.errors import MedkdError
from medkd.run import RunFolder, load_run_model
from medkd.run import folder as folder_module

from .conftest import RECORDS, SUMMARY


def test_config_and_split_are_what_prepare_recorded(built_run, synth2d):
    cfg = built_run.config()
    assert cfg.name == "tiny" and cfg.model.name == "unet_s1" and cfg.data.size == [32, 32]
    assert cfg.data.root == str(synth2d.resolve())
    split = built_run.split()
    assert split["dataset"] == str(synth2d.resolve())
    assert split["channels"] == built_run.channels() and len(split["channels"]) == 1
    assert len(split["train"]) == 10 and len(split["val"]) == 3 and len(split["test"]) == 3
    assert not set(split["train"]) & set(split["test"])
    assert built_run.class_names() == ["background", "organ", "lesion"]
    assert built_run.in_channels == 1


def test_in_channels_counts_neighbour_slices_and_falls_back_to_channels(fresh_run):
    split = fresh_run.split()
    split["in_channels"] = 3
    fresh_run.split_path.write_text(json.dumps(split))
    assert fresh_run.in_channels == 3
    split.pop("in_channels")
    split["channels"] = ["t1", "t2"]
    fresh_run.split_path.write_text(json.dumps(split))
    assert fresh_run.in_channels == 2


def test_label_values_come_from_the_dataset_or_the_class_index(fresh_run, monkeypatch):
    seen = []

    def fake_open(data_cfg, root):
        seen.append(root)
        return SimpleNamespace(labels={"background": 0, "organ": 4, "lesion": 2})

    monkeypatch.setattr(folder_module, "open_dataset", fake_open)
    assert fresh_run.label_values() == [0, 2, 4]
    assert seen == [fresh_run.split()["dataset"]]
    split = fresh_run.split()
    split["dataset"] = str(fresh_run.path / "moved_away")
    fresh_run.split_path.write_text(json.dumps(split))
    assert fresh_run.label_values() == [0, 1, 2] and len(seen) == 1


def test_metrics_epoch_metrics_and_summary(built_run):
    assert built_run.metrics() == RECORDS
    assert [r["epoch"] for r in built_run.epoch_metrics()] == [1, 2]
    assert [r["val_dice"] for r in built_run.epoch_metrics()] == [0.25, 0.5]
    assert built_run.summary() == SUMMARY


def test_truncate_metrics_drops_lines_after_the_checkpoint(fresh_run):
    fresh_run.truncate_metrics(1)
    assert fresh_run.metrics() == RECORDS[:2]
    fresh_run.reset_logs()
    assert fresh_run.metrics() == []


def test_a_broken_metrics_line_names_file_and_line(fresh_run):
    with fresh_run.metrics_path.open("a") as fh:
        fh.write("{not json\n")
    with pytest.raises(MedkdError, match=r"metrics\.jsonl: line 5 is not valid JSON"):
        fresh_run.metrics()


def test_state_checks_follow_the_files(fresh_run, tmp_path):
    assert fresh_run.is_run() and fresh_run.has_started() and fresh_run.has_checkpoint()
    assert fresh_run.has_summary() and not fresh_run.has_evaluation()
    fresh_run.remove_summary()
    assert not fresh_run.has_summary()
    empty = RunFolder(tmp_path / "nothing")
    assert not (empty.is_run() or empty.has_started() or empty.has_checkpoint() or empty.has_summary())


def test_progress_reads_the_checkpoint_pointers(fresh_run):
    assert fresh_run.progress() == {"epoch": 2, "last_epoch": 2, "epochs": 2, "finished": True}
    assert fresh_run.progress(planned_epochs=5)["finished"] is False
    fresh_run.remove_summary()
    assert fresh_run.progress()["finished"] is False


def test_evaluation_round_trip_for_test_and_other_splits(fresh_run):
    records = [{"case": "a", "site": None, "metrics": {"organ": {"dice": 0.5}}}]
    out = fresh_run.write_evaluation("test", {"split": "test", "n_cases": 1}, records, "case,dice\na,0.5\n")
    assert out == fresh_run.path / "evaluation"
    assert (out / "per_case.csv").read_text() == "case,dice\na,0.5\n"
    assert fresh_run.evaluation() == {"split": "test", "n_cases": 1} == fresh_run.evaluation("test")
    assert fresh_run.per_case() == records and fresh_run.has_evaluation()
    assert not fresh_run.has_evaluation("val")
    assert fresh_run.write_evaluation("val", {"split": "val"}, [], "") == fresh_run.path / "evaluation" / "val"
    assert fresh_run.evaluation("val") == {"split": "val"} and fresh_run.per_case("val") == []
    assert fresh_run.prediction_path("val", "a") == out / "val" / "predictions" / "a.nii.gz"
    assert (out / "val" / "predictions").is_dir()


def test_load_model_gives_the_best_or_last_weights_in_eval_mode(built_run):
    model, cfg = built_run.load_model()
    assert not model.training and cfg.model.name == "unet_s1"
    saved = load_file(str(built_run.best_weights))
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in saved.items())
    last, _ = load_run_model(built_run.path, "last")
    assert all(torch.equal(a, b) for a, b in zip(last.state_dict().values(), state.values()))


def test_last_weights_follow_the_pointer(fresh_run):
    pointer = fresh_run.checkpoints / "last.json"
    info = json.loads(pointer.read_text())
    first = sorted(p.name for p in fresh_run.checkpoints.iterdir() if p.is_dir())
    assert info["dir"] in first
    model, _ = fresh_run.load_model("last")
    assert any(v.abs().sum() > 0 for v in model.state_dict().values() if v.is_floating_point())


@pytest.mark.parametrize(("remove", "message"), [
    ("config.yaml", r"not a run folder \(no config\.yaml\)"),
    ("split.json", r"split\.json missing; the run never started"),
    ("checkpoints/best.safetensors", r"best\.safetensors: checkpoint not found"),
    ("train_summary.json", r"train_summary\.json: not found"),
])
def test_missing_files_are_one_line_errors_naming_them(fresh_run, remove, message):
    (fresh_run.path / remove).unlink()
    with pytest.raises(MedkdError, match=message) as info:
        fresh_run.load_model() if remove != "train_summary.json" else fresh_run.summary()
    assert "\n" not in str(info.value)


def test_missing_evaluation_and_last_pointer_are_named(fresh_run):
    with pytest.raises(MedkdError, match=r"evaluation/summary\.json: not found; run medkd evaluate first"):
        fresh_run.evaluation()
    with pytest.raises(MedkdError, match=r"evaluation/val/per_case\.json: not found"):
        fresh_run.per_case("val")
    (fresh_run.checkpoints / "last.json").unlink()
    with pytest.raises(MedkdError, match=r"no finished epoch yet \(checkpoints/last\.json missing\)"):
        fresh_run.load_model("last")


@pytest.mark.parametrize(("text", "message"), [
    ("{broken", r"split\.json: not readable JSON"),
    ('{"classes": ["bg"]}', r"split\.json: not a run split \(needs 'channels' and 'classes' lists\)"),
    ("[1, 2]", r"split\.json: not a run split"),
])
def test_unreadable_split_is_named(fresh_run, text, message):
    fresh_run.split_path.write_text(text)
    with pytest.raises(MedkdError, match=message):
        fresh_run.split()


@pytest.mark.parametrize(("argv", "remove", "expected"), [
    (["evaluate", "RUN"], "split.json", "split.json missing; the run never started"),
    (["export", "RUN"], "checkpoints/best.safetensors", "best.safetensors: checkpoint not found"),
])
def test_cli_reports_a_missing_run_file_in_one_line_with_exit_2(fresh_run, capsys, argv, remove, expected):
    from medkd.cli import main

    (fresh_run.path / remove).unlink()
    assert main([str(fresh_run.path) if a == "RUN" else a for a in argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and expected in err and "\n" not in err and "Traceback" not in err
