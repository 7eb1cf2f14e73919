"""Training-curve figure: the loss-balance panel appears for runs that logged gradient norms, and only then."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import pytest
from PIL import Image

from medkd.report import figures
from medkd.report.figures import plot_training_curves


def _records(with_gn: bool) -> list[dict]:
    out = []
    for epoch in range(1, 5):
        rec = {"epoch": epoch, "train_seg": 1.0 / epoch, "val_dice": 0.1 * epoch}
        if with_gn and epoch % 2:
            rec.update({"train_gn/seg": 2.0 / epoch, "train_gn/kd/cwd@logits": 1.0 / epoch,
                        "train_gn/pseudo_label": 0.5})
        out.append(rec)
    return out


@pytest.mark.parametrize("with_gn", [False, True])
def test_curves_add_the_balance_panel_only_with_gradient_norms(tmp_path, monkeypatch, with_gn):
    seen = {}
    real = plt.subplots

    def spy(*args, **kwargs):
        fig, axes = real(*args, **kwargs)
        seen["axes"] = axes
        return fig, axes

    monkeypatch.setattr(figures.plt, "subplots", spy)
    path = plot_training_curves({"alone": _records(False), "distilled": _records(with_gn)}, tmp_path / "c.png")
    assert Image.open(path).size[0] > 0
    assert len(seen["axes"]) == (3 if with_gn else 2)
    if with_gn:
        labels = [line.get_label() for line in seen["axes"][2].get_lines()]
        assert labels == ["distilled: kd/cwd@logits", "distilled: pseudo_label", "distilled: seg"]
        seg = next(line for line in seen["axes"][2].get_lines() if line.get_label().endswith(": seg"))
        assert list(seg.get_xdata()) == [1, 3] and seg.get_linestyle() == "-"  # only epochs that measured


def test_curves_file_is_a_png(tmp_path: Path):
    path = plot_training_curves({"run": _records(True)}, tmp_path / "c.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
