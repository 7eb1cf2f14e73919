"""``medkd recipe``: the recommended recipe's configs, its validation fallback, and the command end to end."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from medkd.errors import ConfigError, MedkdError
from medkd.recipe import choose, recipe_configs, recipe_overlay
from medkd.train.trainer import train


def _finished_run(path: Path, val_dice: float | None) -> Path:
    path.mkdir(parents=True)
    (path / "train_summary.json").write_text(json.dumps({"best": {"epoch": 3, "val_dice": val_dice}}))
    return path


def test_overlay_is_the_documented_recipe():
    overlay = recipe_overlay()
    assert overlay["data"] == {"unlabeled_left_out": True, "unlabeled_ratio": 1.0}
    assert overlay["distill"]["terms"] == [{"loss": "cwd", "weight": 3.0, "temperature": 1.0}]
    assert overlay["distill"]["pseudo_label"] == {"weight": 1.0, "threshold": 0.9}
    assert overlay["distill"]["balance"]["mode"] == "cap"


def test_recipe_configs_keep_the_student_and_add_the_recipe(make_config, synth2d, tmp_path):
    student = make_config(synth2d, name="s", data={"train_fraction": 0.5}, train={"epochs": 3})
    alone, distilled, notes = recipe_configs(student, tmp_path / "teacher")
    assert notes == []
    assert alone.distill is None and alone.name == "s-alone"
    assert distilled.name == "s-distilled"
    for cfg in (alone, distilled):  # same data, network, schedule and segmentation loss weight
        assert cfg.model.name == "unet_s1" and cfg.train.epochs == 3 and cfg.train.seg_loss.weight == 1.0
        assert cfg.data.train_fraction == 0.5 and cfg.seed == 0
    assert distilled.data.unlabeled_left_out and distilled.distill.cache
    assert distilled.distill.teacher.run == str(tmp_path / "teacher")
    assert distilled.distill.pseudo_label.threshold == 0.9


def test_recipe_without_unlabelled_images_drops_the_pseudo_labels(make_config, synth2d, tmp_path):
    alone, distilled, notes = recipe_configs(make_config(synth2d), tmp_path / "teacher")
    assert len(notes) == 1 and "labelled images only" in notes[0]
    assert not distilled.data.unlabeled_left_out and distilled.distill.pseudo_label is None
    assert [t["loss"] for t in distilled.distill.terms] == ["cwd"]


def test_recipe_with_an_extra_folder_does_not_need_left_out_cases(make_config, synth2d, tmp_path):
    student = make_config(synth2d, data={"unlabeled": str(tmp_path / "images")})
    _, distilled, notes = recipe_configs(student, tmp_path / "teacher")
    assert notes == [] and distilled.data.unlabeled == str(tmp_path / "images")
    assert not distilled.data.unlabeled_left_out and distilled.distill.pseudo_label is not None


def test_recipe_refuses_a_config_that_already_distils(make_config, synth2d, tmp_path):
    student = make_config(synth2d, distill={"teacher": {"run": "t"}, "terms": []})
    with pytest.raises(ConfigError, match="distill"):
        recipe_configs(student, tmp_path / "teacher")


@pytest.mark.parametrize(("alone", "distilled", "kept"), [
    (0.70, 0.75, "distilled"),
    (0.75, 0.70, "alone"),        # the fallback: distillation lost on validation
    (0.70, 0.70, "alone"),        # a tie keeps the student alone
    (None, 0.60, "distilled"),
    (0.60, None, "alone"),
    (None, None, "alone"),        # nothing shows the distillation helped
])
def test_choose_keeps_the_better_run_on_validation(tmp_path, alone, distilled, kept):
    a = _finished_run(tmp_path / "alone", alone)
    d = _finished_run(tmp_path / "distilled", distilled)
    record = choose(a, d, tmp_path / "recipe.json")
    assert record["chosen"] == kept
    assert record["run"] == str(a if kept == "alone" else d)
    assert json.loads((tmp_path / "recipe.json").read_text()) == record


def test_choose_refuses_an_unfinished_run(tmp_path):
    a = _finished_run(tmp_path / "alone", 0.7)
    (tmp_path / "distilled").mkdir()
    with pytest.raises(MedkdError, match="did not finish"):
        choose(a, tmp_path / "distilled", tmp_path / "recipe.json")
    assert not (tmp_path / "recipe.json").exists()


@pytest.mark.slow
def test_recipe_command_trains_both_and_records_the_choice(make_config, make_run_config, synth2d, tmp_path):
    teacher = tmp_path / "teacher"
    train(make_run_config(synth2d, name="teacher", train={"epochs": 1, "batch_size": 4, "threads": 1}), teacher,
          device="cpu")
    student = make_config(synth2d, name="s", data={"train_fraction": 0.5},
                          train={"epochs": 2, "batch_size": 2, "threads": 1})
    cfg_file = tmp_path / "student.yaml"
    cfg_file.write_text(yaml.safe_dump(student))
    out = tmp_path / "recipe"
    proc = subprocess.run([sys.executable, "-m", "medkd", "recipe", str(cfg_file), "--teacher", str(teacher),
                           "--out", str(out), "--device", "cpu"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    record = json.loads((out / "recipe.json").read_text())
    vals = record["val_dice"]
    assert record["chosen"] == ("distilled" if vals["distilled"] > vals["alone"] else "alone")
    assert f"recipe: kept {record['chosen']}" in proc.stdout
    for arm in ("alone", "distilled"):
        assert (out / arm / "evaluation" / "summary.json").is_file()
    split = json.loads((out / "distilled" / "split.json").read_text())
    assert split["unlabeled"]["left_out"]  # the recipe distilled on the cases the student has no labels for
    # a second call keeps the finished runs and reaches the same choice
    again = subprocess.run([sys.executable, "-m", "medkd", "recipe", str(cfg_file), "--teacher", str(teacher),
                            "--out", str(out), "--device", "cpu"], capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "finished earlier; kept" in again.stdout
    assert json.loads((out / "recipe.json").read_text())["chosen"] == record["chosen"]
