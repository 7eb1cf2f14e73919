"""Pure distillation-loss maths, one function per formula of ``METHODS.md`` ("Distillation losses").

Conventions (``METHODS.md``, notation):

- Tensors are channel-first, ``(B, C, *spatial)`` with one, two or three spatial axes (2D and 3D are tested).
- ``p = softmax(logits / T, dim=1)``. With ONE output channel the task is binary and the distribution is
  ``[1 - sigmoid(x / T), sigmoid(x / T)]`` (never a softmax over one channel, which is constant).
- "Per-pixel mean": sum over the class axis, then mean over the batch and every spatial position, so a value does
  not grow with the image size.
- Every raw *teacher* tensor is detached inside the function: no gradient ever reaches the teacher. The only
  exceptions are :func:`info_nce` and :func:`pixel_contrast`, whose teacher inputs are embeddings produced by a
  trainable teacher-side projection head (the caller detaches the teacher features before that head).
- All maths runs in float32 (inputs are cast), so the losses are safe under mixed precision.

Example:
    >>> import torch
    >>> from medkd.distill import functional as KF
    >>> s, t = torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8)
    >>> KF.logits_kl(s, t, temperature=4.0).shape
    torch.Size([])
"""

from __future__ import annotations

import itertools
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from medkd.errors import ConfigError

__all__ = [
    "AffinityStats",
    "affinity_loss",
    "affinity_pair_stats",
    "attention_map_loss",
    "bottleneck_kl",
    "class_log_probs",
    "class_probs",
    "cwd_loss",
    "dist_loss",
    "feature_mse",
    "info_nce",
    "kdnet_soft_label_loss",
    "kernel_matrix_loss",
    "logits_kl",
    "neighbour_offsets",
    "pixel_contrast",
    "predicted_labels",
    "region_affinity_loss",
    "resize_to",
    "sample_pixel_indices",
]

AFFINITY_EPS = 1e-4  # METHODS.md item 2: probabilities clamped to >= 1e-4 before the log


# ----------------------------------------------------------------------------------------------------------------
# shared helpers
# ----------------------------------------------------------------------------------------------------------------


def _check_spatial(x: Tensor, name: str) -> None:
    if x.dim() < 3:
        raise ConfigError(f"{name}: expected a (B, C, *spatial) tensor, got shape {tuple(x.shape)}")


def _check_same_shape(a: Tensor, b: Tensor, what: str) -> None:
    if a.shape != b.shape:
        raise ConfigError(
            f"{what}: student and teacher shapes differ ({tuple(a.shape)} vs {tuple(b.shape)}); "
            "use an adapter or matching taps"
        )


def class_log_probs(logits: Tensor, temperature: float = 1.0) -> Tensor:
    """Log class probabilities ``log p`` of ``p = softmax(logits / T)`` along dim 1.

    One channel means a binary task: the result has two channels, ``[log(1 - sigmoid(x/T)), log sigmoid(x/T)]``
    (computed with ``logsigmoid`` for stability).

    Args:
        logits: ``(B, C, *spatial)``.
        temperature: softmax temperature ``T > 0``.

    Returns:
        ``(B, max(C, 2), *spatial)`` float32 log-probabilities.
    """
    x = logits.float() / temperature
    if x.shape[1] == 1:
        return torch.cat([F.logsigmoid(-x), F.logsigmoid(x)], dim=1)
    return F.log_softmax(x, dim=1)


def class_probs(logits: Tensor, temperature: float = 1.0) -> Tensor:
    """Class probabilities (see :func:`class_log_probs`; binary for one channel)."""
    x = logits.float() / temperature
    if x.shape[1] == 1:
        p = torch.sigmoid(x)
        return torch.cat([1.0 - p, p], dim=1)
    return F.softmax(x, dim=1)


def predicted_labels(logits: Tensor) -> Tensor:
    """Hard label map ``argmax(logits)`` as ``(B, *spatial)`` int64; one channel means ``logits > 0``.

    ``max(dim=1).indices`` gives argmax's values (the first maximal class on ties) and is several times faster on
    CPU, where ``argmax`` over the channel axis of a channel-first map is slow.
    """
    if logits.shape[1] == 1:
        return (logits[:, 0] > 0).long()
    return logits.max(dim=1).indices


def resize_to(x: Tensor, size: tuple[int, ...] | torch.Size) -> Tensor:
    """Resize a ``(B, C, *spatial)`` tensor to ``size`` (bilinear in 2D, trilinear in 3D, linear in 1D).

    Returns ``x`` unchanged when it already has that spatial size.
    """
    size = tuple(int(s) for s in size)
    if tuple(x.shape[2:]) == size:
        return x
    mode = {1: "linear", 2: "bilinear", 3: "trilinear"}.get(len(size))
    if mode is None:
        raise ConfigError(f"resize: only 1, 2 or 3 spatial axes are supported, got {len(size)}")
    return F.interpolate(x, size=size, mode=mode, align_corners=False)


def _labels_bhw(labels: Tensor, spatial: tuple[int, ...], name: str) -> Tensor:
    """Bring a label map given as (B, *spatial) or (B, 1, *spatial) to (B, *spatial) int64."""
    if labels.dim() == len(spatial) + 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if tuple(labels.shape[1:]) != tuple(spatial):
        raise ConfigError(f"{name}: label map shape {tuple(labels.shape)} does not match spatial size {spatial}")
    return labels.long()


# ----------------------------------------------------------------------------------------------------------------
# 1. logits KL (paper A "LM", thesis "PMD", Hinton)
# ----------------------------------------------------------------------------------------------------------------


def logits_kl(
    student_logits: Tensor, teacher_logits: Tensor, temperature: float = 1.0, reverse: bool = False
) -> Tensor:
    """Logits / prediction-map distillation (METHODS.md item 1; Hinton et al. 2015, paper A "LM", thesis B "PMD").

    ``L = T^2 * per-pixel-mean KL(p_t || p_s)`` with ``p = softmax(logits / T)`` (binary two-class distribution
    for one channel). The KL is summed over classes, then averaged over batch and all spatial positions.

    Args:
        student_logits: ``(B, C, *spatial)``.
        teacher_logits: same shape (detached inside).
        temperature: ``T``; 1 for paper A's LM, 4 for thesis B's PMD.
        reverse: compute ``KL(p_s || p_t)`` instead, the order paper A's eq. 7 literally writes.

    Returns:
        Scalar loss.
    """
    _check_spatial(student_logits, "logits_kl")
    _check_same_shape(student_logits, teacher_logits, "logits_kl")
    log_ps = class_log_probs(student_logits, temperature)
    log_pt = class_log_probs(teacher_logits.detach(), temperature)
    if reverse:
        kl = (log_ps.exp() * (log_ps - log_pt)).sum(dim=1)
    else:
        kl = (log_pt.exp() * (log_pt - log_ps)).sum(dim=1)
    return kl.mean() * temperature**2


# ----------------------------------------------------------------------------------------------------------------
# 2. adaptive affinity (paper A "AAM"; Ke et al., ECCV 2018)
# ----------------------------------------------------------------------------------------------------------------


def neighbour_offsets(ndim: int) -> list[tuple[int, ...]]:
    """All unit offsets of the full neighbourhood: 8 in 2D, 26 in 3D (``{-1, 0, 1}^n`` without the origin)."""
    return [o for o in itertools.product((-1, 0, 1), repeat=ndim) if any(o)]


def _window(offset: tuple[int, ...], dilation: int, spatial: tuple[int, ...]) -> tuple[slice, ...]:
    """Slices of a map padded by ``dilation`` on every spatial side that hold, at each pixel ``i``, the value at
    ``i + dilation * offset`` (the padding where that neighbour lies outside the image)."""
    return (slice(None), slice(None),
            *(slice(dilation * (1 + o), dilation * (1 + o) + n) for o, n in zip(offset, spatial)))


def _neighbours(x: Tensor, dilation: int, offsets: list[tuple[int, ...]], fill: float) -> Tensor:
    """``(B, C, *spatial) -> (B, C, O, *spatial)``: ``x`` at ``i + dilation * o`` for each offset ``o``, ``fill``
    where that neighbour lies outside the image (one pad and one stack, whatever the number of offsets)."""
    spatial = tuple(x.shape[2:])
    padded = F.pad(x, [dilation] * (2 * len(spatial)), value=fill)
    return torch.stack([padded[_window(o, dilation, spatial)] for o in offsets], dim=2)


class _NeighbourKL(torch.autograd.Function):
    """``W[:, o] = q_logq[i] - sum_c q[i] * logq[i + d * o]`` for every pixel ``i`` and offset ``o``: shape
    ``(B, O, *spatial)``; where the neighbour lies outside the image the value is ``q_logq[i]`` (callers mask it).

    One product per offset, with windows of one zero-padded copy of ``logq`` (on CPU about twice as fast as one
    product with a ``(B, C, O, *spatial)`` stack). Only ``q`` and ``logq`` are saved; backward accumulates every
    offset's gradient in place into one padded buffer per input, instead of autograd's zero-filled full-size
    buffer per sliced view.
    """

    @staticmethod
    def forward(ctx, q: Tensor, logq: Tensor, q_logq: Tensor, dilation: int,  # noqa: D102
                offsets: list[tuple[int, ...]]) -> Tensor:
        ctx.save_for_backward(q, logq)
        ctx.dilation, ctx.offsets = dilation, offsets
        spatial = tuple(q.shape[2:])
        logq_pad = F.pad(logq, [dilation] * (2 * len(spatial)))
        cross = [(q * logq_pad[_window(o, dilation, spatial)]).sum(dim=1) for o in offsets]
        return q_logq.unsqueeze(1) - torch.stack(cross, dim=1)

    @staticmethod
    @once_differentiable
    def backward(ctx, g: Tensor):  # noqa: D102
        q, logq = ctx.saved_tensors
        d, offsets, spatial = ctx.dilation, ctx.offsets, tuple(q.shape[2:])
        pad = [d] * (2 * len(spatial))
        logq_pad = F.pad(logq, pad)
        g_q = torch.zeros_like(q)
        g_logq_pad = torch.zeros_like(logq_pad)
        for k, o in enumerate(offsets):
            win = _window(o, d, spatial)
            gk = g[:, k].unsqueeze(1)
            g_q.addcmul_(gk, logq_pad[win], value=-1.0)
            g_logq_pad[win].addcmul_(gk, q, value=-1.0)
        inner = (slice(None), slice(None), *(slice(d, d + n) for n in spatial))
        return g_q, g_logq_pad[inner], g.sum(dim=1), None, None


class AffinityStats(NamedTuple):
    """Per-class, per-dilation pieces of the affinity loss; every field has shape ``(num_classes, n_dilations)``.

    Class ``c`` collects the pairs whose pixel ``i`` has teacher class ``c``. ``*_sum`` are differentiable sums over
    the pairs (of ``W_ij`` for same pairs, of ``max(0, m - W_ij)`` for different pairs); ``*_count`` are pair counts.
    """

    same_sum: Tensor
    same_count: Tensor
    diff_sum: Tensor
    diff_count: Tensor

    def per_class_dilation(self) -> Tensor:
        """``L_same,cd + L_diff,cd`` per class ``c`` and dilation ``d``, shape ``(num_classes, n_dilations)``;
        an empty pair set contributes 0."""
        return _safe_mean(self.same_sum, self.same_count) + _safe_mean(self.diff_sum, self.diff_count)

    def present(self) -> Tensor:
        """Boolean ``(num_classes,)``: the class has at least one pair at some dilation."""
        return (self.same_count + self.diff_count).sum(dim=1) > 0


def affinity_pair_stats(
    student_logits: Tensor,
    teacher_labels: Tensor,
    margin: float = 3.0,
    dilations: tuple[int, ...] | list[int] = (1,),
    num_classes: int | None = None,
    check_labels: bool = True,
) -> AffinityStats:
    """Sums and counts of the affinity pair terms, split by the teacher class of pixel ``i`` and by dilation.

    The building block of :func:`affinity_loss` and of the adaptive module (METHODS.md item 2). Pairs are every
    pixel ``i`` and each neighbour ``j = i + d * o`` for the unit offsets ``o`` of :func:`neighbour_offsets`
    (8-neighbourhood in 2D, 26-neighbourhood in 3D), kept only when ``j`` lies inside the image (no padding). Both
    orders ``(i, j)`` and ``(j, i)`` are pairs, since ``W`` is asymmetric. ``W_ij = KL(q_i || q_j) =
    sum_c q_ic (log q_ic - log q_jc)`` with ``q = softmax(s)`` (binary for one channel) and both probabilities
    clamped to ``>= 1e-4`` inside the logs only.

    Cost: a fixed number of tensor operations per dilation, whatever the image size: the pair masks of all offsets
    come from one padded stack of the label map, each pixel's sums and counts over its neighbours are reduced in
    one pass, and the pooling by class is one float64 matrix product (exact counts). Forward + backward with
    dilations 1-3 in 2D is about 1,250 ATen operations (the previous per-offset binning with ``index_add``: 2,330),
    which is what sets the time of this term on a GPU.

    Args:
        student_logits: ``(B, C, *spatial)``.
        teacher_labels: teacher label map ``argmax(t)``, ``(B, *spatial)`` or ``(B, 1, *spatial)`` integers.
        margin: ``m`` of the different-pair hinge.
        dilations: neighbour distances ``d``.
        num_classes: number of classes (default: ``C``, or 2 for one channel).
        check_labels: raise ``ConfigError`` for labels outside ``[0, num_classes - 1]``. The check costs a device
            sync; ``False`` skips it for labels that cannot be out of range (``predicted_labels`` of logits with
            ``num_classes`` channels); an out-of-range label then has no class and its pairs count nowhere.

    Returns:
        :class:`AffinityStats`.
    """
    _check_spatial(student_logits, "affinity")
    spatial = tuple(student_logits.shape[2:])
    labels = _labels_bhw(teacher_labels.detach(), spatial, "affinity")
    q = class_probs(student_logits)  # (B, K, *spatial)
    logq = q.clamp_min(AFFINITY_EPS).log()
    q_logq = (q * logq).sum(dim=1)  # (B, *spatial)
    k = num_classes if num_classes is not None else q.shape[1]
    if check_labels:
        _check_label_range(labels, k)
    per_pixel = _pixel_pair_terms(q, logq, q_logq, labels, margin, [int(d) for d in dilations])  # (B, 4D, P)
    onehot = labels.flatten(1).unsqueeze(1) == torch.arange(k, device=labels.device).view(1, k, 1)  # (B, K, P)
    # float64 pooling: exact pair counts, and no TF32 rounding of the sums on GPUs that allow it for float32
    table = torch.bmm(per_pixel.double(), onehot.double().transpose(1, 2)).sum(dim=0).to(q.dtype)  # (4D, K)
    same_sum, diff_sum, same_cnt, diff_cnt = table.t().reshape(k, 4, -1).unbind(dim=1)
    return AffinityStats(same_sum, same_cnt, diff_sum, diff_cnt)


def _check_label_range(labels: Tensor, k: int) -> None:
    """Teacher labels must lie in ``[0, k - 1]`` (one device sync)."""
    if not labels.numel():
        return
    lo, hi = torch.stack(torch.aminmax(labels)).tolist()
    if lo < 0 or hi >= k:
        raise ConfigError(f"affinity: teacher labels must lie in [0, {k - 1}], got [{lo}, {hi}]")


def _pixel_pair_terms(q: Tensor, logq: Tensor, q_logq: Tensor, labels: Tensor, margin: float,
                      dilations: list[int]) -> Tensor:
    """Per pixel ``i`` and dilation, over its in-image neighbours ``j``: the sum of ``W_ij`` over same pairs, the
    sum of ``max(0, m - W_ij)`` over different pairs, and the two pair counts; ``(B, 4 * D, P)`` in that order
    (all same sums, then all different sums, then the counts), ``P`` the number of pixels."""
    offsets = neighbour_offsets(labels.dim() - 1)
    lab = labels.unsqueeze(1)  # (B, 1, *spatial)
    same_sum, diff_sum, same_n, diff_n = [], [], [], []
    for d in dilations:
        w = _NeighbourKL.apply(q, logq, q_logq, d, offsets)  # (B, O, *spatial)
        nb = _neighbours(lab, d, offsets, -1)[:, 0]  # neighbour labels, -1 outside the image
        same = nb == lab
        diff = ((nb >= 0) ^ same).to(q.dtype)  # in the image and not same (a same neighbour is in the image)
        same = same.to(q.dtype)  # float 0 / 1 factors: faster than where() or bool masks on CPU
        same_sum.append((w * same).sum(dim=1))
        diff_sum.append((F.relu(margin - w) * diff).sum(dim=1))
        same_n.append(same.sum(dim=1))
        diff_n.append(diff.sum(dim=1))
    return torch.stack(same_sum + diff_sum + same_n + diff_n, dim=1).flatten(2)


def _safe_mean(total: Tensor, count: Tensor) -> Tensor:
    """``total / count`` where ``count > 0``, else 0 (an empty pair set contributes nothing)."""
    return torch.where(count > 0, total / count.clamp_min(1.0), torch.zeros_like(total))


def affinity_loss(
    student_logits: Tensor, teacher_labels: Tensor, margin: float = 3.0, dilation: int = 1
) -> Tensor:
    """Affinity-field loss ``L_AA = L_same + L_diff`` (METHODS.md item 2; paper A "AAM", after Ke et al. ECCV 2018).

    ``L_same = mean over same-label pairs of W_ij``, ``L_diff = mean over different-label pairs of
    max(0, m - W_ij)``, means pooled over the whole batch and all offsets; a term with an empty pair set is 0.
    Pairs: 8 neighbours at distance ``dilation`` in 2D, the 26-neighbourhood in 3D; out-of-image neighbours are
    not pairs. See :func:`affinity_pair_stats` for ``W_ij``.

    Args:
        student_logits: ``(B, C, *spatial)``.
        teacher_labels: ``argmax`` of the teacher logits, ``(B, *spatial)`` or ``(B, 1, *spatial)``
            (see :func:`predicted_labels`).
        margin: ``m`` (default 3.0).
        dilation: neighbour distance ``d`` (default 1).

    Returns:
        Scalar loss.
    """
    st = affinity_pair_stats(student_logits, teacher_labels, margin, (int(dilation),))
    l_same = _safe_mean(st.same_sum.sum(), st.same_count.sum())
    l_diff = _safe_mean(st.diff_sum.sum(), st.diff_count.sum())
    return l_same + l_diff


# ----------------------------------------------------------------------------------------------------------------
# 3. kernel matrix (paper A "KMM"; Qian et al. SDM 2022)
# ----------------------------------------------------------------------------------------------------------------


def kernel_matrix_loss(student_feat: Tensor, teacher_feat: Tensor) -> Tensor:
    """Full kernel-matrix transfer (METHODS.md item 3; paper A "KMM", after Qian et al., SDM 2022).

    Each sample's feature map is flattened and L2-normalised; ``K = X X^T`` is the ``B x B`` Gram matrix of the
    batch; ``L = mean((K_s - K_t)^2) + mean(|K_s - K_t|)`` over the ``B*B`` entries. The student features are
    expected to have passed the adapter already (the Gram matrix only needs equal batch sizes).

    Args:
        student_feat: ``(B, ...)``.
        teacher_feat: ``(B, ...)`` (detached inside).

    Returns:
        Scalar loss (0 for ``B = 1``, where both kernels are ``[[1]]``).
    """
    if student_feat.shape[0] != teacher_feat.shape[0]:
        raise ConfigError(
            f"kernel_matrix: batch sizes differ ({student_feat.shape[0]} vs {teacher_feat.shape[0]})"
        )
    xs = F.normalize(student_feat.float().flatten(1), dim=1)
    xt = F.normalize(teacher_feat.detach().float().flatten(1), dim=1)
    diff = xs @ xs.t() - xt @ xt.t()
    return diff.pow(2).mean() + diff.abs().mean()


# ----------------------------------------------------------------------------------------------------------------
# 4. contrastive (thesis B; InfoNCE, Oord et al. 2018 / CRD)
# ----------------------------------------------------------------------------------------------------------------


def info_nce(z_student: Tensor, z_teacher: Tensor, temperature: float = 0.4, symmetric: bool = False) -> Tensor:
    """Image-level InfoNCE between student and teacher embeddings (METHODS.md item 4; thesis B, Oord et al. 2018).

    ``L = CE(z_s z_t^T / tau, diag)``: the positive of student sample ``b`` is the teacher embedding of the same
    image, the negatives are the teacher embeddings of the other images. ``symmetric=True`` adds (sums) the
    teacher-to-student direction ``CE(z_t z_s^T / tau, diag)``. ``z_teacher`` is NOT detached: it is the output of
    a trainable teacher-side projection head (detach the teacher features before that head).

    Args:
        z_student: ``(B, d)``, L2-normalised rows.
        z_teacher: ``(B, d)``, L2-normalised rows.
        temperature: ``tau`` (thesis code: 0.4).
        symmetric: add the teacher-to-student direction.

    Returns:
        Scalar loss; with orthonormal ``z_s = z_t`` it equals ``log(1 + (B - 1) exp(-1/tau))`` per direction.
    """
    if z_student.dim() != 2 or z_student.shape != z_teacher.shape:
        raise ConfigError(
            f"info_nce: expected equal (B, d) embeddings, got {tuple(z_student.shape)} and {tuple(z_teacher.shape)}"
        )
    logits = z_student.float() @ z_teacher.float().t() / temperature
    target = torch.arange(logits.shape[0], device=logits.device)
    loss = F.cross_entropy(logits, target)
    if symmetric:
        loss = loss + F.cross_entropy(logits.t(), target)
    return loss


def sample_pixel_indices(n_total: int, max_anchors: int, generator: torch.Generator | None = None,
                         device: torch.device | str | None = None) -> Tensor:
    """Indices of the anchor pixels: all ``n_total`` in order when ``n_total <= max_anchors``, else
    ``max_anchors`` drawn uniformly without replacement (``torch.randperm`` with ``generator``)."""
    if n_total <= max_anchors:
        return torch.arange(n_total, device=device)
    perm = torch.randperm(n_total, generator=generator, device=generator.device if generator else "cpu")
    return perm[:max_anchors].to(device)


def _supcon(anchors: Tensor, keys: Tensor, labels: Tensor, temperature: float) -> Tensor:
    sim = anchors @ keys.t() / temperature  # (N, N)
    log_prob = sim - torch.logsumexp(sim, dim=1, keepdim=True)
    pos = (labels[:, None] == labels[None, :]).float()  # includes j == i: never empty
    return (-(pos * log_prob).sum(dim=1) / pos.sum(dim=1)).mean()


def pixel_contrast(
    student_emb: Tensor,
    teacher_emb: Tensor,
    labels: Tensor,
    temperature: float = 0.4,
    max_anchors: int = 1024,
    symmetric: bool = False,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Supervised pixel contrast between student and teacher pixel embeddings (METHODS.md item 4, ``mode="pixel"``).

    SupCon-style (Khosla et al. 2020), across networks. ``N <= max_anchors`` pixel positions are sampled from the
    whole batch (:func:`sample_pixel_indices`; all pixels when there are fewer); their ground-truth classes are
    ``y``. Anchors are the student embeddings ``a_i``, keys the teacher embeddings ``k_j`` at the same ``N``
    positions, ``s_ij = a_i . k_j / tau`` and, with positives ``P(i) = {j : y_j = y_i}`` (teacher pixels of the
    same class, always containing ``j = i``, the teacher's view of the same pixel)::

        L = mean_i  -1/|P(i)| * sum_{p in P(i)} [ s_ip - log sum_{j=1..N} exp(s_ij) ]

    ``symmetric=True`` adds the same loss with teacher anchors and student keys. Memory is ``O(N^2)`` with
    ``N <= max_anchors``, never ``O((HW)^2)``. ``teacher_emb`` is not detached (trainable teacher head).

    Args:
        student_emb: ``(B, d, *spatial)``, L2-normalised along ``d``.
        teacher_emb: same shape.
        labels: ground truth, ``(B, *spatial)`` or ``(B, 1, *spatial)``, at the embeddings' spatial size.
        temperature: ``tau``.
        max_anchors: cap ``N`` on the sampled pixels (default 1024).
        symmetric: add the teacher-anchored direction.
        generator: random generator for the anchor sampling.

    Returns:
        Scalar loss.
    """
    _check_spatial(student_emb, "pixel_contrast")
    if student_emb.shape != teacher_emb.shape:
        raise ConfigError(
            f"pixel_contrast: embedding shapes differ ({tuple(student_emb.shape)} vs {tuple(teacher_emb.shape)})"
        )
    if max_anchors < 2:
        raise ConfigError(f"pixel_contrast: max_anchors must be >= 2, got {max_anchors}")
    lab = _labels_bhw(labels.detach(), tuple(student_emb.shape[2:]), "pixel_contrast").reshape(-1)
    d = student_emb.shape[1]
    zs = student_emb.float().movedim(1, -1).reshape(-1, d)  # views, no copy of the pixel pairs
    zt = teacher_emb.float().movedim(1, -1).reshape(-1, d)
    idx = sample_pixel_indices(lab.numel(), max_anchors, generator, device=lab.device)
    a, k, y = zs[idx], zt[idx], lab[idx]
    loss = _supcon(a, k, y, temperature)
    if symmetric:
        loss = loss + _supcon(k, a, y, temperature)
    return loss


# ----------------------------------------------------------------------------------------------------------------
# 5. feature MSE (FitNet)
# ----------------------------------------------------------------------------------------------------------------


def feature_mse(student_feat: Tensor, teacher_feat: Tensor) -> Tensor:
    """FitNet hint loss (METHODS.md item 5; Romero et al. 2015; thesis B's "MSE loss" baseline).

    ``L = mean((f_s - f_t)^2)`` over every element, after the student's adapter.

    Args:
        student_feat: ``(B, C, *spatial)``.
        teacher_feat: same shape (detached inside).

    Returns:
        Scalar loss.
    """
    _check_same_shape(student_feat, teacher_feat, "feature_mse")
    return F.mse_loss(student_feat.float(), teacher_feat.detach().float())


# ----------------------------------------------------------------------------------------------------------------
# 6. KD-Net soft-label loss (paper C)
# ----------------------------------------------------------------------------------------------------------------


def _log1mexp(x: Tensor) -> Tensor:
    """``log(1 - exp(x))`` for ``x <= 0``, stable at both ends."""
    x = x.clamp_max(-1e-12)
    return torch.where(x > -0.6931471805599453, torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def kdnet_soft_label_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 5.0,
                          temper_student: bool = False) -> Tensor:
    """KD-Net soft-label loss (METHODS.md item 6; Hu et al., "Knowledge distillation from multi-modal to mono-modal
    segmentation networks", MICCAI 2020).

    ``L_KD = (1 - Dice(softmax(t / T), softmax(s))) + BCE(softmax(s), onehot(argmax t))``.

    - Dice: MONAI ``DiceLoss(soft_label=True, include_background=False)`` semantics, i.e. per sample and foreground
      class ``1 - (|x|_1 + |y|_1 - |x - y|_1 + 1e-5) / (|x|_1 + |y|_1 + 1e-5)`` with ``x = softmax(s)``,
      ``y = softmax(t / T)``, averaged over the batch and the foreground classes.
    - BCE: mean over every element (all classes, background included) of the binary cross-entropy between the
      student probabilities and the teacher's one-hot hard labels; logs are computed from ``log_softmax`` and
      clamped at -100 like ``torch.nn.functional.binary_cross_entropy``.
    - One channel: the binary distribution ``[1 - sigmoid, sigmoid]``; foreground is the sigmoid channel and the
      hard label is ``t > 0``.

    Note the student is not tempered (``T`` only softens the teacher), as written in paper C (following generalized
    distillation, Lopez-Paz et al. 2016). The Dice part is then smallest where ``softmax(s) = softmax(t / T)``: the
    student is pulled towards the teacher's *softened* map, whose arg-max is the teacher's but whose margins are
    ``T`` times smaller, so a student that cannot match it closely falls back to the near-uniform average and
    predicts background everywhere (seen on the BraTS sample: ``benchmarks/results/kdnet_brats``).
    ``temper_student=True`` is medkd's option, not the seed's: the Dice part compares ``softmax(s / T)`` with
    ``softmax(t / T)`` (Hinton-style, both tempered), so it vanishes at ``s = t``; the BCE part is unchanged.

    Args:
        student_logits: ``(B, C, *spatial)``.
        teacher_logits: same shape (detached inside).
        temperature: ``T`` (default 5).
        temper_student: soften the student by ``T`` in the Dice part too (default False: as written).

    Returns:
        Scalar loss (with ``temper_student`` its minimum over the Dice part is at ``s = t``; the BCE part is never 0).
    """
    _check_spatial(student_logits, "kdnet_soft_label")
    _check_same_shape(student_logits, teacher_logits, "kdnet_soft_label")
    t = teacher_logits.detach()
    log_ps = class_log_probs(student_logits)  # (B, K, *sp), K >= 2
    ps = log_ps.exp()
    pt = class_probs(t, temperature)
    x = (class_probs(student_logits, temperature) if temper_student else ps)[:, 1:]
    y = pt[:, 1:]
    axes = tuple(range(2, x.dim()))
    sx, sy, sd = x.sum(axes), y.sum(axes), (x - y).abs().sum(axes)
    dice = (sx + sy - sd + 1e-5) / (sx + sy + 1e-5)
    dice_loss = (1.0 - dice).mean()
    classes = torch.arange(ps.shape[1], device=ps.device).view(1, -1, *([1] * len(axes)))
    is_target = predicted_labels(t).unsqueeze(1) == classes  # one-hot of argmax t, as a mask
    bce = -torch.where(is_target, log_ps, _log1mexp(log_ps)).clamp_min(-100.0).mean()
    return dice_loss + bce


# ----------------------------------------------------------------------------------------------------------------
# 7. KD-Net bottleneck KL (paper C)
# ----------------------------------------------------------------------------------------------------------------


def bottleneck_kl(student_bottleneck: Tensor, teacher_bottleneck: Tensor) -> Tensor:
    """KD-Net latent KL (METHODS.md item 7; paper C, Hu et al. MICCAI 2020).

    ``L_KL = KL(softmax(flat(b_t)) || softmax(flat(b_s)))``: each sample's bottleneck is flattened into one vector,
    the KL is summed over that vector and averaged over the batch.

    Args:
        student_bottleneck: ``(B, ...)``.
        teacher_bottleneck: same number of elements per sample (detached inside).

    Returns:
        Scalar loss.
    """
    s = student_bottleneck.float().flatten(1)
    t = teacher_bottleneck.detach().float().flatten(1)
    if s.shape != t.shape:
        raise ConfigError(
            f"bottleneck_kl: flattened sizes differ ({tuple(s.shape)} vs {tuple(t.shape)}); use an adapter"
        )
    log_q, log_p = F.log_softmax(s, dim=1), F.log_softmax(t, dim=1)
    return (log_p.exp() * (log_p - log_q)).sum(dim=1).mean()


# ----------------------------------------------------------------------------------------------------------------
# 8. EMKD: attention map (IMD) and region affinity (RAD)
# ----------------------------------------------------------------------------------------------------------------


def _attention(feat: Tensor, size: tuple[int, ...]) -> Tensor:
    a = feat.float().pow(4).mean(dim=1, keepdim=True)
    a = resize_to(a, size)
    return F.normalize(a.flatten(1), dim=1)


def attention_map_loss(student_feat: Tensor, teacher_feat: Tensor) -> Tensor:
    """Importance-map distillation, IMD (METHODS.md item 8; Qin et al., "Efficient medical image segmentation based
    on knowledge distillation", IEEE TMI 2021).

    ``a = normalize(mean_c(x^4))`` (L2 over the pixels of each sample); the student map ``mean_c(x_s^4)`` is resized
    (bilinear / trilinear) to the teacher's spatial size before the normalisation; ``L = mean_batch sum_pixels
    (a_s - a_t)^2``. Channel counts need not match.

    Args:
        student_feat: ``(B, C_s, *spatial_s)``.
        teacher_feat: ``(B, C_t, *spatial_t)`` (detached inside).

    Returns:
        Scalar loss in ``[0, 4]``.
    """
    _check_spatial(student_feat, "attention_map")
    t = teacher_feat.detach()
    size = tuple(t.shape[2:])
    a_s, a_t = _attention(student_feat, size), _attention(t, size)
    return (a_s - a_t).pow(2).sum(dim=1).mean()


def _region_cosine(feat: Tensor, fg: Tensor) -> Tensor:
    """Cosine between the mask-pooled mean foreground and background vectors of each sample."""
    w = F.interpolate(fg, size=tuple(feat.shape[2:]), mode="area") if fg.shape[2:] != feat.shape[2:] else fg
    f = feat.float().flatten(2)  # (B, C, N)
    w = w.flatten(2)  # (B, 1, N)
    mean_fg = (f * w).sum(-1) / w.sum(-1).clamp_min(1e-6)
    mean_bg = (f * (1.0 - w)).sum(-1) / (1.0 - w).sum(-1).clamp_min(1e-6)
    return F.cosine_similarity(mean_fg, mean_bg, dim=1, eps=1e-8)


def region_affinity_loss(student_feat: Tensor, teacher_feat: Tensor, mask: Tensor) -> Tensor:
    """Region-affinity distillation, RAD (METHODS.md item 8; Qin et al., IEEE TMI 2021).

    Per sample, the mean foreground and mean background feature vectors are pooled with the ground-truth mask
    (foreground = label > 0, all foreground classes together); ``cos`` is their cosine similarity and
    ``L = mean_batch (cos_s - cos_t)^2``. The mask is brought to each feature map's size by area interpolation
    (a soft mask: the foreground fraction of every feature cell), so small structures survive downsampling. An empty
    foreground (or background) gives a zero vector and ``cos = 0``: the loss stays finite.

    Args:
        student_feat: ``(B, C_s, *spatial_s)``.
        teacher_feat: ``(B, C_t, *spatial_t)`` (detached inside).
        mask: ground truth ``(B, 1, *spatial)`` or ``(B, *spatial)`` integer labels (or a binary mask).

    Returns:
        Scalar loss in ``[0, 4]``.
    """
    _check_spatial(student_feat, "region_affinity")
    nsp = student_feat.dim() - 2
    if mask.dim() == nsp + 1:
        mask = mask.unsqueeze(1)
    if mask.dim() != nsp + 2 or mask.shape[1] != 1:
        raise ConfigError(f"region_affinity: mask must be (B, 1, *spatial), got shape {tuple(mask.shape)}")
    fg = (mask.detach() > 0).float()
    cos_s = _region_cosine(student_feat, fg)
    cos_t = _region_cosine(teacher_feat.detach(), fg)
    return (cos_s - cos_t).pow(2).mean()


# ----------------------------------------------------------------------------------------------------------------
# 9. channel-wise distillation (CWD; Shu et al., ICCV 2021) - medkd's addition
# ----------------------------------------------------------------------------------------------------------------


def cwd_loss(student: Tensor, teacher: Tensor, temperature: float = 1.0) -> Tensor:
    """Channel-wise distillation (METHODS.md item 9; Shu et al., "Channel-wise knowledge distillation for dense
    prediction", ICCV 2021). medkd's addition, not in the seeds.

    For each sample ``b`` and channel ``c``, ``phi_bc = softmax over all spatial positions of (y_bc / T)``;
    ``L = T^2 * mean over batch and channels of KL(phi_bc^t || phi_bc^s)``, the KL summed over the positions.
    Computed with ``log_softmax`` over the flattened spatial axes (stable for large activations).

    The inputs are logits (``C`` = classes) or feature maps: the distribution lives along the spatial axes, so
    one-channel (binary) logits are used as they are (no two-class expansion: the spatial softmax of one channel
    is not constant). The KL is summed over positions, but each distribution has total mass 1, so the value does
    not grow with the image size: upsampling both maps by pixel replication leaves it unchanged.

    Args:
        student: ``(B, C, *spatial)``; already adapted / resized to the teacher's shape (the module does it).
        teacher: same shape (detached inside).
        temperature: ``T > 0`` (default 1, the authors' setting).

    Returns:
        Scalar loss (0 when ``student == teacher``).
    """
    _check_spatial(student, "cwd")
    _check_same_shape(student, teacher, "cwd")
    log_ps = F.log_softmax(student.float().flatten(2) / temperature, dim=2)  # (B, C, N)
    log_pt = F.log_softmax(teacher.detach().float().flatten(2) / temperature, dim=2)
    kl = (log_pt.exp() * (log_pt - log_ps)).sum(dim=2)  # (B, C)
    return kl.mean() * temperature**2


# ----------------------------------------------------------------------------------------------------------------
# 10. DIST (Huang et al., NeurIPS 2022) - medkd's addition
# ----------------------------------------------------------------------------------------------------------------

PEARSON_EPS = 1e-8  # METHODS.md item 10: added to the norms, so a constant vector has correlation 0


def _pearson(a: Tensor, b: Tensor, dim: int) -> Tensor:
    """Pearson correlation along ``dim``: ``<a - mean a, b - mean b> / ((|a - mean a| + eps) (|b - mean b| + eps))``.

    A constant vector gives 0, with a finite gradient (``vector_norm``'s subgradient at 0). Each vector is first
    shifted by its first element (Pearson is shift-invariant) so that a constant vector centres to exactly zero: in
    float32, ``x - mean(x)`` of a constant ``x`` can leave rounding residues of ``1e-8``, the size of ``eps``, which
    would give such a vector an arbitrary correlation instead of 0.
    """
    a = a - a.narrow(dim, 0, 1)
    b = b - b.narrow(dim, 0, 1)
    a = a - a.mean(dim=dim, keepdim=True)
    b = b - b.mean(dim=dim, keepdim=True)
    na = torch.linalg.vector_norm(a, dim=dim) + PEARSON_EPS
    nb = torch.linalg.vector_norm(b, dim=dim) + PEARSON_EPS
    return (a * b).sum(dim=dim) / (na * nb)


def dist_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 1.0, beta: float = 1.0,
              gamma: float = 1.0) -> Tensor:
    """DIST, relation distillation by Pearson correlation (METHODS.md item 10; Huang et al., "Knowledge
    distillation from a stronger teacher", NeurIPS 2022). medkd's addition, not in the seeds.

    ``p = softmax(logits / T)`` per pixel (binary two-class distribution for one channel), arranged as a matrix
    whose rows are the ``N = B * prod(spatial)`` pixels of the batch and whose columns are the ``K`` classes.

    - inter-class: ``1 - mean over pixels of pearson(p_s[n, :], p_t[n, :])``;
    - intra-class: ``1 - mean over classes of pearson(p_s[:, c], p_t[:, c])``, each correlation over all pixels of
      the batch;
    - ``L = T^2 * (beta * inter + gamma * intra)``.

    ``pearson`` adds ``eps = 1e-8`` to each centred norm, so a constant vector has correlation 0 (never NaN) and
    ``L`` at ``student == teacher`` is 0 only up to terms of order ``eps / norm`` (larger for near-uniform pixels,
    whose centred class vector has a tiny norm). With two classes every centred row is ``(-d, d)``, so a pixel's
    inter-class correlation is ``+-1`` (or 0): the inter-class term then only counts pixels where student and
    teacher disagree on the more likely class, and passes (almost) no gradient; the intra-class term carries
    the signal in binary tasks.

    Args:
        student_logits: ``(B, C, *spatial)``.
        teacher_logits: same shape (detached inside).
        temperature: ``T > 0`` (default 1).
        beta: weight of the inter-class term (default 1).
        gamma: weight of the intra-class term (default 1).

    Returns:
        Scalar loss in ``[0, 2 T^2 (beta + gamma)]``.
    """
    _check_spatial(student_logits, "dist")
    _check_same_shape(student_logits, teacher_logits, "dist")
    ps = class_probs(student_logits, temperature)  # (B, K, *spatial), K >= 2
    pt = class_probs(teacher_logits.detach(), temperature)
    k = ps.shape[1]
    ps = ps.movedim(1, -1).reshape(-1, k)  # (N, K): rows = pixels of the batch
    pt = pt.movedim(1, -1).reshape(-1, k)
    inter = 1.0 - _pearson(ps, pt, dim=1).mean()
    intra = 1.0 - _pearson(ps, pt, dim=0).mean()
    return temperature**2 * (beta * inter + gamma * intra)
