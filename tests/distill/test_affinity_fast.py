"""The vectorised affinity statistics (issue 11, item 4) against the previous per-offset code, kept here as reference.

The reference below is medkd's affinity code before the rewrite (git e1a57ba): one Python pass per neighbour offset,
sums and counts binned with ``index_add``. ``benchmarks/affinity/run.py --before`` also times a training step with
it. The loop-over-pixels golden references of the formulas stay in ``test_distill_golden.py``.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable
from torch.profiler import ProfilerActivity, profile

from medkd.distill import functional as KF

# ----------------------------------------------------------------------------------------------------------------
# the previous implementation (reference)
# ----------------------------------------------------------------------------------------------------------------


def _shift_slices(offset, dilation, spatial):
    """Slices selecting pixel i (``src``) and its neighbour j = i + dilation * offset (``dst``), inside the image."""
    src, dst = [slice(None), slice(None)], [slice(None), slice(None)]
    for o, n in zip(offset, spatial):
        k = o * dilation
        if abs(k) >= n:
            return None
        if k >= 0:
            src.append(slice(0, n - k))
            dst.append(slice(k, n))
        else:
            src.append(slice(-k, n))
            dst.append(slice(0, n + k))
    return tuple(src), tuple(dst)


class _PerOffsetKL(torch.autograd.Function):
    """``W_o = q_logq[i] - sum_c q[i] * logq[i + o]``, one output per offset (the previous ``_NeighbourKL``)."""

    @staticmethod
    def forward(ctx, q, logq, q_logq, pairs):
        ctx.save_for_backward(q, logq)
        ctx.pairs = pairs
        return tuple(q_logq[(s[0], *s[2:])] - (q[s] * logq[d]).sum(dim=1) for s, d in pairs)

    @staticmethod
    @once_differentiable
    def backward(ctx, *grads):
        q, logq = ctx.saved_tensors
        g_q, g_logq = torch.zeros_like(q), torch.zeros_like(logq)
        g_qlogq = q.new_zeros((q.shape[0], *q.shape[2:]))
        for (s, d), g in zip(ctx.pairs, grads):
            if g is None:
                continue
            g_qlogq[(s[0], *s[2:])].add_(g)
            g1 = g.unsqueeze(1)
            g_q[s].addcmul_(g1, logq[d], value=-1.0)
            g_logq[d].addcmul_(g1, q[s], value=-1.0)
        return g_q, g_logq, g_qlogq, None


def per_offset_pair_stats(student_logits: Tensor, teacher_labels: Tensor, margin: float = 3.0,
                          dilations=(1,), num_classes: int | None = None,
                          check_labels: bool = True) -> KF.AffinityStats:
    """The previous :func:`~medkd.distill.functional.affinity_pair_stats`, which always checked the label range
    (``check_labels`` is accepted for the benchmark's module calls and ignored)."""
    spatial = tuple(student_logits.shape[2:])
    labels = teacher_labels.detach()
    if labels.dim() == len(spatial) + 2:
        labels = labels[:, 0]
    q = KF.class_probs(student_logits)
    logq = q.clamp_min(KF.AFFINITY_EPS).log()
    q_logq = (q * logq).sum(dim=1)
    k = num_classes if num_classes is not None else q.shape[1]
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= k):
        raise KF.ConfigError(f"affinity: teacher labels must lie in [0, {k - 1}]")
    labels = labels.int()
    sums, counts = [], []
    one = torch.ones(1, device=q.device, dtype=torch.float64)
    for d in dilations:
        acc = q.new_zeros(2 * k)
        cnt = torch.zeros(2 * k, device=q.device, dtype=torch.float64)
        pairs = [sl for off in KF.neighbour_offsets(len(spatial)) if (sl := _shift_slices(off, int(d), spatial))]
        ws = _PerOffsetKL.apply(q, logq, q_logq, pairs) if pairs else ()
        ws = (ws,) if isinstance(ws, Tensor) else ws
        for (src, dst), w in zip(pairs, ws):
            li = labels[(src[0], *src[2:])]
            same = li == labels[(dst[0], *dst[2:])]
            value = torch.where(same, w, F.relu(margin - w))
            bins = torch.where(same, li, li + k).reshape(-1)
            acc = acc.index_add(0, bins, value.reshape(-1))
            cnt = cnt.index_add(0, bins, one.expand(bins.numel()))
        sums.append(acc)
        counts.append(cnt.to(q.dtype))
    total, count = torch.stack(sums, dim=1), torch.stack(counts, dim=1)
    return KF.AffinityStats(total[:k], count[:k], total[k:], count[k:])


def argmax_labels(logits: Tensor) -> Tensor:
    """The previous :func:`~medkd.distill.functional.predicted_labels`."""
    if logits.shape[1] == 1:
        return (logits[:, 0] > 0).long()
    return logits.argmax(dim=1)


# ----------------------------------------------------------------------------------------------------------------
# tests
# ----------------------------------------------------------------------------------------------------------------

WEIGHTS = torch.tensor([1.0, -0.5, 2.0])  # an arbitrary mix of the dilations, so every statistic gets a gradient


def _stats_and_grad(fn, s: Tensor, labels: Tensor, margin: float, dilations, k: int):
    s = s.detach().clone().requires_grad_(True)
    st = fn(s, labels, margin, dilations, k)
    w = WEIGHTS[: len(dilations)]
    (st.per_class_dilation() * w).sum().backward()
    return st, s.grad


@pytest.mark.parametrize("shape,c", [((2, 4, 9, 7), 4), ((3, 1, 6, 5), 1), ((2, 3, 4, 5, 3), 3), ((1, 2, 2, 9), 2)])
def test_matches_the_per_offset_reference(shape, c):
    g = torch.Generator().manual_seed(sum(shape) + c)
    s = torch.randn(*shape[:1], c, *shape[2:], generator=g) * 3
    k = max(c, 2)
    labels = torch.randint(0, k, (shape[0], *shape[2:]), generator=g)
    dilations = (1, 2, 3)  # 3 reaches past the short axes: those neighbours are outside, not pairs
    new, g_new = _stats_and_grad(KF.affinity_pair_stats, s, labels, 2.5, dilations, k)
    ref, g_ref = _stats_and_grad(per_offset_pair_stats, s, labels, 2.5, dilations, k)
    assert torch.equal(new.same_count, ref.same_count) and torch.equal(new.diff_count, ref.diff_count)
    assert new.same_count.sum() + new.diff_count.sum() > 0
    torch.testing.assert_close(new.same_sum, ref.same_sum, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(new.diff_sum, ref.diff_sum, rtol=1e-5, atol=1e-4)
    assert g_new.abs().sum() > 0
    torch.testing.assert_close(g_new, g_ref, rtol=1e-4, atol=1e-7)


def test_neighbour_kl_backward_matches_autograd():
    g = torch.Generator().manual_seed(7)
    q = torch.softmax(torch.randn(2, 3, 6, 5, generator=g), dim=1).requires_grad_(True)
    logq = q.detach().clamp_min(KF.AFFINITY_EPS).log().requires_grad_(True)
    q_logq = (q.detach() * logq.detach()).sum(dim=1).requires_grad_(True)
    offsets = KF.neighbour_offsets(2)
    upstream = torch.randn(2, len(offsets), 6, 5, generator=g)
    fast = KF._NeighbourKL.apply(q, logq, q_logq, 2, offsets)
    grads_fast = torch.autograd.grad((fast * upstream).sum(), (q, logq, q_logq))
    plain = q_logq.unsqueeze(1) - (q.unsqueeze(2) * KF._neighbours(logq, 2, offsets, 0.0)).sum(dim=1)
    grads_plain = torch.autograd.grad((plain * upstream).sum(), (q, logq, q_logq))
    torch.testing.assert_close(fast, plain)
    for a, b in zip(grads_fast, grads_plain):
        torch.testing.assert_close(a, b)
    # the value at an out-of-image neighbour is q_logq[i] (the pair is masked by the caller)
    corner = offsets.index((-1, -1))
    torch.testing.assert_close(fast[:, corner, 0, 0], q_logq[:, 0, 0])


def test_affinity_loss_and_module_keep_their_values():
    g = torch.Generator().manual_seed(11)
    s, t = torch.randn(2, 4, 12, 10, generator=g) * 2, torch.randn(2, 4, 12, 10, generator=g)
    labels = KF.predicted_labels(t)
    for d in (1, 2):
        ref = per_offset_pair_stats(s, labels, 3.0, (d,), 4)
        expected = (KF._safe_mean(ref.same_sum.sum(), ref.same_count.sum())
                    + KF._safe_mean(ref.diff_sum.sum(), ref.diff_count.sum()))
        assert KF.affinity_loss(s, labels, 3.0, d).item() == pytest.approx(expected.item(), rel=1e-6)


def test_predicted_labels_is_argmax_with_ties_and_binary():
    x = torch.tensor([[1.0, 3.0, 3.0, -2.0], [2.0, 3.0, 1.0, -2.0], [2.0, 0.0, 4.0, -2.0]]).view(1, 3, 4)
    assert KF.predicted_labels(x).tolist() == [[1, 0, 2, 0]]  # ties: the first maximal class, as argmax
    g = torch.Generator().manual_seed(3)
    y = torch.randint(-2, 3, (4, 5, 7, 6), generator=g).float()  # many ties
    assert torch.equal(KF.predicted_labels(y), argmax_labels(y))
    z = torch.tensor([[[-1.0, 0.0, 2.0]]])
    assert KF.predicted_labels(z).tolist() == [[0, 0, 1]]


def test_out_of_image_dilation_gives_no_pairs_and_a_finite_zero_gradient():
    s = torch.randn(1, 3, 2, 2, requires_grad=True)
    st = KF.affinity_pair_stats(s, torch.zeros(1, 2, 2, dtype=torch.long), dilations=(2, 5), num_classes=3)
    assert st.same_count.sum().item() == 0 and st.diff_count.sum().item() == 0
    assert st.per_class_dilation().abs().sum().item() == 0
    st.per_class_dilation().sum().backward()
    assert torch.equal(s.grad, torch.zeros_like(s))


def test_label_range_error_names_the_range():
    with pytest.raises(KF.ConfigError, match=r"\[0, 2\], got \[0, 3\]"):
        KF.affinity_pair_stats(torch.zeros(1, 3, 2, 2), torch.tensor([[[0, 1], [2, 3]]]))


def test_unchecked_labels_out_of_range_count_nowhere():
    g = torch.Generator().manual_seed(5)
    s = torch.randn(1, 3, 4, 4, generator=g)
    labels = torch.randint(0, 3, (1, 4, 4), generator=g)
    bad = labels.clone()
    bad[0, 0, 0] = 7
    st = KF.affinity_pair_stats(s, bad, dilations=(1,), num_classes=3, check_labels=False)
    full = KF.affinity_pair_stats(s, labels, dilations=(1,), num_classes=3)
    # pixel (0, 0) has 3 in-image neighbours: its own 3 pairs are gone, its neighbours' pairs with it turn different
    total = st.same_count.sum() + st.diff_count.sum()
    assert total.item() == full.same_count.sum().item() + full.diff_count.sum().item() - 3


def _op_count(fn, size: int) -> int:
    g = torch.Generator().manual_seed(0)
    s = torch.randn(2, 4, size, size, generator=g, requires_grad=True)
    labels = torch.randint(0, 4, (2, size, size), generator=g)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn(s, labels, 3.0, (1, 2, 3), 4).per_class_dilation().sum().backward()
    return sum(e.count for e in prof.key_averages() if e.key.startswith("aten::"))


def test_operation_count_is_fixed_and_well_below_the_reference():
    """On a GPU the step time of this term is its operator count (dispatches and kernel launches)."""
    small, large = _op_count(KF.affinity_pair_stats, 8), _op_count(KF.affinity_pair_stats, 24)
    assert small == large  # independent of the image size
    assert small < 0.6 * _op_count(per_offset_pair_stats, 24)


def _autograd_affinity(s, labels, margin, dilation):
    """Plain-autograd (sliced views) affinity loss, to check the hand-written backward of the fast path."""
    q = KF.class_probs(s)
    logq = q.clamp_min(1e-4).log()
    same_sum = diff_sum = 0.0
    same_n = diff_n = 0
    for off in KF.neighbour_offsets(s.dim() - 2):
        sl = _shift_slices(off, dilation, tuple(s.shape[2:]))
        if sl is None:
            continue
        src, dst = sl
        w = (q[src] * (logq[src] - logq[dst])).sum(1)
        same = labels[(src[0], *src[2:])] == labels[(dst[0], *dst[2:])]
        same_sum = same_sum + w[same].sum()
        diff_sum = diff_sum + F.relu(margin - w[~same]).sum()
        same_n += int(same.sum())
        diff_n += int((~same).sum())
    return same_sum / max(same_n, 1) + diff_sum / max(diff_n, 1)


@pytest.mark.parametrize("nd,c", [(2, 3), (3, 2), (2, 1)])
def test_affinity_gradient_matches_plain_autograd(nd, c):
    shape = {2: (6, 6), 3: (4, 4, 4)}[nd]
    s = (torch.randn(2, c, *shape, generator=torch.Generator().manual_seed(20)) * 2.0).requires_grad_(True)
    labels = torch.randint(0, max(c, 2), (2, *shape), generator=torch.Generator().manual_seed(21))
    for dilation, margin in [(1, 3.0), (2, 0.3)]:
        (g_fast,) = torch.autograd.grad(KF.affinity_loss(s, labels, margin, dilation), s)
        (g_ref,) = torch.autograd.grad(_autograd_affinity(s, labels, margin, dilation), s)
        assert torch.allclose(g_fast, g_ref, rtol=1e-4, atol=1e-7)
        assert g_fast.abs().sum() > 0
