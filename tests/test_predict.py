"""medkd.predict: grouping input files into cases, label maps on the input grid, and nothing lost on errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medkd.data.nifti_io import read_nifti, write_nifti
from medkd.data.pipeline import prepare_arrays
from medkd.errors import DataError, MedkdError
from medkd.inference import predict_volume
from medkd.predict import collect_inputs, predict_files
from medkd.run import RunFolder


@pytest.fixture(scope="module")
def run(synth2d, make_run_config, untrained_run, tmp_path_factory) -> RunFolder:
    """An untrained (seeded) unet_s1 run folder: config, split and best weights, as training writes them."""
    return untrained_run(make_run_config(synth2d), tmp_path_factory.mktemp("predict") / "run")


def _touch(folder, *names):
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(b"")
    return folder


def test_channel_files_are_grouped_into_cases(tmp_path):
    folder = _touch(tmp_path / "in", "b_0001.nii.gz", "b_0000.nii.gz", "a_0000.nii.gz", "a_0001.nii.gz", "x.txt")
    cases = collect_inputs([folder], n_channels=2)
    assert list(cases) == ["a", "b"]
    assert [f.name for f in cases["b"]] == ["b_0000.nii.gz", "b_0001.nii.gz"]
    single = collect_inputs([folder / "a_0000.nii.gz", _touch(tmp_path / "one", "scan.nii")], n_channels=1)
    assert {k: [f.name for f in v] for k, v in single.items()} == {"a": ["a_0000.nii.gz"], "scan": ["scan.nii"]}


@pytest.mark.parametrize(("make", "message"), [
    (lambda d: [_touch(d, "c_0000.nii.gz", "c_0001.nii.gz", "c_0002.nii.gz")],
     "case 'c' has 3 channel files, the model reads 2"),
    (lambda d: [_touch(d, "notes.txt")], "no .nii / .nii.gz files in folder"),
    (lambda d: [_touch(d, "notes.txt") / "notes.txt"], "not a NIfTI file"),
    (lambda d: [d / "missing.nii.gz"], "input not found"),
])
def test_bad_inputs_are_named(tmp_path, make, message):
    with pytest.raises(DataError, match=message):
        collect_inputs(make(tmp_path / "in"), n_channels=2)


class _Pointwise(torch.nn.Module):
    """Logits (-x, 0, x): the last class where the normalised image is positive, the first where negative."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([-x, 0 * x, x], dim=1)


def test_label_maps_keep_the_input_grid_and_use_the_label_values(run, synth2d, tmp_path, monkeypatch):
    cfg = run.config()
    monkeypatch.setattr(RunFolder, "label_values", lambda self, cfg=None: [0, 5, 7])
    monkeypatch.setattr(RunFolder, "load_model", lambda self, which="best": (_Pointwise(), cfg))
    image_file = sorted((synth2d / "imagesTr").glob("*_0000.nii.gz"))[0]
    written = predict_files(run.path, [image_file], tmp_path / "out", device="cpu", progress=False)
    case = image_file.name.replace("_0000.nii.gz", "")
    assert written == [tmp_path / "out" / f"{case}.nii.gz"]
    pred, affine = read_nifti(written[0])
    image, image_affine = read_nifti(image_file)
    assert pred.shape == image.shape and np.allclose(affine, image_affine)
    assert set(np.unique(pred)) <= {0, 5, 7} and len(np.unique(pred)) > 1
    pc = prepare_arrays(case, None, image[None].astype(np.float32), None, image_affine, cfg.data)
    probs = pc.restore(predict_volume(_Pointwise(), pc.image, 2, cfg.data.size))
    expected = np.asarray([0, 5, 7])[probs.argmax(0).numpy()].reshape(image.shape)
    assert np.array_equal(pred, expected)


def test_existing_outputs_are_kept_unless_overwrite(run, synth2d, tmp_path):
    image_file = sorted((synth2d / "imagesTr").glob("*_0000.nii.gz"))[1]
    out = tmp_path / "out"
    target = _touch(out, image_file.name.replace("_0000", "")) / image_file.name.replace("_0000", "")
    with pytest.raises(MedkdError, match="output file exists; pass --overwrite"):
        predict_files(run.path, [image_file], out, device="cpu", progress=False)
    assert target.read_bytes() == b""
    predict_files(run.path, [image_file], out, device="cpu", progress=False, overwrite=True)
    assert read_nifti(target)[0].shape == read_nifti(image_file)[0].shape


def test_an_output_never_replaces_its_input(run, tmp_path):
    image = tmp_path / "imgs" / "case.nii.gz"
    image.parent.mkdir()
    write_nifti(image, np.zeros((16, 16, 2), dtype=np.float32))
    with pytest.raises(MedkdError, match="would replace the input image"):
        predict_files(run.path, [image], image.parent, device="cpu", progress=False, overwrite=True)
    assert np.array_equal(read_nifti(image)[0], np.zeros((16, 16, 2)))


def test_non_finite_voxels_stop_everything_before_writing(run, tmp_path):
    good, bad = tmp_path / "in" / "good.nii.gz", tmp_path / "in" / "bad.nii.gz"
    good.parent.mkdir()
    write_nifti(good, np.ones((16, 16, 2), dtype=np.float32))
    write_nifti(bad, np.full((16, 16, 2), np.nan, dtype=np.float32))
    with pytest.raises(DataError, match=r"bad\.nii\.gz: image contains NaN or Inf"):
        predict_files(run.path, [good, bad], tmp_path / "out", device="cpu", progress=False)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_engine_and_device_errors(run, tmp_path):
    with pytest.raises(MedkdError, match="unknown engine 'trt'"):
        predict_files(run.path, [], tmp_path, engine="trt")
    with pytest.raises(MedkdError, match="the onnx engine runs on the CPU"):
        predict_files(run.path, [], tmp_path, engine="onnx", device="cuda")
