"""CWD (METHODS.md item 9) and DIST (item 10): golden values, properties, and their loss modules.

Golden values come from (a) tiny cases worked out by hand in the comments and (b) slow loop-based references
written here with plain Python floats and ``math`` (loops over batch, channel, positions / pixels, classes), in 2D
and 3D, multi-class and binary (one channel), at several temperatures.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from medkd.distill import functional as KF
from medkd.distill.losses import CWDLoss, DISTLoss, create_loss, loss_info
from medkd.distill.objective import DistillObjective
from medkd.errors import ConfigError

SHAPES = {2: (4, 5), 3: (3, 3, 4)}
LN3 = math.log(3.0)
KL_34_12 = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)  # KL([.75, .25] || [.5, .5]) = 0.130812


def rand(*shape, seed=0, scale=1.0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * scale


def close(a, b, rel=1e-4, abs_=1e-5):
    return a == pytest.approx(b, rel=rel, abs=abs_)


# --------------------------------------------------------------------------------------------------------------
# loop-based references
# --------------------------------------------------------------------------------------------------------------


def positions(spatial):
    return list(itertools.product(*[range(n) for n in spatial]))


def ref_softmax(vals):
    m = max(vals)
    e = [math.exp(v - m) for v in vals]
    return [v / sum(e) for v in e]


def ref_cwd(s, t, temperature):
    """T^2 * mean over (b, c) of KL(softmax_positions(t_bc / T) || softmax_positions(s_bc / T))."""
    total, n = 0.0, 0
    for b in range(s.shape[0]):
        for c in range(s.shape[1]):
            ps = ref_softmax([s[(b, c, *pos)].item() / temperature for pos in positions(s.shape[2:])])
            pt = ref_softmax([t[(b, c, *pos)].item() / temperature for pos in positions(t.shape[2:])])
            total += sum(a * (math.log(a) - math.log(q)) for a, q in zip(pt, ps))
            n += 1
    return temperature**2 * total / n


def ref_class_dist(x, b, pos, temperature):
    """Class distribution of pixel (b, pos): softmax over channels, or [1 - sig, sig] for one channel."""
    vals = [x[(b, c, *pos)].item() / temperature for c in range(x.shape[1])]
    if len(vals) == 1:
        p = 1.0 / (1.0 + math.exp(-vals[0]))
        return [1.0 - p, p]
    return ref_softmax(vals)


def ref_pearson(u, v, eps=1e-8):
    mu, mv = sum(u) / len(u), sum(v) / len(v)
    du, dv = [a - mu for a in u], [a - mv for a in v]
    nu = math.sqrt(sum(a * a for a in du)) + eps
    nv = math.sqrt(sum(a * a for a in dv)) + eps
    return sum(a * c for a, c in zip(du, dv)) / (nu * nv)


def ref_dist(s, t, temperature, beta=1.0, gamma=1.0):
    rows_s, rows_t = [], []  # one row per pixel of the batch, one column per class
    for b in range(s.shape[0]):
        for pos in positions(s.shape[2:]):
            rows_s.append(ref_class_dist(s, b, pos, temperature))
            rows_t.append(ref_class_dist(t, b, pos, temperature))
    inter = 1.0 - sum(ref_pearson(a, c) for a, c in zip(rows_s, rows_t)) / len(rows_s)
    k = len(rows_s[0])
    cols = [ref_pearson([r[c] for r in rows_s], [r[c] for r in rows_t]) for c in range(k)]
    intra = 1.0 - sum(cols) / k
    return temperature**2 * (beta * inter + gamma * intra)


# --------------------------------------------------------------------------------------------------------------
# hand-worked cases
# --------------------------------------------------------------------------------------------------------------


def test_hand_cwd():
    # B=1, C=1, H=2, W=1. Student y_s = [0, 0] -> phi_s = [1/2, 1/2]; teacher y_t = [ln 3, 0] -> phi_t = [3/4, 1/4].
    # KL(phi_t || phi_s) = 3/4 ln(3/2) + 1/4 ln(1/2) = 0.304099 - 0.173287 = 0.130812.
    s = torch.zeros(1, 1, 2, 1)
    t = torch.tensor([LN3, 0.0]).view(1, 1, 2, 1)
    assert close(KF.cwd_loss(s, t).item(), KL_34_12)
    assert close(KL_34_12, 0.130812, rel=1e-5)
    # T = 2 with teacher [2 ln 3, 0]: phi_t / phi_s as above, times T^2 = 4 -> 0.523248
    assert close(KF.cwd_loss(s, 2 * t, temperature=2.0).item(), 4 * KL_34_12)
    # a second channel where student == teacher contributes KL 0: the mean over channels halves it -> 0.065406
    s2 = torch.cat([s, torch.tensor([1.0, -1.0]).view(1, 1, 2, 1)], dim=1)
    t2 = torch.cat([t, torch.tensor([1.0, -1.0]).view(1, 1, 2, 1)], dim=1)
    assert close(KF.cwd_loss(s2, t2).item(), KL_34_12 / 2)
    # the softmax runs over positions, not channels: swapping the roles of the axes changes nothing here
    assert close(KF.cwd_loss(s.view(1, 1, 1, 2), t.view(1, 1, 1, 2)).item(), KL_34_12)


def test_hand_dist_three_classes():
    # B=1, K=3, two pixels (1 x 3 x 1 x 2), logits = log-probabilities.
    # pixel 1: p_s = [1/2, 1/4, 1/4], p_t = [1/4, 1/2, 1/4]; centred (mean 1/3): [1/6, -1/12, -1/12] and
    #   [-1/12, 1/6, -1/12]; dot = -1/72 - 1/72 + 1/144 = -1/48; both norms sqrt(6/144), product 1/24 -> r = -1/2.
    # pixel 2: p_s = p_t = [1/2, 1/4, 1/4] -> r = 1.   inter = 1 - (-1/2 + 1) / 2 = 3/4.
    # intra: every student column is constant ([1/2, 1/2], [1/4, 1/4], [1/4, 1/4]) -> r = 0 by convention; intra = 1.
    ps = torch.tensor([[0.5, 0.25, 0.25], [0.5, 0.25, 0.25]])  # (pixel, class)
    pt = torch.tensor([[0.25, 0.5, 0.25], [0.5, 0.25, 0.25]])
    s = ps.log().t().reshape(1, 3, 1, 2)
    t = pt.log().t().reshape(1, 3, 1, 2)
    assert close(KF.dist_loss(s, t).item(), 0.75 + 1.0)
    assert close(KF.dist_loss(s, t, beta=2.0, gamma=0.5).item(), 2.0 * 0.75 + 0.5 * 1.0)
    # T = 2 with doubled logits: same distributions, times T^2 = 4
    assert close(KF.dist_loss(2 * s, 2 * t, temperature=2.0).item(), 4 * 1.75)


def test_hand_dist_binary_one_channel():
    # one channel, two pixels: s = [ln 3, -ln 3] -> sigmoid [3/4, 1/4]; t = [ln 3, 0] -> sigmoid [3/4, 1/2].
    # rows [1 - sig, sig]: pixel 1 s = t = [1/4, 3/4] -> r = 1; pixel 2 t = [1/2, 1/2] constant -> r = 0.
    #   inter = 1 - (1 + 0) / 2 = 1/2.
    # columns: class 1 s = [3/4, 1/4], t = [3/4, 1/2]; centred [1/4, -1/4] and [1/8, -1/8] -> r = 1; class 0 is
    #   1 - class 1 -> r = 1.  intra = 0.   L = beta / 2.
    s = torch.tensor([LN3, -LN3]).view(1, 1, 1, 2)
    t = torch.tensor([LN3, 0.0]).view(1, 1, 1, 2)
    assert close(KF.dist_loss(s, t).item(), 0.5)
    assert close(KF.dist_loss(s, t, beta=2.0, gamma=3.0).item(), 1.0)


# --------------------------------------------------------------------------------------------------------------
# loop references: 2D and 3D, multi-class and binary, several temperatures
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("temperature", [0.5, 1.0, 4.0])
@pytest.mark.parametrize("c", [1, 3])
@pytest.mark.parametrize("nd", [2, 3])
def test_cwd_matches_loop_reference(nd, c, temperature):
    s = rand(2, c, *SHAPES[nd], seed=1, scale=2.0)
    t = rand(2, c, *SHAPES[nd], seed=2, scale=2.0)
    assert close(KF.cwd_loss(s, t, temperature).item(), ref_cwd(s, t, temperature))


@pytest.mark.parametrize("temperature", [0.5, 1.0, 4.0])
@pytest.mark.parametrize("c", [1, 3])
@pytest.mark.parametrize("nd", [2, 3])
def test_dist_matches_loop_reference(nd, c, temperature):
    s = rand(2, c, *SHAPES[nd], seed=3, scale=2.0)
    t = rand(2, c, *SHAPES[nd], seed=4, scale=2.0)
    assert close(KF.dist_loss(s, t, temperature).item(), ref_dist(s, t, temperature))
    assert close(KF.dist_loss(s, t, temperature, beta=0.3, gamma=2.0).item(),
                 ref_dist(s, t, temperature, beta=0.3, gamma=2.0))


def test_cwd_on_feature_maps_matches_reference():
    s = rand(2, 6, 3, 4, seed=5, scale=3.0)  # feature-like: more channels, larger values
    t = rand(2, 6, 3, 4, seed=6, scale=3.0)
    assert close(KF.cwd_loss(s, t, 2.0).item(), ref_cwd(s, t, 2.0))


def test_cwd_is_bottleneck_kl_per_channel():
    # with T = 1 each (sample, channel) map is one "flattened vector" of bottleneck_kl (METHODS.md item 7)
    s, t = rand(2, 3, 4, 4, seed=7), rand(2, 3, 4, 4, seed=8)
    per_channel = KF.bottleneck_kl(s.reshape(6, 1, 16), t.reshape(6, 1, 16))
    assert close(KF.cwd_loss(s, t).item(), per_channel.item(), rel=1e-5)


# --------------------------------------------------------------------------------------------------------------
# properties
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("c", [1, 3])
@pytest.mark.parametrize("nd", [2, 3])
def test_zero_when_student_equals_teacher(nd, c):
    x = rand(2, c, *SHAPES[nd], seed=9, scale=2.0)
    for temperature in (1.0, 4.0):
        assert KF.cwd_loss(x, x.clone(), temperature).item() == 0.0
        assert KF.dist_loss(x, x.clone(), temperature).item() == pytest.approx(0.0, abs=1e-5)


@pytest.mark.parametrize("seed", range(4))
def test_non_negative_and_bounded(seed):
    s, t = rand(2, 3, 5, 5, seed=seed, scale=3.0), rand(2, 3, 5, 5, seed=seed + 10, scale=3.0)
    assert KF.cwd_loss(s, t).item() > 0
    for temperature, beta, gamma in [(1.0, 1.0, 1.0), (2.0, 0.5, 3.0)]:
        v = KF.dist_loss(s, t, temperature, beta, gamma).item()
        assert 0.0 <= v <= 2 * temperature**2 * (beta + gamma)
    # anti-correlated maps: DIST near its maximum 2 T^2 (beta + gamma) for the intra-class part
    assert KF.dist_loss(s, -s, beta=0.0).item() > 1.0


def test_dist_terms_are_linear_in_beta_gamma():
    s, t = rand(2, 4, 5, 5, seed=11), rand(2, 4, 5, 5, seed=12)
    inter = KF.dist_loss(s, t, beta=1.0, gamma=0.0).item()
    intra = KF.dist_loss(s, t, beta=0.0, gamma=1.0).item()
    assert inter > 0 and intra > 0
    assert close(KF.dist_loss(s, t, beta=0.5, gamma=2.0).item(), 0.5 * inter + 2.0 * intra, rel=1e-5)


def test_dist_ignores_uniform_softening_but_kl_does_not():
    # DIST's "relaxed match": a student whose distributions are the teacher's mixed with the uniform one,
    # p_s = a p_t + (1 - a) / K, is perfectly correlated with the teacher per pixel and per class -> loss ~ 0,
    # while the logits KL is clearly positive.
    t = rand(2, 3, 6, 6, seed=13, scale=3.0)
    p_s = 0.3 * F.softmax(t, dim=1) + 0.7 / 3
    s = p_s.log()
    assert KF.dist_loss(s, t).item() == pytest.approx(0.0, abs=1e-5)
    assert KF.logits_kl(s, t).item() > 0.05


def test_size_invariance_under_pixel_replication():
    # upsampling both maps by pixel replication: each CWD distribution spreads its mass over 4x4 copies (KL
    # unchanged); DIST averages over replicated pixels and correlates replicated columns (unchanged).
    s, t = rand(2, 3, 6, 6, seed=14, scale=2.0), rand(2, 3, 6, 6, seed=15, scale=2.0)
    up = lambda x: x.repeat_interleave(4, dim=2).repeat_interleave(4, dim=3)  # noqa: E731
    assert close(KF.cwd_loss(up(s), up(t)).item(), KF.cwd_loss(s, t).item(), rel=1e-5)
    assert close(KF.dist_loss(up(s), up(t)).item(), KF.dist_loss(s, t).item(), rel=1e-5)
    # and tiling the batch changes nothing either
    assert close(KF.cwd_loss(s.repeat(3, 1, 1, 1), t.repeat(3, 1, 1, 1)).item(), KF.cwd_loss(s, t).item())
    assert close(KF.dist_loss(s.repeat(3, 1, 1, 1), t.repeat(3, 1, 1, 1)).item(), KF.dist_loss(s, t).item())


@pytest.mark.parametrize("c", [1, 3])
@pytest.mark.parametrize("nd", [2, 3])
def test_gradient_reaches_student_never_teacher(nd, c):
    for fn in (lambda a, b: KF.cwd_loss(a, b, 2.0), lambda a, b: KF.dist_loss(a, b, 2.0)):
        s = rand(2, c, *SHAPES[nd], seed=16, scale=2.0).requires_grad_(True)
        t = rand(2, c, *SHAPES[nd], seed=17, scale=2.0).requires_grad_(True)
        loss = fn(s, t)
        assert loss.dim() == 0 and loss.dtype == torch.float32 and torch.isfinite(loss)
        loss.backward()
        assert t.grad is None, "teacher must get no gradient"
        assert s.grad is not None and torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0


def test_constant_maps_give_finite_values_and_gradients():
    t = rand(2, 3, 5, 5, seed=18, scale=2.0)
    for c, teacher in [(3, t), (3, torch.zeros(2, 3, 5, 5)), (1, torch.zeros(2, 1, 5, 5)), (1, t[:, :1])]:
        s = torch.zeros(2, c, 5, 5, requires_grad=True)  # constant student: every centred vector is zero
        v = KF.dist_loss(s, teacher)
        v.backward()
        assert torch.isfinite(v) and torch.isfinite(s.grad).all()
        s2 = torch.zeros(2, c, 5, 5, requires_grad=True)
        w = KF.cwd_loss(s2, teacher)
        w.backward()
        assert torch.isfinite(w) and torch.isfinite(s2.grad).all()
    # both constant: every correlation is 0 by convention -> L = T^2 (beta + gamma), no NaN
    assert KF.dist_loss(torch.zeros(1, 3, 4, 4), torch.ones(1, 3, 4, 4), 2.0).item() == pytest.approx(8.0)
    assert KF.cwd_loss(torch.zeros(1, 3, 4, 4), torch.ones(1, 3, 4, 4)).item() == pytest.approx(0.0, abs=1e-6)


def test_extreme_and_half_precision_inputs_stay_finite():
    huge = rand(2, 3, 5, 5, seed=19, scale=1e4)
    assert torch.isfinite(KF.cwd_loss(huge, -huge)) and torch.isfinite(KF.dist_loss(huge, -huge))
    s, t = rand(2, 3, 5, 5, seed=20).half(), rand(2, 3, 5, 5, seed=21).half()
    assert KF.cwd_loss(s, t).dtype == torch.float32
    assert close(KF.cwd_loss(s, t).item(), KF.cwd_loss(s.float(), t.float()).item(), rel=1e-5)
    assert close(KF.dist_loss(s, t).item(), KF.dist_loss(s.float(), t.float()).item(), rel=1e-5)


def test_shape_errors_are_config_errors():
    with pytest.raises(ConfigError, match="cwd"):
        KF.cwd_loss(torch.zeros(1, 2, 4, 4), torch.zeros(1, 3, 4, 4))
    with pytest.raises(ConfigError, match="cwd"):
        KF.cwd_loss(torch.zeros(1, 2, 4, 4), torch.zeros(1, 2, 2, 2))
    with pytest.raises(ConfigError, match="dist"):
        KF.dist_loss(torch.zeros(1, 2, 4, 4), torch.zeros(1, 2, 2, 2))
    with pytest.raises(ConfigError, match="dist"):
        KF.dist_loss(torch.zeros(1, 2), torch.zeros(1, 2))


# --------------------------------------------------------------------------------------------------------------
# modules
# --------------------------------------------------------------------------------------------------------------


def tapped(nd, c=3, grad=False, seed=0):
    """Student features at half the teacher's resolution and half its channels; logits at full size."""
    g = torch.Generator().manual_seed(seed)
    n = 8
    s = {"logits": torch.randn(2, c, *(n,) * nd, generator=g),
         "bottleneck": torch.randn(2, 16, *(n // 4,) * nd, generator=g)}
    t = {"logits": torch.randn(2, c, *(n,) * nd, generator=g),
         "bottleneck": torch.randn(2, 32, *(n // 2,) * nd, generator=g)}
    if grad:
        for v in s.values():
            v.requires_grad_(True)
    return s, t


def test_registry_and_info():
    for name, cls in (("cwd", CWDLoss), ("dist", DISTLoss)):
        info = loss_info(name)
        assert isinstance(create_loss(name), cls)
        assert info["description"] and info["student_taps"] == ("logits",) and not info["needs_label"]
    assert loss_info("cwd")["options"]["temperature"] == 1.0 and "adapter" in loss_info("cwd")["options"]
    assert {k: loss_info("dist")["options"][k] for k in ("temperature", "beta", "gamma")} == {
        "temperature": 1.0, "beta": 1.0, "gamma": 1.0}


@pytest.mark.parametrize("nd", [2, 3])
def test_cwd_on_feature_tap_builds_and_trains_an_adapter(nd):
    s, t = tapped(nd, grad=True)
    loss = create_loss("cwd", tap="bottleneck", temperature=2.0)
    assert loss.student_taps == ("bottleneck",) and not loss.on_logits
    loss.setup(s, t)
    conv = loss.adapter.conv
    assert conv.in_channels == 16 and conv.out_channels == 32 and conv.weight.dim() == nd + 2
    assert len(loss.descent_parameters()) == 2 and loss.ascent_parameters() == []
    value = loss(s, t, {})
    expected = KF.cwd_loss(loss.adapter(s["bottleneck"], t["bottleneck"].shape[2:]), t["bottleneck"], 2.0)
    assert value.item() == pytest.approx(expected.item(), rel=1e-6)
    value.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in loss.descent_parameters())
    assert s["bottleneck"].grad.abs().sum() > 0
    # a few descent steps on the adapter alone lower the loss
    opt = torch.optim.SGD(loss.descent_parameters(), lr=0.5)
    before = value.item()
    for _ in range(5):
        opt.zero_grad()
        loss(s, t, {}).backward()
        opt.step()
    assert loss(s, t, {}).item() < before


def test_cwd_on_logits_has_no_parameters_and_matches_functional():
    s, t = tapped(2)
    loss = create_loss("cwd", temperature=4.0)
    loss.setup(s, t)
    assert loss.on_logits and loss.adapter is None and len(list(loss.parameters())) == 0
    assert loss(s, t, {}).item() == pytest.approx(KF.cwd_loss(s["logits"], t["logits"], 4.0).item(), rel=1e-6)
    # adapter=True forces one even on the logits
    forced = create_loss("cwd", adapter=True)
    forced.setup(s, t)
    assert forced.adapter is not None and forced.adapter.conv.out_channels == 3


def test_cwd_without_adapter_needs_equal_channels_and_resizes():
    s, t = tapped(2)
    with pytest.raises(ConfigError, match="channels"):
        create_loss("cwd", tap="bottleneck", adapter=False).setup(s, t)
    same_ch = {"bottleneck": s["bottleneck"].repeat(1, 2, 1, 1)}  # 32 channels at 2x2, teacher 32 at 4x4
    loss = create_loss("cwd", tap="bottleneck", adapter=False)
    loss.setup(same_ch, t)
    expected = KF.cwd_loss(KF.resize_to(same_ch["bottleneck"], (4, 4)), t["bottleneck"])
    assert loss.adapter is None and loss(same_ch, t, {}).item() == pytest.approx(expected.item(), rel=1e-6)
    with pytest.raises(ConfigError, match="channels"):
        create_loss("cwd").setup(dict(s, logits=s["logits"][:, :2]), t)


@pytest.mark.parametrize("name", ["cwd", "dist"])
def test_student_logits_of_another_size_are_resized(name):
    s, t = tapped(2, grad=True)
    small = dict(s, logits=F.avg_pool2d(s["logits"], 2))  # 4x4 student, 8x8 teacher
    loss = create_loss(name)
    loss.setup(small, t)
    value = loss(small, t, {})
    fn = KF.cwd_loss if name == "cwd" else KF.dist_loss
    assert value.item() == pytest.approx(fn(KF.resize_to(small["logits"], (8, 8)), t["logits"]).item(), rel=1e-6)
    value.backward()
    assert torch.isfinite(s["logits"].grad).all() and s["logits"].grad.abs().sum() > 0


def test_dist_module_matches_functional_binary():
    s, t = tapped(3, c=1)
    loss = create_loss("dist", temperature=2.0, beta=0.5, gamma=2.0)
    loss.setup(s, t)
    assert len(list(loss.parameters())) == 0
    expected = KF.dist_loss(s["logits"], t["logits"], 2.0, 0.5, 2.0)
    assert loss(s, t, {}).item() == pytest.approx(expected.item(), rel=1e-6)


@pytest.mark.parametrize("name,kw,match", [
    ("cwd", {"temperature": 0}, "loss 'cwd': temperature must be > 0, got 0"),
    ("cwd", {"temperature": -1.0}, "temperature must be > 0"),
    ("dist", {"temperature": 0}, "loss 'dist': temperature must be > 0, got 0"),
    ("dist", {"beta": -0.1}, "loss 'dist': beta must be >= 0"),
    ("dist", {"gamma": -1}, "loss 'dist': gamma must be >= 0"),
    ("dist", {"adapter": True}, "adapter"),
    ("cwd", {"temperatur": 2.0}, "temperature"),
])
def test_bad_options_are_config_errors(name, kw, match):
    with pytest.raises(ConfigError, match=match):
        create_loss(name, **kw)


def test_objective_with_cwd_and_dist_terms():
    s, t = tapped(2, grad=True)
    obj = DistillObjective.from_config([
        {"loss": "cwd", "weight": 3.0},
        {"loss": "cwd", "weight": 1.0, "tap": "bottleneck"},
        {"loss": "dist", "weight": 1.0, "beta": 2.0},
    ])
    obj.setup(s, t)
    total, parts = obj(s, t, {})
    assert sorted(parts) == ["cwd@bottleneck", "cwd@logits", "dist@logits"]
    expected = 3.0 * parts["cwd@logits"] + parts["cwd@bottleneck"] + parts["dist@logits"]
    assert total.item() == pytest.approx(expected.item(), rel=1e-6)
    total.backward()
    assert len(obj.descent_parameters()) == 2  # only the feature-tap CWD has an adapter
    other = DistillObjective.from_config([
        {"loss": "cwd", "weight": 3.0},
        {"loss": "cwd", "weight": 1.0, "tap": "bottleneck"},
        {"loss": "dist", "weight": 1.0, "beta": 2.0},
    ])
    other.setup(s, t)
    other.load_state_dict(obj.state_dict())
    assert other(s, t, {})[0].item() == pytest.approx(total.item(), rel=1e-6)
