"""Reconstruction PSNR of a multi-task teacher (thesis B reports it next to the segmentation scores).

The teacher's ``reconstruction`` tap is compared with its own (preprocessed, resized) input, slice by slice
at the training size. Per case: ``PSNR = 10 log10(range^2 / MSE)`` with ``range`` the case's input
intensity range (max - min over its slices) and ``MSE`` over all its slices and channels.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medkd.data.loader import open_dataset
from medkd.data.pipeline import PreparedCase, prepare_cases, resize_image
from medkd.errors import MedkdError
from medkd.models import FeatureTapper, tap_specs
from medkd.run import RunFolder

__all__ = ["reconstruction_psnr"]


def _case_psnr(model: torch.nn.Module, tapper: FeatureTapper, pc: PreparedCase, size: Any,
               run_dir: Path) -> float | None:
    """PSNR of one prepared case's slices (None when its input is constant or reconstructed exactly)."""
    vol = torch.as_tensor(pc.image, dtype=torch.float32)
    if vol.ndim == 3:
        vol = vol[..., None]
    xs = torch.stack([resize_image(vol[..., z], size) for z in range(vol.shape[-1])])
    model(xs)
    recon = tapper.features["reconstruction"].float()
    if recon.shape != xs.shape:
        raise MedkdError(f"{run_dir}: reconstruction shape {tuple(recon.shape)} != input {tuple(xs.shape)}")
    mse = float(torch.mean((recon - xs) ** 2))
    rng = float(xs.max() - xs.min())
    return 10.0 * math.log10(rng * rng / mse) if mse > 0 and rng > 0 else None


@torch.no_grad()
def reconstruction_psnr(run_dir: str | Path, split: str = "test") -> dict[str, Any]:
    """PSNR (dB) of a 2D multi-task run's reconstruction on every case of ``split``.

    Args:
        run_dir: a finished run folder of a network with a ``reconstruction`` tap.
        split: which part of the run's split to use.

    Returns:
        ``{"split", "n_cases", "psnr": {"mean", "std"}, "per_case": {case: psnr}}``.

    Raises:
        MedkdError: the network has no reconstruction output, or the run is not 2D.
    """
    run_dir = Path(run_dir)
    run = RunFolder(run_dir)
    model, cfg = run.load_model()
    if "reconstruction" not in tap_specs(model):
        raise MedkdError(f"{run_dir}: model {cfg.model.name} has no 'reconstruction' output")
    if cfg.data.dim != 2:
        raise MedkdError(f"{run_dir}: reconstruction PSNR is implemented for 2D runs only")
    model.eval()
    info = run.split()
    index = open_dataset(cfg.data, root=info["dataset"])
    channels = index.channel_indices(info["channels"])
    per_case: dict[str, float] = {}
    with FeatureTapper(model, ["reconstruction"]) as tapper:
        for cid in info.get(split, []):
            pc = prepare_cases(index, [cid], channels, cfg.data)[0]
            psnr = _case_psnr(model, tapper, pc, cfg.data.size, run_dir)
            if psnr is not None:
                per_case[cid] = psnr
    values = np.asarray(list(per_case.values()), dtype=np.float64)
    return {"split": split, "n_cases": len(per_case),
            "psnr": {"mean": float(values.mean()) if len(values) else None,
                     "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0 if len(values) else None},
            "per_case": per_case}
