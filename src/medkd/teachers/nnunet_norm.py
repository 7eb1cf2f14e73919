"""An nnU-Net v2 teacher's intensity normalisation, fitted onto medkd's data pipeline.

nnU-Net normalises every input channel by the scheme its plans name (``normalization_schemes``,
``use_mask_for_norm``, ``foreground_intensity_properties_per_channel``):

* ``ZScoreNormalization``: ``(x - mean) / max(std, 1e-8)`` over the case (inside the non-zero region when
  ``use_mask_for_norm``, zero outside) -- medkd's ``data.normalize: zscore`` (``zscore_nonzero`` with the mask);
* ``RescaleTo01Normalization``: ``(x - min) / (max - min)`` over the case -- medkd's ``minmax``;
* ``CTNormalization``: clip to the dataset's foreground ``percentile_00_5`` / ``percentile_99_5``, then
  ``(x - mean) / max(std, 1e-8)`` with the foreground ``mean`` / ``std``: fixed numbers, applied here element-wise
  to raw intensities (``data.normalize: none``);
* ``NoNormalization`` (raw) and ``RGBTo0_1Normalization`` (``x / 255``): element-wise, on raw intensities.

The per-case schemes are computed by medkd's own pipeline when ``data.normalize`` is the matching mode, and the
element-wise ones by :class:`NnUNetIntensity` inside the teacher, on the raw intensities ``data.normalize: none``
keeps. Any other pairing would show the teacher inputs it never saw, so :func:`nnunet_intensity` refuses it in one
line naming the channel, its scheme and the ``data.normalize`` it needs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from medkd.errors import ConfigError

__all__ = ["ELEMENTWISE_SCHEMES", "PER_CASE_SCHEMES", "NnUNetIntensity", "nnunet_intensity"]

#: Per-case schemes and the ``data.normalize`` mode that computes the same numbers (by ``use_mask_for_norm``).
PER_CASE_SCHEMES: dict[str, dict[bool, str]] = {
    "ZScoreNormalization": {False: "zscore", True: "zscore_nonzero"},
    "RescaleTo01Normalization": {False: "minmax", True: "minmax"},
}

#: Element-wise schemes, applied by :class:`NnUNetIntensity` to raw intensities (``data.normalize: none``).
ELEMENTWISE_SCHEMES: tuple[str, ...] = ("CTNormalization", "NoNormalization", "RGBTo0_1Normalization")


class NnUNetIntensity(nn.Module):
    """Element-wise intensity mapping per channel: ``(clamp(x, low, high) - shift) / scale``.

    Args:
        low, high, shift, scale: one number per channel (``-inf`` / ``inf`` bounds: no clipping).
    """

    def __init__(self, low: Sequence[float], high: Sequence[float], shift: Sequence[float], scale: Sequence[float]):
        super().__init__()
        for name, values in (("low", low), ("high", high), ("shift", shift), ("scale", scale)):
            self.register_buffer(name, torch.tensor([float(v) for v in values], dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = (1, -1) + (1,) * (x.ndim - 2)
        low, high = self.low.view(shape).to(x.dtype), self.high.view(shape).to(x.dtype)
        x = torch.maximum(torch.minimum(x, high), low)
        return (x - self.shift.view(shape).to(x.dtype)) / self.scale.view(shape).to(x.dtype)


def _elementwise(scheme: str, props: Mapping[str, Any] | None, where: str) -> tuple[float, float, float, float]:
    """``(low, high, shift, scale)`` of one channel's element-wise scheme."""
    if scheme == "NoNormalization":
        return -float("inf"), float("inf"), 0.0, 1.0
    if scheme == "RGBTo0_1Normalization":
        return -float("inf"), float("inf"), 0.0, 255.0
    keys = ("percentile_00_5", "percentile_99_5", "mean", "std")
    if not props or any(k not in props for k in keys):
        raise ConfigError(f"{where}: plans.json foreground_intensity_properties_per_channel lacks "
                          f"{', '.join(keys)} for a CTNormalization channel")
    return (float(props["percentile_00_5"]), float(props["percentile_99_5"]), float(props["mean"]),
            max(float(props["std"]), 1e-8))


def nnunet_intensity(schemes: Sequence[str], use_mask: Sequence[bool], props: Mapping[str, Any],
                     channel_names: Sequence[str], normalize: str | None, where: str) -> NnUNetIntensity | None:
    """The element-wise part of a plan's normalisation, after checking that ``data.normalize`` fits the plan.

    Args:
        schemes: ``normalization_schemes`` of the plan's configuration, one per teacher input channel.
        use_mask: its ``use_mask_for_norm``.
        props: ``foreground_intensity_properties_per_channel`` (keys ``"0"``, ``"1"``, ...).
        channel_names: the teacher's channel names (for errors).
        normalize: the run's ``data.normalize`` (None: not checked, e.g. a direct call on raw intensities).
        where: the config key naming the teacher.

    Returns:
        The module mapping raw intensities for element-wise schemes, or None when every scheme is per case.

    Raises:
        ConfigError: a scheme medkd does not know, or one ``data.normalize`` cannot give the teacher.
    """
    modes = set()
    for c, scheme in enumerate(schemes):
        mask = bool(use_mask[c]) if c < len(use_mask) else False
        if scheme in PER_CASE_SCHEMES:
            modes.add(PER_CASE_SCHEMES[scheme][mask])
        elif scheme in ELEMENTWISE_SCHEMES:
            modes.add("none")
        else:
            raise ConfigError(f"{where}: channel {channel_names[c]!r} uses the normalisation {scheme!r}, which "
                              f"medkd does not know ({', '.join([*PER_CASE_SCHEMES, *ELEMENTWISE_SCHEMES])})")
        needed = PER_CASE_SCHEMES[scheme][mask] if scheme in PER_CASE_SCHEMES else "none"
        if normalize is not None and normalize != needed:
            raise ConfigError(f"{where}: the teacher was trained on channel {channel_names[c]!r} with {scheme}"
                              f"{' (masked)' if mask else ''}, which needs data.normalize: {needed} (got {normalize})")
    if modes != {"none"}:
        if len(modes) > 1:
            raise ConfigError(f"{where}: the teacher's channels need different data.normalize modes {sorted(modes)}")
        return None
    bounds = [_elementwise(s, props.get(str(c)), where) for c, s in enumerate(schemes)]
    return NnUNetIntensity(*zip(*bounds))
