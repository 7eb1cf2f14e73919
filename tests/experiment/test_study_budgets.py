"""The cpu / gpu budgets of the three study presets and medkd's recipe row (grid contents, no training)."""

from __future__ import annotations

from pathlib import Path

import pytest

from medkd.experiment.preset import expand_grid, load_preset
from medkd.recipe import recipe_overlay

EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments"
PRESETS = ("paper_a_acdc.yaml", "thesis_b_acdc.yaml", "kdnet_brats.yaml")


def _rows(runs) -> set[str]:
    return {r.name.split("/", 1)[1].rsplit("/seed", 1)[0] for r in runs}


def _rows_with_teacher(rows: set[str], old: str, new: str) -> set[str]:
    """``rows`` with teacher ``old`` named ``new`` (its own row and the students distilled from it)."""
    return {row.replace(f"teacher-{old}", f"teacher-{new}").replace(f"-from-{old}", f"-from-{new}") for row in rows}


@pytest.mark.parametrize("name", PRESETS)
def test_recipe_row_is_the_packaged_recipe_on_the_presets_seg_loss(name: str) -> None:
    preset = load_preset(EXPERIMENTS / name)
    overlay = recipe_overlay()
    baseline_seg = expand_grid(preset, "gpu", only=f"*/{preset.baseline}/seed0")[-1].config["train"]["seg_loss"]
    runs = [r for r in expand_grid(preset, "gpu") if r.objective == "medkd-recipe"]
    assert len({r.seed for r in runs}) >= 1 and runs
    for run in runs:
        distill = run.config["distill"]
        assert distill["terms"] == overlay["distill"]["terms"]
        assert distill["balance"] == overlay["distill"]["balance"] and distill["cache"] is True
        assert run.config["train"]["seg_loss"] == {"name": baseline_seg["name"], "weight": 1.0}
        assert distill["teacher"]["run"] == run.teacher_run
        left_out = run.config["data"].get("train_fraction", 1.0) < 1.0
        # the unlabelled images and the pseudo-label term exactly where the protocol leaves cases out
        assert run.config["data"].get("unlabeled_left_out", False) is left_out
        assert (distill.get("pseudo_label") == overlay["distill"]["pseudo_label"]) is left_out
    assert "medkd" in preset.objectives["medkd-recipe"].label


def test_thesis_b_recipe_distils_on_the_left_out_half() -> None:
    runs = expand_grid(load_preset(EXPERIMENTS / "thesis_b_acdc.yaml"), "gpu")
    recipe = [r for r in runs if r.objective == "medkd-recipe"]
    assert [r.seed for r in recipe] == [0, 1, 2]
    assert all(r.config["data"]["train_fraction"] == 0.5 and r.config["data"]["unlabeled_ratio"] == 1.0
               for r in recipe)


@pytest.mark.parametrize(("name", "rows"), [
    ("paper_a_acdc.yaml", {"teacher-unetplusplus", "student-enet/baseline",
                           "student-enet/lm-kmm-aam-from-unetplusplus", "student-enet/medkd-recipe-from-unetplusplus"}),
    ("thesis_b_acdc.yaml", {"teacher-t1", "student-s1/baseline", "student-s1/con-B+E+D-pmd-from-t1",
                            "student-s1/medkd-recipe-from-t1", "student-s1/control-100"}),
    ("kdnet_brats.yaml", {"teacher-skip4", "student-skip4/gt", "student-skip4/gt-kl-kd-from-skip4",
                          "student-skip4/medkd-recipe-from-skip4"}),
])
def test_gpu_budget_grid(name: str, rows: set[str]) -> None:
    preset = load_preset(EXPERIMENTS / name)
    runs = expand_grid(preset, "gpu")
    assert _rows(runs) == rows
    headline = [row for row in rows if row.startswith("student") and not row.endswith("control-100")]
    units = {row: {(r.cell, r.seed) for r in runs if r.label.endswith(row)} for row in headline}
    assert all(len(u) >= 3 for u in units.values()), units  # >= 3 seeds (or the 3 folds) per headline row
    if preset.study != "kdnet":
        assert all(r.config["data"]["size"] == [128, 128] for r in runs)
    assert all(r.config["train"]["threads"] == 1 for r in runs)
    b = preset.budgets["gpu"]
    assert "UNTESTED" in b.description and b.cuts and "9 min" in b.hardware


@pytest.mark.parametrize("name", PRESETS)
def test_cpu_budget_grid_matches_gpu_rows_and_says_whether_it_was_measured(name: str) -> None:
    preset = load_preset(EXPERIMENTS / name)
    cpu, gpu = expand_grid(preset, "cpu"), expand_grid(preset, "gpu")
    gpu_rows = _rows(gpu)  # the same rows, the cpu budget's teacher in place of the gpu one (paper A's stand-in)
    for old, new in zip(preset.budgets["gpu"].teachers or [], preset.budgets["cpu"].teachers or [], strict=True):
        gpu_rows = _rows_with_teacher(gpu_rows, old, new)
    assert _rows(cpu) == gpu_rows - {"student-s1/control-100"}
    assert all(r.config["train"]["threads"] == 2 for r in cpu)
    b = preset.budgets["cpu"]
    assert ("UNTESTED" in b.description) != ("MEASURED" in b.description)
    assert "2-core CPU" in b.hardware and len(b.cuts) >= 3


@pytest.mark.parametrize("budget", ["cpu", "gpu"])
def test_thesis_b_students_take_the_budgets_optimizer_and_the_teacher_keeps_its_own(budget: str) -> None:
    preset = load_preset(EXPERIMENTS / "thesis_b_acdc.yaml")
    runs = expand_grid(preset, budget)
    students = [r for r in runs if r.kind == "student"]
    teacher = next(r for r in runs if r.kind == "teacher")
    assert len(students) == {"cpu": 9, "gpu": 10}[budget]  # the gpu budget adds the 100% control
    for run in students:  # the budget's student layer overrides the student spec's RMSprop
        assert run.config["train"]["optimizer"]["name"] == "adam"
        assert run.config["train"]["optimizer"]["lr"] == pytest.approx(3e-3)
        assert run.config["train"]["scheduler"] == {"name": "cosine", "min_lr": pytest.approx(1e-5)}
    assert teacher.config["train"]["optimizer"]["name"] == "adamw"
    assert teacher.config["train"]["optimizer"]["lr"] == pytest.approx(1e-3)
    assert any("RMSprop" in cut for cut in preset.budgets[budget].cuts)  # the deviation is said in the report


def test_paper_a_cpu_budget_trains_the_unet_stand_in_on_every_source_volume() -> None:
    preset = load_preset(EXPERIMENTS / "paper_a_acdc.yaml")
    runs = expand_grid(preset, "cpu")
    teachers = [r for r in runs if r.kind == "teacher"]
    assert [r.config["model"]["name"] for r in teachers] == ["monai.UNet"]
    assert all(r.teacher_run == teachers[0].name for r in runs if r.kind == "student" and r.teacher_run)
    assert all(r.config["data"].get("max_cases") is None for r in runs)  # no cap on the source sites' volumes
    assert any("stands in" in cut for cut in preset.budgets["cpu"].cuts)
    # the seed's own teachers stay the full budget's; the stand-in is the cpu budget's alone
    assert {r.model_key for r in expand_grid(preset, "full") if r.kind == "teacher"} == {"unetplusplus",
                                                                                      "deeplabv3plus"}
