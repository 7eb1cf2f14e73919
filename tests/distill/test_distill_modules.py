"""Loss modules and registry: interface, setup-built extras, gradient flow, ascent weights, errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from medkd.distill import functional as KF
from medkd.distill.losses import DistillLoss, ProjectionHead, create_loss, list_losses, loss_info
from medkd.errors import ConfigError

ALL = ["adaptive_affinity", "affinity", "attention_map", "bottleneck_kl", "contrastive", "cwd", "dist",
       "feature_mse", "kdnet_soft_label", "kernel_matrix", "logits_kl", "region_affinity"]
DEFAULT_TAPS = {"adaptive_affinity": ("logits",), "affinity": ("logits",), "attention_map": ("decoder",),
                "bottleneck_kl": ("bottleneck",), "contrastive": ("encoder", "bottleneck", "decoder"),
                "cwd": ("logits",), "dist": ("logits",), "feature_mse": ("bottleneck",),
                "kdnet_soft_label": ("logits",), "kernel_matrix": ("bottleneck",), "logits_kl": ("logits",),
                "region_affinity": ("decoder",)}


def tapped(nd, seed=0, c=3, student_ch=(8, 16, 8), teacher_ch=(16, 32, 16), grad=False):
    """Random tapped dicts: student at half the teacher's feature resolution, logits at full size."""
    g = torch.Generator().manual_seed(seed)
    n = 8 if nd == 2 else 4
    sp = lambda k: (n // k,) * nd  # noqa: E731
    names = ("encoder", "bottleneck", "decoder")
    s = {"logits": torch.randn(2, c, *sp(1), generator=g)}
    s.update({k: torch.randn(2, ch, *sp(r), generator=g) for k, ch, r in zip(names, student_ch, (4, 4, 2))})
    t = {"logits": torch.randn(2, c, *sp(1), generator=g)}
    t.update({k: torch.randn(2, ch, *sp(r), generator=g) for k, ch, r in zip(names, teacher_ch, (2, 2, 1))})
    if grad:
        for d in (s, t):
            for v in d.values():
                v.requires_grad_(True)
    batch = {"label": torch.randint(0, c if c > 1 else 2, (2, 1, *sp(1)), generator=g)}
    return s, t, batch


def test_registry_lists_all_names():
    assert list_losses() == sorted(ALL)
    assert list_losses("*affinity") == ["adaptive_affinity", "affinity", "region_affinity"]


@pytest.mark.parametrize("name", ALL)
def test_loss_info(name):
    info = loss_info(name)
    assert len(info["description"]) > 20
    assert tuple(info["student_taps"]) == tuple(info["teacher_taps"]) == DEFAULT_TAPS[name]
    assert info["needs_label"] is (name == "region_affinity")  # the only term that reads batch["label"]
    assert {"tap", "student_tap", "teacher_tap"} <= set(info["options"])


def test_unknown_name_and_option_errors():
    with pytest.raises(ConfigError, match="kernel_matrix"):
        create_loss("kernel_matrx")
    with pytest.raises(ConfigError, match=r"temperatur.*'temperature'"):
        create_loss("logits_kl", temperatur=4.0)
    with pytest.raises(ConfigError, match="mode"):
        create_loss("contrastive", mode="pixels")
    with pytest.raises(ConfigError):
        create_loss("adaptive_affinity", dilations=[0, 1])
    with pytest.raises(ConfigError):
        create_loss("contrastive", taps=["encoder", "decoder"], student_tap="x")


def test_forward_before_setup_and_missing_tap():
    loss = create_loss("kernel_matrix")
    s, t, b = tapped(2)
    with pytest.raises(RuntimeError, match="setup"):
        loss(s, t, b)
    with pytest.raises(ConfigError, match="'bottleneck'"):
        loss.setup({"logits": s["logits"]}, t)
    custom = create_loss("feature_mse", tap="layer3.conv", teacher_tap="decoder")
    assert custom.student_taps == ("layer3.conv",) and custom.teacher_taps == ("decoder",)


@pytest.mark.parametrize("nd", [2, 3])
@pytest.mark.parametrize("name", ALL)
def test_setup_forward_backward(name, nd):
    kw = {"mode": "pixel", "max_anchors": 64} if name == "contrastive" and nd == 3 else {}
    loss = create_loss(name, **kw)
    assert isinstance(loss, DistillLoss) and loss.name == name
    assert loss.student_taps == loss.teacher_taps == DEFAULT_TAPS[name]
    s, t, b = tapped(nd, grad=True)
    loss.setup(s, t)
    value = loss(s, t, b)
    assert value.dim() == 0 and torch.isfinite(value)
    value.backward()
    for tap in loss.teacher_taps:
        assert t[tap].grad is None
    assert any(s[tap].grad is not None and s[tap].grad.abs().sum() > 0 for tap in loss.student_taps)
    for p in loss.parameters():  # every trainable extra gets a gradient
        assert p.grad is not None and torch.isfinite(p.grad).all()
        if p.numel() > 1 or name != "adaptive_affinity":
            assert p.grad.abs().sum() > 0


def test_modules_match_functional():
    s, t, b = tapped(2, c=3)
    for name, fn in [("logits_kl", lambda: KF.logits_kl(s["logits"], t["logits"], 2.0)),
                     ("affinity", lambda: KF.affinity_loss(s["logits"], KF.predicted_labels(t["logits"]))),
                     ("kdnet_soft_label", lambda: KF.kdnet_soft_label_loss(s["logits"], t["logits"], 2.0)),
                     ("attention_map", lambda: KF.attention_map_loss(s["decoder"], t["decoder"])),
                     ("region_affinity", lambda: KF.region_affinity_loss(s["decoder"], t["decoder"], b["label"]))]:
        kw = {"temperature": 2.0} if name in ("logits_kl", "kdnet_soft_label") else {}
        loss = create_loss(name, **kw)
        loss.setup(s, t)
        assert loss(s, t, b).item() == pytest.approx(fn().item(), rel=1e-6)
    tempered = create_loss("kdnet_soft_label", temperature=2.0, temper_student=True)
    tempered.setup(s, t)
    expected = KF.kdnet_soft_label_loss(s["logits"], t["logits"], 2.0, temper_student=True)
    assert tempered(s, t, b).item() == pytest.approx(expected.item(), rel=1e-6)
    assert expected.item() != pytest.approx(KF.kdnet_soft_label_loss(s["logits"], t["logits"], 2.0).item())


@pytest.mark.parametrize("nd", [2, 3])
def test_adapter_shapes(nd):
    s, t, b = tapped(nd)
    km = create_loss("kernel_matrix")
    km.setup(s, t)
    conv = km.adapter.conv
    assert conv.in_channels == 16 and conv.out_channels == 32 and conv.weight.dim() == nd + 2
    adapted = km.adapter(s["bottleneck"], t["bottleneck"].shape[2:])
    assert adapted.shape == t["bottleneck"].shape
    # bottleneck_kl: adapter only when shapes differ
    bk = create_loss("bottleneck_kl")
    bk.setup(s, t)
    assert bk.adapter is not None
    same = {"bottleneck": t["bottleneck"].clone()}
    bk2 = create_loss("bottleneck_kl")
    bk2.setup(same, t)
    assert bk2.adapter is None and len(list(bk2.parameters())) == 0


def test_adaptive_affinity_ascent_step_increases_loss():
    torch.manual_seed(0)
    s, t, b = tapped(2, c=3)
    loss = create_loss("adaptive_affinity", dilations=(1, 2, 3))
    loss.setup(s, t)
    (w,) = loss.ascent_parameters()
    assert w.shape == (3, 3) and loss.descent_parameters() == []
    opt = torch.optim.SGD(loss.ascent_parameters(), lr=1.0, maximize=True)
    before = loss(s, t, b)
    opt.zero_grad()
    before.backward()
    assert w.grad.abs().sum() > 0
    opt.step()
    after = loss(s, t, b)
    assert after.item() > before.item()
    # equal weights at init: the loss is the mean over classes of the mean over dilations
    st = KF.affinity_pair_stats(s["logits"], KF.predicted_labels(t["logits"]), 3.0, (1, 2, 3), 3)
    assert bool(st.present().all())
    assert before.item() == pytest.approx(st.per_class_dilation().mean(1).mean().item(), rel=1e-5)


def test_adaptive_affinity_fixed_and_binary():
    s, t, b = tapped(2, c=1)
    fixed = create_loss("adaptive_affinity", adaptive=False, dilations=(1,))
    fixed.setup(s, t)
    assert fixed.ascent_parameters() == [] and len(list(fixed.parameters())) == 0
    assert "class_weights" in fixed.state_dict()
    # one dilation, classes pooled per class then averaged; binary -> 2 classes
    assert fixed.class_weights.shape == (2, 1)
    assert torch.isfinite(fixed(s, t, b))


def test_contrastive_heads_and_modes():
    s, t, b = tapped(2, grad=True)
    con = create_loss("contrastive", dim=16, symmetric=True)
    con.setup(s, t)
    assert len(con.student_heads) == 3 and len(con.teacher_heads) == 3
    z = con.student_heads[1](s["bottleneck"])
    assert z.shape == (2, 16) and torch.allclose(z.norm(dim=1), torch.ones(2))
    con(s, t, b).backward()
    for head in list(con.student_heads) + list(con.teacher_heads):
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in head.parameters())
    assert all(t[k].grad is None for k in t)
    pix = create_loss("contrastive", tap="decoder", mode="pixel", max_anchors=32)
    assert pix.needs_label and pix.student_taps == ("decoder",)
    pix.setup(s, t)
    zp = pix.student_heads[0](s["decoder"])
    assert zp.shape == (2, 128, 4, 4) and torch.allclose(zp.norm(dim=1), torch.ones(2, 4, 4), atol=1e-5)
    with pytest.raises(ConfigError, match="label"):
        pix(s, t, {})
    assert torch.isfinite(pix(s, t, b))


def test_projection_head_pools_first_without_changing_the_function():
    """METHODS.md's head (no activation) pools before its 1x1 conv: the same embeddings and gradients as
    conv -> pool -> linear, written out here; ``relu`` keeps the conv's full-resolution map."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(3, 5, 12, 10, generator=g, requires_grad=True)
    head = ProjectionHead(2, 5, dim=7)
    z = head(x)
    reference = F.normalize(head.linear(head.conv(x).flatten(2).mean(-1)), dim=1)
    assert torch.allclose(z, reference, atol=1e-6)
    (gz,) = torch.autograd.grad(z.square().sum() + z[:, 0].sum(), x)
    (gr,) = torch.autograd.grad(reference.square().sum() + reference[:, 0].sum(), x)
    assert torch.allclose(gz, gr, atol=1e-6)
    relu = ProjectionHead(2, 5, dim=7, activation="relu")
    relu.load_state_dict(head.state_dict())
    expected = F.normalize(relu.linear(F.relu(relu.conv(x)).flatten(2).mean(-1)), dim=1)
    assert torch.allclose(relu(x), expected, atol=1e-6) and not torch.allclose(relu(x), z, atol=1e-3)
    with pytest.raises(ConfigError, match="gelu"):
        ProjectionHead(2, 5, activation="gelu")
    with pytest.raises(ConfigError, match="head_activation"):
        create_loss("contrastive", head_activation="tanh")
    assert create_loss("contrastive", head_activation="relu").head_activation == "relu"


def test_contrastive_pixel_mode_large_map_respects_anchor_cap():
    g = torch.Generator().manual_seed(1)
    s = {"decoder": torch.randn(1, 4, 256, 256, generator=g)}
    t = {"decoder": torch.randn(1, 4, 256, 256, generator=g)}
    lab = {"label": torch.randint(0, 2, (1, 1, 256, 256), generator=g)}
    pix = create_loss("contrastive", tap="decoder", mode="pixel", dim=8, max_anchors=128)
    pix.setup(s, t)
    assert torch.isfinite(pix(s, t, lab))


def test_state_dict_roundtrip_needs_setup_first():
    s, t, b = tapped(2)
    a = create_loss("kernel_matrix")
    a.setup(s, t)
    c = create_loss("kernel_matrix")
    c.setup(s, t)
    c.load_state_dict(a.state_dict())
    assert c(s, t, b).item() == pytest.approx(a(s, t, b).item())


def test_logits_with_different_sizes_are_resized_and_channel_mismatch_errors():
    s, t, b = tapped(2)
    small = dict(s, logits=F.avg_pool2d(s["logits"], 2))
    loss = create_loss("logits_kl")
    loss.setup(small, t)
    assert torch.isfinite(loss(small, t, b))
    with pytest.raises(ConfigError, match="channels"):
        create_loss("kdnet_soft_label").setup(dict(s, logits=s["logits"][:, :2]), t)


def test_adaptive_affinity_ignores_absent_classes_and_mixes_by_softmax():
    g = torch.Generator().manual_seed(3)
    s = {"logits": torch.randn(1, 3, 6, 6, generator=g)}
    t = {"logits": torch.zeros(1, 3, 6, 6)}
    t["logits"][:, 0] = 5.0  # teacher predicts class 0 everywhere: classes 1, 2 have no pairs
    loss = create_loss("adaptive_affinity", dilations=(1, 2))
    loss.setup(s, t)
    with torch.no_grad():
        loss.class_weights[0] = torch.tensor([0.0, torch.log(torch.tensor(3.0))])  # softmax -> [.25, .75]
    l1 = KF.affinity_loss(s["logits"], torch.zeros(1, 6, 6, dtype=torch.long), dilation=1)
    l2 = KF.affinity_loss(s["logits"], torch.zeros(1, 6, 6, dtype=torch.long), dilation=2)
    assert loss(s, t, {}).item() == pytest.approx(0.25 * l1.item() + 0.75 * l2.item(), rel=1e-5)


@pytest.mark.parametrize("name", ["logits_kl", "kdnet_soft_label"])
def test_non_positive_temperature_is_a_config_error_naming_the_loss(name):
    with pytest.raises(ConfigError, match=f"loss '{name}': temperature must be > 0, got 0"):
        create_loss(name, temperature=0)
