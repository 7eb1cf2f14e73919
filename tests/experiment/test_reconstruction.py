"""reconstruction_psnr: per-case PSNR of a multi-task run's reconstruction, worked out here from the network."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from medkd.data.loader import open_dataset
from medkd.data.pipeline import prepare_cases, resize_image
from medkd.errors import MedkdError
from medkd.experiment.reconstruction import reconstruction_psnr
from medkd.run import RunFolder

MULTITASK = {"name": "multitask_unet", "kwargs": {"widths": [4, 8]}}


@pytest.fixture(scope="module")
def multitask_run(synth2d, make_run_config, untrained_run, tmp_path_factory) -> RunFolder:
    return untrained_run(make_run_config(synth2d, model=MULTITASK), tmp_path_factory.mktemp("recon") / "run")


def _hand_psnr(run: RunFolder, case: str) -> float:
    """PSNR of one case from the network's second output: range^2 / MSE over all its resized slices."""
    model, cfg = run.load_model()
    index = open_dataset(cfg.data, root=run.split()["dataset"])
    pc = prepare_cases(index, [case], index.channel_indices(run.channels()), cfg.data)[0]
    vol = torch.as_tensor(pc.image, dtype=torch.float32)
    vol = vol[..., None] if vol.ndim == 3 else vol
    xs = torch.stack([resize_image(vol[..., z], cfg.data.size) for z in range(vol.shape[-1])])
    with torch.no_grad():
        recon = model.forward_multitask(xs)[1]
    mse = float(((recon.double() - xs.double()) ** 2).mean())
    rng = float(xs.max() - xs.min())
    return 10 * math.log10(rng**2 / mse)


def test_psnr_per_case_and_its_mean_and_std(multitask_run):
    result = reconstruction_psnr(multitask_run.path, "val")
    cases = multitask_run.split()["val"]
    assert result["split"] == "val" and result["n_cases"] == len(cases) == 3
    assert list(result["per_case"]) == cases
    for case in cases:
        assert result["per_case"][case] == pytest.approx(_hand_psnr(multitask_run, case), rel=1e-4)
    values = np.array(list(result["per_case"].values()))
    assert result["psnr"]["mean"] == pytest.approx(values.mean())
    assert result["psnr"]["std"] == pytest.approx(values.std(ddof=1))


def test_an_empty_split_has_no_values(multitask_run):
    assert reconstruction_psnr(multitask_run.path, "nosuchsplit") == {
        "split": "nosuchsplit", "n_cases": 0, "psnr": {"mean": None, "std": None}, "per_case": {}}


def test_a_network_without_reconstruction_is_refused(synth2d, make_run_config, untrained_run, tmp_path):
    run = untrained_run(make_run_config(synth2d), tmp_path / "plain")
    with pytest.raises(MedkdError, match=r"plain: model unet_s1 has no 'reconstruction' output"):
        reconstruction_psnr(run.path)
