"""Every zoo model: builds offline, forward + backward, output shape, standard taps, odd sizes, parameter counts."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from medkd.errors import ConfigError
from medkd.models import (
    STANDARD_TAPS,
    count_parameters,
    create_model,
    list_models,
    model_info,
    tap_features,
    tap_specs,
)

MULTITASK = ("multitask_unet", "multitask_transunet")

# name -> (spatial dims, build options, spatial size of the test input)
ZOO_CASES: dict[str, tuple[int, dict[str, Any], int]] = {
    "enet": (2, {}, 32),
    "espnet": (2, {}, 32),
    "erfnet": (2, {}, 32),
    "unet_s1": (2, {}, 32),
    "unet_s2": (2, {}, 32),
    "unet": (2, {"widths": (8, 16, 32)}, 32),
    "unet3d_small": (3, {}, 16),
    "unetplusplus": (2, {}, 32),
    "deeplabv3plus": (2, {}, 32),
    "multitask_unet": (2, {}, 32),
    "multitask_transunet": (2, {}, 32),
    "kdnet3d": (3, {"base_features": 8}, 32),  # the default (32) is counted on the meta device below
}


def _zoo(build, name):
    dims, options, size = ZOO_CASES[name]
    return build(name, dims, **options), dims, size


def test_cases_cover_the_whole_zoo():
    assert sorted(ZOO_CASES) == list_models()


@pytest.mark.parametrize("name", sorted(ZOO_CASES))
def test_forward_backward_shapes_and_taps(build, name):
    model, dims, size = _zoo(build, name)
    assert dims in model_info(name)["spatial_dims"]
    model.train()
    specs = tap_specs(model)
    expected = set(STANDARD_TAPS) | ({"reconstruction"} if name in MULTITASK else set())
    assert set(specs) == expected
    assert size % model.size_divisor == 0
    x = torch.randn(2, 1, *(size,) * dims)
    feats = tap_features(model, x, list(specs))
    assert feats["logits"].shape == (2, 2, *(size,) * dims)
    for tap, spec in specs.items():
        f = feats[tap]
        assert f.shape[:2] == (2, spec.channels), (tap, f.shape, spec)
        assert tuple(f.shape[2:]) == spec.spatial_size(x.shape[2:]), (tap, f.shape, spec)
        assert f.requires_grad, tap
    if name in MULTITASK:
        assert feats["reconstruction"].shape == x.shape
    model.zero_grad(set_to_none=True)
    loss = sum(f.float().pow(2).mean() for f in feats.values())
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert sum(g is not None for g in grads) >= 0.9 * len(grads)
    assert all(torch.isfinite(g).all() for g in grads if g is not None)
    model.zero_grad(set_to_none=True)


@pytest.mark.parametrize("name", sorted(ZOO_CASES))
def test_eval_forward_matches_logits_tap(build, name):
    model, dims, size = _zoo(build, name)
    model.eval()
    x = torch.randn(1, 1, *(size,) * dims)
    with torch.no_grad():
        out = model(x)
        feats = tap_features(model, x, ["logits"])
    assert isinstance(out, torch.Tensor)
    torch.testing.assert_close(feats["logits"], out)
    assert not feats["logits"].requires_grad  # the caller's no_grad holds


@pytest.mark.parametrize("name", sorted(ZOO_CASES))
def test_odd_size_rejected_with_divisor(build, name):
    model, dims, size = _zoo(build, name)
    model.eval()
    d = model.size_divisor
    x = torch.zeros(1, 1, *(size + 1,) * dims)
    with pytest.raises(ConfigError, match=rf"divisible by {d}\b"):
        model(x)
    with pytest.raises(ConfigError, match=f"{dims}D input"):
        model(torch.zeros(1, 1, *(size,) * (dims + 1 if dims == 2 else dims - 1)))


@pytest.mark.parametrize("name", MULTITASK)
def test_multitask_forward_returns_segmentation_and_reconstruction(build, name):
    model = _zoo(build, name)[0].eval()
    x = torch.randn(1, 1, 32, 32)
    with torch.no_grad():
        seg, rec = model.forward_multitask(x)
        feats = tap_features(model, x, ["logits", "reconstruction"])
    assert seg.shape == (1, 2, 32, 32) and rec.shape == (1, 1, 32, 32)
    torch.testing.assert_close(feats["logits"], seg)
    torch.testing.assert_close(feats["reconstruction"], rec)


def test_multitask_reconstruction_follows_in_channels():
    model = create_model("multitask_unet", 3, 4, widths=(4, 8, 16))
    feats = tap_features(model.eval(), torch.randn(1, 3, 16, 16), ["logits", "reconstruction"])
    assert feats["logits"].shape == (1, 4, 16, 16) and feats["reconstruction"].shape == (1, 3, 16, 16)
    assert tap_specs(model)["reconstruction"].channels == 3


# ---- parameter counts (meta device: no memory, no time) ------------------------------------------------------


def _params(name: str, in_channels: int = 1, num_classes: int = 2, **kw) -> int:
    dims = 3 if name in ("kdnet3d", "unet3d_small") else 2
    with torch.device("meta"):
        return count_parameters(create_model(name, in_channels, num_classes, spatial_dims=dims, **kw))


@pytest.mark.parametrize(
    "name, reference, tolerance",
    [
        ("enet", 353_761, 0.015),  # paper A, Table 1
        ("espnet", 183_725, 0.015),
        ("erfnet", 2_063_130, 0.015),
        ("unetplusplus", 36_600_000, 0.03),
        ("multitask_unet", 43_230_000, 0.01),  # thesis B, Table 4.1
    ],
)
def test_parameter_counts_match_the_papers(name, reference, tolerance):
    n = _params(name)
    assert abs(n - reference) / reference <= tolerance, (name, n, reference)


def test_exact_parameter_counts():
    # exact values of this implementation, so that any architectural drift is noticed
    assert _params("enet") == 357_417
    assert _params("espnet") == 182_655
    assert _params("erfnet") == 2_062_872
    assert _params("unet_s1", 3, 1) == 57_297  # the thesis' count, exactly
    assert _params("unet_s2", 3, 1) == 227_233  # thesis: 0.227 M
    assert _params("unetplusplus") == 36_782_920
    assert _params("deeplabv3plus") == 45_663_698  # ResNet-101 backbone, stated in the docstring
    assert _params("multitask_unet") == 43_234_819
    assert _params("multitask_transunet") == 115_415_427
    assert _params("kdnet3d", 4, 4) == 16_572_420
    assert _params("kdnet3d", 4, 4, skips=0) == 14_222_340
    assert _params("unet3d_small") == 1_401_986
    assert _params("unet") == 31_042_434


def test_plain_unet_is_the_multitask_teacher_without_its_reconstruction_decoder():
    widths = (16, 32, 64, 128, 256)
    plain = create_model("unet", 1, 4, widths=widths)
    multitask = create_model("multitask_unet", 1, 4, widths=widths)
    rec = sum(count_parameters(m) for m in (multitask.rec_decoder, multitask.rec_head))
    assert count_parameters(plain) == count_parameters(multitask) - rec == 1_943_812
    assert [n for n, _ in plain.named_parameters()] == [
        n for n, _ in multitask.named_parameters() if not n.startswith(("rec_decoder", "rec_head"))]


def test_thesis_students_within_two_percent():
    assert abs(_params("unet_s1", 3, 1) - 57_297) / 57_297 <= 0.02
    assert abs(_params("unet_s2", 3, 1) - 227_000) / 227_000 <= 0.02


def test_kdnet3d_skips_zero_has_no_concatenation():
    model = create_model("kdnet3d", 1, 3, spatial_dims=3, base_features=4, skips=0).eval()
    convs = [m for m in model.decoder.blocks]
    # without skips each decoder block takes only the upsampled deeper features
    assert [b[0].in_channels for b in convs] == [64, 32, 16, 8]
    with torch.no_grad():
        assert model(torch.zeros(1, 1, 32, 32, 32)).shape == (1, 3, 32, 32, 32)
    with pytest.raises(ConfigError, match="skips"):
        create_model("kdnet3d", 1, 3, spatial_dims=3, skips=5)


def test_kdnet3d_too_small_input_is_rejected():
    model = create_model("kdnet3d", 1, 2, spatial_dims=3, base_features=2).eval()
    with pytest.raises(ConfigError, match="at least 32"):
        model(torch.zeros(1, 1, 16, 16, 16))


def test_unetplusplus_deep_supervision_returns_heads():
    model = create_model("unetplusplus", 1, 2, features=(4, 4, 8, 8, 16, 4), deep_supervision=True).eval()
    x = torch.randn(1, 1, 16, 16)
    with torch.no_grad():
        out = model(x)
        logits = tap_features(model, x, ["logits"])["logits"]
    assert isinstance(out, list) and len(out) == 4
    torch.testing.assert_close(logits, out[-1])  # the final (deepest) head


def test_transunet_accepts_other_sizes_than_img_size():
    model = create_model(
        "multitask_transunet", 1, 2, widths=(4, 8, 8, 16), hidden_size=16, num_layers=1, num_heads=2, mlp_dim=32
    ).eval()
    with torch.no_grad():
        for s in ((16, 16), (48, 32)):
            assert model(torch.zeros(1, 1, *s)).shape == (1, 2, *s)


@pytest.mark.parametrize("kind", ["random", "ties", "constant", "odd"])
def test_enet_pool_and_unpool_equal_torch_max_pool_and_unpool(kind):
    """ENet's winners-based pool / unpool give the values and gradients of max_pool2d / max_unpool2d, ties too."""
    from medkd.models.enet import _MaxUnpool2x, max_pool2x_with_winners

    gen = torch.Generator().manual_seed(0)
    shape = (2, 3, 9, 13) if kind == "odd" else (2, 3, 8, 12)
    x = {
        "random": lambda: torch.randn(shape, generator=gen),
        "ties": lambda: torch.randint(0, 3, shape, generator=gen).float(),  # most windows hold a tie
        "constant": lambda: torch.zeros(shape),  # MRI background: every window is one four-way tie
        "odd": lambda: torch.randn(shape, generator=gen),
    }[kind]()
    up = torch.randn(2, 3, 4, 6, generator=gen)

    ours_in = x.clone().requires_grad_(True)
    pooled, winners = max_pool2x_with_winners(ours_in)
    unpooled = _MaxUnpool2x()(pooled * up, winners)
    unpooled.square().sum().backward()

    ref_in = x.clone().requires_grad_(True)
    ref_pooled, idx = torch.nn.functional.max_pool2d(ref_in, 2, return_indices=True)
    ref_unpooled = torch.nn.functional.max_unpool2d(ref_pooled * up, idx, 2, output_size=shape[-2:])
    ref_unpooled = ref_unpooled[..., :8, :12]  # odd input: the trailing row / column are never a maximum
    ref_unpooled.square().sum().backward()

    assert torch.equal(pooled, ref_pooled)
    assert torch.equal(unpooled, ref_unpooled)
    assert torch.equal(ours_in.grad, ref_in.grad)
    assert winners.dtype == torch.int64 and int(winners.min()) >= 0 and int(winners.max()) <= 3


@pytest.mark.parametrize("kind", ["random", "ties", "constant", "odd"])
def test_enet_export_window_conv_equals_the_strided_slices(kind):
    """The one-hot convolution used for ONNX export gathers exactly the windows of the strided slices."""
    from medkd.models.enet import max_pool2x_with_winners, window_stack_by_conv

    gen = torch.Generator().manual_seed(1)
    shape = (2, 5, 9, 13) if kind == "odd" else (2, 5, 8, 12)
    x = {
        "random": lambda: torch.randn(shape, generator=gen) * 1e3,
        "ties": lambda: torch.randint(0, 3, shape, generator=gen).float(),
        "constant": lambda: torch.full(shape, -2.5),
        "odd": lambda: torch.randn(shape, generator=gen),
    }[kind]()
    windows = window_stack_by_conv(x, 5)
    assert windows.shape == (2, 5, 4, 4, 6)
    assert torch.equal(windows[:, :, 1], x[:, :, 0:8:2, 1:12:2])  # row-major: (0, 1) is the second position
    pooled, winners = windows.max(dim=2)
    ref_pooled, ref_winners = max_pool2x_with_winners(x, 5)  # outside an export: the slices
    assert torch.equal(pooled, ref_pooled) and torch.equal(winners, ref_winners)


@pytest.mark.parametrize("name", ["enet", "espnet", "erfnet", "unet_s1", "unet_s2"])
def test_students_export_to_onnx_with_dynamic_sizes(build, name, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    import warnings

    model, _, _ = _zoo(build, name)
    model.eval()
    path = tmp_path / f"{name}.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (torch.randn(1, 1, 32, 32),),
            str(path),
            dynamo=False,
            opset_version=17,
            input_names=["x"],
            dynamic_axes={"x": {0: "b", 2: "h", 3: "w"}},
        )
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = torch.randn(2, 1, 48, 64)
    with torch.no_grad():
        expected = model(x)
    got = torch.from_numpy(session.run(None, {"x": x.numpy()})[0])
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
