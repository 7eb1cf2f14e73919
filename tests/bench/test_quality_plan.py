"""``benchmarks/quality/run.py plan``: which runs the grid holds and which teacher each waits for."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

ACDC = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "acdc"


@pytest.fixture(scope="module")
def run(import_quality):
    return import_quality("run")


def _args(tmp_path: Path, only: str | None, fixture: Path | None) -> argparse.Namespace:
    return argparse.Namespace(data=tmp_path / "acdc128", work=tmp_path / "work", teacher_fixture=fixture,
                              teacher_epochs=60, epochs=60, threads=1, steps_per_epoch=None, seeds=3,
                              headline_seeds=5, students=["unet_s1", "enet"], only=only)


def test_an_arm_on_the_labelled_half_waits_for_its_own_seeds_teacher(run, tmp_path):
    args = _args(tmp_path, "unet_s1-rec_cwd_t50-s[01]$", tmp_path / "fixture.safetensors")
    jobs = {j.name: j for j in run.plan(args, {"model": run.TEACHER_MODEL, "checkpoint": "fixture"})}
    assert sorted(jobs) == ["teacher_half-s0", "teacher_half-s1", "unet_s1-rec_cwd_t50-s0", "unet_s1-rec_cwd_t50-s1"]
    for seed in (0, 1):
        student, teacher = jobs[f"unet_s1-rec_cwd_t50-s{seed}"], jobs[f"teacher_half-s{seed}"]
        assert student.teacher == teacher.name and teacher.teacher is None and teacher.priority < student.priority
        assert student.config["distill"]["teacher"] == {"run": str(args.work.resolve() / "runs" / teacher.name)}
        assert teacher.config["seed"] == seed == student.config["seed"]
        assert teacher.config["data"]["train_fraction"] == 0.5 == student.config["data"]["train_fraction"]
        assert teacher.config["model"] == run.TEACHER_MODEL


def test_other_arms_use_the_fixture_or_wait_for_the_benchmarks_teacher(run, tmp_path):
    fixture = tmp_path / "fixture.safetensors"
    jobs = {j.name: j for j in run.plan(_args(tmp_path, "unet_s1-(alone|rec_cwd)-s0$", fixture), {"checkpoint": "f"})}
    assert sorted(jobs) == ["unet_s1-alone-s0", "unet_s1-rec_cwd-s0"]
    assert jobs["unet_s1-alone-s0"].teacher is None and jobs["unet_s1-rec_cwd-s0"].teacher is None
    assert jobs["unet_s1-rec_cwd-s0"].config["distill"]["teacher"] == {"checkpoint": "f"}
    jobs = {j.name: j for j in run.plan(_args(tmp_path, "unet_s1-rec_cwd-s0$", None), {"run": "T"})}
    assert sorted(jobs) == ["teacher", "unet_s1-rec_cwd-s0"] and jobs["unet_s1-rec_cwd-s0"].teacher == "teacher"


@pytest.mark.skipif(not ACDC.is_dir(), reason="needs ../shared/data/acdc (the real ACDC dataset)")
def test_the_half_teacher_trains_on_exactly_its_students_labelled_patients(run):
    from medkd.config import parse_config
    from medkd.data.loader import build_bundle

    teacher = parse_config(run.half_teacher_config(ACDC, 60, 1, 2))
    student = parse_config({"name": "s", "seed": 2, "model": {"name": "unet_s1"}, **run.base_config(ACDC, 60, 1)})
    labelled = build_bundle(teacher).split["train"]
    assert labelled == build_bundle(student).split["train"] and len(labelled) == 70
