"""``benchmarks/quality/teacher_labels.py``: the committed table follows from its per-volume Dice and the draws."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest

QUALITY = Path(__file__).resolve().parents[2] / "benchmarks" / "quality"
ACDC = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "acdc"
COMMITTED = QUALITY / "teacher_labels"


@pytest.fixture(scope="module")
def script(import_quality):
    return import_quality("teacher_labels")


def test_committed_json_renders_to_the_committed_markdown(script):
    result = json.loads(COMMITTED.with_suffix(".json").read_text())
    assert script.render(result) == COMMITTED.with_suffix(".md").read_text()


def test_render_states_the_difference_to_the_test_split(script):
    result = {"machine": "m", "test": 0.80, "without_labels_mean": 0.85,
              "rows": [{"seed": 0, "without_labels": 0.85, "n_without_labels": 2, "with_labels": 0.9,
                        "n_with_labels": 2}]}
    text = script.render(result)
    assert "| 0 | 0.850 (2) | 0.900 (2) | 0.800 |" in text
    assert "differ by +5.0 points" in text


@pytest.mark.skipif(not ACDC.is_dir(), reason="needs ../shared/data/acdc (the real ACDC dataset)")
def test_committed_rows_follow_from_the_per_volume_dice_and_each_seeds_draw(script):
    result = json.loads(COMMITTED.with_suffix(".json").read_text())
    recomputed = script.summarize(result["per_volume"], len(result["rows"]), ACDC)["rows"]
    for mine, committed in zip(recomputed, result["rows"], strict=True):
        assert mine == pytest.approx(committed)
        assert mine["n_without_labels"] + mine["n_with_labels"] == 140
    bundle = script.build_bundle(script.student_config(ACDC, 0))
    test = bundle.split["test"]
    assert set(result["per_volume"]) == set(bundle.meta["train_pool"]) | set(test)
    assert result["test"] == pytest.approx(statistics.mean(result["per_volume"][c] for c in test))


def _result_with_half(half: list[dict]) -> dict:
    return {"machine": "m", "test": 0.86, "without_labels_mean": 0.90, "half_teachers": half,
            "rows": [{"seed": 0, "without_labels": 0.9, "n_without_labels": 2, "with_labels": 0.9, "n_with_labels": 2}]}


def test_render_adds_the_half_teachers_table_only_when_some_were_scored(script):
    half = [{"seed": 0, "without_labels": 0.83, "n_without_labels": 70, "test": 0.82},
            {"seed": 2, "without_labels": 0.85, "n_without_labels": 70, "test": 0.84}]
    text = script.render(_result_with_half(half))
    assert "| 0 | 0.830 (70) | 0.820 |" in text and "| 2 | 0.850 (70) | 0.840 |" in text
    assert "Mean over 2 half teacher(s): 0.840 on the volumes without labels, 0.830 on the test split." in text
    assert "never saw those labels" not in script.render(_result_with_half([]))


def test_half_teachers_skips_seeds_whose_teacher_has_not_finished(script, tmp_path):
    (tmp_path / "runs" / "teacher_half-s0" / "checkpoints").mkdir(parents=True)  # started, no best checkpoint yet
    assert script.half_teachers(tmp_path, 3, ACDC, None, None) == {}


@pytest.mark.skipif(not ACDC.is_dir(), reason="needs ../shared/data/acdc (the real ACDC dataset)")
def test_committed_half_teacher_rows_follow_from_their_per_volume_dice(script):
    result = json.loads(COMMITTED.with_suffix(".json").read_text())
    test = script.build_bundle(script.student_config(ACDC, 0)).split["test"]
    recomputed = script.summarize_half(result["half_teachers_per_volume"], test)
    for mine, committed in zip(recomputed, result["half_teachers"], strict=True):
        assert mine == pytest.approx(committed)
    for seed, dice in result["half_teachers_per_volume"].items():  # its seed's volumes without labels + the test split
        assert set(dice) == set(script.draw(ACDC, int(seed))[1]) | set(test)
