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
