"""Export (ONNX, TorchScript) parity with PyTorch, run-folder export of the student alone, ONNX predict."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import onnx.numpy_helper
import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from medkd.cli import main
from medkd.data.nifti_io import read_nifti
from medkd.errors import MedkdError
from medkd.export import OnnxPredictor, export_onnx, export_run, export_torchscript, read_export_info, sidecar_path
from medkd.models import create_model, list_models
from medkd.run import load_run_model
from medkd.train.trainer import train

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")

STUDENTS_2D = [*list_models(role="student", spatial_dims=2), "monai.UNet"]


def _build(name: str, in_channels: int = 2, num_classes: int = 3) -> nn.Module:
    torch.manual_seed(0)
    kwargs = {"channels": (8, 16, 32), "strides": (2, 2)} if name == "monai.UNet" else {}
    net = create_model(name, in_channels, num_classes, spatial_dims=2, **kwargs)
    # a few training steps' worth of non-trivial BatchNorm statistics, so eval mode differs from train mode
    net.train()
    with torch.no_grad():
        net(torch.randn(2, in_channels, 32, 32) * 2 + 0.5)
    return net


def _close(got: np.ndarray, ref: np.ndarray) -> None:
    assert got.shape == ref.shape
    assert np.abs(got - ref).max() <= 1e-4 * max(1.0, float(np.abs(ref).max()))


def test_students_cover_the_zoo():
    assert {"enet", "espnet", "erfnet", "unet_s1", "unet_s2", "monai.UNet"} <= set(STUDENTS_2D)


@pytest.mark.parametrize("name", STUDENTS_2D)
def test_onnx_matches_pytorch_with_dynamic_batch_and_size(name, tmp_path):
    net = _build(name)
    example = torch.randn(1, 2, 32, 32)
    path = export_onnx(net, tmp_path / "m.onnx", example)
    assert net.training  # the caller's mode is restored
    proto = onnx.load(str(path))
    assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) >= 17
    dims = [d.dim_param or d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", 2, "height", "width"]
    net.eval()
    run = OnnxPredictor(path)
    for shape in [(1, 2, 32, 32), (3, 2, 48, 64)]:
        x = torch.randn(*shape)
        with torch.no_grad():
            ref = net(x).numpy()
        _close(run(x).numpy(), ref)


@pytest.mark.parametrize("name", STUDENTS_2D)
def test_torchscript_matches_pytorch(name, tmp_path):
    net = _build(name).eval()
    path = export_torchscript(net, tmp_path / "m.ts", torch.randn(1, 2, 32, 32))
    loaded = torch.jit.load(str(path))
    x = torch.randn(2, 2, 40, 48)
    with torch.no_grad():
        _close(loaded(x).numpy(), net(x).numpy())


@pytest.mark.parametrize("name", list_models(role="student", spatial_dims=3))
def test_onnx_matches_pytorch_for_3d_students(name, tmp_path):
    torch.manual_seed(0)
    net = create_model(name, 1, 3, spatial_dims=3).eval()
    path = export_onnx(net, tmp_path / "m3d.onnx", torch.randn(1, 1, 32, 32, 32))
    dims = [d.dim_param or d.dim_value for d in onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", 1, "depth", "height", "width"]
    x = torch.randn(2, 1, 32, 48, 32)
    with torch.no_grad():
        _close(OnnxPredictor(path)(x).numpy(), net(x).numpy())


class _DeepSupervision(nn.Module):
    """Returns [full-resolution logits, half-resolution logits] like a deep-supervision network."""

    def __init__(self) -> None:
        super().__init__()
        self.full = nn.Conv2d(1, 2, 3, padding=1)
        self.low = nn.Conv2d(1, 2, 3, stride=2, padding=1)

    def forward(self, x):
        return [self.low(x), self.full(x)]


class _FixedSize(nn.Module):
    """A token mixer with one weight per pixel: it runs at one spatial size only (any batch)."""

    def __init__(self, hw: int = 16 * 16) -> None:
        super().__init__()
        self.mix = nn.Linear(hw, hw)
        self.head = nn.Conv2d(1, 2, 1)

    def forward(self, x):
        b, c, h, w = x.shape
        return self.head(self.mix(x.flatten(2)).reshape(b, c, h, w))


def test_list_outputs_are_normalised_to_the_full_resolution_head(tmp_path):
    net = _DeepSupervision().eval()
    x = torch.randn(2, 1, 16, 16)
    path = export_onnx(net, tmp_path / "ds.onnx", x)
    assert len(onnx.load(str(path)).graph.output) == 1
    with torch.no_grad():
        _close(OnnxPredictor(path)(x).numpy(), net.full(x).numpy())


def test_fixed_size_network_falls_back_to_a_dynamic_batch_only(tmp_path):
    net = _FixedSize().eval()
    path = export_onnx(net, tmp_path / "fixed.onnx", torch.randn(1, 1, 16, 16))
    dims = [d.dim_param or d.dim_value for d in onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", 1, 16, 16]
    x = torch.randn(3, 1, 16, 16)
    with torch.no_grad():
        _close(OnnxPredictor(path)(x).numpy(), net(x).numpy())
    with pytest.raises(MedkdError, match="does not fit the model's"):
        OnnxPredictor(path)(torch.randn(1, 1, 32, 32))
    with pytest.raises(MedkdError, match="no ONNX export of this network runs at another input size"):
        export_onnx(net, tmp_path / "forced.onnx", torch.randn(1, 1, 16, 16), dynamic=True)
    assert not (tmp_path / "forced.onnx").exists()


def test_prelu_is_exported_as_leaky_relu_or_relu_nodes_with_the_same_values(tmp_path):
    net = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.PReLU(3), nn.Conv2d(3, 2, 1), nn.PReLU()).eval()
    with torch.no_grad():
        net[1].weight.copy_(torch.tensor([0.1, -0.5, 2.0]))
        net[3].weight.fill_(-0.3)  # a learned slope may leave (0, 1)
    path = export_onnx(net, tmp_path / "prelu.onnx", torch.randn(1, 1, 8, 8))
    nodes = onnx.load(str(path)).graph.node
    ops = [n.op_type for n in nodes]
    assert "PRelu" not in ops and "Relu" in ops  # the per-channel PReLU, decomposed
    (leaky,) = [n for n in nodes if n.op_type == "LeakyRelu"]  # the single-slope one
    assert onnx.helper.get_attribute_value(leaky.attribute[0]) == pytest.approx(-0.3)
    assert isinstance(net[1], nn.PReLU)  # the caller's network is untouched
    x = torch.randn(2, 1, 12, 8)
    with torch.no_grad():
        _close(OnnxPredictor(path)(x).numpy(), net(x).numpy())


def test_enet_onnx_gathers_pool_windows_with_a_conv_and_keeps_logits_and_labels(tmp_path):
    torch.manual_seed(0)
    net = create_model("enet", in_channels=1, num_classes=3).eval()
    with torch.no_grad():  # trained-like statistics and slopes, so every branch matters
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 2.0)
            elif isinstance(m, nn.PReLU):
                m.weight.uniform_(0.05, 0.4)
    path = export_onnx(net, tmp_path / "enet.onnx", torch.randn(1, 1, 64, 64))
    ops = [n.op_type for n in onnx.load(str(path)).graph.node]
    assert ops.count("Slice") <= 6  # only shape arithmetic: the 4 x 2 strided window slices are one Conv per pool
    x = torch.randn(2, 1, 96, 64)
    with torch.no_grad():
        ref = net(x).numpy()
    got = OnnxPredictor(path)(x).numpy()
    assert np.abs(got - ref).max() < 1e-4
    assert np.array_equal(got.argmax(1), ref.argmax(1))


def test_bad_example_is_a_one_line_error(tmp_path):
    with pytest.raises(MedkdError, match="example must be"):
        export_onnx(_DeepSupervision(), tmp_path / "x.onnx", torch.randn(16, 16))
    with pytest.raises(MedkdError, match="opset"):
        export_onnx(_DeepSupervision(), tmp_path / "x.onnx", torch.randn(1, 1, 16, 16), opset=13)


# --------------------------------------------------------------------------------- a trained distilled run


def _run_config(root, **sections):
    from medkd.config import parse_config

    cfg = {"seed": 0, "data": {"root": str(root), "dim": 2, "size": [32, 32],
                               "split": {"val": 0.2, "test": 0.2, "seed": 0}},
           "model": {"name": "unet_s1"}, "train": {"epochs": 1, "batch_size": 4, "progress": False}}
    return parse_config({**cfg, **sections})


@pytest.fixture(scope="module")
def distilled(synth2d, tmp_path_factory):
    """A tiny unet_s1 teacher and an ENet student distilled from it with an adapter (feature_mse)."""
    base = tmp_path_factory.mktemp("export")
    train(_run_config(synth2d, name="teacher"), base / "teacher", device="cpu")
    student_cfg = _run_config(
        synth2d, name="student", model={"name": "enet"},
        distill={"teacher": {"run": str(base / "teacher")},
                 "terms": [{"loss": "feature_mse", "weight": 1.0}, {"loss": "logits_kl", "weight": 0.5}]})
    train(student_cfg, base / "student", device="cpu")
    return base


def _extras(run):
    last = json.loads((run / "checkpoints" / "last.json").read_text())["dir"]
    return load_file(str(run / "checkpoints" / last / "extras.safetensors"))


def test_export_run_writes_the_student_alone_with_a_sidecar(distilled):
    run = distilled / "student"
    path = export_run(run)
    assert path == run / "export" / "model.onnx"
    info = read_export_info(path)
    split = json.loads((run / "split.json").read_text())
    assert info["format"] == "onnx" and info["model"] == "enet" and info["dim"] == 2 and info["size"] == [32, 32]
    assert info["input_name"] == "image" and info["input_shape"] == ["batch", 1, "height", "width"]
    assert info["classes"] == split["classes"] and info["channels"] == split["channels"]
    assert info["normalize"] == "zscore" and info["opset"] >= 17 and info["medkd_version"]
    assert info["label_values"] == list(range(len(split["classes"])))
    # the network alone: initialisers hold fewer values than the student's weights, none of the adapter's
    extras = _extras(run)
    assert extras, "the distilled run should own a trainable adapter"
    student, _ = load_run_model(run)
    proto = onnx.load(str(path))
    init_numel = sum(int(np.prod(t.dims)) for t in proto.graph.initializer)
    state_numel = sum(v.numel() for v in student.state_dict().values())
    assert 0 < init_numel <= state_numel
    inits = [onnx.numpy_helper.to_array(t) for t in proto.graph.initializer]
    for key, value in extras.items():
        assert not any(a.shape == tuple(value.shape) and np.array_equal(a, value.numpy()) for a in inits), key
    # same logits as the PyTorch student
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        _close(OnnxPredictor(path)(x).numpy(), student(x).numpy())


def test_predict_onnx_engine_gives_the_torch_label_maps(distilled, synth2d, tmp_path, capsys):
    run = distilled / "student"
    shutil.rmtree(run / "export", ignore_errors=True)
    images = sorted((synth2d / "imagesTr").glob("*_0000.nii.gz"))[:3]
    args = [str(run), *map(str, images)]
    assert main(["predict", *args, "--out", str(tmp_path / "torch")]) == 0
    assert main(["predict", *args, "--out", str(tmp_path / "onnx"), "--engine", "onnx"]) == 0
    assert "exported the run's best weights" in capsys.readouterr().out  # no export yet: made on the fly
    assert (run / "export" / "model.onnx").is_file()
    for image in images:
        case = image.name.replace("_0000.nii.gz", ".nii.gz")
        a, affine_a = read_nifti(tmp_path / "torch" / case)
        b, affine_b = read_nifti(tmp_path / "onnx" / case)
        assert np.array_equal(a, b) and np.allclose(affine_a, affine_b)
    # the export folder alone (no run folder, no PyTorch weights) predicts the same
    deploy = tmp_path / "deploy"
    shutil.copytree(run / "export", deploy)
    out = tmp_path / "deploy_out"
    assert main(["predict", str(deploy), str(images[0]), "--out", str(out), "--engine", "onnx"]) == 0
    case = images[0].name.replace("_0000.nii.gz", ".nii.gz")
    assert np.array_equal(read_nifti(tmp_path / "deploy_out" / case)[0], read_nifti(tmp_path / "torch" / case)[0])


def test_stale_export_is_redone_when_the_best_weights_change(distilled, tmp_path):
    from medkd.export import resolve_onnx_export

    run = distilled / "student"
    export_run(run)
    _, _, exported = resolve_onnx_export(run)
    assert not exported
    info_path = sidecar_path(run / "export" / "model.onnx")
    info = json.loads(info_path.read_text())
    info["checkpoint_sha256"] = "0" * 64  # as if best.safetensors had changed since the export
    info_path.write_text(json.dumps(info))
    _, info, exported = resolve_onnx_export(run)
    assert exported and info["checkpoint_sha256"] != "0" * 64
    with pytest.raises(MedkdError, match="no current ONNX export"):
        info_path.write_text(json.dumps({**info, "checkpoint_sha256": "1" * 64}))
        resolve_onnx_export(run, export=False)


def test_cli_export_torchscript_and_errors(distilled, tmp_path, capsys):
    run = distilled / "student"
    assert main(["export", str(run), "--format", "torchscript", "--out", str(tmp_path / "ts")]) == 0
    path = tmp_path / "ts" / "model.ts"
    assert "exported enet (torchscript" in capsys.readouterr().out
    assert read_export_info(path)["format"] == "torchscript"
    student, _ = load_run_model(run)
    x = torch.randn(1, 1, 48, 32)
    with torch.no_grad():
        _close(torch.jit.load(str(path))(x).numpy(), student(x).numpy())

    capsys.readouterr()
    assert main(["export", str(tmp_path / "nope")]) == 2
    assert main(["export", str(run), "--format", "tflite"]) == 2
    bad = tmp_path / "notes.txt"
    bad.write_text("hello")
    assert main(["predict", str(run), str(bad), "--out", str(tmp_path / "o"), "--engine", "onnx"]) == 2
    assert main(["predict", str(run), str(bad), "--out", str(tmp_path / "o"), "--engine", "tensorrt"]) == 2
    assert main(["predict", str(run), str(bad), "--out", str(tmp_path / "o"), "--engine", "onnx",
                 "--device", "cuda"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 5 and all(line.startswith("error: ") for line in err)
    assert "not a run folder" in err[0] and "unknown export format 'tflite'" in err[1]
    assert "not a NIfTI file" in err[2] and "unknown engine 'tensorrt'" in err[3] and "CPU" in err[4]
