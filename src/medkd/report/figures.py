"""Report figures (PNG): training curves and a qualitative panel of contours.

The qualitative panel follows paper A's Figure 3 convention: reference contour in red, prediction
contour in green, over the image.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from medkd.io import atomic_write  # noqa: E402

__all__ = ["plot_qualitative", "plot_training_curves"]


def _save(fig: plt.Figure, path: Path) -> Path:
    atomic_write(Path(path), lambda tmp: fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight"))
    plt.close(fig)
    return Path(path)


def plot_training_curves(histories: Mapping[str, Sequence[Mapping]], path: Path) -> Path:
    """Training loss and validation Dice per epoch for several runs, and, for distillation runs that logged
    them, the gradient norm of each loss part on the student (``train_gn/...``: segmentation solid, each
    distillation term or the pseudo-label term dashed), so a term that swamps the segmentation loss shows.

    Args:
        histories: run label -> that run's epoch records (``metrics.jsonl`` lines with ``kind == "epoch"``).
        path: PNG to write.
    """
    has_gn = any(k.startswith("train_gn/") for records in histories.values() for r in records for k in r)
    fig, axes = plt.subplots(1, 3 if has_gn else 2, figsize=(15 if has_gn else 10, 3.6))
    ax_loss, ax_val = axes[0], axes[1]
    for label, records in histories.items():
        epochs = [r["epoch"] for r in records]
        seg = [r.get("train_seg", r.get("train_loss")) for r in records]
        ax_loss.plot(epochs, seg, marker="o", ms=3, label=label)
        val = [(r["epoch"], r["val_dice"]) for r in records if r.get("val_dice") is not None]
        if val:
            ax_val.plot(*zip(*val), marker="o", ms=3, label=label)
    ax_loss.set(xlabel="epoch", ylabel="segmentation loss (train)", title="Training loss")
    ax_val.set(xlabel="epoch", ylabel="mean foreground Dice (val volumes)", title="Validation Dice")
    if has_gn:
        _plot_gradient_norms(axes[2], histories)
    for ax in (ax_loss, ax_val):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, "no validation volumes in this protocol", ha="center", va="center",
                    transform=ax.transAxes, color="0.4")
    return _save(fig, path)


def _plot_gradient_norms(ax: plt.Axes, histories: Mapping[str, Sequence[Mapping]]) -> None:
    for label, records in histories.items():
        parts = sorted({k for r in records for k in r if k.startswith("train_gn/")})
        for key in parts:
            points = [(r["epoch"], r[key]) for r in records if r.get(key) is not None and r[key] > 0]
            if points:
                part = key.removeprefix("train_gn/")
                ax.plot(*zip(*points), ls="-" if part == "seg" else "--", ms=2, marker="o", label=f"{label}: {part}")
    ax.set(xlabel="epoch", ylabel="gradient norm on the student", title="Loss balance", yscale="log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)


def plot_qualitative(image_slices: Sequence[np.ndarray], reference: Sequence[np.ndarray],
                     predictions: Mapping[str, Sequence[np.ndarray]], path: Path,
                     row_labels: Sequence[str] | None = None) -> Path:
    """Rows = cases (one 2D slice each); columns = image + reference, then each model's prediction.

    Reference contours are red, prediction contours green (every foreground class outlined).

    Args:
        image_slices: 2D intensity images.
        reference: 2D label maps.
        predictions: model label -> 2D label maps, one per row.
        path: PNG to write.
        row_labels: optional text per row (e.g. case id and site).
    """
    n_rows, n_cols = len(image_slices), 1 + len(predictions)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(2.6 * n_cols, 2.6 * n_rows), squeeze=False)
    for r in range(n_rows):
        img = image_slices[r]
        lo, hi = np.percentile(img, [1, 99])
        panels = [("reference", reference[r], "red")] + [(k, v[r], "lime") for k, v in predictions.items()]
        for c, (title, labels, colour) in enumerate(panels):
            ax = axes[r, c]
            ax.imshow(img.T, cmap="gray", vmin=lo, vmax=hi, origin="lower")
            for value in np.unique(reference[r]):
                if value == 0:
                    continue
                ax.contour((reference[r] == value).T.astype(float), levels=[0.5], colors="red", linewidths=0.8)
            if c > 0:
                for value in np.unique(labels):
                    if value == 0:
                        continue
                    ax.contour((labels == value).T.astype(float), levels=[0.5], colors=colour, linewidths=0.8)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(title, fontsize=9)
            if c == 0 and row_labels is not None:
                ax.set_ylabel(row_labels[r], fontsize=8)
    fig.suptitle("reference in red, prediction in green", fontsize=9)
    return _save(fig, path)
