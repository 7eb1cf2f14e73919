"""Registry: names, roles, dims, options, errors; MONAI networks by name."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from torch import nn

from medkd.errors import ConfigError
from medkd.models import create_model, list_models, model_info, register_model, tap_features, tap_specs
from medkd.models.registry import MODEL_REGISTRY

STUDENTS = ["enet", "erfnet", "espnet", "unet3d_small", "unet_s1", "unet_s2"]
TEACHERS = ["deeplabv3plus", "kdnet3d", "multitask_transunet", "multitask_unet", "unet", "unetplusplus"]


def test_list_models_patterns_roles_dims():
    assert list_models() == sorted(STUDENTS + TEACHERS)
    assert list_models(role="student") == STUDENTS
    assert list_models(role="teacher") == TEACHERS
    assert list_models("unet*") == ["unet", "unet3d_small", "unet_s1", "unet_s2", "unetplusplus"]
    assert list_models("*UNET*", role="teacher") == ["multitask_transunet", "multitask_unet", "unet", "unetplusplus"]
    assert list_models(spatial_dims=3) == ["kdnet3d", "unet3d_small"]
    monai = list_models("monai.*")
    assert "monai.UNet" in monai and "monai.DynUNet" in monai and "enet" not in monai
    assert set(monai) < set(list_models(include_monai=True))


def test_model_info():
    info = model_info("espnet")
    assert info["role"] == "student" and info["spatial_dims"] == (2,) and "ESPNet" in info["description"]
    assert info["options"] == {"p": 2, "q": 3}
    assert model_info("kdnet3d")["spatial_dims"] == (3,)
    assert model_info("monai.DynUNet")["source"] == "monai"
    with pytest.raises(ConfigError, match="'enet'"):
        model_info("enett")


def test_unknown_name_suggests_nearest():
    with pytest.raises(ConfigError, match=r"unknown model 'erfnett'; did you mean 'erfnet'"):
        create_model("erfnett", 1, 2)
    with pytest.raises(ConfigError, match=r"'monai\.UNet'"):
        create_model("monai.Unett", 1, 2)


def test_wrong_spatial_dims():
    with pytest.raises(ConfigError, match=r"'enet' supports spatial_dims 2, got spatial_dims=3"):
        create_model("enet", 1, 2, spatial_dims=3)
    with pytest.raises(ConfigError, match=r"'kdnet3d' supports spatial_dims 3"):
        create_model("kdnet3d", 1, 2, spatial_dims=2)


def test_unknown_and_bad_options():
    with pytest.raises(ConfigError, match=r"option for model 'enet': 'dropuot'; did you mean 'dropout'"):
        create_model("enet", 1, 2, dropuot=0.2)
    with pytest.raises(ConfigError, match=r"option for model 'unet_s1': 'widths'"):
        create_model("unet_s1", 1, 2, widths=(8, 16))
    with pytest.raises(ConfigError, match="in_channels must be a positive integer"):
        create_model("enet", 0, 2)
    with pytest.raises(ConfigError, match="num_classes"):
        create_model("enet", 1, 2.5)
    with pytest.raises(ConfigError, match="ENet initial block needs in_channels < 16"):
        create_model("enet", 16, 2)


def test_register_model_validation_and_use():
    with pytest.raises(ValueError, match="role"):
        register_model("x_bad_role", role="mentor")
    with pytest.raises(ValueError, match="reserved"):
        register_model("monai.Mine")

    @register_model("test_tiny_net", role="student", spatial_dims=(2, 3), description="a test network")
    def tiny(in_channels: int, num_classes: int, spatial_dims: int = 2, width: int = 4) -> nn.Module:
        conv = nn.Conv2d if spatial_dims == 2 else nn.Conv3d
        return nn.Sequential(conv(in_channels, width, 3, padding=1), conv(width, num_classes, 1))

    try:
        assert "test_tiny_net" in list_models("test_*")
        net = create_model("test_tiny_net", 2, 3, spatial_dims=3, width=5)
        assert net(torch.zeros(1, 2, 4, 4, 4)).shape == (1, 3, 4, 4, 4)
        assert model_info("test_tiny_net")["options"] == {"width": 4}
        with pytest.raises(ValueError, match="already registered"):
            register_model("test_tiny_net")(lambda in_channels, num_classes: nn.Identity())
    finally:
        MODEL_REGISTRY.unregister("test_tiny_net")


# ---- MONAI networks by name ------------------------------------------------------------------------------------


def test_monai_unet_defaults_and_passthrough():
    net = create_model("monai.UNet", 1, 3)
    assert net.channels == (16, 32, 64, 128, 256) and net.strides == (2, 2, 2, 2) and net.num_res_units == 2
    assert net.size_divisor == 16
    net = create_model("monai.UNet", 2, 3, spatial_dims=3, channels=(4, 8, 16), num_res_units=0)
    assert net.strides == (2, 2) and net.dimensions == 3 and net.in_channels == 2 and net.out_channels == 3
    with pytest.raises(ConfigError, match="divisible by 4"):
        net(torch.zeros(1, 2, 10, 12, 12))


def test_monai_dynunet_defaults_and_taps():
    net = create_model("monai.DynUNet", 1, 2, filters=[4, 8, 16, 32, 64])
    assert net.strides == [1, 2, 2, 2, 2] and net.kernel_size == [3] * 5 and net.upsample_kernel_size == [2] * 4
    specs = tap_specs(net)
    assert specs["bottleneck"].channels == 64 and specs["bottleneck"].reduction == 16
    assert specs["decoder"].channels == 4 and specs["decoder"].reduction == 1
    net = create_model("monai.DynUNet", 1, 2, strides=[1, 2, 2], filters=[4, 8, 16])
    assert net.kernel_size == [3, 3, 3] and net.upsample_kernel_size == [2, 2] and net.size_divisor == 4


@pytest.mark.parametrize(
    "name, dims, options",
    [
        ("monai.BasicUNet", 2, {"features": (4, 4, 8, 8, 16, 4)}),
        ("monai.BasicUNetPlusPlus", 2, {"features": (4, 4, 8, 8, 16, 4), "deep_supervision": True}),
        ("monai.SegResNet", 3, {"init_filters": 8}),
    ],
)
def test_monai_standard_taps_match_real_shapes(name, dims, options):
    net = create_model(name, 1, 2, spatial_dims=dims, **options).train()
    specs = tap_specs(net)
    assert set(specs) == {"encoder", "bottleneck", "decoder", "logits"}
    x = torch.randn(2, 1, *(32,) * dims)
    feats = tap_features(net, x, list(specs))
    for tap, spec in specs.items():
        assert feats[tap].shape == (2, spec.channels, *spec.spatial_size(x.shape[2:])), tap
    assert net.training  # probing restored the mode


def test_monai_option_errors():
    with pytest.raises(ConfigError, match=r"option for model 'monai\.UNet': 'chanels'; did you mean 'channels'"):
        create_model("monai.UNet", 1, 2, chanels=(4, 8))
    with pytest.raises(ConfigError, match="out_channels"):
        create_model("monai.UNet", 1, 2, out_channels=4)
    with pytest.raises(ConfigError, match=r"model 'monai\.UNet': .*channels"):
        create_model("monai.UNet", 1, 2, channels=(4,))  # MONAI's own ValueError, as one line
    with pytest.warns(UserWarning, match="strides will not be used"):
        net = create_model("monai.UNet", 1, 2, channels=(4, 8), strides=(2, 2))
    assert net.size_divisor == 2  # only the strides MONAI uses count


@pytest.mark.skipif(importlib.util.find_spec("einops") is not None, reason="einops is installed")
def test_monai_missing_optional_package_is_a_config_error():
    for name in ("monai.UNETR", "monai.SwinUNETR"):
        with pytest.raises(ConfigError, match=rf"'{name}' needs the optional package einops"):
            create_model(name, 1, 2)
