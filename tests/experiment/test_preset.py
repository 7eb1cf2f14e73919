"""Grid expansion of the three study presets: counts, names, teacher reuse, seeds, filters, config validity."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from medkd.config import parse_config
from medkd.errors import ConfigError
from medkd.experiment.preset import deep_merge, expand_grid, load_preset, parse_preset

EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments"


def _preset(name: str):
    return load_preset(EXPERIMENTS / name)


@pytest.mark.parametrize(("name", "budget", "n_runs", "n_teachers"), [
    ("paper_a_acdc.yaml", "quick", 20, 1),         # 1 teacher; ESPNet 2 x 3 seeds + 7 ablation rows; ERFNet 2 x 3
    ("paper_a_acdc.yaml", "full", 924, 24),        # 4 sites x (2 teachers x 3 seeds + 3 students x (1 + 12 x 2) x 3)
    ("paper_a_acdc.yaml", "gpu", 10, 1),           # site1: 1 teacher + ENet x 3 rows x 3 seeds
    ("paper_a_acdc.yaml", "cpu", 10, 1),
    ("thesis_b_acdc.yaml", "quick", 24, 1),        # S1: 2 x 3 seeds + 11 one-seed rows; S2: 2 x 3 seeds
    ("thesis_b_acdc.yaml", "full", 378, 6),        # 2 teachers x 3 + 2 students x (6 + 30 x 2 x 3)
    ("thesis_b_acdc.yaml", "gpu", 11, 1),          # 1 teacher + S1 x 3 rows x 3 seeds + the 100% control
    ("thesis_b_acdc.yaml", "cpu", 10, 1),
    ("kdnet_brats.yaml", "quick", 30, 6),          # 3 folds x (2 teachers + 6 objectives (4 skips) + 2 (0 skips))
    ("kdnet_brats.yaml", "full", 144, 18),         # 3 folds x 3 seeds x (2 teachers + 2 x 7 objectives)
    ("kdnet_brats.yaml", "gpu", 12, 3),            # 3 folds x (1 teacher + 3 rows), one seed
    ("kdnet_brats.yaml", "cpu", 12, 3),
])
def test_grid_counts_and_validity(name: str, budget: str, n_runs: int, n_teachers: int) -> None:
    runs = expand_grid(_preset(name), budget)
    assert len(runs) == n_runs
    assert sum(r.kind == "teacher" for r in runs) == n_teachers
    names = [r.name for r in runs]
    assert len(set(names)) == len(names)
    for r in runs[:40]:  # every config is a valid RunConfig (expand_grid checks all; spot-check here too)
        cfg = parse_config(dict(r.config))
        assert cfg.seed == r.seed
        assert cfg.name == r.name.replace("/", "_")


@pytest.mark.parametrize("name", ["paper_a_acdc.yaml", "thesis_b_acdc.yaml", "kdnet_brats.yaml"])
def test_teachers_trained_once_and_reused(name: str) -> None:
    runs = expand_grid(_preset(name), "quick")
    position = {r.name: i for i, r in enumerate(runs)}
    teachers = [r for r in runs if r.kind == "teacher"]
    students = [r for r in runs if r.kind == "student"]
    used = {r.teacher_run for r in students if r.teacher_run}
    for s in students:
        if s.teacher_run is None:
            assert "distill" not in s.config
            continue
        assert s.teacher_run in position and position[s.teacher_run] < position[s.name]
        assert s.config["distill"]["teacher"]["run"] == s.teacher_run
        n_teacher_seeds = sum(1 for t in teachers if t.model_key == s.teacher_key and t.cell == s.cell)
        assert s.teacher_run.endswith(f"/seed{s.seed % n_teacher_seeds}") and s.teacher_run.startswith(s.cell + "/")
    assert used <= {t.name for t in teachers}
    # several students share each teacher
    assert sum(1 for s in students if s.teacher_run == teachers[0].name) >= 2


def test_paper_a_names_protocol_and_objective() -> None:
    runs = {r.name: r for r in expand_grid(_preset("paper_a_acdc.yaml"), "quick")}
    assert "sites-site1/teacher-unetplusplus/seed0" in runs
    full = runs["sites-site1/student-espnet/lm-kmm-aam-from-unetplusplus/seed2"]
    data = full.config["data"]
    assert data["split"]["test_sites"] == ["site1"] and data["simulate_sites"] == {"k": 4, "seed": 0}
    assert data["size"] == [64, 64]
    assert full.config["train"]["seg_loss"] == {"name": "focal_dice", "weight": 1.0}
    assert [t["loss"] for t in full.config["distill"]["terms"]] == ["logits_kl", "kernel_matrix", "adaptive_affinity"]
    assert [t["weight"] for t in full.config["distill"]["terms"]] == [0.2, 0.9, 0.9]
    # quick: ERFNet only alone and with the full objective, ablation rows one seed, one teacher for every seed
    assert not any("erfnet/lm-from" in n for n in runs)
    assert "sites-site1/student-erfnet/lm-kmm-aam-from-unetplusplus/seed2" in runs
    assert full.teacher_run == "sites-site1/teacher-unetplusplus/seed0"
    assert "sites-site1/student-espnet/kmm-from-unetplusplus/seed0" in runs
    assert "sites-site1/student-espnet/kmm-from-unetplusplus/seed1" not in runs
    teacher = runs["sites-site1/teacher-unetplusplus/seed0"].config
    assert teacher["model"]["kwargs"]["features"][0] == 8 and teacher["train"]["epochs"] == 24
    full_grid = expand_grid(_preset("paper_a_acdc.yaml"), "full")
    cells = {r.cell for r in full_grid}
    assert cells == {"sites-site1", "sites-site2", "sites-site3", "sites-site4"}
    # full: each student seed has its own teacher seed
    kd = next(r for r in full_grid if r.name == "sites-site3/student-erfnet/emkd-from-deeplabv3plus/seed2")
    assert kd.teacher_run == "sites-site3/teacher-deeplabv3plus/seed2"


def test_thesis_b_fractions_and_subsets() -> None:
    preset = _preset("thesis_b_acdc.yaml")
    runs = {r.name: r for r in expand_grid(preset, "quick")}
    base = runs["fixed/student-s1/baseline/seed0"].config
    assert base["data"]["train_fraction"] == 0.5 and base["data"]["split"]["group_pattern"] == "patient\\d+"
    assert runs["fixed/student-s1/control-100/seed0"].config["data"]["train_fraction"] == 1.0
    assert "train_fraction" not in runs["fixed/teacher-t1/seed0"].config["data"]
    head = runs["fixed/student-s1/con-B+E+D-pmd-from-t1/seed1"].config
    taps = [(t["loss"], t.get("tap"), t["weight"]) for t in head["distill"]["terms"]]
    assert taps == [("contrastive", "bottleneck", 0.2), ("contrastive", "encoder", 0.1),
                    ("contrastive", "decoder", 0.1), ("logits_kl", "logits", 0.2)]
    assert head["train"]["seg_loss"] == {"name": "dice", "weight": 0.4}
    full = expand_grid(preset, "full")
    subsets = {r.objective for r in full if r.objective and r.objective.startswith("con-")}
    assert len(subsets) == 14  # 7 scale subsets x with / without PMD


def test_kdnet_channels_and_folds() -> None:
    runs = expand_grid(_preset("kdnet_brats.yaml"), "full")
    teacher = next(r for r in runs if r.name == "fold2/teacher-skip0/seed0").config
    assert teacher["data"]["channels"] == ["FLAIR", "T1c"] and teacher["data"]["split"]["fold"] == 2
    assert teacher["model"]["kwargs"]["skips"] == 0
    kd = next(r for r in runs if r.name == "fold1/student-skip4/gt-kl-kd-from-skip4/seed2").config
    assert kd["data"]["channels"] == ["T1c"] and kd["data"]["teacher_channels"] == ["FLAIR", "T1c"]
    assert kd["evaluate"]["regions"] == {"WT": [1, 2, 3, 4], "TC": [1, 3, 4], "ET": [4]}
    gt = next(r for r in runs if r.name == "fold1/student-skip4/gt/seed0").config
    assert "teacher_channels" not in gt["data"]
    # a student is only distilled from the teacher with its skip setting
    assert all(r.teacher_key == r.model_key for r in runs if r.teacher_key)
    # medkd's tempered-student variant of L_KD reaches the loss; the seed's objective does not set it
    tempered = next(r for r in runs if r.name == "fold0/student-skip4/gt-kd-ts-from-skip4/seed0").config
    assert tempered["distill"]["terms"][0]["temper_student"] is True
    assert "temper_student" not in kd["distill"]["terms"][0]


def test_seeds_and_only() -> None:
    preset = _preset("thesis_b_acdc.yaml")
    runs = expand_grid(preset, "quick", seeds=2)
    # baseline and headline follow --seeds; ablation rows keep their explicit 1 seed; quick trains 1 teacher
    assert sum(r.kind == "teacher" for r in runs) == 1
    assert sum(r.objective == "baseline" for r in runs) == 4  # S1 and S2
    assert sum(r.objective == "pmd" for r in runs) == 1
    only = expand_grid(preset, "quick", only="*s1/con-B+E+D-pmd-from*seed1")
    assert [r.name for r in only] == ["fixed/teacher-t1/seed0", "fixed/student-s1/con-B+E+D-pmd-from-t1/seed1"]


def test_preset_errors_are_one_line(tmp_path: Path) -> None:
    data = yaml.safe_load((EXPERIMENTS / "kdnet_brats.yaml").read_text())
    bad = deep_merge(data, {"budgets": {"quick": {"seedz": 3}}})
    with pytest.raises(ConfigError, match=r"budgets\.quick\.seedz': unknown key") as err:
        parse_preset(bad, "p.yaml")
    assert "\n" not in str(err.value)
    bad = deep_merge(data, {"budgets": {"quick": {"cells": ["fold7"]}}})
    with pytest.raises(ConfigError, match="fold7"):
        parse_preset(bad)
    with pytest.raises(ConfigError, match="did you mean 'quick'"):
        expand_grid(parse_preset(data), "quik")
    bad = deep_merge(data, {"base": {"train": {"epochz": 3}}})
    with pytest.raises(ConfigError, match="epochz"):
        expand_grid(parse_preset(bad), "quick")
    with pytest.raises(ConfigError, match="not found"):
        load_preset(tmp_path / "missing.yaml")


def test_deep_merge_does_not_mutate() -> None:
    a = {"x": {"y": 1, "z": [1]}, "k": 0}
    out = deep_merge(a, {"x": {"y": 2}, "n": 1})
    assert out == {"x": {"y": 2, "z": [1]}, "k": 0, "n": 1} and a["x"]["y"] == 1
