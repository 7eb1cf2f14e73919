"""The committed config reference (docs/config.md) is the one the schema renders, and every key is described."""

from __future__ import annotations

from pathlib import Path

from medkd.config import RunConfig
from medkd.config_reference import missing_descriptions, render_config_reference

DOC = Path(__file__).resolve().parents[1] / "docs" / "config.md"


def test_every_config_key_has_a_description():
    assert missing_descriptions() == []


def test_committed_reference_is_current():
    assert DOC.read_text() == render_config_reference(), \
        "docs/config.md is stale: python -m medkd.config_reference > docs/config.md"


def test_reference_lists_every_key_with_its_default():
    text = render_config_reference()
    for key in ("data.unlabeled_ratio", "distill.balance.mode", "train.grad_norm_every", "evaluate.sw_overlap"):
        assert f"| `{key}` |" in text
    assert "| `train.max_steps_per_epoch` | int \\| null | null |" in text
    assert "| `data.size` | list[int] | `[128, 128]` |" in text
    assert len([line for line in text.splitlines() if line.startswith("| `")]) > len(RunConfig.model_fields) + 50
