"""The quality benchmark's report: every arm is compared with the student alone on its own schedule.

``benchmarks/quality/`` is a script folder (not a package); its ``arms.py`` and ``report.py`` are loaded from there.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

QUALITY = Path(__file__).resolve().parents[2] / "benchmarks" / "quality"


@pytest.fixture(scope="module")
def quality():
    sys.path.insert(0, str(QUALITY))
    try:
        yield importlib.import_module("arms"), importlib.import_module("report")
    finally:
        sys.path.remove(str(QUALITY))


def _run(level: float, seed: int, cases: int = 8) -> dict:
    return {"test_dice": {f"c{k}": level + 0.01 * k + 0.002 * seed for k in range(cases)},
            "best_val_dice": level}


def test_long_schedule_arms_are_compared_with_the_student_alone_on_the_same_schedule(quality):
    arms, report = quality
    levels = {"alone": 0.70, "alone_x3": 0.74, "rec_cwd_x3": 0.77, "rec_cwd": 0.72}
    raw = {"runs": {f"unet_s1-{arm}-s{s}": _run(level, s) for arm, level in levels.items() for s in range(3)}}
    result = report.build(raw, [a.name for a in arms.ARMS if a.candidate], [a.name for a in arms.ARMS],
                          {a.name: a.baseline for a in arms.ARMS})
    rows = result["students"]["unet_s1"]["rows"]
    assert rows["rec_cwd_x3"]["baseline"] == "alone_x3" and rows["rec_cwd"]["baseline"] == "alone"
    assert rows["rec_cwd_x3"]["seed_test"]["delta"] == pytest.approx(0.03)  # not 0.07, its gap to 'alone'
    assert rows["rec_cwd"]["seed_test"]["delta"] == pytest.approx(0.02)
    assert "seed_test" not in rows["alone_x3"]  # a baseline is not compared with itself
    text = report.render(result, {a.name: a.label for a in arms.ARMS})
    assert "3x epochs (vs student alone (50%), 3x epochs) | 3 | 0.807 ± 0.002 | +0.030 |" in text
    assert rows["kl1"] == {"seeds": [], "not_run": True}


def test_long_arms_train_three_times_the_epochs_and_their_baseline_runs_the_headline_seeds(quality):
    arms, _ = quality
    by = arms.ARM_BY_NAME
    assert by["alone_x3"].epochs_factor == by["rec_cwd_x3"].epochs_factor == 3
    assert by["rec_cwd_x3"].overrides == by["rec_cwd"].overrides  # the same recipe, only longer
    assert arms.BASELINES == {"alone", "alone_x3"}
    assert not by["rec_cwd_x3"].candidate  # the recipe is chosen among same-schedule candidates only
    assert np.isclose(sum(a.epochs_factor for a in arms.ARMS), len(arms.ARMS) + 4)


def test_an_arm_whose_seeds_ran_on_two_devices_says_which_seed_ran_where(quality):
    arms, report = quality
    runs = {f"enet-{arm}-s{s}": {**_run(level, s), "device": "cuda" if s < 3 else "cpu"}
            for arm, level in (("alone", 0.70), ("rec_cwd", 0.74)) for s in range(5)}
    result = report.build({"runs": runs}, ["rec_cwd"], [a.name for a in arms.ARMS],
                          {a.name: a.baseline for a in arms.ARMS})
    rows = result["students"]["enet"]["rows"]
    assert rows["rec_cwd"]["devices"] == {"0": "cuda", "1": "cuda", "2": "cuda", "3": "cpu", "4": "cpu"}
    text = report.render(result, {a.name: a.label for a in arms.ARMS})
    assert text.count(" [cuda: seeds 0, 1, 2; cpu: seeds 3, 4] | 5 |") == 3  # alone, the arm, the recipe
    one_device = {n: {**r, "device": "cuda"} for n, r in runs.items()}
    assert "[cuda" not in report.render(report.build({"runs": one_device}, ["rec_cwd"], ["rec_cwd"]), {})


def test_an_arm_paired_with_runs_of_another_device_names_the_device_of_those_runs(quality):
    arms, report = quality
    runs = {f"enet-alone-s{s}": {**_run(0.70, s), "device": "cuda"} for s in range(5)}
    runs |= {f"enet-kl1-s{s}": {**_run(0.71, s), "device": "cpu"} for s in range(3)}
    runs |= {f"enet-rec_cwd-s{s}": {**_run(0.74, s), "device": "cuda" if s < 3 else "cpu"} for s in range(5)}
    result = report.build({"runs": runs}, ["rec_cwd"], ["kl1", "rec_cwd"])
    text = report.render(result, {"kl1": "KL", "rec_cwd": "CWD"})
    assert "| KL [cpu: seeds 0, 1, 2; paired alone on cuda: seeds 0, 1, 2] | 3 |" in text
    assert "| CWD [cuda: seeds 0, 1, 2; cpu: seeds 3, 4; paired alone on cuda: seeds 3, 4] | 5 |" in text
    assert result["students"]["enet"]["rows"]["kl1"]["baseline_devices"] == {"0": "cuda", "1": "cuda", "2": "cuda"}


def test_an_arm_is_paired_with_the_student_alone_on_its_own_device_where_that_run_exists(quality):
    arms, report = quality
    runs = {f"enet-alone-s{s}": {**_run(0.70, s), "device": "cuda"} for s in range(5)}
    runs |= {f"enet-alone-s{s}@cpu": {**_run(0.71, s), "device": "cpu"} for s in range(3)}
    runs |= {f"enet-kl1-s{s}": {**_run(0.72, s), "device": "cpu"} for s in range(3)}
    runs |= {f"enet-rec_cwd-s{s}": {**_run(0.75, s), "device": "cuda" if s < 4 else "cpu"} for s in range(5)}
    result = report.build({"runs": runs}, ["rec_cwd"], ["alone", "kl1", "rec_cwd"])
    rows = result["students"]["enet"]["rows"]
    assert rows["kl1"]["seed_test"]["delta"] == pytest.approx(0.01)  # against the CPU runs, not 0.02
    assert rows["kl1"]["baseline_devices"] == {"0": "cpu", "1": "cpu", "2": "cpu"}
    assert rows["rec_cwd"]["baseline_devices"]["4"] == "cuda"  # no CPU run of seed 4 alone: the other device's
    assert rows["alone@cpu"]["seed_test"]["delta"] == pytest.approx(0.01) and rows["alone@cpu"]["seeds"] == [0, 1, 2]
    assert "gap_closed" not in rows["alone@cpu"]
    text = report.render(result, {"alone": "alone", "kl1": "KL", "rec_cwd": "CWD"})
    assert "| KL | 3 |" in text  # same device: no bracket
    assert "| alone, the same seeds again on the cpu (Δ: the device effect) [cpu: seeds 0, 1, 2; paired alone on " \
           "cuda: seeds 0, 1, 2] | 3 | 0.747 ± 0.002 | +0.010 |" in text
    assert list(rows) == ["alone", "alone@cpu", "kl1", "rec_cwd", "recipe"]


def test_an_arm_can_also_be_shown_as_medkd_recipe_ships_it_falling_back_where_it_lost_on_validation(quality):
    arms, report = quality
    runs = {f"unet_s1-alone-s{s}": _run(0.72, s) for s in range(3)}
    runs |= {f"unet_s1-cwd_bal-s{s}": {**_run(0.70, s), "best_val_dice": 0.73 if s == 2 else 0.71} for s in range(3)}
    result = report.build({"runs": runs}, [], ["alone", "cwd_bal"], None, ("cwd_bal",))
    rows = result["students"]["unet_s1"]["rows"]
    assert rows["cwd_bal"]["seed_test"]["delta"] == pytest.approx(-0.02)
    shipped = rows["fallback:cwd_bal"]
    assert shipped["fallback_seeds"] == [0, 1] and shipped["seed_test"]["delta"] == pytest.approx(-0.02 / 3)
    text = report.render(result, {"cwd_bal": "CWD labelled"})
    assert "| medkd recipe's fallback applied (CWD labelled, with fallback; fell back on seeds [0, 1]) | 3 |" in text
    assert arms.ARM_BY_NAME["cwd_bal"].fallback and not arms.ARM_BY_NAME["rec_cwd"].fallback


def test_merging_keeps_a_run_repeated_on_another_device_under_its_device(quality, tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(QUALITY))
    run = importlib.import_module("run")
    for name, device in (("a", "cuda"), ("b", "cpu"), ("c", "cpu")):
        runs = {"enet-alone-s0": {**_run(0.7, 0), "device": device}}
        (tmp_path / f"{name}.json").write_text(json.dumps({"runs": runs}))
    merged = run.merge_raw([tmp_path / "a.json", tmp_path / "b.json"])
    assert sorted(merged["runs"]) == ["enet-alone-s0", "enet-alone-s0@cpu"]
    assert merged["machines"][1]["runs"] == ["enet-alone-s0@cpu"]
    with pytest.raises(SystemExit, match="c.json: runs already in an earlier file: enet-alone-s0"):
        run.merge_raw([tmp_path / "a.json", tmp_path / "b.json", tmp_path / "c.json"])


def test_merging_raw_files_keeps_each_machine_and_refuses_a_run_twice(quality, tmp_path, monkeypatch):
    _, report = quality
    monkeypatch.syspath_prepend(str(QUALITY))
    run = importlib.import_module("run")
    gpu = {"runs": {"enet-alone-s0": _run(0.7, 0)}, "machine": {"gpu": "NVIDIA H200", "note": "one call"},
           "recipe": {"chosen": "rec_cwd"}}
    cpu = {"runs": {"enet-rec_cwd-s3": _run(0.7, 3)}, "machine": {"gpu": None, "cpu": "2-core CPU", "note": "alone"}}
    (tmp_path / "a.json").write_text(json.dumps(gpu))
    (tmp_path / "b.json").write_text(json.dumps(cpu))
    merged = run.merge_raw([tmp_path / "a.json", tmp_path / "b.json"])
    assert sorted(merged["runs"]) == ["enet-alone-s0", "enet-rec_cwd-s3"] and merged["recipe"] == gpu["recipe"]
    assert [m["runs"] for m in merged["machines"]] == [["enet-alone-s0"], ["enet-rec_cwd-s3"]]
    assert report.machines_line(merged).startswith("Machines: NVIDIA H200 (1 runs; one call); 2-core CPU (1 runs;")
    with pytest.raises(SystemExit, match="b.json: runs already in an earlier file: enet-rec_cwd-s3"):
        run.merge_raw([tmp_path / "a.json", tmp_path / "b.json", tmp_path / "b.json"])


def test_committed_tables_render_from_the_committed_raw_runs(quality):
    arms, report = quality
    for md in sorted(QUALITY.glob("results_*.md")):
        raw = json.loads((QUALITY / f"raw_{md.stem.removeprefix('results_')}.json").read_text())
        result = report.build_benchmark(raw)
        head = f"# Quality benchmark: {md.stem.removeprefix('results_')}\n\n{report.machines_line(raw)}\n\n"
        assert md.read_text() == head + report.render(result, {a.name: a.label for a in arms.ARMS}), md.name


def test_every_arm_makes_a_run_config_medkd_accepts(quality, monkeypatch):
    import argparse

    from medkd.config import parse_config

    arms, _ = quality
    monkeypatch.syspath_prepend(str(QUALITY))
    run = importlib.import_module("run")
    args = argparse.Namespace(data=Path("acdc128"), work=Path("work"), epochs=60, threads=1, steps_per_epoch=None)
    teacher = {"model": run.TEACHER_MODEL, "checkpoint": "teacher.safetensors"}
    for arm in arms.ARMS:
        cfg = parse_config(run.run_config(arm, "unet_s1", 0, args, teacher))
        assert cfg.train.epochs == 60 * arm.epochs_factor, arm.name
        assert (cfg.distill is not None) == ("distill" in arm.overrides), arm.name
    mixed = parse_config(run.run_config(arms.ARM_BY_NAME["rec_cwd_mix"], "enet", 3, args, teacher))
    assert mixed.distill.cutmix.prob == 0.5 and mixed.data.unlabeled_left_out and mixed.distill.cache


def test_a_run_is_expected_to_take_what_runs_of_its_student_took_per_epoch(monkeypatch):
    monkeypatch.syspath_prepend(str(QUALITY))
    run = importlib.import_module("run")

    def job(name, epochs, seconds=None):
        j = run.Job(name, {"train": {"epochs": epochs}}, 1, None)
        if seconds is not None:
            j.status, j.started, j.finished = "done", 100.0, 100.0 + seconds
        return j

    jobs = [job("enet-rec_cwd-s3", 60, 2400), job("unet_s1-alone-s0", 60, 600), job("teacher", 60, 9000)]
    assert run._expected_seconds(jobs, job("unet_s1-rec_cwd_x3-s0", 180), 5) == pytest.approx(1.1 * 1800)
    assert run._expected_seconds(jobs, job("enet-rec_cwd-s4", 60), 5) == pytest.approx(1.1 * 2400)
    assert run._expected_seconds(jobs, job("erfnet-alone-s0", 30), 5) == pytest.approx(1.1 * 1200)  # any student
    assert run._expected_seconds(jobs[2:], job("enet-alone-s0", 60), 5) == 5  # the teacher does not count
    halves = [*jobs, job("teacher_half-s0", 60, 3000)]  # a seed's teacher on the labelled half: as the others took
    assert run._expected_seconds(halves, job("teacher_half-s1", 60), 5) == pytest.approx(1.1 * 3000)
    assert run._expected_seconds(halves, job("enet-alone-s0", 60), 5) == pytest.approx(1.1 * 2400)


def test_the_parts_table_pairs_the_recipe_with_the_recipe_without_each_part(quality):
    arms, report = quality
    runs = {f"unet_s1-alone-s{s}": {**_run(0.70, s), "device": "cuda"} for s in range(3)}
    runs |= {f"unet_s1-rec_cwd-s{s}": {**_run(0.75, s), "device": "cuda"} for s in range(3)}
    runs |= {f"unet_s1-pl_u-s{s}": {**_run(0.74, s), "device": "cpu"} for s in (0, 1)}
    runs |= {"unet_s1-pl_u-s1@cuda": {**_run(0.746, 1), "device": "cuda"}}
    parts = (("rec_cwd", "pl_u", "the CWD term"), ("rec_cwd", "rec_cwd_nopl", "the pseudo-labels"))
    result = report.build({"runs": runs}, ["rec_cwd"], ["alone", "rec_cwd", "pl_u"], None, (), parts)
    cwd_term, pseudo = result["students"]["unet_s1"]["parts"]
    assert cwd_term["seeds"] == [0, 1] and cwd_term["baseline_devices"] == {"0": "cpu", "1": "cuda"}
    assert cwd_term["seed_test"]["delta"] == pytest.approx((0.01 + 0.004) / 2)  # seed 1 against its cuda twin
    assert cwd_term["mean"] == pytest.approx(np.mean([0.75 + 0.035, 0.75 + 0.037]))
    assert cwd_term["without_mean"] == pytest.approx(np.mean([0.74 + 0.035, 0.746 + 0.037]))
    assert pseudo["not_run"] and pseudo["seeds"] == []
    text = report.render(result, {"pl_u": "pseudo-labels only", "rec_cwd_nopl": "no pseudo-labels"})
    assert "the recipe (`rec_cwd`) against the recipe without one part" in text
    assert "| the CWD term [cuda: seeds 0, 1; paired 'pl_u' on cpu: seeds 0] | pseudo-labels only | 2 | 0.786 | " \
           "0.779 | +0.007 |" in text
    assert "| the pseudo-labels | no pseudo-labels | 0 | not run" in text
    assert {full for full, _, _ in arms.RECIPE_PARTS} == {"rec_cwd"}
    assert {without for _, without, _ in arms.RECIPE_PARTS} <= set(arms.ARM_BY_NAME)


def test_the_driver_describes_its_machine_and_keeps_a_description_already_there(quality, tmp_path):
    import torch

    driver = importlib.import_module("run")  # benchmarks/quality/run.py
    driver.describe_machine(tmp_path, "cpu", 1, 2)
    machine = json.loads((tmp_path / "machine.json").read_text())
    assert machine["gpu"] is None and machine["torch"] == torch.__version__
    assert machine["cpu"].endswith(f", {os.cpu_count()} cores")
    assert machine["note"] == "1 run(s) at a time, 2 torch threads"
    (tmp_path / "machine.json").write_text('{"gpu": "NVIDIA H200", "note": "written by gpu.sh"}')
    driver.describe_machine(tmp_path, "cuda", 16, 1)
    assert json.loads((tmp_path / "machine.json").read_text())["note"] == "written by gpu.sh"


def test_the_teachers_on_the_labelled_half_are_reported_per_seed_and_not_as_arms(quality):
    arms, report = quality
    runs = {f"unet_s1-alone-s{s}": _run(0.70, s) for s in range(2)}
    runs |= {f"unet_s1-rec_cwd_t50-s{s}": _run(0.72, s) for s in range(2)}
    runs |= {f"teacher_half-s{s}": _run(0.80, s, cases=2) for s in range(2)}
    result = report.build({"runs": runs}, [], ["alone", "rec_cwd_t50"])
    assert result["teacher_half"] == {0: pytest.approx(0.805), 1: pytest.approx(0.807)}
    assert list(result["students"]) == ["unet_s1"]
    text = report.render(result, {a.name: a.label for a in arms.ARMS})
    assert "labelled patients only (50%), test Dice: seed 0 0.805, seed 1 0.807." in text
