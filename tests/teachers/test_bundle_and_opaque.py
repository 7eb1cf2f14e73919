"""MONAI bundles, TorchScript and ONNX files as teachers: logits equal the original framework's forward."""

from __future__ import annotations

import pytest
import torch

from medkd.config import TeacherConfig, parse_config
from medkd.distill.cache import fingerprint
from medkd.errors import ConfigError
from medkd.teachers import TeacherInputs, check_teacher_source, check_teacher_taps, load_teacher

CLASSES = ["background", "organ", "lesion"]


def test_bundle_logits_equal_monais_forward_and_classes_follow_names(tmp_path, make):
    bundle, net = make.bundle(tmp_path, "T2", ["background", "lesion", "organ"])
    inputs = TeacherInputs(1, 3, 2, ["t2"], CLASSES, "zscore")
    teacher = load_teacher(TeacherConfig(bundle=str(bundle)), 1, 3, 2, inputs)
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(teacher(x), net(x)[:, [0, 2, 1]])
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())


def test_bundle_problems_are_one_line_errors(tmp_path, make):
    bundle, _ = make.bundle(tmp_path, "CT", CLASSES)
    with pytest.raises(ConfigError, match="the teacher reads channel 'CT', which data.teacher_channels"):
        load_teacher(TeacherConfig(bundle=str(bundle)), 1, 3, 2, TeacherInputs(1, 3, 2, ["T2"], CLASSES))
    with pytest.raises(ConfigError, match="the bundle's network is 2D"):
        load_teacher(TeacherConfig(bundle=str(bundle)), 1, 3, 3, TeacherInputs(1, 3, 3, ["CT"], CLASSES))
    (bundle / "models" / "model.pt").unlink()
    with pytest.raises(ConfigError, match="models/model.pt missing"):
        check_teacher_source(TeacherConfig(bundle=str(bundle)))


@pytest.mark.parametrize("kind", ["torchscript", "onnx"])
def test_exported_teacher_logits_equal_the_networks(tmp_path, make, kind):
    net = make.small_net(3).eval()
    path = getattr(make, kind)(tmp_path / f"teacher.{kind}", net)
    teacher = load_teacher(TeacherConfig(**{kind: str(path)}), 1, 3, 2, TeacherInputs(1, 3, 2, ["T2"], CLASSES),
                           size=[32, 32])
    x = torch.randn(3, 1, 32, 32)
    with torch.no_grad():
        assert torch.allclose(teacher(x), net(x), atol=1e-5)


def test_exported_teacher_classes_can_be_merged_by_map(tmp_path, make):
    net = make.small_net(3).eval()
    path = make.onnx(tmp_path / "t.onnx", net)
    tcfg = TeacherConfig(onnx=str(path), teacher_label_map={"0": "background", "1": "organ", "2": "organ"})
    teacher = load_teacher(tcfg, 1, 2, 2, TeacherInputs(1, 2, 2, ["T2"], ["background", "organ"]))
    x = torch.randn(1, 1, 32, 32)
    with torch.no_grad():
        probs = net(x).softmax(1)
        assert torch.allclose(teacher(x).softmax(1)[:, 1], probs[:, 1] + probs[:, 2], atol=1e-5)
    with pytest.raises(ConfigError, match=r"predicts 3 classes, the dataset has 2 \(\['background', 'organ'\]\)"):
        load_teacher(TeacherConfig(onnx=str(path)), 1, 2, 2, TeacherInputs(1, 2, 2, ["T2"], ["background", "organ"]))


def test_onnx_teachers_of_different_files_never_share_a_cache(tmp_path, make):
    a = load_teacher(TeacherConfig(onnx=str(make.onnx(tmp_path / "a.onnx", make.small_net(3)))), 1, 3, 2)
    torch.manual_seed(1)
    b = load_teacher(TeacherConfig(onnx=str(make.onnx(tmp_path / "b.onnx", make.small_net(3)))), 1, 3, 2)
    x = torch.zeros(2, 1, 32, 32)
    assert a.state_dict() == {} and b.state_dict() == {}
    assert fingerprint(a, x, ["logits"]) != fingerprint(b, x, ["logits"])


def test_feature_losses_on_an_opaque_teacher_are_refused(tmp_path, make):
    path = make.torchscript(tmp_path / "t.pt", make.small_net(3))
    tcfg = TeacherConfig(torchscript=str(path))
    check_teacher_taps(tcfg, [{"loss": "logits_kl", "weight": 1.0}, {"loss": "cwd", "weight": 1.0}])
    with pytest.raises(ConfigError, match=r"distill.terms\[1\] \(kernel_matrix\): needs the teacher's 'bottleneck' "
                                          "tap; a torchscript teacher has only 'logits'"):
        check_teacher_taps(tcfg, [{"loss": "logits_kl"}, {"loss": "kernel_matrix", "tap": "bottleneck"}])


def test_teacher_sources_are_exclusive_in_the_config(tmp_path):
    base = {"data": {"root": "x"}, "model": {"name": "unet_s1"}}
    with pytest.raises(ConfigError, match=r"exactly one of 'run' or 'model' .* from elsewhere \(got run, onnx\)"):
        parse_config({**base, "distill": {"teacher": {"run": "r", "onnx": "t.onnx"}}})
    with pytest.raises(ConfigError, match="fold / configuration: only with distill.teacher.nnunet"):
        parse_config({**base, "distill": {"teacher": {"onnx": "t.onnx", "fold": 1}}})
    cfg = parse_config({**base, "distill": {"teacher": {"nnunet": "n", "fold": "all"}}})
    assert cfg.distill.teacher.source == "nnunet" and cfg.distill.teacher.fold == "all"


@pytest.mark.parametrize("kind", ["torchscript", "onnx"])
def test_a_missing_or_broken_exported_file_is_named(tmp_path, kind):
    with pytest.raises(ConfigError, match=f"distill.teacher.{kind} .*nothing.bin: file not found"):
        check_teacher_source(TeacherConfig(**{kind: str(tmp_path / "nothing.bin")}))
    broken = tmp_path / "broken.bin"
    broken.write_bytes(b"not a model")
    with pytest.raises(ConfigError, match=f"distill.teacher.{kind} .*broken.bin: not a readable"):
        load_teacher(TeacherConfig(**{kind: str(broken)}), 1, 3, 2)
