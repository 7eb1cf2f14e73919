"""Feature taps: dotted paths on any network, loud failures, persistent hooks, the output normaliser."""

from __future__ import annotations

import pytest
import torch
from monai.networks.nets import DynUNet
from monai.networks.nets import UNet as MonaiUNet
from torch import nn

from medkd.errors import MedkdError
from medkd.models import (
    FeatureTapper,
    TapError,
    TapSpec,
    create_model,
    normalize_output,
    set_tap_specs,
    tap_features,
    tap_specs,
)


def _plain_monai_unet() -> nn.Module:
    torch.manual_seed(0)
    return MonaiUNet(spatial_dims=2, in_channels=1, out_channels=3, channels=(4, 8, 16), strides=(2, 2))


class _WithUnusedBranch(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.used = nn.Conv2d(1, 4, 3, padding=1)
        self.unused = nn.Conv2d(4, 4, 1)
        self.head = nn.Conv2d(4, 2, 1)

    def forward(self, x):
        return self.head(self.used(x))


def test_tap_plain_monai_unet_by_dotted_path():
    net = _plain_monai_unet()  # built directly by MONAI: no medkd declarations at all
    x = torch.randn(2, 1, 16, 16)
    feats = tap_features(net, x, ["model.0", "model.1.submodule.0", "logits"])
    assert feats["model.0"].shape == (2, 4, 8, 8)  # first strided down block
    assert feats["model.1.submodule.0"].shape == (2, 8, 4, 4)
    torch.testing.assert_close(feats["logits"], net(x))


def test_monai_unet_from_registry_gets_standard_taps():
    net = create_model("monai.UNet", 1, 3, channels=(4, 8, 16, 32), strides=(2, 2, 2))
    specs = tap_specs(net)
    assert specs["encoder"] == TapSpec("model.1.submodule.0", 8, 4)
    assert specs["bottleneck"] == TapSpec("model.1.submodule.1.submodule.1.submodule", 32, 8)
    assert specs["decoder"] == TapSpec("model.1", 8, 2)
    feats = tap_features(net, torch.randn(2, 1, 32, 32))
    for name, spec in specs.items():
        assert feats[name].shape == (2, spec.channels, 32 // spec.reduction, 32 // spec.reduction)


def test_unknown_path_names_nearest_valid_names():
    net = _plain_monai_unet()
    with pytest.raises(TapError, match=r"'model\.1\.submodul\.0' names no module.*'model\.1\.submodule\.0'"):
        tap_features(net, torch.randn(1, 1, 16, 16), ["model.1.submodul.0"])
    zoo = create_model("unet_s1", 1, 2)
    with pytest.raises(TapError, match=r"'bottlenek'.*'bottleneck'"):
        tap_features(zoo, torch.randn(1, 1, 16, 16), ["bottlenek"])
    with pytest.raises(TapError, match="'reconstruction'"):
        FeatureTapper(zoo, ["reconstruction"])  # a single-task model has no reconstruction


def test_hook_that_never_fired_is_an_error():
    net = _WithUnusedBranch()
    with pytest.raises(TapError, match=r"'unused'.*did not fire.*nearest valid names: 'unused'"):
        tap_features(net, torch.randn(1, 1, 8, 8), ["used", "unused"])
    # a real case: KD-Net's decoder interpolates, so its (identity) upsampling modules never run
    kd = create_model("kdnet3d", 1, 2, spatial_dims=3, base_features=2)
    with pytest.raises(TapError, match=r"decoder\.ups\.0"):
        tap_features(kd.eval(), torch.zeros(1, 1, 32, 32, 32), ["decoder.ups.0"])


def test_features_keep_the_graph_and_gradients_reach_only_upstream_parameters():
    net = create_model("unet_s1", 1, 2).train()
    feats = tap_features(net, torch.randn(2, 1, 16, 16), ["encoder", "logits"])
    assert feats["encoder"].grad_fn is not None
    feats["encoder"].mean().backward()
    assert net.encoder.blocks[0][0].weight.grad is not None  # upstream of the tap
    assert net.head.weight.grad is None  # downstream of the tap


def test_feature_tapper_persistent_hooks_and_removal():
    net = create_model("unet_s1", 1, 2).eval()
    x1, x2 = torch.randn(1, 1, 16, 16), torch.randn(1, 1, 16, 16)
    with FeatureTapper(net, ("bottleneck", "encoder.blocks.0")) as tapper:
        out1 = net(x1)
        f1 = tapper.features
        net(x2)
        f2 = tapper.features
        assert list(f1) == ["bottleneck", "encoder.blocks.0"]
        assert f1["bottleneck"].shape == (1, 64, 4, 4) and f1["encoder.blocks.0"].shape == (1, 16, 16, 16)
        assert not torch.equal(f1["bottleneck"], f2["bottleneck"])  # refreshed at every forward pass
        torch.testing.assert_close(net.head(net.decoder(net.encoder(x1))), out1)
    hooked = [m for m in net.modules() if m._forward_hooks or m._forward_pre_hooks]
    assert hooked == []  # the context manager removed every hook
    tapper = FeatureTapper(net, ["logits"])
    tapper.remove()
    assert not net._forward_hooks and not net._forward_pre_hooks


def test_tapper_features_before_any_forward_is_an_error():
    net = create_model("unet_s1", 1, 2)
    with FeatureTapper(net, ["decoder"]) as tapper, pytest.raises(TapError, match="did not fire"):
        _ = tapper.features


def test_same_module_under_two_names():
    net = create_model("unet_s1", 1, 2).eval()
    feats = tap_features(net, torch.randn(1, 1, 16, 16), ["bottleneck", "encoder.bottleneck"])
    assert feats["bottleneck"] is feats["encoder.bottleneck"]


def test_taps_through_a_data_parallel_wrapper():
    net = create_model("unet_s1", 1, 2).eval()
    wrapped = nn.DataParallel(net)  # CPU: forwards straight to the module
    specs = tap_specs(wrapped)
    assert specs["bottleneck"].path == "module.encoder.bottleneck" and specs["logits"].path == ""
    x = torch.randn(1, 1, 16, 16)
    feats = tap_features(wrapped, x, ["bottleneck", "logits"])
    torch.testing.assert_close(feats["logits"], net(x))
    assert feats["bottleneck"].shape == (1, 64, 4, 4)


def test_set_tap_specs_on_a_foreign_model():
    net = set_tap_specs(_WithUnusedBranch(), {"encoder": TapSpec("used", 4, 1), "logits": TapSpec("", 2, 1)})
    feats = tap_features(net, torch.randn(1, 1, 8, 8), ["encoder", "logits"])
    assert feats["encoder"].shape == (1, 4, 8, 8) and feats["logits"].shape == (1, 2, 8, 8)


# ---- normalize_output ------------------------------------------------------------------------------------------


def test_normalize_output_tensor_list_tuple_dict():
    full = torch.randn(2, 3, 16, 16)
    half = torch.randn(2, 3, 8, 8)
    assert normalize_output(full) is full
    assert normalize_output([full, half]) is full
    assert normalize_output((half, full)) is full  # largest spatial size wins
    assert normalize_output([half]) is half
    assert normalize_output({"aux": half, "logits": full}) is full
    assert normalize_output({"only": half}) is half
    assert normalize_output((full, torch.randn(2, 5))) is full  # smp-style (mask, label)


def test_normalize_output_select_modes():
    heads = [torch.full((1, 2, 4, 4), float(i)) for i in range(4)]  # UNet++ deep supervision: 4 full-res heads
    assert normalize_output(heads) is heads[0]
    assert normalize_output(heads, select="last") is heads[3]
    torch.testing.assert_close(normalize_output(heads, select="mean"), torch.full((1, 2, 4, 4), 1.5))
    with pytest.raises(MedkdError, match="unknown select"):
        normalize_output(heads, select="best")


def test_normalize_output_stacked_deep_supervision():
    stacked = torch.randn(2, 3, 4, 16, 16)  # (B, k, C, H, W)
    torch.testing.assert_close(normalize_output(stacked, spatial_dims=2), stacked[:, 0])
    assert normalize_output(stacked, spatial_dims=3) is stacked  # a plain 3D output


def test_normalize_output_rejects_outputs_without_tensors():
    for bad in ([], (), {"a": 1}, "logits", None):
        with pytest.raises(MedkdError):
            normalize_output(bad)


def test_dynunet_deep_supervision_logits_tap_is_the_full_resolution_head():
    torch.manual_seed(0)
    net = DynUNet(
        2,
        1,
        2,
        kernel_size=[3, 3, 3],
        strides=[1, 2, 2],
        upsample_kernel_size=[2, 2],
        filters=[4, 8, 16],
        deep_supervision=True,
        deep_supr_num=1,
    ).train()
    x = torch.randn(2, 1, 16, 16)
    raw = net(x)
    assert raw.shape == (2, 2, 2, 16, 16)  # stacked heads in training mode
    feats = tap_features(net, x, ["logits"])
    assert feats["logits"].shape == (2, 2, 16, 16)
    net.eval()
    with torch.no_grad():
        torch.testing.assert_close(tap_features(net, x, ["logits"])["logits"], net(x))
