"""An nnU-Net v2 teacher's own intensity normalisation, computed per case by medkd's data path.

nnU-Net normalises every input channel by the scheme its plans name (``normalization_schemes``,
``use_mask_for_norm``, ``foreground_intensity_properties_per_channel``); :class:`NnUNetNormalization` computes
the same numbers on one case (C, *spatial), as nnU-Net's ``default_normalization_schemes`` do:

* ``ZScoreNormalization``: ``(x - mean) / max(std, 1e-8)`` over the case; with ``use_mask_for_norm`` over the
  non-zero region of the case (a voxel where any channel the teacher reads is non-zero, nnU-Net's crop mask),
  the voxels outside left as they are (zero);
* ``CTNormalization``: clip to the dataset's foreground ``percentile_00_5`` / ``percentile_99_5``, then
  ``(x - mean) / max(std, 1e-8)`` with the foreground ``mean`` / ``std`` of the plan;
* ``RescaleTo01Normalization``: ``(x - min) / max(max - min, 1e-8)`` over the case;
* ``RGBTo0_1Normalization``: ``x / 255``; ``NoNormalization``: ``x``.

The data path applies it to raw intensities on the run's grid (after orientation, spacing and crops, before
medkd's percentile clipping and ``data.normalize``) and holds the result as the teacher's own copy of its
channels, so the teacher sees what it was trained on whatever the student's preprocessing
(:class:`medkd.data.pipeline.TeacherCopy`).

Example:
    >>> norm = nnunet_normalization(["CTNormalization"], [False], props, ["CT"], [0], 1, "distill.teacher.nnunet")
    >>> teacher_view = norm(raw_case)          # (1, *spatial) float32
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from medkd.errors import ConfigError

__all__ = ["SCHEMES", "ChannelNorm", "NnUNetNormalization", "nnunet_normalization"]

#: nnU-Net v2's normalisation schemes that medkd computes.
SCHEMES: tuple[str, ...] = ("ZScoreNormalization", "CTNormalization", "RescaleTo01Normalization",
                            "RGBTo0_1Normalization", "NoNormalization")
_CT_KEYS = ("percentile_00_5", "percentile_99_5", "mean", "std")


@dataclass(frozen=True)
class ChannelNorm:
    """One channel's scheme: its name, ``use_mask_for_norm`` and (``CTNormalization``) the plan's numbers."""

    scheme: str
    use_mask: bool = False
    low: float = 0.0
    high: float = 0.0
    mean: float = 0.0
    std: float = 1.0

    def apply(self, x: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
        """The channel ``x`` (float32) normalised; ``mask``: the case's non-zero region (masked ZScore)."""
        if self.scheme == "CTNormalization":
            return ((np.clip(x, self.low, self.high) - self.mean) / max(self.std, 1e-8)).astype(np.float32)
        if self.scheme == "RescaleTo01Normalization":
            x = x - x.min()
            return (x / max(float(x.max()), 1e-8)).astype(np.float32)
        if self.scheme == "RGBTo0_1Normalization":
            return (x / 255.0).astype(np.float32)
        if self.scheme != "ZScoreNormalization":
            return x
        if self.use_mask:
            out = x.copy()
            if mask is not None and mask.any():
                values = x[mask].astype(np.float64)
                out[mask] = (values - values.mean()) / max(float(values.std()), 1e-8)
            return out
        values = x.astype(np.float64)
        return ((values - values.mean()) / max(float(values.std()), 1e-8)).astype(np.float32)


@dataclass(frozen=True)
class NnUNetNormalization:
    """nnU-Net's normalisation of the channels the data path gives the teacher, one case at a time.

    Attributes:
        channels: per given channel, its :class:`ChannelNorm`, or None for a channel the teacher does not read
            (left as it is, and outside the non-zero mask).
    """

    channels: tuple[ChannelNorm | None, ...]

    def __call__(self, image: np.ndarray) -> np.ndarray:
        """The case ``image`` (C, *spatial) as the teacher saw it in training (float32, same shape)."""
        out = np.array(image, dtype=np.float32, copy=True)
        read = [c for c, n in enumerate(self.channels) if n is not None]
        mask = None
        if any(n is not None and n.use_mask for n in self.channels):
            mask = np.any(out[read] != 0, axis=0)
        for c, norm in enumerate(self.channels):
            if norm is not None:
                out[c] = norm.apply(out[c], mask)
        return out

    def describe(self) -> dict[str, Any]:
        """JSON-ready facts that decide the numbers (for the prepared-sample cache's fingerprint)."""
        return {"kind": "nnunet", "channels": [None if n is None else asdict(n) for n in self.channels]}


def _channel(scheme: str, mask: bool, props: Mapping[str, Any] | None, name: str, where: str) -> ChannelNorm:
    """One teacher channel's :class:`ChannelNorm`, after checking its scheme and (CT) the plan's numbers."""
    if scheme not in SCHEMES:
        raise ConfigError(f"{where}: channel {name!r} uses the normalisation {scheme!r}, which medkd does not "
                          f"know ({', '.join(SCHEMES)})")
    if scheme != "CTNormalization":
        return ChannelNorm(scheme, mask and scheme == "ZScoreNormalization")
    if not props or any(k not in props for k in _CT_KEYS):
        raise ConfigError(f"{where}: plans.json foreground_intensity_properties_per_channel lacks "
                          f"{', '.join(_CT_KEYS)} for the CTNormalization channel {name!r}")
    return ChannelNorm(scheme, False, *(float(props[k]) for k in _CT_KEYS))


def nnunet_normalization(schemes: Sequence[str], use_mask: Sequence[bool], props: Mapping[str, Any],
                         channel_names: Sequence[str], picked: Sequence[int], n_given: int,
                         where: str) -> NnUNetNormalization:
    """A plan's normalisation laid out on the channels the run gives the teacher.

    Args:
        schemes: ``normalization_schemes`` of the plan's configuration, one per teacher input channel.
        use_mask: its ``use_mask_for_norm``.
        props: ``foreground_intensity_properties_per_channel`` (keys ``"0"``, ``"1"``, ...).
        channel_names: the teacher's channel names (for errors).
        picked: position, among the given channels, of each teacher channel
            (:func:`medkd.teachers.mapping.match_channels`).
        n_given: how many channels the run gives the teacher.
        where: the config key naming the teacher.

    Raises:
        ConfigError: a scheme medkd does not know, a CT channel without its numbers, or fewer schemes than
            channels.
    """
    if len(schemes) < len(channel_names):
        raise ConfigError(f"{where}: plans.json names {len(schemes)} normalization_schemes for "
                          f"{len(channel_names)} channel(s)")
    layout: list[ChannelNorm | None] = [None] * n_given
    for c, position in enumerate(picked):
        mask = bool(use_mask[c]) if c < len(use_mask) else False
        layout[position] = _channel(schemes[c], mask, props.get(str(c)), channel_names[c], where)
    return NnUNetNormalization(tuple(layout))
