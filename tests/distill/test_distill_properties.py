"""Properties of the pure losses: known minimum at student == teacher, finite on empty sets, gradient flow,
binary (one channel) == two-channel logits [0, x], size invariance, and the pixel-contrast memory bound."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from medkd.distill import functional as KF
from medkd.errors import ConfigError

SHAPES = {2: (6, 6), 3: (4, 4, 4)}


def rand(*shape, seed=0, scale=1.0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * scale


# name -> (callable(student, teacher, label), kind) ; kind: "logits" or "feat"
LOSSES = {
    "logits_kl": (lambda s, t, y: KF.logits_kl(s, t, 4.0), "logits"),
    "logits_kl_rev": (lambda s, t, y: KF.logits_kl(s, t, 1.0, reverse=True), "logits"),
    "affinity": (lambda s, t, y: KF.affinity_loss(s, KF.predicted_labels(t)), "logits"),
    "kdnet_soft_label": (lambda s, t, y: KF.kdnet_soft_label_loss(s, t), "logits"),
    "kernel_matrix": (lambda s, t, y: KF.kernel_matrix_loss(s, t), "feat"),
    "feature_mse": (lambda s, t, y: KF.feature_mse(s, t), "feat"),
    "bottleneck_kl": (lambda s, t, y: KF.bottleneck_kl(s, t), "feat"),
    "attention_map": (lambda s, t, y: KF.attention_map_loss(s, t), "feat"),
    "region_affinity": (lambda s, t, y: KF.region_affinity_loss(s, t, y), "feat"),
}


def inputs(kind, nd, c=3, seed=0):
    ch = c if kind == "logits" else 5
    s = rand(2, ch, *SHAPES[nd], seed=seed, scale=2.0)
    t = rand(2, ch, *SHAPES[nd], seed=seed + 1, scale=2.0)
    y = torch.randint(0, 3, (2, 1, *SHAPES[nd]), generator=torch.Generator().manual_seed(seed + 2))
    return s, t, y


@pytest.mark.parametrize("nd", [2, 3])
@pytest.mark.parametrize("name", sorted(LOSSES))
def test_gradient_reaches_student_never_teacher(name, nd):
    fn, kind = LOSSES[name]
    s, t, y = inputs(kind, nd)
    s.requires_grad_(True)
    t.requires_grad_(True)
    loss = fn(s, t, y)
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    assert t.grad is None, "teacher must get no gradient"
    assert s.grad is not None and torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0


@pytest.mark.parametrize("nd", [2, 3])
@pytest.mark.parametrize("name", ["logits_kl", "logits_kl_rev", "kernel_matrix", "feature_mse", "bottleneck_kl",
                                  "attention_map", "region_affinity"])
def test_zero_when_student_equals_teacher(name, nd):
    fn, kind = LOSSES[name]
    s, _, y = inputs(kind, nd)
    assert fn(s, s.clone(), y).item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("c", [1, 3])
def test_kdnet_minimum_is_the_bce_part(c):
    s = rand(2, c, 6, 6, seed=3, scale=2.0)
    # at s == t and T = 1 the soft Dice part vanishes; what is left is BCE(p_s, onehot(argmax s))
    p = KF.class_probs(s)
    onehot = F.one_hot(KF.predicted_labels(s), p.shape[1]).movedim(-1, 1).float()
    bce = F.binary_cross_entropy(p, onehot)
    assert KF.kdnet_soft_label_loss(s, s, temperature=1.0).item() == pytest.approx(bce.item(), rel=1e-4)


@pytest.mark.parametrize("nd", [2, 3])
def test_affinity_minimum_for_confident_matching_student(nd):
    labels = torch.randint(0, 3, (2, *SHAPES[nd]), generator=torch.Generator().manual_seed(0))
    s = 50.0 * F.one_hot(labels, 3).movedim(-1, 1).float()
    # same pairs: W = 0; different pairs: W = log(1 / 1e-4) = 9.2 > margin 3 -> hinge 0
    assert KF.affinity_loss(s, labels).item() == pytest.approx(0.0, abs=1e-4)
    assert KF.affinity_loss(s, labels, margin=20.0).item() > 0


def test_info_nce_and_pixel_contrast_known_minimum():
    b, tau = 4, 0.4
    z = torch.eye(b, 8)
    expected = math.log(1.0 + (b - 1) * math.exp(-1.0 / tau))
    assert KF.info_nce(z, z, tau).item() == pytest.approx(expected, rel=1e-5)
    # better aligned student -> lower loss than a shuffled one
    assert KF.info_nce(z, z, tau) < KF.info_nce(z.roll(1, 0), z, tau)
    # pixel contrast with one class per pixel reduces to the same value
    emb = torch.eye(b).view(1, b, 1, b)
    lab = torch.arange(b).view(1, 1, 1, b)
    assert KF.pixel_contrast(emb, emb, lab, tau).item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("nd", [2, 3])
def test_binary_one_channel_equals_two_channel_zero_logit(nd):
    x = rand(2, 1, *SHAPES[nd], seed=4, scale=2.0)
    y = rand(2, 1, *SHAPES[nd], seed=5, scale=2.0)
    two = lambda v: torch.cat([torch.zeros_like(v), v], dim=1)  # noqa: E731 - softmax([0, v]) = [1-sig, sig]
    assert KF.logits_kl(x, y, 3.0).item() == pytest.approx(KF.logits_kl(two(x), two(y), 3.0).item(), rel=1e-5)
    lab = KF.predicted_labels(y)
    assert torch.equal(lab, KF.predicted_labels(two(y)))
    assert KF.affinity_loss(x, lab).item() == pytest.approx(KF.affinity_loss(two(x), lab).item(), rel=1e-5)
    assert KF.kdnet_soft_label_loss(x, y).item() == pytest.approx(
        KF.kdnet_soft_label_loss(two(x), two(y)).item(), rel=1e-5)
    # a one-channel "softmax" would be constant (loss 0): ours is not
    assert KF.logits_kl(x, y).item() > 1e-3


def test_logits_kl_does_not_grow_with_image_size():
    s, t = rand(2, 3, 8, 8, seed=6), rand(2, 3, 8, 8, seed=7)
    big_s, big_t = s.repeat(1, 1, 4, 4), t.repeat(1, 1, 4, 4)
    assert KF.logits_kl(big_s, big_t).item() == pytest.approx(KF.logits_kl(s, t).item(), rel=1e-5)


def test_finite_on_empty_sets():
    # affinity: one pixel (no pairs at all), all-same labels (no different pairs)
    one = rand(1, 3, 1, 1)
    assert KF.affinity_loss(one, torch.zeros(1, 1, 1, dtype=torch.long)).item() == 0.0
    s = rand(2, 3, 5, 5, seed=8).requires_grad_(True)
    loss = KF.affinity_loss(s, torch.zeros(2, 5, 5, dtype=torch.long))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(s.grad).all()
    # region affinity: empty and full foreground
    f, g = rand(2, 4, 5, 5, seed=9), rand(2, 6, 5, 5, seed=10)
    for mask in (torch.zeros(2, 1, 5, 5, dtype=torch.long), torch.ones(2, 1, 5, 5, dtype=torch.long)):
        assert torch.isfinite(KF.region_affinity_loss(f, g, mask))
    # pixel contrast with a single class; kdnet with an all-background teacher
    e = F.normalize(rand(1, 4, 5, 5, seed=11), dim=1)
    assert torch.isfinite(KF.pixel_contrast(e, e, torch.zeros(1, 1, 5, 5, dtype=torch.long)))
    bg = torch.zeros(2, 3, 5, 5)
    bg[:, 0] = 10.0
    assert torch.isfinite(KF.kdnet_soft_label_loss(rand(2, 3, 5, 5, seed=12), bg))
    # extreme logits stay finite
    huge = rand(2, 3, 5, 5, seed=13, scale=1e4)
    for fn in (lambda a, b: KF.logits_kl(a, b), lambda a, b: KF.kdnet_soft_label_loss(a, b),
               lambda a, b: KF.affinity_loss(a, KF.predicted_labels(b))):
        assert torch.isfinite(fn(huge, -huge))


def test_pixel_contrast_memory_bound():
    # 1 x 4 x 512 x 512 = 262,144 pixels: an O((HW)^2) similarity matrix would need ~275 GB.
    g = torch.Generator().manual_seed(0)
    e = F.normalize(torch.randn(1, 4, 512, 512, generator=g), dim=1).requires_grad_(True)
    lab = torch.randint(0, 3, (1, 1, 512, 512), generator=g)
    loss = KF.pixel_contrast(e, e.detach(), lab, max_anchors=256, generator=g)
    loss.backward()
    assert torch.isfinite(loss)
    assert (e.grad.abs().sum(dim=1) > 0).sum().item() <= 256  # only the sampled anchors receive gradient
    assert KF.sample_pixel_indices(10**6, 1024).numel() == 1024
    with pytest.raises(ConfigError):
        KF.pixel_contrast(e, e, lab, max_anchors=1)


def test_info_nce_teacher_embedding_is_trainable():
    zs = F.normalize(rand(4, 8, seed=14), dim=1).requires_grad_(True)
    zt = F.normalize(rand(4, 8, seed=15), dim=1).requires_grad_(True)
    KF.info_nce(zs, zt, symmetric=True).backward()
    assert zs.grad.abs().sum() > 0 and zt.grad.abs().sum() > 0  # the teacher-side head is trained


def test_shape_errors_are_config_errors():
    with pytest.raises(ConfigError, match="logits_kl"):
        KF.logits_kl(torch.zeros(1, 2, 4, 4), torch.zeros(1, 3, 4, 4))
    with pytest.raises(ConfigError, match="feature_mse"):
        KF.feature_mse(torch.zeros(1, 2, 4, 4), torch.zeros(1, 2, 2, 2))
    with pytest.raises(ConfigError, match="bottleneck_kl"):
        KF.bottleneck_kl(torch.zeros(1, 2, 4, 4), torch.zeros(1, 2, 2, 2))
    with pytest.raises(ConfigError, match="affinity"):
        KF.affinity_loss(torch.zeros(1, 2, 4, 4), torch.zeros(1, 3, 3, dtype=torch.long))
    with pytest.raises(ConfigError, match=r"\[0, 1\]"):
        KF.affinity_loss(torch.zeros(1, 2, 4, 4), torch.full((1, 4, 4), 2))
    with pytest.raises(ConfigError, match="info_nce"):
        KF.info_nce(torch.zeros(2, 4), torch.zeros(3, 4))
