"""Golden values for every function of medkd.distill.functional.

Each formula is checked against (a) tiny cases worked out by hand and (b) an independent, slow, loop-based
reference written here (plain Python floats and ``math``), in 2D and 3D, multi-class and binary (one channel).
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from medkd.distill import functional as KF

LN3 = math.log(3.0)
SHAPES = {2: (4, 5), 3: (3, 3, 4)}


def close(a, b, rel=1e-4, abs_=1e-5):
    return a == pytest.approx(b, rel=rel, abs=abs_)


# --------------------------------------------------------------------------------------------------------------
# loop-based references
# --------------------------------------------------------------------------------------------------------------


def positions(spatial):
    return list(itertools.product(*[range(n) for n in spatial]))


def ref_dist(x, b, pos, temperature=1.0):
    """Class distribution of pixel (b, pos): softmax over channels, or [1 - sig, sig] for one channel."""
    vals = [x[(b, c, *pos)].item() / temperature for c in range(x.shape[1])]
    if len(vals) == 1:
        p = 1.0 / (1.0 + math.exp(-vals[0]))
        return [1.0 - p, p]
    m = max(vals)
    e = [math.exp(v - m) for v in vals]
    return [v / sum(e) for v in e]


def ref_label(x, b, pos):
    if x.shape[1] == 1:
        return int(x[(b, 0, *pos)].item() > 0)
    vals = [x[(b, c, *pos)].item() for c in range(x.shape[1])]
    return vals.index(max(vals))


def ref_kl(p, q):
    return sum(pi * (math.log(pi) - math.log(qi)) for pi, qi in zip(p, q))


def ref_logits_kl(s, t, temperature, reverse=False):
    total, n = 0.0, 0
    for b in range(s.shape[0]):
        for pos in positions(s.shape[2:]):
            ps, pt = ref_dist(s, b, pos, temperature), ref_dist(t, b, pos, temperature)
            total += ref_kl(ps, pt) if reverse else ref_kl(pt, ps)
            n += 1
    return temperature**2 * total / n


def ref_affinity_pairs(s, labels, margin, dilation):
    """Lists of (class_i, value) for same pairs (W) and different pairs (hinge)."""
    spatial = s.shape[2:]
    same, diff = [], []
    offsets = [o for o in itertools.product((-1, 0, 1), repeat=len(spatial)) if any(o)]
    for b in range(s.shape[0]):
        for pi in positions(spatial):
            qi = ref_dist(s, b, pi)
            for off in offsets:
                pj = tuple(p + dilation * o for p, o in zip(pi, off))
                if not all(0 <= p < n for p, n in zip(pj, spatial)):
                    continue
                qj = ref_dist(s, b, pj)
                w = sum(a * (math.log(max(a, 1e-4)) - math.log(max(c, 1e-4))) for a, c in zip(qi, qj))
                li, lj = int(labels[(b, *pi)]), int(labels[(b, *pj)])
                if li == lj:
                    same.append((li, w))
                else:
                    diff.append((li, max(0.0, margin - w)))
    return same, diff


def mean_or_zero(vals):
    return sum(vals) / len(vals) if vals else 0.0


def ref_affinity(s, labels, margin=3.0, dilation=1):
    same, diff = ref_affinity_pairs(s, labels, margin, dilation)
    return mean_or_zero([v for _, v in same]) + mean_or_zero([v for _, v in diff])


def ref_flat(x, b):
    return [v.item() for v in x[b].reshape(-1)]


def ref_normalise(v):
    n = math.sqrt(sum(a * a for a in v))
    return [a / n for a in v]


def ref_kernel(s, t):
    bsz = s.shape[0]
    xs = [ref_normalise(ref_flat(s, b)) for b in range(bsz)]
    xt = [ref_normalise(ref_flat(t, b)) for b in range(bsz)]
    sq = ab = 0.0
    for i in range(bsz):
        for j in range(bsz):
            d = sum(a * c for a, c in zip(xs[i], xs[j])) - sum(a * c for a, c in zip(xt[i], xt[j]))
            sq += d * d
            ab += abs(d)
    return sq / bsz**2 + ab / bsz**2


def ref_ce_rows(anchors, keys, pos_sets, tau):
    total = 0.0
    for i, a in enumerate(anchors):
        sims = [sum(x * y for x, y in zip(a, k)) / tau for k in keys]
        lse = math.log(sum(math.exp(v) for v in sims))
        total += -sum(sims[p] - lse for p in pos_sets[i]) / len(pos_sets[i])
    return total / len(anchors)


def ref_info_nce(zs, zt, tau, symmetric):
    a, k = zs.tolist(), zt.tolist()
    pos = [[i] for i in range(len(a))]
    loss = ref_ce_rows(a, k, pos, tau)
    if symmetric:
        loss += ref_ce_rows(k, a, pos, tau)
    return loss


def ref_pixel_contrast(es, et, labels, tau, indices, symmetric=False):
    d = es.shape[1]
    rows_s = es.movedim(1, -1).reshape(-1, d).tolist()
    rows_t = et.movedim(1, -1).reshape(-1, d).tolist()
    lab = labels.reshape(-1).tolist()
    a = [rows_s[i] for i in indices]
    k = [rows_t[i] for i in indices]
    y = [lab[i] for i in indices]
    pos = [[j for j in range(len(y)) if y[j] == y[i]] for i in range(len(y))]
    loss = ref_ce_rows(a, k, pos, tau)
    if symmetric:
        loss += ref_ce_rows(k, a, pos, tau)
    return loss


def ref_kdnet(s, t, temperature, temper_student=False):
    bsz, spatial = s.shape[0], s.shape[2:]
    k = max(s.shape[1], 2)
    dice_terms, bce, n = [], 0.0, 0
    for b in range(bsz):
        ps = {pos: ref_dist(s, b, pos) for pos in positions(spatial)}
        pt = {pos: ref_dist(t, b, pos, temperature) for pos in positions(spatial)}
        pd = {pos: ref_dist(s, b, pos, temperature) for pos in positions(spatial)} if temper_student else ps
        for c in range(1, k):
            sx = sum(pd[p][c] for p in pd)
            sy = sum(pt[p][c] for p in pt)
            sd = sum(abs(pd[p][c] - pt[p][c]) for p in pd)
            dice_terms.append(1.0 - (sx + sy - sd + 1e-5) / (sx + sy + 1e-5))
        for pos in ps:
            lab = ref_label(t, b, pos)
            for c in range(k):
                y = 1.0 if c == lab else 0.0
                p = ps[pos][c]
                bce += -(y * math.log(p) + (1.0 - y) * math.log(1.0 - p))
                n += 1
    return sum(dice_terms) / len(dice_terms) + bce / n


def ref_bottleneck_kl(s, t):
    total = 0.0
    for b in range(s.shape[0]):
        vs, vt = ref_flat(s, b), ref_flat(t, b)
        es = [math.exp(v) for v in vs]
        et = [math.exp(v) for v in vt]
        q = [v / sum(es) for v in es]
        p = [v / sum(et) for v in et]
        total += ref_kl(p, q)
    return total / s.shape[0]


def ref_attention(s, t):
    total = 0.0
    for b in range(s.shape[0]):
        maps = []
        for x in (s, t):
            a = [sum(x[(b, c, *pos)].item() ** 4 for c in range(x.shape[1])) / x.shape[1]
                 for pos in positions(x.shape[2:])]
            maps.append(ref_normalise(a))
        total += sum((u - v) ** 2 for u, v in zip(*maps))
    return total / s.shape[0]


def ref_region(s, t, weights):
    """weights: dict b -> dict pos -> foreground weight in [0, 1] at the feature size."""
    def cos(x, b):
        w = weights[b]
        fg = [0.0] * x.shape[1]
        bg = [0.0] * x.shape[1]
        wf = sum(w.values())
        wb = sum(1.0 - v for v in w.values())
        for pos, v in w.items():
            for c in range(x.shape[1]):
                f = x[(b, c, *pos)].item()
                fg[c] += f * v
                bg[c] += f * (1.0 - v)
        fg = [a / max(wf, 1e-6) for a in fg]
        bg = [a / max(wb, 1e-6) for a in bg]
        nf, nb = math.sqrt(sum(a * a for a in fg)), math.sqrt(sum(a * a for a in bg))
        return sum(a * c for a, c in zip(fg, bg)) / max(nf * nb, 1e-8)

    return sum((cos(s, b) - cos(t, b)) ** 2 for b in range(s.shape[0])) / s.shape[0]


# --------------------------------------------------------------------------------------------------------------
# hand-worked cases
# --------------------------------------------------------------------------------------------------------------

KL_34_12 = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)  # KL([.75,.25] || [.5,.5]) = 0.130812
KL_12_34 = 0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(0.5 / 0.25)  # KL([.5,.5] || [.75,.25]) = 0.143841


def test_hand_logits_kl():
    s = torch.zeros(1, 2, 1, 2)
    t = torch.tensor([[LN3, 0.0], [0.0, 0.0]]).view(1, 2, 1, 2)  # pixel 0: p_t=[.75,.25]; pixel 1: equal
    assert close(KF.logits_kl(s, t).item(), KL_34_12 / 2)  # per-pixel mean over 2 pixels
    assert close(KF.logits_kl(s, t, reverse=True).item(), (0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(2)) / 2)
    # T = 2 on t = [2 ln3, 0]: t / T gives p_t = [.75, .25] again, times T^2 = 4
    t2 = torch.tensor([2 * LN3, 0.0]).view(1, 2, 1, 1)
    assert close(KF.logits_kl(torch.zeros(1, 2, 1, 1), t2, temperature=2.0).item(), 4 * KL_34_12)
    # binary: one channel, p = [1 - sig, sig]; sig(ln3) = .75
    tb = torch.full((1, 1, 1, 1), LN3)
    assert close(KF.logits_kl(torch.zeros(1, 1, 1, 1), tb).item(), KL_34_12)
    # 3D, value does not grow with the volume size
    s3, t3 = torch.zeros(1, 2, 2, 3, 4), torch.zeros(1, 2, 2, 3, 4)
    t3[:, 0] = LN3
    assert close(KF.logits_kl(s3, t3).item(), KL_34_12)


def test_hand_affinity():
    # pixel 0: q=[.5,.5], pixel 1: q=[.75,.25]; a 1x2 image has exactly two ordered pairs (8-neighbourhood)
    s = torch.tensor([[0.0, LN3], [0.0, 0.0]]).view(1, 2, 1, 2)
    same = torch.tensor([[[0, 0]]])
    diff = torch.tensor([[[0, 1]]])
    assert close(KF.affinity_loss(s, same).item(), (KL_12_34 + KL_34_12) / 2)  # L_diff empty -> 0
    assert close(KF.affinity_loss(s, diff).item(), 3.0 - (KL_12_34 + KL_34_12) / 2)  # L_same empty -> 0
    assert close(KF.affinity_loss(s, diff, margin=0.1).item(), 0.0)  # both W > 0.1: hinge inactive
    # dilation 2 on a width-2 image: no pairs at all -> 0
    assert KF.affinity_loss(s, same, dilation=2).item() == 0.0
    # label map with a channel axis is accepted
    assert close(KF.affinity_loss(s, same.unsqueeze(1)).item(), (KL_12_34 + KL_34_12) / 2)


def test_hand_affinity_stats_per_class():
    s = torch.tensor([[0.0, LN3], [0.0, 0.0]]).view(1, 2, 1, 2)
    st = KF.affinity_pair_stats(s, torch.tensor([[[0, 1]]]), margin=3.0, dilations=(1, 2))
    # pair (0 -> 1) has class 0 and W = KL_12_34; pair (1 -> 0) has class 1 and W = KL_34_12
    assert st.diff_count[:, 0].tolist() == [1.0, 1.0] and st.same_count.sum().item() == 0
    assert close(st.diff_sum[0, 0].item(), 3.0 - KL_12_34) and close(st.diff_sum[1, 0].item(), 3.0 - KL_34_12)
    assert st.diff_count[:, 1].sum().item() == 0  # dilation 2 has no pairs


def test_hand_kernel_matrix():
    s = torch.tensor([[1.0, 0.0], [1.0, 1.0]]).view(2, 1, 1, 2)
    t = torch.tensor([[1.0, 0.0], [0.0, 1.0]]).view(2, 1, 1, 2)
    # K_s off-diagonal 1/sqrt2, K_t = I: mean sq = 2 * 0.5 / 4, mean abs = 2 * 0.7071 / 4
    assert close(KF.kernel_matrix_loss(s, t).item(), 0.25 + math.sqrt(0.5) / 2)


def test_hand_info_nce():
    z = torch.eye(2)
    one = math.log(1.0 + math.exp(-1.0))
    assert close(KF.info_nce(z, z, temperature=1.0).item(), one)
    assert close(KF.info_nce(z, z, temperature=1.0, symmetric=True).item(), 2 * one)
    assert close(KF.info_nce(z, z, temperature=0.5).item(), math.log(1.0 + math.exp(-2.0)))


def test_hand_pixel_contrast():
    e = torch.eye(2).view(1, 2, 1, 2)  # pixel 0 -> e1, pixel 1 -> e2
    diff = torch.tensor([[[0, 1]]])
    same = torch.tensor([[[1, 1]]])
    assert close(KF.pixel_contrast(e, e, diff, temperature=1.0).item(), math.log(1.0 + math.exp(-1.0)))
    # both pixels positive: -(1/2)[(1 - lse) + (0 - lse)], lse = log(e + 1)
    assert close(KF.pixel_contrast(e, e, same, temperature=1.0).item(), math.log(math.e + 1.0) - 0.5)


def test_hand_feature_mse_bottleneck_kl():
    assert close(KF.feature_mse(torch.tensor([1.0, 2.0]).view(1, 1, 1, 2), torch.zeros(1, 1, 1, 2)).item(), 2.5)
    bt = torch.tensor([LN3, 0.0]).view(1, 2, 1, 1)
    assert close(KF.bottleneck_kl(torch.zeros(1, 2, 1, 1), bt).item(), KL_34_12)


def test_hand_kdnet():
    # p_s = p_t = [.25, .75] (T = 5 on t = [0, 5 ln3]); Dice part 0; BCE = mean(-ln .75, -ln .75)
    s = torch.tensor([0.0, LN3]).view(1, 2, 1, 1)
    t = torch.tensor([0.0, 5 * LN3]).view(1, 2, 1, 1)
    assert close(KF.kdnet_soft_label_loss(s, t, temperature=5.0).item(), -math.log(0.75))
    # binary version of the same case
    assert close(KF.kdnet_soft_label_loss(s[:, 1:], t[:, 1:], 5.0).item(), -math.log(0.75))
    # teacher says foreground strongly, student [.5,.5]: Dice on fg: x=.5, y=p, |x-y| -> 1 - (2*min)/(x+y)
    t2 = torch.tensor([0.0, 50.0]).view(1, 2, 1, 1)
    p = 1.0 / (1.0 + math.exp(-10.0))
    dice = 1.0 - (0.5 + p - abs(0.5 - p) + 1e-5) / (0.5 + p + 1e-5)
    assert close(KF.kdnet_soft_label_loss(torch.zeros(1, 2, 1, 1), t2).item(), dice + math.log(2.0))
    # tempered student at s = t: Dice part 0; BCE on softmax(t) = [1/244, 243/244] vs one-hot [0, 1]
    assert close(KF.kdnet_soft_label_loss(t, t, 5.0, temper_student=True).item(), -math.log(243 / 244))


def test_kdnet_as_written_prefers_the_softened_teacher_over_the_teacher():
    """Paper C's L_KD (student not tempered) is lower at s = t / T than at s = t: it pulls the student towards the
    teacher's softened map, whose margins are T times smaller (why weak students collapse to background); with the
    student tempered it is lower at s = t."""
    t = torch.full((1, 3, 8, 8), -4.0)
    t[:, 0] = 4.0  # background, confidently
    t[:, 1, 2:4, 2:4] = 8.0  # a small class-1 object
    t[:, 2, 5:7, 5:7] = 8.0  # a small class-2 object
    assert KF.kdnet_soft_label_loss(t / 5, t, 5.0) < KF.kdnet_soft_label_loss(t, t, 5.0)
    assert KF.kdnet_soft_label_loss(t, t, 5.0, temper_student=True) < KF.kdnet_soft_label_loss(
        t / 5, t, 5.0, temper_student=True)


def test_hand_attention_and_region():
    s = torch.tensor([1.0, 0.0]).view(1, 1, 1, 2)
    t = torch.tensor([0.0, 2.0]).view(1, 1, 1, 2)
    assert close(KF.attention_map_loss(s, t).item(), 2.0)
    fs = torch.tensor([[1.0, 0.0], [0.0, 1.0]]).view(1, 2, 1, 2)  # fg pixel [1,0], bg pixel [0,1]: cos 0
    ft = torch.tensor([[1.0, 1.0], [0.0, 1.0]]).view(1, 2, 1, 2)  # fg [1,0], bg [1,1]: cos 1/sqrt2
    mask = torch.tensor([[[[1, 0]]]])
    assert close(KF.region_affinity_loss(fs, ft, mask).item(), 0.5)


# --------------------------------------------------------------------------------------------------------------
# loop references, 2D and 3D, multi-class and binary
# --------------------------------------------------------------------------------------------------------------

CASES = [(nd, c) for nd in (2, 3) for c in (1, 3)]


def _gen(seed):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("nd,c", CASES)
@pytest.mark.parametrize("temperature,reverse", [(1.0, False), (4.0, False), (2.0, True)])
def test_ref_logits_kl(nd, c, temperature, reverse):
    g = _gen(nd * 10 + c)
    s = torch.randn(2, c, *SHAPES[nd], generator=g) * 2
    t = torch.randn(2, c, *SHAPES[nd], generator=g) * 2
    assert close(KF.logits_kl(s, t, temperature, reverse).item(), ref_logits_kl(s, t, temperature, reverse))


@pytest.mark.parametrize("nd,c", CASES)
@pytest.mark.parametrize("dilation,margin", [(1, 3.0), (2, 0.5)])
def test_ref_affinity(nd, c, dilation, margin):
    g = _gen(nd * 7 + c)
    s = torch.randn(2, c, *SHAPES[nd], generator=g) * 3
    t = torch.randn(2, c, *SHAPES[nd], generator=g)
    labels = KF.predicted_labels(t)
    got = KF.affinity_loss(s, labels, margin=margin, dilation=dilation).item()
    assert close(got, ref_affinity(s, labels, margin, dilation))


@pytest.mark.parametrize("nd", [2, 3])
def test_ref_affinity_stats(nd):
    g = _gen(5 + nd)
    s = torch.randn(2, 3, *SHAPES[nd], generator=g) * 3
    labels = torch.randint(0, 3, (2, *SHAPES[nd]), generator=g)
    st = KF.affinity_pair_stats(s, labels, margin=2.0, dilations=(1, 2))
    for di, d in enumerate((1, 2)):
        same, diff = ref_affinity_pairs(s, labels, 2.0, d)
        for c in range(3):
            assert st.same_count[c, di].item() == len([v for k, v in same if k == c])
            assert st.diff_count[c, di].item() == len([v for k, v in diff if k == c])
            assert close(st.same_sum[c, di].item(), sum(v for k, v in same if k == c))
            assert close(st.diff_sum[c, di].item(), sum(v for k, v in diff if k == c))


def test_affinity_neighbourhood_sizes():
    assert len(KF.neighbour_offsets(2)) == 8 and len(KF.neighbour_offsets(3)) == 26
    # pair counts: 2D 3x3 image with d=1 has 2*(2*3*2) + 2*(2*2*2) = 40 ordered pairs (4 axis + 4 diagonal dirs)
    st = KF.affinity_pair_stats(torch.zeros(1, 2, 3, 3), torch.zeros(1, 3, 3, dtype=torch.long))
    assert st.same_count.sum().item() == 40
    # 3D 2x2x2 volume: every voxel neighbours the 7 others
    st = KF.affinity_pair_stats(torch.zeros(1, 2, 2, 2, 2), torch.zeros(1, 2, 2, 2, dtype=torch.long))
    assert st.same_count.sum().item() == 8 * 7


@pytest.mark.parametrize("nd", [2, 3])
def test_ref_kernel_matrix(nd):
    g = _gen(nd)
    s = torch.randn(3, 4, *SHAPES[nd], generator=g)
    t = torch.randn(3, 6, *SHAPES[nd], generator=g)  # channels may differ: the Gram matrix is B x B
    assert close(KF.kernel_matrix_loss(s, t).item(), ref_kernel(s, t))


@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("tau", [0.4, 1.0])
def test_ref_info_nce(symmetric, tau):
    g = _gen(3)
    zs = torch.nn.functional.normalize(torch.randn(5, 8, generator=g), dim=1)
    zt = torch.nn.functional.normalize(torch.randn(5, 8, generator=g), dim=1)
    assert close(KF.info_nce(zs, zt, tau, symmetric).item(), ref_info_nce(zs, zt, tau, symmetric))


@pytest.mark.parametrize("nd", [2, 3])
@pytest.mark.parametrize("symmetric", [False, True])
def test_ref_pixel_contrast_all_pixels(nd, symmetric):
    g = _gen(11 + nd)
    es = torch.nn.functional.normalize(torch.randn(2, 4, *SHAPES[nd], generator=g), dim=1)
    et = torch.nn.functional.normalize(torch.randn(2, 4, *SHAPES[nd], generator=g), dim=1)
    lab = torch.randint(0, 3, (2, 1, *SHAPES[nd]), generator=g)
    n = lab.numel()
    got = KF.pixel_contrast(es, et, lab, 0.4, max_anchors=n, symmetric=symmetric).item()
    assert close(got, ref_pixel_contrast(es, et, lab, 0.4, list(range(n)), symmetric))


def test_ref_pixel_contrast_sampled():
    g = _gen(21)
    es = torch.nn.functional.normalize(torch.randn(2, 4, 6, 6, generator=g), dim=1)
    et = torch.nn.functional.normalize(torch.randn(2, 4, 6, 6, generator=g), dim=1)
    lab = torch.randint(0, 2, (2, 1, 6, 6), generator=g)
    idx = KF.sample_pixel_indices(lab.numel(), 16, _gen(99))
    assert idx.numel() == 16 and idx.unique().numel() == 16
    got = KF.pixel_contrast(es, et, lab, 0.4, max_anchors=16, generator=_gen(99)).item()
    assert close(got, ref_pixel_contrast(es, et, lab, 0.4, idx.tolist()))


@pytest.mark.parametrize("nd", [2, 3])
def test_ref_feature_mse_bottleneck_kl(nd):
    g = _gen(31 + nd)
    s = torch.randn(2, 3, *SHAPES[nd], generator=g)
    t = torch.randn(2, 3, *SHAPES[nd], generator=g)
    ref_mse = sum((a - b) ** 2 for a, b in zip(s.reshape(-1).tolist(), t.reshape(-1).tolist())) / s.numel()
    assert close(KF.feature_mse(s, t).item(), ref_mse)
    assert close(KF.bottleneck_kl(s, t).item(), ref_bottleneck_kl(s, t))


@pytest.mark.parametrize("nd,c", CASES)
@pytest.mark.parametrize("temperature", [1.0, 5.0])
@pytest.mark.parametrize("temper_student", [False, True])
def test_ref_kdnet(nd, c, temperature, temper_student):
    g = _gen(41 + nd + c)
    s = torch.randn(2, c, *SHAPES[nd], generator=g) * 2
    t = torch.randn(2, c, *SHAPES[nd], generator=g) * 3
    got = KF.kdnet_soft_label_loss(s, t, temperature, temper_student=temper_student).item()
    assert close(got, ref_kdnet(s, t, temperature, temper_student))


@pytest.mark.parametrize("nd", [2, 3])
def test_ref_attention_map(nd):
    g = _gen(51 + nd)
    s = torch.randn(2, 3, *SHAPES[nd], generator=g)
    t = torch.randn(2, 5, *SHAPES[nd], generator=g)
    assert close(KF.attention_map_loss(s, t).item(), ref_attention(s, t))


def test_attention_map_resizes_student():
    g = _gen(55)
    s = torch.randn(2, 3, 4, 4, generator=g)
    t = torch.randn(2, 5, 8, 8, generator=g)
    # the student map mean_c(x^4) is resized (bilinear) to the teacher size, then normalised
    up = torch.nn.functional.interpolate(s.pow(4).mean(1, keepdim=True), size=(8, 8), mode="bilinear")
    a_s = torch.nn.functional.normalize(up.flatten(1), dim=1)
    a_t = torch.nn.functional.normalize(t.pow(4).mean(1).flatten(1), dim=1)
    assert close(KF.attention_map_loss(s, t).item(), (a_s - a_t).pow(2).sum(1).mean().item())


@pytest.mark.parametrize("nd", [2, 3])
def test_ref_region_affinity_same_size(nd):
    g = _gen(61 + nd)
    s = torch.randn(2, 3, *SHAPES[nd], generator=g)
    t = torch.randn(2, 4, *SHAPES[nd], generator=g)
    mask = torch.randint(0, 3, (2, 1, *SHAPES[nd]), generator=g)  # labels 1 and 2 are both foreground
    weights = {b: {pos: float(mask[(b, 0, *pos)].item() > 0) for pos in positions(SHAPES[nd])} for b in range(2)}
    assert close(KF.region_affinity_loss(s, t, mask).item(), ref_region(s, t, weights))


def test_ref_region_affinity_downsampled_mask():
    g = _gen(71)
    s = torch.randn(2, 3, 2, 2, generator=g)
    t = torch.randn(2, 4, 2, 2, generator=g)
    mask = torch.randint(0, 2, (2, 1, 4, 4), generator=g)
    # area interpolation: each feature cell's weight is the foreground fraction of its 2x2 block
    weights = {
        b: {(i, j): sum(float(mask[b, 0, 2 * i + u, 2 * j + v] > 0) for u in (0, 1) for v in (0, 1)) / 4
            for i in range(2) for j in range(2)}
        for b in range(2)
    }
    assert close(KF.region_affinity_loss(s, t, mask).item(), ref_region(s, t, weights))
