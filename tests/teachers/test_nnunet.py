"""nnU-Net v2 teachers: a tiny results folder in nnU-Net's own format, loaded and compared with nnU-Net's network."""

from __future__ import annotations

import json

import pytest
import torch

from medkd.config import TeacherConfig
from medkd.errors import ConfigError
from medkd.models import FeatureTapper
from medkd.teachers import TeacherInputs, check_teacher_source, load_teacher
from medkd.teachers.nnunet import plan_configuration

LABELS = {"background": 0, "organ": 1, "lesion": 2}


def _inputs(channels, classes=("background", "organ", "lesion"), normalize="zscore"):
    return TeacherInputs(len(channels), len(classes), 2, list(channels), list(classes), normalize)


def test_logits_equal_nnunets_forward_with_channels_picked_by_name(tmp_path, make):
    folder, net = make.nnunet(tmp_path, ["T2", "ADC"], LABELS)
    teacher = load_teacher(TeacherConfig(nnunet=str(folder), fold=0), 2, 3, 2, _inputs(["ADC", "T2"]))
    x = torch.randn(2, 2, 32, 32)
    with torch.no_grad():
        expected = net(x[:, [1, 0]])  # the teacher reads T2 first
        got = teacher(x)
    assert torch.equal(got, expected)
    assert not any(p.requires_grad for p in teacher.parameters()) and not teacher.training


def test_deep_supervision_is_reduced_to_the_full_resolution_map(tmp_path, make):
    folder, net = make.nnunet(tmp_path, ["T2"], LABELS)
    deep = make.plain_unet(1, 3, deep_supervision=True)
    deep.load_state_dict(net.state_dict())  # same weights: the heads exist with and without deep supervision
    teacher = load_teacher(TeacherConfig(nnunet=str(folder)), 1, 3, 2, _inputs(["T2"]))
    x = torch.randn(1, 1, 32, 32)
    with torch.no_grad():
        heads = deep(x)
        assert isinstance(heads, list) and heads[1].shape[-1] == 16
        assert torch.allclose(teacher(x), heads[0], atol=1e-6)


def test_classes_are_matched_to_the_dataset_by_name(tmp_path, make):
    folder, net = make.nnunet(tmp_path, ["T2"], LABELS)
    inputs = _inputs(["T2"], ("background", "lesion", "organ"))
    teacher = load_teacher(TeacherConfig(nnunet=str(folder)), 1, 3, 2, inputs)
    x = torch.randn(1, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(teacher(x), net(x)[:, [0, 2, 1]])


def test_ct_normalisation_is_declared_for_the_data_path_not_applied_inside(tmp_path, make):
    folder, net = make.nnunet(tmp_path, ["CT"], LABELS, schemes=["CTNormalization"])
    teacher = load_teacher(TeacherConfig(nnunet=str(folder)), 1, 3, 2, _inputs(["CT"], normalize="zscore"))
    raw = torch.tensor([-1000.0, -100.0, 40.0, 300.0, 2000.0]).repeat(1, 1, 32, 7)[..., :32]
    p = make.ct_props
    by_hand = (raw.clamp(p["percentile_00_5"], p["percentile_99_5"]) - p["mean"]) / p["std"]
    assert by_hand.min() == pytest.approx(-1.75) and by_hand.max() == pytest.approx(3.25)
    own = torch.from_numpy(teacher.input_normalization(raw[0].numpy()))[None]
    assert torch.allclose(own, by_hand, atol=1e-6)
    with torch.no_grad():  # the network reads the normalised copy as it is
        assert torch.equal(teacher(own), net(own))


def test_any_data_normalize_is_accepted_with_the_plans_own_scheme(tmp_path, make):
    folder, _ = make.nnunet(tmp_path, ["T2", "ADC"], LABELS, schemes=["ZScoreNormalization", "CTNormalization"])
    for normalize in ("percentile", "minmax", "none"):
        teacher = load_teacher(TeacherConfig(nnunet=str(folder)), 2, 3, 2, _inputs(["ADC", "T2"], normalize=normalize))
        channels = teacher.input_normalization.channels  # laid out on the given channels: ADC first
        assert [c.scheme for c in channels] == ["CTNormalization", "ZScoreNormalization"]


def test_taps_follow_the_architectures_stages(tmp_path, make):
    folder, _ = make.nnunet(tmp_path, ["T2"], LABELS)
    teacher = load_teacher(TeacherConfig(nnunet=str(folder)), 1, 3, 2, _inputs(["T2"]))
    with torch.no_grad(), FeatureTapper(teacher, ["encoder", "bottleneck", "decoder", "logits"]) as tapper:
        teacher(torch.randn(1, 1, 32, 32))
        shapes = {k: tuple(v.shape) for k, v in tapper.features.items()}
    assert shapes == {"encoder": (1, 8, 16, 16), "bottleneck": (1, 16, 8, 8), "decoder": (1, 4, 32, 32),
                      "logits": (1, 3, 32, 32)}


def test_configurations_inherit_like_nnunets(make):
    plans = make.plans(["ZScoreNormalization"])
    config = plan_configuration(plans, "2d_big_batch")
    assert config["batch_size"] == 24 and config["patch_size"] == [32, 32] and "inherits_from" not in config
    with pytest.raises(ConfigError, match="no configuration '3d_fullres'"):
        plan_configuration(plans, "3d_fullres")


def test_a_checkpoint_that_pickles_code_is_refused_by_name(tmp_path, make):
    folder, net = make.nnunet(tmp_path, ["T2"], LABELS)
    ckpt = make.checkpoint(net, json.loads((folder / "plans.json").read_text()), {})
    ckpt["logging"]["callback"] = torch.nn.ReLU()  # any class outside weights_only's allowlist
    torch.save(ckpt, folder / "fold_0" / "checkpoint_final.pth")
    with pytest.raises(ConfigError, match=r"refused to load \(it pickles torch.nn.modules.activation.ReLU"):
        load_teacher(TeacherConfig(nnunet=str(folder)), 1, 3, 2, _inputs(["T2"]))


def test_the_configuration_of_the_checkpoint_must_match(tmp_path, make):
    folder, _ = make.nnunet(tmp_path, ["T2"], LABELS)
    with pytest.raises(ConfigError, match="trained with configuration '2d', not '2d_big_batch'"):
        load_teacher(TeacherConfig(nnunet=str(folder), configuration="2d_big_batch"), 1, 3, 2, _inputs(["T2"]))


def test_source_checks_name_what_is_missing(tmp_path, make, monkeypatch):
    folder, _ = make.nnunet(tmp_path, ["T2"], LABELS)
    with pytest.raises(ConfigError, match="fold_3/checkpoint_final.pth not found"):
        check_teacher_source(TeacherConfig(nnunet=str(folder), fold=3))
    (folder / "fold_0" / "checkpoint_best.pth").write_bytes(b"")
    check_teacher_source(TeacherConfig(nnunet=str(folder), checkpoint="checkpoint_best.pth"))
    (folder / "plans.json").unlink()
    with pytest.raises(ConfigError, match="plans.json missing"):
        check_teacher_source(TeacherConfig(nnunet=str(folder)))
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "dynamic_network_architectures" else real(name, *a))
    folder2, _ = make.nnunet(tmp_path / "b", ["T2"], LABELS)
    with pytest.raises(ConfigError, match=r"pip install medkd\[nnunet\]"):
        check_teacher_source(TeacherConfig(nnunet=str(folder2)))
