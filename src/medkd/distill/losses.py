"""Distillation-loss modules and their registry.

Each module wraps one formula of :mod:`medkd.distill.functional` and owns the trainable parts the formula needs
(adapters, projection heads, adaptive affinity weights).

Module interface (the trainer relies on it):

- ``student_taps: tuple[str, ...]`` / ``teacher_taps: tuple[str, ...]``: the feature taps the term reads (standard
  names ``"logits"``, ``"encoder"``, ``"bottleneck"``, ``"decoder"``, or any tap name the user gave with ``tap=``,
  ``student_tap=`` / ``teacher_tap=``).
- ``needs_label: bool``: whether ``forward`` reads ``batch["label"]`` (a ``(B, 1, *spatial)`` integer map).
- ``setup(student_feats, teacher_feats) -> None``: called ONCE, with example tapped tensors from one dummy forward
  of both networks, before the optimiser is built. It checks the taps and builds the trainable extras (1x1 conv
  adapters to the teacher's channels, projection heads, affinity weights) on the student tensors' device. Call it
  before ``load_state_dict`` too, so the extras exist. ``forward`` before ``setup`` raises ``RuntimeError``.
- ``forward(student_feats, teacher_feats, batch) -> Tensor``: the scalar, unweighted loss. Teacher tensors are
  detached inside; no gradient reaches the teacher.
- ``ascent_parameters()``: parameters the trainer MAXIMISES the loss over (only the adaptive affinity weights);
  ``descent_parameters()``: all other parameters, trained with the student by descent. ``parameters()`` is their
  union, as for any ``nn.Module``.

Registry (timm-style): :func:`create_loss`, :func:`list_losses`, :func:`loss_info`, :func:`register_loss`.

Example:
    >>> import torch
    >>> from medkd.distill.losses import create_loss
    >>> loss = create_loss("kernel_matrix", tap="bottleneck")
    >>> s = {"bottleneck": torch.randn(4, 32, 8, 8)}
    >>> t = {"bottleneck": torch.randn(4, 256, 16, 16)}
    >>> loss.setup(s, t)
    >>> loss(s, t, {}).shape
    torch.Size([])
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from medkd.distill import functional as KF
from medkd.errors import ConfigError, unknown_name_error
from medkd.registry import Registry

__all__ = [
    "AdaptiveAffinityLoss",
    "AffinityLoss",
    "AttentionMapLoss",
    "BottleneckKLLoss",
    "CWDLoss",
    "ContrastiveLoss",
    "DISTLoss",
    "DistillLoss",
    "FeatureAdapter",
    "FeatureMSELoss",
    "HEAD_ACTIVATIONS",
    "KDNetSoftLabelLoss",
    "KernelMatrixLoss",
    "LOSS_REGISTRY",
    "LogitsKLLoss",
    "ProjectionHead",
    "RegionAffinityLoss",
    "create_loss",
    "list_losses",
    "loss_info",
    "register_loss",
]

#: Registered distillation losses: name -> :class:`DistillLoss` subclass.
LOSS_REGISTRY: Registry[type[DistillLoss]] = Registry("distillation loss", option_kind="loss")


def register_loss(name: str) -> Callable[[type[DistillLoss]], type[DistillLoss]]:
    """Class decorator adding a :class:`DistillLoss` subclass to the registry under ``name``."""

    def deco(cls: type[DistillLoss]) -> type[DistillLoss]:
        cls.name = name
        return LOSS_REGISTRY.add(name, cls)

    return deco


def list_losses(pattern: str = "*") -> list[str]:
    """Registered loss names matching a shell-style ``pattern`` (sorted)."""
    return LOSS_REGISTRY.names(pattern)


def loss_info(name: str) -> dict[str, Any]:
    """Description, default taps, label need and options (with defaults) of a registered loss."""
    cls = LOSS_REGISTRY.lookup(name)
    default = cls()
    return {
        "name": name,
        "description": cls.description,
        "student_taps": default.student_taps,
        "teacher_taps": default.teacher_taps,
        "needs_label": default.needs_label,
        "trainable_extras": cls.trainable_extras,
        "options": LOSS_REGISTRY.options(name),
    }


def create_loss(name: str, **kwargs: Any) -> DistillLoss:
    """Build a registered loss module; an unknown name or option raises ``ConfigError`` with the nearest valid."""
    return LOSS_REGISTRY.create(name, **kwargs)


# ----------------------------------------------------------------------------------------------------------------
# building blocks
# ----------------------------------------------------------------------------------------------------------------


def _conv1x1(ndim: int, cin: int, cout: int, bias: bool = True) -> nn.Module:
    conv = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}.get(ndim)
    if conv is None:
        raise ConfigError(f"adapter: only 1, 2 or 3 spatial axes are supported, got {ndim}")
    return conv(cin, cout, kernel_size=1, bias=bias)


class FeatureAdapter(nn.Module):
    """Trainable 1x1 conv to the teacher's channel count, then bilinear / trilinear resize to the teacher's size.

    The resize target is taken from the teacher tensor at every call, so varying input sizes work.

    Args:
        spatial_dims: 1, 2 or 3.
        in_channels: student channels.
        out_channels: teacher channels.
    """

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = _conv1x1(spatial_dims, in_channels, out_channels)

    def forward(self, x: Tensor, size: Sequence[int]) -> Tensor:
        return KF.resize_to(self.conv(x), tuple(size))


#: What may follow a projection head's 1x1 conv (``ContrastiveLoss(head_activation=...)``).
HEAD_ACTIVATIONS = ("none", "relu")


class ProjectionHead(nn.Module):
    """Contrastive projection head (METHODS.md item 4): 1x1 conv -> global average pool -> linear -> L2-normalise.

    ``activation="none"`` is the head as METHODS.md writes it. The 1x1 conv and the pooling are both linear, so
    they commute: the head pools first and applies the conv's weights to the ``(B, C)`` means, which is exactly
    the same function at a fraction of the cost (no ``(B, dim, *spatial)`` map to build and differentiate).
    ``activation="relu"`` puts a ReLU after the conv (medkd's earlier head; not in METHODS.md), which keeps the
    head non-linear but needs the full-resolution map. ``pixel=True`` skips the pooling: the linear layer is
    applied at every position and each pixel embedding is L2-normalised along the channel axis, giving
    ``(B, dim, *spatial)``.

    Args:
        spatial_dims: 1, 2 or 3.
        in_channels: channels of the tapped features.
        dim: embedding dimension ``d``.
        pixel: per-pixel embeddings instead of one per image.
        activation: ``"none"`` (METHODS.md) or ``"relu"`` after the 1x1 conv.
    """

    def __init__(self, spatial_dims: int, in_channels: int, dim: int = 128, pixel: bool = False,
                 activation: str = "none") -> None:
        super().__init__()
        if activation not in HEAD_ACTIVATIONS:
            raise unknown_name_error("projection head activation", str(activation), HEAD_ACTIVATIONS)
        self.conv = _conv1x1(spatial_dims, in_channels, dim)
        self.linear = nn.Linear(dim, dim)
        self.pixel = pixel
        self.activation = activation

    def forward(self, x: Tensor) -> Tensor:
        if not self.pixel and self.activation == "none":
            pooled = x.flatten(2).mean(-1)  # GAP(conv(x)) == conv(GAP(x)) for a 1x1 conv
            return F.normalize(self.linear(F.linear(pooled, self.conv.weight.flatten(1), self.conv.bias)), dim=1)
        h = self.conv(x)
        if self.activation == "relu":
            h = F.relu(h)
        if self.pixel:
            return F.normalize(self.linear(h.movedim(1, -1)).movedim(-1, 1), dim=1)
        return F.normalize(self.linear(h.flatten(2).mean(-1)), dim=1)


# ----------------------------------------------------------------------------------------------------------------
# base class
# ----------------------------------------------------------------------------------------------------------------


class DistillLoss(nn.Module):
    """Base class of the distillation-loss modules (see the module docstring for the interface).

    Subclasses set ``default_tap``, ``description``, ``needs_label`` and ``trainable_extras``, implement
    ``_build(student_feats, teacher_feats)`` (optional) and ``_compute(student_feats, teacher_feats, batch)``.

    Args:
        tap: tap read on both networks (default: the loss's standard tap).
        student_tap: overrides ``tap`` for the student.
        teacher_tap: overrides ``tap`` for the teacher.
    """

    name: str = ""
    description: str = ""
    default_tap: str = "logits"
    needs_label: bool = False
    trainable_extras: str = "none"

    def __init__(self, *, tap: str | None = None, student_tap: str | None = None,
                 teacher_tap: str | None = None) -> None:
        super().__init__()
        base = tap or self.default_tap
        self.student_taps: tuple[str, ...] = (student_tap or base,)
        self.teacher_taps: tuple[str, ...] = (teacher_tap or base,)
        self._is_setup = False

    # -- interface -------------------------------------------------------------------------------------------
    def setup(self, student_feats: Mapping[str, Tensor], teacher_feats: Mapping[str, Tensor]) -> None:
        """Check the taps and build the trainable extras from one example of tapped tensors."""
        self._check_taps(student_feats, teacher_feats)
        with torch.no_grad():
            self._build(student_feats, teacher_feats)
        self._is_setup = True

    def forward(self, student_feats: Mapping[str, Tensor], teacher_feats: Mapping[str, Tensor],
                batch: Mapping[str, Any] | None = None) -> Tensor:
        """Scalar, unweighted loss value."""
        if not self._is_setup:
            raise RuntimeError(
                f"loss {self.name!r}: call setup(student_feats, teacher_feats) before forward "
                "(it builds the adapters / heads)"
            )
        self._check_taps(student_feats, teacher_feats)
        batch = batch or {}
        if self.needs_label and "label" not in batch:
            raise ConfigError(f"loss {self.name!r} needs the ground truth: batch has no 'label'")
        return self._compute(student_feats, teacher_feats, batch)

    def ascent_parameters(self) -> list[nn.Parameter]:
        """Parameters trained by gradient ASCENT (empty except for the adaptive affinity weights)."""
        return []

    def descent_parameters(self) -> list[nn.Parameter]:
        """Trainable extras optimised with the student by descent."""
        ascent = {id(p) for p in self.ascent_parameters()}
        return [p for p in self.parameters() if id(p) not in ascent]

    def extra_repr(self) -> str:
        return f"student_taps={self.student_taps}, teacher_taps={self.teacher_taps}"

    # -- helpers for subclasses ------------------------------------------------------------------------------
    def _build(self, student_feats: Mapping[str, Tensor], teacher_feats: Mapping[str, Tensor]) -> None:
        """Build trainable parts (default: nothing)."""

    def _compute(self, student_feats: Mapping[str, Tensor], teacher_feats: Mapping[str, Tensor],
                 batch: Mapping[str, Any]) -> Tensor:
        raise NotImplementedError

    def _check_taps(self, student_feats: Mapping[str, Tensor], teacher_feats: Mapping[str, Tensor]) -> None:
        for side, taps, feats in (("student", self.student_taps, student_feats),
                                  ("teacher", self.teacher_taps, teacher_feats)):
            for tap in taps:
                if tap not in feats:
                    raise ConfigError(
                        f"loss {self.name!r} needs {side} tap {tap!r}; the {side} gave {sorted(feats)}"
                    )

    def _pair(self, student_feats: Mapping[str, Tensor], teacher_feats: Mapping[str, Tensor],
              i: int = 0) -> tuple[Tensor, Tensor]:
        return student_feats[self.student_taps[i]], teacher_feats[self.teacher_taps[i]].detach()

    def _positive_temperature(self, temperature: float) -> float:
        if temperature <= 0:
            raise ConfigError(f"loss {self.name!r}: temperature must be > 0, got {temperature}")
        return float(temperature)

    def _non_negative(self, option: str, value: float) -> float:
        if value < 0:
            raise ConfigError(f"loss {self.name!r}: {option} must be >= 0, got {value}")
        return float(value)


class _LogitsLoss(DistillLoss):
    """Losses on the output logits: the student map is resized to the teacher's size if they differ."""

    def _build(self, student_feats: Mapping[str, Tensor], teacher_feats: Mapping[str, Tensor]) -> None:
        s, t = self._pair(student_feats, teacher_feats)
        if s.shape[1] != t.shape[1]:
            raise ConfigError(
                f"loss {self.name!r}: student and teacher logits have {s.shape[1]} and {t.shape[1]} channels"
            )
        if s.dim() != t.dim() or s.dim() < 3:
            raise ConfigError(
                f"loss {self.name!r}: logits shapes {tuple(s.shape)} and {tuple(t.shape)} are incompatible"
            )

    def _logits(self, student_feats: Mapping[str, Tensor],
                teacher_feats: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
        s, t = self._pair(student_feats, teacher_feats)
        return KF.resize_to(s, t.shape[2:]), t


class _AdaptedLoss(DistillLoss):
    """Losses on features that pass a student-side :class:`FeatureAdapter`.

    ``adapter=True`` always builds one, ``None`` only when the student and teacher shapes differ, ``False`` never.
    """

    def __init__(self, *, adapter: bool | None = True, tap: str | None = None, student_tap: str | None = None,
                 teacher_tap: str | None = None) -> None:
        super().__init__(tap=tap, student_tap=student_tap, teacher_tap=teacher_tap)
        self.use_adapter = adapter
        self.adapter: FeatureAdapter | None = None

    def _build(self, student_feats: Mapping[str, Tensor], teacher_feats: Mapping[str, Tensor]) -> None:
        s, t = self._pair(student_feats, teacher_feats)
        if s.dim() < 3 or s.dim() != t.dim():
            raise ConfigError(
                f"loss {self.name!r}: feature shapes {tuple(s.shape)} and {tuple(t.shape)} are incompatible"
            )
        need = self.use_adapter is True or (self.use_adapter is None and s.shape[1:] != t.shape[1:])
        if need:
            self.adapter = FeatureAdapter(s.dim() - 2, s.shape[1], t.shape[1]).to(s.device)

    def _features(self, student_feats: Mapping[str, Tensor],
                  teacher_feats: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
        s, t = self._pair(student_feats, teacher_feats)
        if self.adapter is not None:
            s = self.adapter(s, t.shape[2:])
        return s, t


# ----------------------------------------------------------------------------------------------------------------
# registered losses
# ----------------------------------------------------------------------------------------------------------------


@register_loss("logits_kl")
class LogitsKLLoss(_LogitsLoss):
    """Logits KL / PMD, ``T^2 * per-pixel-mean KL(p_t || p_s)`` (:func:`~medkd.distill.functional.logits_kl`).

    Args:
        temperature: ``T`` (1 for paper A's LM, 4 for thesis B's PMD).
        reverse: ``KL(p_s || p_t)`` (paper A's eq. 7 order).
        tap, student_tap, teacher_tap: see :class:`DistillLoss` (default ``"logits"``).
    """

    description = "Hinton logits KL, T^2 * per-pixel mean KL(p_t || p_s) (paper A LM, thesis B PMD)"
    default_tap = "logits"

    def __init__(self, *, temperature: float = 1.0, reverse: bool = False, tap: str | None = None,
                 student_tap: str | None = None, teacher_tap: str | None = None) -> None:
        super().__init__(tap=tap, student_tap=student_tap, teacher_tap=teacher_tap)
        self.temperature = self._positive_temperature(temperature)
        self.reverse = bool(reverse)

    def _compute(self, student_feats, teacher_feats, batch):
        s, t = self._logits(student_feats, teacher_feats)
        return KF.logits_kl(s, t, self.temperature, self.reverse)


@register_loss("affinity")
class AffinityLoss(_LogitsLoss):
    """Affinity-field loss with one dilation, pair labels from the teacher's ``argmax``
    (:func:`~medkd.distill.functional.affinity_loss`).

    Args:
        margin: hinge margin ``m`` (default 3).
        dilation: neighbour distance.
        tap, student_tap, teacher_tap: see :class:`DistillLoss` (default ``"logits"``).
    """

    description = "affinity-field loss L_same + L_diff on the student's class distributions (paper A AAM, fixed)"
    default_tap = "logits"

    def __init__(self, *, margin: float = 3.0, dilation: int = 1, tap: str | None = None,
                 student_tap: str | None = None, teacher_tap: str | None = None) -> None:
        super().__init__(tap=tap, student_tap=student_tap, teacher_tap=teacher_tap)
        if int(dilation) < 1:
            raise ConfigError(f"loss 'affinity': dilation must be >= 1, got {dilation}")
        self.margin = float(margin)
        self.dilation = int(dilation)

    def _compute(self, student_feats, teacher_feats, batch):
        s, t = self._logits(student_feats, teacher_feats)
        return KF.affinity_loss(s, KF.predicted_labels(t), self.margin, self.dilation)


@register_loss("adaptive_affinity")
class AdaptiveAffinityLoss(_LogitsLoss):
    """Adaptive affinity (paper A "AAM", after Ke et al. ECCV 2018; METHODS.md item 2).

    Per class ``c`` (pairs whose pixel ``i`` has teacher class ``c``) and dilation ``d``:
    ``L_cd = L_same,cd + L_diff,cd`` (empty pair sets give 0). Per class, ``L_c = sum_d softmax(w_c)_d L_cd`` with
    one trainable vector ``w_c`` per class (initialised to 0, i.e. equal weights); the loss is the mean of ``L_c``
    over the classes that have at least one pair in the batch. The ``w_c`` are exposed by
    :meth:`ascent_parameters`: the trainer MAXIMISES the loss over them (e.g. an optimiser with ``maximize=True``),
    as in AAF. ``adaptive=False`` keeps the weights fixed and equal (``w_c`` is a buffer, not a parameter).

    Args:
        dilations: neighbour distances (default ``(1, 2, 3)``).
        margin: hinge margin ``m`` (default 3).
        adaptive: train ``w_c`` by ascent.
        tap, student_tap, teacher_tap: see :class:`DistillLoss` (default ``"logits"``).
    """

    description = "adaptive affinity: per-class, per-dilation affinity losses mixed by softmax(w_c), w_c by ascent"
    default_tap = "logits"
    trainable_extras = "per-class dilation weights (gradient ascent)"

    def __init__(self, *, dilations: Sequence[int] = (1, 2, 3), margin: float = 3.0, adaptive: bool = True,
                 tap: str | None = None, student_tap: str | None = None, teacher_tap: str | None = None) -> None:
        super().__init__(tap=tap, student_tap=student_tap, teacher_tap=teacher_tap)
        dil = tuple(int(d) for d in dilations)
        if not dil or min(dil) < 1:
            raise ConfigError(f"loss 'adaptive_affinity': dilations must be integers >= 1, got {list(dilations)}")
        self.dilations = dil
        self.margin = float(margin)
        self.adaptive = bool(adaptive)
        self.register_buffer("class_weights", None)  # built in setup (needs the class count)

    def _build(self, student_feats, teacher_feats):
        super()._build(student_feats, teacher_feats)
        s, _ = self._pair(student_feats, teacher_feats)
        k = max(int(s.shape[1]), 2)
        w = torch.zeros(k, len(self.dilations), device=s.device)
        if self.adaptive:
            self.class_weights = nn.Parameter(w)
        else:
            self.register_buffer("class_weights", w)

    def ascent_parameters(self) -> list[nn.Parameter]:
        return [self.class_weights] if self.adaptive and self.class_weights is not None else []

    def _compute(self, student_feats, teacher_feats, batch):
        s, t = self._logits(student_feats, teacher_feats)
        w = self.class_weights
        # argmax labels of logits with w.shape[0] classes are in range: no check, no device sync
        st = KF.affinity_pair_stats(s, KF.predicted_labels(t), self.margin, self.dilations, w.shape[0],
                                    check_labels=False)
        per_class = (torch.softmax(w, dim=1) * st.per_class_dilation()).sum(dim=1)  # (K,)
        present = st.present().float()
        return (per_class * present).sum() / present.sum().clamp_min(1.0)


@register_loss("kernel_matrix")
class KernelMatrixLoss(_AdaptedLoss):
    """Full kernel-matrix transfer on adapted features (paper A "KMM").

    See :func:`~medkd.distill.functional.kernel_matrix_loss`.

    Args:
        adapter: student 1x1 conv + resize to the teacher (True: always; None: only if shapes differ; False: never).
        tap, student_tap, teacher_tap: see :class:`DistillLoss` (default ``"bottleneck"``).
    """

    description = "B x B Gram-matrix transfer, mean sq + mean abs difference (paper A KMM)"
    default_tap = "bottleneck"
    trainable_extras = "student adapter (1x1 conv)"

    def _compute(self, student_feats, teacher_feats, batch):
        return KF.kernel_matrix_loss(*self._features(student_feats, teacher_feats))


@register_loss("feature_mse")
class FeatureMSELoss(_AdaptedLoss):
    """FitNet feature MSE on adapted features (thesis B's "MSE" baseline).

    See :func:`~medkd.distill.functional.feature_mse`.

    Args:
        adapter: see :class:`KernelMatrixLoss`.
        tap, student_tap, teacher_tap: see :class:`DistillLoss` (default ``"bottleneck"``).
    """

    description = "FitNet feature MSE after a 1x1 conv adapter (thesis B MSE baseline)"
    default_tap = "bottleneck"
    trainable_extras = "student adapter (1x1 conv)"

    def _compute(self, student_feats, teacher_feats, batch):
        return KF.feature_mse(*self._features(student_feats, teacher_feats))


@register_loss("bottleneck_kl")
class BottleneckKLLoss(_AdaptedLoss):
    """KD-Net latent KL (paper C; :func:`~medkd.distill.functional.bottleneck_kl`).

    Args:
        adapter: default None: a 1x1 conv + resize adapter only when the bottleneck shapes differ.
        tap, student_tap, teacher_tap: see :class:`DistillLoss` (default ``"bottleneck"``).
    """

    description = "KL(softmax(flat b_t) || softmax(flat b_s)), summed over the vector, batch mean (paper C)"
    default_tap = "bottleneck"
    trainable_extras = "student adapter only if the bottleneck shapes differ"

    def __init__(self, *, adapter: bool | None = None, tap: str | None = None, student_tap: str | None = None,
                 teacher_tap: str | None = None) -> None:
        super().__init__(adapter=adapter, tap=tap, student_tap=student_tap, teacher_tap=teacher_tap)

    def _compute(self, student_feats, teacher_feats, batch):
        return KF.bottleneck_kl(*self._features(student_feats, teacher_feats))


@register_loss("kdnet_soft_label")
class KDNetSoftLabelLoss(_LogitsLoss):
    """KD-Net soft-label loss (paper C; :func:`~medkd.distill.functional.kdnet_soft_label_loss`).

    Args:
        temperature: ``T`` softening the teacher (default 5).
        temper_student: also soften the student by ``T`` in the Dice part (medkd's option; default False, as paper C
            writes it: see the function's note on why the as-written loss can make weak students predict background).
        tap, student_tap, teacher_tap: see :class:`DistillLoss` (default ``"logits"``).
    """

    description = "(1 - soft Dice(softmax(t/T), softmax(s))) + BCE(softmax(s), onehot(argmax t)) (paper C L_KD)"
    default_tap = "logits"

    def __init__(self, *, temperature: float = 5.0, temper_student: bool = False, tap: str | None = None,
                 student_tap: str | None = None, teacher_tap: str | None = None) -> None:
        super().__init__(tap=tap, student_tap=student_tap, teacher_tap=teacher_tap)
        self.temperature = self._positive_temperature(temperature)
        self.temper_student = bool(temper_student)

    def _compute(self, student_feats, teacher_feats, batch):
        s, t = self._logits(student_feats, teacher_feats)
        return KF.kdnet_soft_label_loss(s, t, self.temperature, self.temper_student)


@register_loss("cwd")
class CWDLoss(_AdaptedLoss):
    """Channel-wise distillation, CWD (Shu et al. ICCV 2021; METHODS.md item 9; medkd's addition).

    See :func:`~medkd.distill.functional.cwd_loss`. On the logits tap (both taps ``"logits"``, the default) there
    is no adapter: the channel counts must match and the student map is resized to the teacher's spatial size,
    as for :class:`LogitsKLLoss`. On any other (feature) tap the student features pass a trainable
    :class:`FeatureAdapter` (1x1 conv to the teacher's channels, then resize to the teacher's size), as for
    :class:`KernelMatrixLoss`. METHODS.md suggests a term weight of 3 (the authors' Cityscapes setting).

    Args:
        temperature: ``T`` (default 1).
        adapter: None (default): no adapter on the logits tap, one on any other tap; True: always an adapter;
            False: never (the channel counts must match; the student is still resized to the teacher's size).
        tap, student_tap, teacher_tap: see :class:`DistillLoss` (default ``"logits"``; any feature tap works).
    """

    description = "CWD: T^2 * mean over (b, c) of KL between spatial softmaxes (Shu et al. 2021); logits or features"
    default_tap = "logits"
    trainable_extras = "student adapter (1x1 conv) on feature taps only"

    def __init__(self, *, temperature: float = 1.0, adapter: bool | None = None, tap: str | None = None,
                 student_tap: str | None = None, teacher_tap: str | None = None) -> None:
        super().__init__(adapter=adapter, tap=tap, student_tap=student_tap, teacher_tap=teacher_tap)
        self.temperature = self._positive_temperature(temperature)

    @property
    def on_logits(self) -> bool:
        """Whether both networks are read at their output logits."""
        return self.student_taps == ("logits",) and self.teacher_taps == ("logits",)

    def _build(self, student_feats, teacher_feats):
        s, t = self._pair(student_feats, teacher_feats)
        if s.dim() < 3 or s.dim() != t.dim():
            raise ConfigError(
                f"loss {self.name!r}: shapes {tuple(s.shape)} and {tuple(t.shape)} are incompatible"
            )
        need = (not self.on_logits) if self.use_adapter is None else bool(self.use_adapter)
        if need:
            self.adapter = FeatureAdapter(s.dim() - 2, s.shape[1], t.shape[1]).to(s.device)
        elif s.shape[1] != t.shape[1]:
            raise ConfigError(
                f"loss {self.name!r}: student and teacher have {s.shape[1]} and {t.shape[1]} channels "
                "and no adapter"
            )

    def _compute(self, student_feats, teacher_feats, batch):
        s, t = self._pair(student_feats, teacher_feats)
        s = self.adapter(s, t.shape[2:]) if self.adapter is not None else KF.resize_to(s, t.shape[2:])
        return KF.cwd_loss(s, t, self.temperature)


@register_loss("dist")
class DISTLoss(_LogitsLoss):
    """DIST, Pearson-correlation relation distillation (Huang et al. NeurIPS 2022; METHODS.md item 10; medkd's
    addition). See :func:`~medkd.distill.functional.dist_loss`.

    Args:
        temperature: ``T`` (default 1).
        beta: weight of the inter-class (per-pixel) term (default 1).
        gamma: weight of the intra-class (per-class, over the batch's pixels) term (default 1).
        tap, student_tap, teacher_tap: see :class:`DistillLoss` (default ``"logits"``).
    """

    description = "DIST: T^2 (beta (1 - inter-class) + gamma (1 - intra-class) Pearson) (Huang et al. 2022)"
    default_tap = "logits"

    def __init__(self, *, temperature: float = 1.0, beta: float = 1.0, gamma: float = 1.0, tap: str | None = None,
                 student_tap: str | None = None, teacher_tap: str | None = None) -> None:
        super().__init__(tap=tap, student_tap=student_tap, teacher_tap=teacher_tap)
        self.temperature = self._positive_temperature(temperature)
        self.beta = self._non_negative("beta", beta)
        self.gamma = self._non_negative("gamma", gamma)

    def _compute(self, student_feats, teacher_feats, batch):
        s, t = self._logits(student_feats, teacher_feats)
        return KF.dist_loss(s, t, self.temperature, self.beta, self.gamma)


@register_loss("attention_map")
class AttentionMapLoss(DistillLoss):
    """EMKD importance-map distillation, IMD (:func:`~medkd.distill.functional.attention_map_loss`); no extras.

    Args:
        tap, student_tap, teacher_tap: see :class:`DistillLoss` (default ``"decoder"``).
    """

    description = "EMKD IMD: L2-normalised mean_c(x^4) attention maps, batch mean of summed squared differences"
    default_tap = "decoder"

    def __init__(self, *, tap: str | None = None, student_tap: str | None = None,
                 teacher_tap: str | None = None) -> None:
        super().__init__(tap=tap, student_tap=student_tap, teacher_tap=teacher_tap)

    def _compute(self, student_feats, teacher_feats, batch):
        return KF.attention_map_loss(*self._pair(student_feats, teacher_feats))


@register_loss("region_affinity")
class RegionAffinityLoss(DistillLoss):
    """EMKD region-affinity distillation, RAD (:func:`~medkd.distill.functional.region_affinity_loss`); reads
    ``batch["label"]``.

    Args:
        tap, student_tap, teacher_tap: see :class:`DistillLoss` (default ``"decoder"``).
    """

    description = "EMKD RAD: squared difference of fg/bg mean-feature cosine, pooled with the ground truth"
    default_tap = "decoder"
    needs_label = True

    def __init__(self, *, tap: str | None = None, student_tap: str | None = None,
                 teacher_tap: str | None = None) -> None:
        super().__init__(tap=tap, student_tap=student_tap, teacher_tap=teacher_tap)

    def _compute(self, student_feats, teacher_feats, batch):
        s, t = self._pair(student_feats, teacher_feats)
        return KF.region_affinity_loss(s, t, batch["label"])


@register_loss("contrastive")
class ContrastiveLoss(DistillLoss):
    """Multi-scale contrastive distillation (thesis B; METHODS.md item 4).

    At each tap (scale), a trainable :class:`ProjectionHead` per network side maps the student and the (detached)
    teacher features to embeddings; the term is the SUM over the taps of
    :func:`~medkd.distill.functional.info_nce` (``mode="image"``, needs a batch of at least 2 images) or of
    :func:`~medkd.distill.functional.pixel_contrast` (``mode="pixel"``: per-pixel embeddings, the student map
    resized to the teacher's size and re-normalised, the ground truth brought to that size by nearest neighbour;
    reads ``batch["label"]``). Give one tap per term to weight scales separately (thesis B: 0.1 E, 0.2 B, 0.1 D).

    Args:
        taps: scales, tap names read on both networks (default encoder, bottleneck, decoder).
        tap: shortcut for a single scale (overrides ``taps``).
        student_tap: student tap when a single scale is used (overrides ``tap``).
        teacher_tap: teacher tap when a single scale is used (overrides ``tap``).
        dim: embedding dimension ``d`` (default 128).
        temperature: ``tau`` (default 0.4, thesis code).
        symmetric: add the teacher-to-student direction.
        mode: ``"image"`` (InfoNCE over the batch) or ``"pixel"`` (supervised pixel contrast).
        max_anchors: pixel mode: sampled pixels per batch (memory ``O(max_anchors^2)``).
        head_activation: ``"none"`` (METHODS.md's head: 1x1 conv, pool, linear) or ``"relu"`` after the conv.
    """

    description = "InfoNCE between projected student/teacher features per scale (thesis B); mode image|pixel"
    default_tap = "bottleneck"
    trainable_extras = "projection heads per scale and side (1x1 conv, GAP, linear, L2)"

    def __init__(self, *, taps: Sequence[str] = ("encoder", "bottleneck", "decoder"), tap: str | None = None,
                 student_tap: str | None = None, teacher_tap: str | None = None, dim: int = 128,
                 temperature: float = 0.4, symmetric: bool = False, mode: str = "image",
                 max_anchors: int = 1024, head_activation: str = "none") -> None:
        super().__init__()
        if isinstance(taps, str):
            taps = (taps,)
        taps = (tap,) if tap is not None else tuple(taps)
        s_taps, t_taps = taps, taps
        if student_tap is not None or teacher_tap is not None:
            if len(taps) != 1:
                raise ConfigError("loss 'contrastive': student_tap / teacher_tap need a single scale (tap=...)")
            s_taps, t_taps = (student_tap or taps[0],), (teacher_tap or taps[0],)
        if not s_taps:
            raise ConfigError("loss 'contrastive': taps must name at least one scale")
        if mode not in ("image", "pixel"):
            raise unknown_name_error("contrastive mode", str(mode), ("image", "pixel"))
        if temperature <= 0 or dim < 1 or max_anchors < 2:
            raise ConfigError(
                f"loss 'contrastive': need temperature > 0, dim >= 1, max_anchors >= 2 "
                f"(got {temperature}, {dim}, {max_anchors})"
            )
        self.student_taps, self.teacher_taps = tuple(s_taps), tuple(t_taps)
        self.dim, self.temperature, self.symmetric = int(dim), float(temperature), bool(symmetric)
        if head_activation not in HEAD_ACTIVATIONS:
            raise unknown_name_error("contrastive head_activation", str(head_activation), HEAD_ACTIVATIONS)
        self.mode, self.max_anchors, self.head_activation = mode, int(max_anchors), head_activation
        self.needs_label = mode == "pixel"
        self.student_heads = nn.ModuleList()
        self.teacher_heads = nn.ModuleList()

    def _build(self, student_feats, teacher_feats):
        self.student_heads = nn.ModuleList()
        self.teacher_heads = nn.ModuleList()
        pixel = self.mode == "pixel"
        for i in range(len(self.student_taps)):
            s, t = self._pair(student_feats, teacher_feats, i)
            if s.dim() < 3 or t.dim() < 3:
                raise ConfigError(
                    f"loss 'contrastive': tap {self.student_taps[i]!r} must be a (B, C, *spatial) feature map"
                )
            act = self.head_activation
            self.student_heads.append(ProjectionHead(s.dim() - 2, s.shape[1], self.dim, pixel, act).to(s.device))
            self.teacher_heads.append(ProjectionHead(t.dim() - 2, t.shape[1], self.dim, pixel, act).to(s.device))

    def _compute(self, student_feats, teacher_feats, batch):
        total = None
        for i, (hs, ht) in enumerate(zip(self.student_heads, self.teacher_heads)):
            s, t = self._pair(student_feats, teacher_feats, i)
            zs, zt = hs(s), ht(t)
            if self.mode == "image":
                term = KF.info_nce(zs, zt, self.temperature, self.symmetric)
            else:
                zs = F.normalize(KF.resize_to(zs, zt.shape[2:]), dim=1)
                lab = batch["label"]
                lab = lab if lab.dim() == zt.dim() else lab.unsqueeze(1)
                lab = F.interpolate(lab.float(), size=tuple(zt.shape[2:]), mode="nearest").long()
                term = KF.pixel_contrast(zs, zt, lab, self.temperature, self.max_anchors, self.symmetric)
            total = term if total is None else total + term
        return total
